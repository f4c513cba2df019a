"""What every command shares: verbosity, stderr logging, progress bars, common options, JSON output.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time

import click

from regvq_cli.engine.dist import world_from_env

_verbosity = 0  # -2 errors only, -1 no progress/info, 0 normal, 1 details, 2 debug


# what -vv shows: the Hub client's messages and its HTTP requests (httpx, or the httpx2 that newer huggingface_hub
# releases use; urllib3 under requests)
DEBUG_LOGGERS = ("regvq_cli", "huggingface_hub", "httpx", "httpx2", "urllib3")


class _StderrHandler(logging.Handler):
    """Log records as "regvq: debug: name: message" lines on whatever stderr is now (click's, under a test runner)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"regvq: debug: {record.name}: {record.getMessage()}", err=True)


def set_verbosity(level: int) -> None:
    global _verbosity
    _verbosity = level
    debug = level >= 2  # -vv: DEBUG_LOGGERS on stderr; off again for a later command in the same process
    for name in DEBUG_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(handler)
        if debug:
            logger.addHandler(_StderrHandler())
        logger.setLevel(logging.DEBUG if debug else logging.NOTSET)
    if level < 0 or not sys.stderr.isatty():  # the Hub client's download bars follow ours
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        else:  # read when it is imported
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if level < 0:  # -q: the Hugging Face Hub client's own warnings too (offline, two lines a request as it retries
        # for most of a minute). It sets its logger's level when first imported, so it is imported now (about 10 ms);
        # the next call above sets the level back for a later command in the same process
        try:
            from huggingface_hub.utils import logging as hub_logging
        except ImportError:
            return
        hub_logging.set_verbosity_error()


def verbosity() -> int:
    return _verbosity


def rank() -> int:
    """This process's rank under torchrun (0 when run alone)."""
    return world_from_env()[0]


def info(message: str) -> None:
    """A progress/info line on stderr (rank 0 only; hidden by -q)."""
    if _verbosity >= 0 and rank() == 0:
        click.echo(message, err=True)


def compiling_note(what: str) -> None:
    """Say that the first batch waits for torch.compile, so that a minute without progress is not taken for a hang."""
    info(f"compiling {what} with torch.compile: the first batch waits for it (about a minute)")


def detail(message: str, bar=None) -> None:
    """A detail line on stderr, shown with -v (through `bar`'s write, which keeps a drawn bar below it)."""
    if _verbosity >= 1 and rank() == 0:
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            click.echo(message, err=True)


def load_model(spec: str, **kwargs):
    """`engine.resolve.load(spec, **kwargs)`; with -v, says which model that resolved to, from where, its size and
    how long it took."""
    from regvq_cli.engine.resolve import load

    t = time.perf_counter()
    model = load(spec, **kwargs)
    params = sum(p.numel() for p in model.parameters())
    where = "" if str(model.regvq_path) == str(model.regvq_id) else f" from {model.regvq_path}"
    detail(f"{model.regvq_id}{where}: {human_count(params)} parameters, loaded in {time.perf_counter() - t:.2f} s")
    return model


def warn(message: str) -> None:
    """A warning on stderr (hidden only by -qq)."""
    if _verbosity >= -1:
        click.echo(f"regvq: warning: {message}", err=True)


def progress_enabled() -> bool:
    return _verbosity >= 0 and rank() == 0 and sys.stderr.isatty()


def progress(total=None, desc: str = "", unit: str = "it", **kwargs):
    """A tqdm bar on stderr; disabled when stderr is not a terminal, on ranks other than 0, and with -q."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not progress_enabled(),
                dynamic_ncols=True, leave=False, **kwargs)


def tenths(bar, what: str):
    """`note(done, total, extra="")` for a loop drawing `bar`: with -v, a line each time `done` passes another tenth
    of `total` ("2,000 of 10,000 images done (350.1 images/s)"), which a job's log keeps where no bar is drawn; none
    while the total is unknown (None or 0)."""
    t0, passed = time.perf_counter(), [0]

    def note(done: int, total: int | None, extra: str = "") -> None:
        k = done * 10 // total if total else 0  # an unknown total: no lines
        if k > passed[0]:
            passed[0] = k
            rate = human_rate(done / max(time.perf_counter() - t0, 1e-9))
            detail(f"{done:,} of {total:,} {what} done{extra} ({rate})", bar)
    return note


def counted(bar, what: str):
    """`callback(done, total)` that moves `bar` to `done` and, with -v, writes `tenths`' lines."""
    note = tenths(bar, what)

    def callback(done: int, total: int | None) -> None:
        bar.update(done - bar.n)
        note(done, total)
    return callback


@contextlib.contextmanager
def training_progress(max_steps: int, keys: tuple[str, ...]):
    """A step bar for a training run; yields the `callback(step, metrics)` the trainers call (once per step, so
    `callback.steps` counts the steps this process ran). With -v, also a line per logged window ("step 200/10000:
    loss 0.0812, ..."), which stays in a job's log where no bar is drawn."""
    with progress(total=max_steps, desc="train", unit="step") as bar:
        def callback(step, metrics):
            callback.steps += 1
            bar.n = step
            shown = {k: f"{metrics[k]:.4g}" for k in keys if k in metrics}
            bar.set_postfix(shown, refresh=False)
            bar.refresh()
            if metrics.get("time") != callback.logged:  # a new metrics record: its wall-clock time differs
                callback.logged = metrics.get("time")
                detail(f"step {step}/{max_steps}: " + ", ".join(f"{k} {v}" for k, v in shown.items()), bar)

        callback.steps, callback.logged = 0, None
        yield callback


def report_export(folder, run_dir, steps_run: int, max_steps: int, as_json: bool) -> None:
    """The end of a training command: the exported model's folder (JSON, with the steps this invocation ran, or a
    line), and a warning when it ran no step, so that re-exported or initial weights are not taken for trained
    ones. Rank 0's alone: under torchrun the other ranks' progress callbacks never run, so their step counts stay
    0."""
    if rank() != 0:
        return
    if steps_run == 0:
        warn(f"no training step ran: the run was already at --max-steps ({max_steps}) or its --time-limit; "
             f"{folder} holds its weights as they were (a new run's: the initial ones)")
    if as_json:
        emit_json({"model": str(folder), "run_dir": str(run_dir), "steps_run": steps_run})
    else:
        info(f"model exported to {folder}")


def table_options(table):
    """Click options from rows (flag, config field, click type, default, help); `bool` rows are on/off flags.

    Training commands declare their options this way, mirroring a config dataclass without importing it."""
    def decorate(f):
        for flag, field, kind, default, help_text in reversed(table):
            if kind is bool:
                f = click.option(flag, field, default=default, show_default=True, help=help_text)(f)
            else:
                f = click.option(flag, field, type=kind, default=default, show_default=default is not None,
                                 help=help_text)(f)
        return f

    return decorate


def emit_json(data) -> None:
    """Write one JSON document to stdout (data goes to stdout, everything else to stderr); under torchrun only
    rank 0 writes it, so a run prints one document (its counts summed over the ranks)."""
    if rank() != 0:
        return
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def complete_model(ctx, param, incomplete):
    """Shell completion for --model, without importing torch: the shipped model names it begins, and paths (a run's
    model folder, a .safetensors file), which the shell itself completes where no shipped name matches."""
    from click.shell_completion import CompletionItem

    from regvq_cli.engine.resolve import shipped_model_names

    return [CompletionItem(incomplete, type="file"),
            *(CompletionItem(name) for name in shipped_model_names() if name.startswith(incomplete))]


def model_option(default=None, help_text="Model: a shipped name (see `regvq models list`), a folder, a .safetensors file, or a Hub id org/name[@rev]."):
    return click.option("-m", "--model", type=ModelSpec(), default=default, show_default=bool(default),
                        help=help_text)


def device_options(f):
    """--device and --dtype, for commands that run models."""
    f = click.option("--dtype", default="auto", show_default=True,
                     type=click.Choice(["auto", "fp32", "bf16", "fp16"], case_sensitive=False),
                     help="Compute dtype; auto is bf16 on CUDA and fp32 elsewhere.")(f)
    f = click.option("--device", default="auto", show_default=True,
                     help="Where to run: auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")(f)
    return f


def batch_size_hint(f):
    """Decorate a command whose parameters include batch_size: an out-of-memory error becomes one line that names
    the --batch-size that failed and one to try (half of it). Work already written (token shards, checkpoints)
    stays, so the same command with the smaller batch resumes."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except Exception as e:  # torch.OutOfMemoryError and older RuntimeErrors; torch is imported lazily
            size = kwargs.get("batch_size")
            if not size or "out of memory" not in str(e).lower():
                raise
            from regvq_cli.errors import RegvqError

            tip = " (raise --grad-accum to keep the effective batch)" if "grad_accum" in kwargs else ""
            raise RegvqError(f"out of memory at --batch-size {size}: run the same command with --batch-size "
                             f"{max(1, size // 2)}{tip}") from e

    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
offline_option = click.option("--offline", is_flag=True, help="Never touch the network: use the Hugging Face cache only (like HF_HUB_OFFLINE=1).")


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def human_rate(images_per_s: float) -> str:
    """'12.3 images/s', or '11.5 s per image' below one a second (where '0.1 images/s' says little)."""
    if 0 < images_per_s < 1:
        return f"{1 / images_per_s:.1f} s per image"
    return f"{images_per_s:.1f} images/s"


def shown(name: str) -> str:
    """A file name or key as a log line can show it: newlines, other control characters and bytes that are not
    UTF-8 escaped (\\n, \\x1b, \\udce9), so that a name cannot fake a line of its own."""
    return name if name.isprintable() else name.encode("unicode_escape", "backslashreplace").decode("ascii")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf: nan compares false against any bound (and inf passes a lower
    one), so a plain range lets them through to the sampler or optimiser."""

    def convert(self, value, param, ctx):
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def check_png_to_stdout(as_json: bool) -> None:
    """Refuse `-o -` (a PNG on stdout) where stdout is taken by --json or is a terminal."""
    if as_json:
        raise click.UsageError("-o - and --json both write to stdout: choose one")
    if sys.stdout.isatty():
        raise click.UsageError("refusing to write a PNG to a terminal: redirect stdout (> image.png) or pass -o FILE")


def check_png_name(out: str, folder_of_pngs: bool, option: str = "--out") -> None:
    """A usage error for an output name that will not be what it looks like: a folder of PNGs named like a picture
    (x.png, x.jpg), or a single picture not named .png (the files written are PNGs)."""
    import os

    from regvq_cli.data.inputs import IMAGE_EXTS

    ext = os.path.splitext(out)[1].lower()
    if folder_of_pngs and ext in IMAGE_EXTS and not os.path.isdir(out):
        raise click.BadParameter(f"{out} would be a folder of PNGs named like a picture: pass --grid for one "
                                 "contact sheet, or give a folder name", param_hint=option)
    if not folder_of_pngs and ext != ".png":
        raise click.BadParameter(f"{out}: the picture written is a PNG; name it .png", param_hint=option)


def make_output_folder(folder: str, option: str = "--out") -> None:
    """Make the folder an output goes to, before any work: a path below a file, or a folder that cannot be made,
    is a one-line error naming the option."""
    import os

    from regvq_cli.errors import RegvqError

    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        part, why = os.path.abspath(folder), e.strerror or str(e)
        while os.path.dirname(part) != part:  # makedirs says "File exists" where a part of the path is a file
            if os.path.exists(part) and not os.path.isdir(part):
                why = f"{part} is a file"
                break
            part = os.path.dirname(part)
        raise RegvqError(f"cannot create the folder {folder} for {option}: {why}; choose another {option}") from None


class OutFolder(click.Path):
    """click.Path for an output folder: '-', which other options and tools take for stdout, is refused rather than
    made a folder of that name."""

    def __init__(self):
        super().__init__(file_okay=False)

    def convert(self, value, param, ctx):
        if value == "-":
            self.fail("'-' (stdout) cannot take this output, which is a folder: give a folder name", param, ctx)
        return super().convert(value, param, ctx)


CUDA_GRAPHS_HELP = ("Replay the tokenizer as one CUDA graph per batch instead of launching its layers one by one: "
                    "the same kernels and results, less host time a batch. It does nothing with --compile or on a "
                    "CPU.")
CHANNELS_LAST_HELP = ("Channels-last activations. Default: on for a GPU without --compile, where GroupNorm and SiLU "
                      "then run as kernels that keep the layout and add the convolutions' biases (about 2.7x the "
                      "images/s of NCHW on an H200; bf16 tokens agree at about 98% of positions); off on a CPU, where it is a little faster to encode "
                      "and about a third faster to decode, within rounding of NCHW, not bit for bit.")

# seeds torch.Generator.manual_seed takes (numpy's generators take any non-negative integer)
SEED = click.IntRange(0, 2**64 - 1)
# the training commands' seeds: the data order seeds a generator with seed * 1,000,003, which must stay in its range
TRAIN_SEED = click.IntRange(0, 2**32 - 1)


class ModelSpec(click.ParamType):
    """A model spec (shipped name, folder, .safetensors file, Hub id), completed with the shipped names."""

    name = "model"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():  # else `model or DEFAULT` would take the default
            self.fail("an empty model name: give a shipped model's name, a model folder, a .safetensors file or a "
                      "Hub id", param, ctx)
        return value

    def shell_complete(self, ctx, param, incomplete):
        return complete_model(ctx, param, incomplete)


def explicit_options(names, given: dict) -> dict:
    """The options among `names` that the command line (or the environment) set, not their defaults."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {k: given[k] for k in names
            if k in given and ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}


def check_run_start(run_dir, init, explicit: dict, offline: bool, recorded, check_init) -> None:
    """Before a training command starts: a run folder with a resume state is resumed (--init is ignored) and the
    options given explicitly must be those it was started with (``recorded(state, key)`` reads one); otherwise
    ``check_init(init, explicit, offline)`` checks that --init's model takes them."""
    from pathlib import Path

    from regvq_cli.train.common import STATE_NAME, check_resume_settings

    if (Path(run_dir) / STATE_NAME).exists():
        if init:
            info(f"{run_dir} has a resume state: resuming that run; --init is ignored")
        check_resume_settings(run_dir, explicit, recorded)
    elif init:
        check_init(init, explicit, offline)

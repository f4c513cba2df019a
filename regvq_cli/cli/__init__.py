"""The `regvq` command: a thin Click layer over the library.

Subcommands are imported only when they run, so `regvq --help`, `--version` and shell completion never
import torch. Error policy, shared by every command:

- usage errors: Click's message, exit 2;
- RegvqError (and any other failure): one line `regvq: error: ...` on stderr, exit 1; the full traceback
  only with REGVQ_DEBUG=1;
- Ctrl-C: exit 130 without a traceback; a closed stdout pipe (`| head`): exit 141 (as if killed by SIGPIPE,
  like other Unix tools) without a message.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from regvq_cli import __version__

# name -> (module, attribute, one-line help). A command is listed here only once it really works.
COMMANDS = {
    "encode": ("regvq_cli.cli.encode", "encode", "Encode image folders or files into token shards."),
    "decode": ("regvq_cli.cli.decode", "decode", "Decode token shards (or token grids on stdin) back into images."),
    "eval": ("regvq_cli.cli.eval", "eval_group", "Measure tokenizers (rFID, PSNR, SSIM, codebook use) and generators (FID, KID)."),
    "codebook": ("regvq_cli.cli.eval", "codebook", "Codebook health of a tokenizer over data: usage, dead codes, histogram."),
    "models": ("regvq_cli.cli.models", "models", "List, show and publish models."),
    "shards": ("regvq_cli.cli.shards", "shards", "Inspect, verify and merge token folders."),
    "train-tokenizer": ("regvq_cli.cli.train_tokenizer", "train_tokenizer", "Train a RegVQ (or VQ / Gumbel-VQ) tokenizer on image folders."),
    "train-prior": ("regvq_cli.cli.train_prior", "train_prior", "Train an autoregressive or discrete-diffusion prior on a token folder."),
    "sample": ("regvq_cli.cli.sample", "sample", "Generate images (or token grids) from a prior: prompts, classes or segmentation maps."),
    "completion": ("regvq_cli.cli.completion", "completion", "Print the shell completion script for bash, zsh or fish."),
}


def debug() -> bool:
    return os.environ.get("REGVQ_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


class CliError(click.ClickException):
    """A runtime failure shown as one line; exit code 1."""

    exit_code = 1
    label = "error: "

    def show(self, file=None):
        click.echo(f"regvq: {self.label}{self.format_message()}", err=True)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, and which turns failures into one-line errors."""

    def list_commands(self, ctx):
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return with_verbosity_options(getattr(importlib.import_module(module), attr))

    def format_commands(self, ctx, formatter):
        # Help text from the table, without importing every command module.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx) if name in COMMANDS]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise click.exceptions.Exit(SIGPIPE_EXIT) from None
        except Terminated:  # said here: click would turn it into Abort after printing an empty line
            if debug():
                raise
            click.echo("regvq: terminated (SIGTERM)", err=True)
            raise click.exceptions.Exit(TERMINATED_EXIT) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if debug():
                raise
            from regvq_cli.cli._common import rank
            from regvq_cli.errors import TrainingStopped

            if isinstance(e, TrainingStopped) and rank() != 0:  # every rank stopped at the same step: rank 0 says it
                raise click.exceptions.Exit(e.exit_code) from None
            error = CliError(describe(e))
            if isinstance(e, TrainingStopped):  # stopped by a signal with a checkpoint: 128 + the signal, no "error:"
                error.exit_code, error.label = e.exit_code, ""
            raise error from e


def describe(e: BaseException) -> str:
    """One line for a failure: our own errors as they are; others with their type and a hint. An error raised in
    a DataLoader worker reaches the main process with the worker's traceback in its message: the original's last
    line is what is described."""
    from regvq_cli.errors import RegvqError

    kind, text = type(e).__name__, str(e).strip()
    original = worker_original(text)
    if original is not None:
        kind, _, text = original.partition(": ")
        kind = kind.rsplit(".", 1)[-1]
    if isinstance(e, RegvqError):
        return text if original is not None else str(e)
    text = text.splitlines()[0] if text else ""
    if "out of memory" in text.lower():
        return f"out of memory ({text[:120]}); lower --batch-size and run again"
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    return f"{kind}: {text} (set REGVQ_DEBUG=1 for the traceback)"


def worker_original(text: str) -> str | None:
    """The last line of the original traceback ("module.Type: message") in the message of an error that torch's
    DataLoader raised again in the main process after a worker raised it; None for any other message."""
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return None
    return text.rstrip().splitlines()[-1]


QUIET_HELP = "Less output on stderr (-q: no progress bars or info; -qq: errors only)."
VERBOSE_HELP = "More output on stderr (-v: details, such as the models loaded; -vv: also the Hub's requests)."


def with_verbosity_options(cmd: click.Command) -> click.Command:
    """`cmd`, with every command under it taking -q and -v after its name too (`regvq encode imgs -o t -q`), on
    top of the group's own (`regvq -q encode ...`); both count."""
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            with_verbosity_options(sub)
    elif not any(p.name == "quiet" for p in cmd.params):
        cmd.params += [
            click.Option(["-q", "--quiet"], count=True, expose_value=False, callback=_adjust_verbosity(-1),
                         help=QUIET_HELP),
            click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_adjust_verbosity(1),
                         help=VERBOSE_HELP),
        ]
    return cmd


def _adjust_verbosity(sign: int):
    def callback(ctx, param, count):
        if count:
            from regvq_cli.cli import _common

            _common.set_verbosity(_common.verbosity() + sign * count)
    return callback


SIGPIPE_EXIT = 141
TERMINATED_EXIT = 143  # 128 + SIGTERM, as a shell reports a process the signal ended
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="regvq", message="%(prog)s %(version)s")
@click.option("-q", "--quiet", count=True, help=QUIET_HELP)
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)
@click.pass_context
def cli(ctx, quiet, verbose):
    """Tokenize images with Regularized Vector Quantization, and generate from the tokens.

    \b
    Data goes to stdout, logs and progress bars to stderr.
    Set REGVQ_DEBUG=1 to see full tracebacks.
    """
    from regvq_cli.cli import _common

    _common.set_verbosity(verbose - quiet)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler), raised in the main thread as Ctrl-C raises KeyboardInterrupt: the
    command's cleanup runs (locks, temporary files, loader workers) and the CLI says why it stopped. The training
    loops take SIGTERM over while they run, to finish the step and checkpoint first."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv=None):
    """Console entry point: run the CLI with the error policy above."""
    import signal
    import warnings

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    # torch's advice when --workers asks for more processes than cores, twice and past -q: the user chose them
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    try:
        code = cli.main(args=argv, prog_name="regvq", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:  # click turns a KeyboardInterrupt into Abort
        if debug() and isinstance(e, KeyboardInterrupt):
            raise
        if isinstance(e, Terminated) or isinstance(e.__cause__, Terminated):  # outside a command (its arguments)
            click.echo("regvq: terminated (SIGTERM)", err=True)
            sys.exit(TERMINATED_EXIT)
        click.echo("regvq: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        _quiet_broken_pipe()
        sys.exit(SIGPIPE_EXIT)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
        sys.exit(SIGPIPE_EXIT)
    sys.exit(code if isinstance(code, int) else 0)


def _quiet_broken_pipe():
    # The reader went away (`regvq ... | head`): point stdout at /dev/null so the interpreter's final flush
    # does not print a second error.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass

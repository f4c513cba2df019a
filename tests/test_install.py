"""A plain (non-editable) `pip install .` gives a working `regvq` that finds the shipped models."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_resolver import _model_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    # Build from a copy, as a fresh clone would be, so the checkout's own files cannot leak in.
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", ".pytest_cache", "runs", ".carry"))
    # a model of our own beside the shipped ones, so the test means something whatever models/ holds
    (src / "models" / "zz-install-probe").mkdir()
    for name, data in _model_files().items():
        (src / "models" / "zz-install-probe" / name).write_bytes(data)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)]
    r = subprocess.run(pip, capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    shutil.rmtree(src)  # nothing may point back at the source tree
    return venv


def run_installed(venv, *args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "regvq"), *args], capture_output=True, cwd=venv, env=env, timeout=120)


def test_console_script_works(installed):
    r = run_installed(installed, "--version")
    assert r.returncode == 0 and r.stdout.startswith(b"regvq ")
    r = run_installed(installed, "--help")
    assert r.returncode == 0 and b"models" in r.stdout


def test_shipped_models_are_found_after_install(installed):
    r = run_installed(installed, "models", "list", "--json")
    assert r.returncode == 0, r.stderr.decode()
    names = sorted(row["name"] for row in json.loads(r.stdout))
    shipped = sorted(p.name for p in (REPO / "models").iterdir() if (p / "model.safetensors").is_file())
    assert names == sorted(shipped + ["zz-install-probe"])
    for row in json.loads(r.stdout):
        assert "site-packages" in row["path"]

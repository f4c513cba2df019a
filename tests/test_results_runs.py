"""benchmarks/results_runs.py: the comparisons name real runs, the flags are real options, rows become tables."""

from __future__ import annotations

import json
import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def rr():
    return load_benchmark("results_runs")


def test_tables_name_known_runs_and_flags_are_train_tokenizer_options(rr):
    from regvq_cli.cli.train_tokenizer import OPTIONS

    for _, entries in rr.TABLES.values():
        assert all(name in rr.RUNS for _, name in entries)
    known = set()
    for row in OPTIONS:
        known.update(part for part in row[0].split("/") if part.startswith("--"))
    for flags in rr.RUNS.values():
        assert all(f in known for f in flags if f.startswith("--")), flags
    # the cumulative ablation adds one switch per row
    ablation = [set(rr.RUNS[name]) for _, name in rr.TABLES["ablation"][1]]
    assert ablation[0] >= ablation[1] >= ablation[2] and ablation[-1] == set()


def test_table_from_rows(rr, tmp_path, capsys):
    rows = tmp_path / "rows"
    rows.mkdir()
    for name, psnr in (("vq", 18.0), ("regvq", 19.5)):
        row = {"name": name, "train_command": f"regvq train-tokenizer x -o {name}",
               "final_training_metrics": {"step": 100, "l1": 0.2},
               "eval": {"metrics": {"psnr": psnr, "ssim": 0.5, "rfid": 50.0, "kid": 0.01, "codebook_usage": 90.0,
                                    "codebook_perplexity": 500.0}, "protocol": {"n_images": 10, "model": "m"}}}
        (rows / f"{name}.json").write_text(json.dumps(row))
    rr.main(["table", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| VQ | 50.0 | 0.0100 | 18.00 |" in out and "| RegVQ |" in out and "| Gumbel-VQ |" not in out
    assert "### Codebook size" in out and "| 4,096 |" not in out  # only rows that exist


def test_a_deadline_stops_a_command_with_sigterm_and_reports_it_unfinished(rr, tmp_path):
    import subprocess
    import sys
    import time

    catch = ("import signal, sys, time, pathlib\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(tmp_path / 'term')!r}).touch(), sys.exit(0)))\n"
             "time.sleep(60)")
    t0 = time.time()
    assert rr.finished([sys.executable, "-c", catch], deadline=time.time() + 5.0) == (False, "")
    assert time.time() - t0 < 30 and (tmp_path / "term").exists()  # it got SIGTERM, not a kill
    assert rr.finished([sys.executable, "-c", "print('ok')"], None, stdout=subprocess.PIPE) == (True, "ok\n")
    with pytest.raises(subprocess.CalledProcessError):
        rr.finished([sys.executable, "-c", "raise SystemExit(3)"], None)


def test_gen_chains_encode_prior_training_and_eval_gen_into_a_row(rr, tmp_path):
    """The three commands of a generation row run as written (flags that exist, folders that line up)."""
    from argparse import Namespace

    from tests.test_train_tokenizer import fast_cfg, make_images
    from regvq_cli.train.tokenizer import train_tokenizer

    imgs = make_images(tmp_path / "imgs", n=12, size=32)
    out = tmp_path / "out"
    train_tokenizer([imgs], out / "runs" / "vq", fast_cfg(max_steps=1, quantizer="vq"))
    (out / "rows").mkdir()
    (out / "rows" / "vq.json").write_text("{}")  # gen_one needs the tokenizer's row to exist, nothing in it
    args = Namespace(out=str(out), train=[str(imgs)], ref=None, kind="ar", prior_preset="ar-test", prior_steps=2,
                     prior_batch_size=4, samples=10, workers=0, seed=0, deadline=None, start=0.0, parallel=1,
                     ref_size=32)
    assert rr.ensure_ref_stats(args) and rr.ref_stats_path(args).exists()
    row = rr.gen_one(args, "vq")
    assert row["kind"] == "ar" and row["prior_final_metrics"]["step"] == 2
    assert row["eval"]["metrics"]["fid"] is not None and row["eval"]["protocol"]["n_images"] == 10
    assert row["eval"]["protocol"]["n_ref"] == 12 and row["eval"]["metrics"]["precision"] is not None  # cached, with features
    assert json.loads((out / "gen" / "vq-ar.json").read_text()) == row
    assert rr.gen_one(args, "vq") == row  # a finished row is read back, not redone
    log = (out / "logs" / "vq-ar.log").read_text()
    assert [line.split("] ", 1)[1].split()[:3] for line in log.splitlines() if "] regvq" in line] == \
        [["regvq", "-q", "encode"], ["regvq", "-q", "train-prior"], ["regvq", "-q", "eval"]]
    assert log.count("] done after") == 3  # where the time of a row went


def test_parallel_runs_split_the_cpu_threads_unless_told(rr, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(rr.os, "cpu_count", lambda: 16)
    assert rr.child_env(5)["OMP_NUM_THREADS"] == "3" and rr.child_env(32)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert rr.child_env(5)["OMP_NUM_THREADS"] == "8"

"""The throughput benchmarks run end to end on a CPU with tiny models and report what they say they report."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.conftest import load_benchmark, run_interpreted
from tests.test_encode_decode import make_images


def test_bench_encode_reports_the_command_and_the_decoding_pipeline_alone(tmp_path, capsys):
    make_images(tmp_path / "imgs", 12)
    bench = load_benchmark("bench_encode")
    bench.main(["--jpeg-dir", str(tmp_path / "imgs"), "--preset", "tok-test", "--batch-size", "4", "--workers", "0",
                "--device", "cpu", "--loader-only", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 12 and r["images_per_s"] > 0 and r["loader_only_images_per_s"] > 0
    assert 0 <= r["input_wait_s"] <= r["timings"]["encoding"]
    assert r["jpeg_decoder"] == "pillow" and r["resize_on"] == "workers"  # the defaults
    bench.main(["--jpeg-dir", str(tmp_path / "imgs"), "--preset", "tok-test", "--batch-size", "4", "--workers", "0",
                "--device", "cpu", "--resize-on", "device", "--loader-only", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["resize_on"] == "device" and r["images_per_s"] > 0 and r["loader_only_images_per_s"] > 0
    bench.main(["--jpeg-dir", str(tmp_path / "imgs"), "--preset", "tok-test", "--batch-size", "4", "--workers", "0",
                "--device", "cpu", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["loader_only_images_per_s"] is None and r["peak_memory_gib"] is None  # no GPU
    check_floor_columns(r, r["images_per_s"], want_gflop=load_benchmark("bench_tokenizer").tokenizer_gflop(
        tokenizer("tok-test"))[0])


def tokenizer(preset):
    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.tokenizer.presets import PRESETS

    return Tokenizer(PRESETS[preset]).eval()


def check_floor_columns(r, images_per_s, want_gflop):
    """The benchmark tables' columns agree with each other (images/s is rounded in the tables): ms per image,
    GFLOP per image, floor fraction."""
    assert r["gflop_per_image"] == pytest.approx(want_gflop, rel=1e-3) and want_gflop > 0
    assert r["ms_per_image"] == pytest.approx(1000 / images_per_s, rel=0.05)
    assert r["floor_fraction"] == pytest.approx(images_per_s * r["gflop_per_image"] / 790e3, rel=0.05)


def test_bench_tokenizer_and_decode_report_flops_and_the_floor_fraction(capsys):
    """Encode and decode FLOPs counted on one image (the decoder costs more than the encoder in these presets),
    and the same decoder count in bench_decode's end-to-end and model-only columns."""
    load_benchmark("bench_tokenizer").main(["--preset", "small-f16", "--device", "cpu", "--batch-size", "2",
                                            "--iters", "1", "--warmup", "0", "--json"])
    rows = {r["op"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["encode"]["gflop_per_image"] == pytest.approx(9.9, abs=0.05)  # the count in docs/performance.md
    assert rows["decode"]["gflop_per_image"] == pytest.approx(34.0, abs=0.05)
    for r in rows.values():
        check_floor_columns(r, r["images_per_s"], r["gflop_per_image"])
    load_benchmark("bench_decode").main(["--preset", "tok-test", "--n", "4", "--batch-size", "2", "--device", "cpu",
                                         "--json"])
    r = json.loads(capsys.readouterr().out)
    dec = load_benchmark("bench_tokenizer").tokenizer_gflop(tokenizer("tok-test"))[1]
    check_floor_columns(r["end_to_end"], r["end_to_end_images_per_s"], dec)
    check_floor_columns(r["model_only"], r["model_only_images_per_s"], dec)
    assert r["peak_memory_gib"] is None


def test_bench_resize_reports_images_per_s_and_the_command(capsys):
    bench = load_benchmark("bench_resize")
    bench.main(["--device", "cpu", "--batch-size", "3", "--min-side", "20", "--max-side", "40", "--size", "16",
                "--iters", "1", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["images_per_s"] > 0 and r["batch_size"] == 3 and r["sides"] == [20, 40]
    assert r["command"].startswith("python benchmarks/bench_resize.py --device cpu")


def test_bench_sample_rows_for_ar_and_diffusion(capsys):
    bench = load_benchmark("bench_sample")
    bench.main(["--ar", "ar-test", "--diffusion", "diffusion-test", "--device", "cpu", "--batch-sizes", "1", "2",
                "--steps", "2", "--codebook-size", "16", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    ar = [(r["sampler"], r["cfg"], r["batch"]) for r in rows if r["model"] == "ar-test"]
    assert ar == [("ar", 1.0, 1), ("ar", 4.0, 1), ("ar", 1.0, 2), ("ar", 4.0, 2)]
    assert {(r["sampler"], r["batch"]) for r in rows if r["model"] == "diffusion-test"} == {
        ("vq", 1), ("maskgit", 1), ("vq", 2), ("maskgit", 2)}
    assert all(r["images_per_s"] > 0 and r["floor_fraction"] > 0 and r["peak_memory_gib"] is None for r in rows)
    # counted FLOPs: guidance runs every row twice; per image they do not depend on the batch
    gflop = {(r["model"], r["sampler"], r["cfg"], r["batch"]): r["gflop_per_image"] for r in rows}
    assert gflop[("ar-test", "ar", 4.0, 1)] == pytest.approx(2 * gflop[("ar-test", "ar", 1.0, 1)], rel=1e-3)
    assert gflop[("ar-test", "ar", 1.0, 2)] == gflop[("ar-test", "ar", 1.0, 1)] > 0
    r = rows[0]
    assert r["floor_fraction"] == pytest.approx(r["gflop_per_image"] * r["images_per_s"] / 790e3, rel=0.02)


def test_bench_sample_kv_cache_int8_rows(capsys):
    """--kv-cache int8 samples with an int8 KV cache, in rows of their own name."""
    bench = load_benchmark("bench_sample")
    bench.main(["--ar", "ar-test", "--diffusion", "", "--device", "cpu", "--batch-sizes", "2", "--codebook-size",
                "16", "--kv-cache", "int8", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["sampler"], r["cfg"]) for r in rows] == [("ar-int8", 1.0), ("ar-int8", 4.0)]
    assert all(r["images_per_s"] > 0 for r in rows)


def test_bench_sample_keep_adds_a_kept_samplers_rows(capsys):
    """--keep adds, after each path's row, the third call of one kept sampler (AR and diffusion)."""
    bench = load_benchmark("bench_sample")
    bench.main(["--ar", "ar-test", "--diffusion", "diffusion-test", "--device", "cpu", "--batch-sizes", "2",
                "--steps", "2", "--codebook-size", "16", "--keep", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["sampler"], r["cfg"]) for r in rows] == [
        ("ar", 1.0), ("ar-kept", 1.0), ("ar", 4.0), ("ar-kept", 4.0),
        ("vq", 4.0), ("vq-kept", 4.0), ("maskgit", 4.0), ("maskgit-kept", 4.0)]
    assert all(r["images_per_s"] > 0 for r in rows)


def test_kv_cache_quality_scores_each_setting_against_float32(tmp_path, capsys):
    """kv_cache_quality.py: float32 weights and cache score 0 nats against themselves; an int8 cache moves the
    next-token distributions a little (more than nothing, far less than a different model)."""
    from regvq_cli.engine.checkpoint import save_model
    from tests.test_priors_ar_static import peaked

    torch.manual_seed(0)
    folder = save_model(peaked("class"), tmp_path / "prior")
    load_benchmark("kv_cache_quality").main(["--model", str(folder), "--classes", "2", "-n", "2", "--cfg", "2",
                                             "--json"])
    out = json.loads(capsys.readouterr().out)
    rows = {r["setting"]: r for r in out["rows"]}
    assert list(rows) == ["R", "R+int8", "bf16", "bf16+int8"] and out["grids"] == 4
    assert rows["R"]["kl_nats_per_token"] == 0 and rows["R"]["top1_agreement"] == 1
    assert 0 < rows["R+int8"]["kl_nats_per_token"] < 0.05 and 0.5 < rows["R+int8"]["top1_agreement"] <= 1


def test_bench_sample_counts_diffusion_flops_per_step(capsys):
    """A diffusion row's FLOPs are one counted denoiser step times the steps: what counting the whole call gives."""
    import dataclasses

    from regvq_cli.priors.presets import model_for, preset
    from regvq_cli.priors.sampling import sample_diffusion

    bench = load_benchmark("bench_sample")
    bench.main(["--ar", "", "--diffusion", "diffusion-test", "--device", "cpu", "--batch-sizes", "2",
                "--steps", "3", "--codebook-size", "16", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    model = model_for(dataclasses.replace(preset("diffusion-test"), cond="class", num_classes=10,
                                          codebook_size=16)).eval()
    cond = torch.tensor([0, 1])
    for sampler in ("vq", "maskgit"):
        whole = bench.counted_gflop(lambda: sample_diffusion(model, cond, 2, steps=3, cfg=4.0, sampler=sampler)) / 2
        r = next(r for r in rows if r["sampler"] == sampler)
        assert whole > 0 and r["gflop_per_image"] == pytest.approx(whole, rel=1e-3)


def test_bench_sample_profile_lists_the_costliest_operations(capsys):
    """--profile N: the N costliest operations of one call per batch size and per path timed (here eager and
    compiled); the compiled step runs fewer, fused operations."""
    bench = load_benchmark("bench_sample")
    bench.main(["--ar", "ar-test", "--diffusion", "diffusion-test", "--device", "cpu", "--batch-sizes", "1",
                "--steps", "2", "--codebook-size", "16", "--profile", "3", "--compile", "--json"])
    prof = json.loads(capsys.readouterr().out)["profile"]
    assert [(p["model"], p["sampler"], p["batch"]) for p in prof] == [
        ("ar-test", "ar", 1), ("ar-test", "ar-compile", 1), ("diffusion-test", "vq", 1),
        ("diffusion-test", "vq-compile", 1)]
    for p in prof:
        top = p["top"]
        assert len(top) == 3 and top[0]["ms"] >= top[1]["ms"] >= top[2]["ms"] > 0
    assert prof[0]["unit"] == "cpu operators" and prof[0]["per_token"] > 1  # several operators per token
    assert prof[2]["steps"] == 2 and prof[2]["per_step"] > 10  # a denoiser pass is many operators
    assert prof[1]["per_token"] < prof[0]["per_token"] and prof[3]["per_step"] < prof[2]["per_step"]
    assert 0 < sum(e["share"] for e in top) <= 1  # shares of the total: nothing counted twice


def test_make_jpegs_writes_the_same_files_with_any_number_of_processes(tmp_path):
    import numpy as np
    from PIL import Image

    (tmp_path / "src").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 700, 3), dtype=np.uint8)).save(tmp_path / "src" / "a.png")
    bench = load_benchmark("bench_encode")
    bench.make_jpegs(tmp_path / "src", tmp_path / "one", 5, processes=1)
    bench.make_jpegs(tmp_path / "src", tmp_path / "two", 5, processes=2)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == [f"{i:06d}.jpg" for i in range(5)]
    assert all((tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes() for n in names)
    assert all(256 <= max(Image.open(tmp_path / "one" / n).size) <= 512 for n in names)


def test_bench_attention_times_every_backend_with_and_without_the_mask_and_checks_them():
    bench = load_benchmark("bench_attention")
    results = bench.rows_for(3, 2, 8, 16, torch.device("cpu"), torch.float32, iters=1)
    assert {(r["mask"], r["backend"]) for r in results} == {(m, b) for m in ("no", "per-row", "shared", "in-key")
                                                           for b in [*bench.BACKENDS, "two matmuls"]}
    timed = [r for r in results if "ms" in r]
    assert any(r["backend"] == "math" for r in timed) and all(r["ms"] > 0 for r in timed)
    assert all(r["max_abs_diff"] < 1e-5 for r in timed)  # fp32 on the CPU: every backend that ran agrees
    # keys and values read from a longer cache (strided views) give the same answers
    strided = bench.rows_for(3, 2, 8, 16, torch.device("cpu"), torch.float32, iters=1, cache_len=13)
    assert all(r["max_abs_diff"] < 1e-5 for r in strided if "ms" in r)
    assert [r["backend"] for r in strided if "ms" in r] == [r["backend"] for r in timed]


def test_bench_train_times_steps_on_a_fixed_batch_and_counts_what_each_part_costs(capsys):
    bench = load_benchmark("bench_train")
    common = ["tokenizer", "--preset", "tok-test", "--batch-size", "2", "--steps", "1", "--warmup", "1",
              "--device", "cpu", "--set", "perceptual_weight=0", "--set", "contrastive_weight=0", "--json"]
    bench.main(common)
    plain = json.loads(capsys.readouterr().out)
    assert plain["set"] == {"perceptual_weight": 0, "contrastive_weight": 0} and plain["mfu"] is None
    assert plain["unit"] == "images" and plain["per_s"] > 0 and plain["tflop_per_item"] > 0
    bench.main([*common, "--gan"])
    gan = json.loads(capsys.readouterr().out)
    assert gan["gan"] and gan["tflop_per_item"] > plain["tflop_per_item"]  # the discriminator's passes count
    with pytest.raises(SystemExit, match="unknown field"):
        bench.main([*common, "--set", "no_such_field=1"])
    assert bench.config_overrides(["lr=1e-4", "perceptual_net=vgg16"]) == {"lr": 1e-4, "perceptual_net": "vgg16"}


def test_bench_train_prior_counts_the_matmul_and_attention_flops(capsys):
    import dataclasses

    from regvq_cli.priors.presets import model_for, preset

    bench = load_benchmark("bench_train")
    bench.main(["prior", "--preset", "ar-test", "--batch-size", "4", "--steps", "1", "--warmup", "1",
                "--device", "cpu", "--profile", "3"])
    out = capsys.readouterr().out
    assert "grids/s" in out and "profile:" in out
    bench.main(["prior", "--preset", "ar-test", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                "--device", "cpu", "--cond", "none", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["unit"] == "grids" and r["cond"] == "none" and r["per_s"] > 0
    cfg = dataclasses.replace(preset("ar-test"), codebook_size=1024, grid_size=(16, 16))  # the bench's tokens
    model = model_for(cfg)
    params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    n = 256  # the start token and the first 255 tokens predict the 256
    # forward + backward: 6 FLOPs per matmul parameter and position, and per layer of attention 4 n^2 dim forward
    # and 10 backward (torch's formulas for the flash kernels: the scores are computed again)
    matmuls, attention = 6 * params * n, 14 * cfg.n_layers * n * n * cfg.dim
    assert abs(r["tflop_per_item"] * 1e12 / (matmuls + attention) - 1) < 0.01
    bench.main(["prior", "--preset", "ar-test", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                "--device", "cpu", "--cond", "text", "--json"])
    t = json.loads(capsys.readouterr().out)
    assert t["cond"] == "text" and t["per_s"] > 0
    assert t["tflop_per_item"] > r["tflop_per_item"] * 1.1  # the caption's 32-token prefix is computed too


def test_bench_memory_spreads_its_hard_links_over_copies(tmp_path, monkeypatch):
    import os

    bench = load_benchmark("bench_memory")
    monkeypatch.setattr(bench, "LINKS_PER_FILE", 3)  # file systems cap the links to one file (ext4: 65,000)
    folder = bench.make_folder(tmp_path, 7)
    links = sorted(folder.iterdir())
    assert len(links) == 7 and len(list(tmp_path.glob("links-7-*.png"))) == 3
    # each copy: itself and 3 links (the last: itself and 1)
    assert [os.stat(p).st_nlink for p in links] == [4, 4, 4, 4, 4, 4, 2]
    assert bench.make_folder(tmp_path, 7) == folder  # an existing complete folder is reused
    bench.make_folder(tmp_path, 4)  # another size: copies of its own
    assert [os.stat(p).st_nlink for p in links] == [4, 4, 4, 4, 4, 4, 2]


def test_bench_tokenizer_profile_lists_the_costliest_operators_of_encode_and_decode(capsys):
    load_benchmark("bench_tokenizer").main(["--preset", "tok-test", "--device", "cpu", "--batch-size", "2",
                                            "--iters", "1", "--warmup", "0", "--profile", "3", "--json"])
    prof = json.loads(capsys.readouterr().out)["profile"]
    assert set(prof) == {"encode", "decode"}
    for p in prof.values():
        top = p["top"]
        assert p["unit"] == "cpu operators" and p["per_image"] > 1 and "top_kernels" not in p  # kernels: CUDA only
        assert len(top) == 3 and top[0]["ms"] >= top[1]["ms"] >= top[2]["ms"] > 0
        assert any("conv" in e["name"] for e in top)  # these are convolutional networks


def test_bench_sample_attention_config_sets_the_kernels_launch(monkeypatch, capsys):
    from regvq_cli.priors import decode_attention

    monkeypatch.setattr(decode_attention, "launch_config", decode_attention.launch_config)  # restored afterwards
    assert decode_attention.launch_config(6144) == (64, 1, 2) and decode_attention.launch_config(24) == (256, 4, 1)
    load_benchmark("bench_sample").main(["--ar", "ar-test", "--diffusion", "", "--device", "cpu", "--batch-sizes",
                                         "1", "--codebook-size", "16", "--attention-config", "32:0:3", "--json"])
    assert json.loads(capsys.readouterr().out)["rows"]
    assert decode_attention.launch_config(6144) == decode_attention.launch_config(24) == (32, None, 3)


TRITON_BENCH = """
import torch
from tests.conftest import load_benchmark

rows = load_benchmark("bench_attention").triton_rows(3, 2, 70, 16, torch.device("cpu"), torch.float32, 1,
                                                     ["64:0:0", "32:2:2"])
assert [r["backend"] for r in rows] == ["triton 64:0:0", "triton 32:2:2"], rows
assert all(r["ms"] > 0 and r["max_abs_diff"] < 1e-5 for r in rows), rows
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package (the test extra)")
def test_bench_attention_times_the_triton_kernel_per_launch_config_and_checks_it():
    """--triton: the decode kernel (Triton's interpreter on the CPU, a process of its own) per launch config,
    each checked against fp32 attention of the rotated query and keys."""
    done = run_interpreted(TRITON_BENCH, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_tokenizer_flops_count_the_first_layer_where_its_kernel_would_run(monkeypatch):
    """FlopCounterMode cannot see into the image convolution's Triton kernel, which inference takes on a GPU: the
    benchmarks count the encoder with a gradient-requiring input, so that the layer runs as the convolution it
    computes and the count is the architecture's wherever the model runs."""
    from regvq_cli.tokenizer import image_conv

    bench = load_benchmark("bench_tokenizer")
    model = tokenizer("tok-test").half()
    model.quantizer.float()  # as the inference runner keeps it
    plain = bench.tokenizer_gflop(model)
    calls = []
    monkeypatch.setattr(image_conv, "available", lambda device: True)  # as on a GPU, with a stand-in for the kernel
    # whose work, like the kernel's, FlopCounterMode does not see
    monkeypatch.setattr(image_conv, "image_conv",
                        lambda x, w, b, **kw: calls.append(1) or x.new_zeros(x.shape[0], w.shape[0], *x.shape[2:]))
    counted = bench.tokenizer_gflop(model)
    assert calls  # inference took the "kernel" (encoding the tokens to decode)
    assert counted == plain  # the counted encode did not


def test_tokenizer_flops_count_the_decoder_as_written_where_it_takes_fewer(monkeypatch):
    """Inference decodes with fewer multiply-adds than the network as written (the upsamplers as transposed
    convolutions): the benchmarks count the decoder as written wherever the model runs, so that the floor fraction
    is comparable across devices and with other implementations."""
    import regvq_cli.tokenizer.nets as nets

    bench = load_benchmark("bench_tokenizer")
    model = tokenizer("tok-test")
    monkeypatch.setattr(nets, "TRANSPOSED_UPSAMPLING_ON", set())
    plain = bench.tokenizer_gflop(model)
    monkeypatch.setattr(nets, "TRANSPOSED_UPSAMPLING_ON", {"cpu"})
    z = model.post_quant_conv(model.quantizer.decode_indices(torch.zeros(1, 8, 8, dtype=torch.long)))
    with torch.no_grad():
        fewer = bench.count_flops(model.decoder, z)
    with torch.enable_grad():
        assert bench.count_flops(model.decoder, z) > fewer  # inference does take the forms with fewer FLOPs
    assert bench.tokenizer_gflop(model) == plain  # the count does not


def test_bench_tokenizer_reads_the_gpus_clocks_from_nvidia_smi_while_it_is_busy(monkeypatch, tmp_path):
    """On a GPU each row records nvidia-smi's clock, power and temperature, read with the operation's calls still
    queued; the GPU is named by its UUID; a driver that rejects the clock-reasons field is asked for the rest; on a
    CPU, or without nvidia-smi, nothing is recorded."""
    import types

    bench = load_benchmark("bench_tokenizer")
    cuda = torch.device("cuda", 0)
    assert bench.gpu_state(torch.device("cpu")) is None
    monkeypatch.setenv("PATH", str(tmp_path))
    assert bench.gpu_state(cuda) is None  # no nvidia-smi on the PATH
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "$@" >> "${0%/*}/calls"\n'
                   'case "$*" in *reasons*) [ -e "${0%/*}/old" ] && exit 2;; esac\n'
                   'case "$*" in *reasons*) echo "1980, 1980, 612.50, 700.00, 41, 0x0000000000000004";; '
                   '*) echo "1755, 1980, 690.10, 700.00, 44";; esac\n')
    smi.chmod(0o755)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(uuid="1234-abcd"))
    state = bench.gpu_state(cuda)
    assert state == {"clocks.sm": "1980", "clocks.max.sm": "1980", "power.draw": "612.50", "power.limit": "700.00",
                     "temperature.gpu": "41", "clocks_throttle_reasons.active": "0x0000000000000004"}
    assert (tmp_path / "calls").read_text().startswith("-i GPU-1234-abcd --query-gpu=clocks.sm,")
    (tmp_path / "old").touch()
    assert bench.gpu_state(cuda) == {"clocks.sm": "1755", "clocks.max.sm": "1980", "power.draw": "690.10",
                                     "power.limit": "700.00", "temperature.gpu": "44"}

    events = []
    monkeypatch.setattr(bench, "gpu_state", lambda d: events.append("read") or {"clocks.sm": "1980"})
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: events.append("wait"))
    assert bench.busy_gpu_state(lambda x: events.append("call"), None, cuda, calls=3) == {"clocks.sm": "1980"}
    assert events == ["call", "call", "call", "read", "wait"]
    assert bench.busy_gpu_state(lambda x: events.append("call"), None, torch.device("cpu")) is None
    assert len(events) == 5


BENCH_DECODE_LINEAR = """
import json, sys
sys.argv = ["bench_decode_linear.py"]
from tests.conftest import load_benchmark
bench = load_benchmark("bench_decode_linear")
bench.main(["--preset", "ar-test", "--rows", "1", "3", "--configs", "4:32:1", "--device", "cpu",
            "--dtype", "fp32", "--iters", "1", "--json"])
"""


def test_bench_decode_linear_times_each_layer_both_ways_and_checks_them():
    """Run by Triton's interpreter on the CPU: every layer of the preset, each row count, the torch way and each
    launch config, all agreeing with float32 arithmetic."""
    pytest.importorskip("triton")
    done = run_interpreted(BENCH_DECODE_LINEAR)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)["results"]
    from regvq_cli.priors.presets import preset
    layers = load_benchmark("bench_decode_linear").layers(preset("ar-test"))
    assert {(r["layer"], r["rows"], r["impl"]) for r in results} == {
        (name, rows, impl) for name, *_ in layers for rows in (1, 3) for impl in ("torch", "triton 4:32:1")}
    assert all("error" not in r and r["us"] > 0 and r["max_abs_diff"] < 1e-4 for r in results), results

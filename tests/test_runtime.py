"""The engine's tokenizer runner gives the plain model's tokens: bitwise in fp32 on the CPU (the compiled runner
too), and with a stated agreement rate under bf16 on a GPU, compiled or not."""

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from regvq_cli.engine.runtime import prepare_tokenizer
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS
from tests.conftest import REPO


def smooth_images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1


def test_fp32_cpu_runner_matches_the_model_bitwise():
    torch.manual_seed(0)
    model = Tokenizer(PRESETS["tok-test"]).eval()
    images = smooth_images(6, 32)
    with torch.inference_mode():
        want_tokens = model.encode(images)
        want_images = model.decode(want_tokens)
    runner = prepare_tokenizer(model, "cpu", torch.float32)
    assert torch.equal(runner.encode(images), want_tokens)
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(runner.encode_uint8(pixels), runner.encode(pixels.float() / 127.5 - 1))
    assert torch.equal(runner.decode(want_tokens), want_images)
    assert runner.decode_uint8(want_tokens).shape == (6, 32, 32, 3)


@pytest.mark.gpu
def test_bf16_gpu_runner_agrees_with_fp32():
    """bf16 networks with an fp32 quantizer: at least 95% of tokens equal to the fp32 model's (paper preset)."""
    torch.manual_seed(0)
    model = Tokenizer(PRESETS["vqgan-f16"]).eval()
    images = smooth_images(16, 256)
    want = prepare_tokenizer(copy.deepcopy(model), "cuda", torch.float32).encode(images)  # the runner casts in place
    got = prepare_tokenizer(model, "cuda", torch.bfloat16).encode(images)
    agreement = (got == want).float().mean().item()
    print(f"bf16 token agreement with fp32: {agreement:.4f}")
    assert agreement >= 0.95


def plain_and_compiled_cpu_runners(n_images, seed):
    """(images, the plain fp32 runner, the compiled one) of one tiny tokenizer on the CPU."""
    torch.manual_seed(0)
    model = Tokenizer(PRESETS["tok-test"]).eval()
    plain = prepare_tokenizer(copy.deepcopy(model), "cpu", torch.float32)  # the runner casts in place
    return smooth_images(n_images, 32, seed=seed), plain, prepare_tokenizer(model, "cpu", torch.float32, compile=True)


def test_compiled_runner_gives_the_plain_runners_tokens_and_images_on_cpu():
    """compile=True (torch.compile of encode and decode) in fp32 on the CPU: the plain runner's tokens (these smooth
    images have no near-tie) and its images within float32 rounding."""
    images, plain, compiled = plain_and_compiled_cpu_runners(4, seed=1)
    tokens = plain.encode(images)
    assert torch.equal(compiled.encode(images), tokens)
    assert (compiled.decode(tokens) - plain.decode(tokens)).abs().max() < 1e-4


@pytest.mark.gpu
def test_compiled_bf16_gpu_runner_is_as_close_to_fp32_as_the_eager_one():
    """The compiled bf16 runner (on CUDA its inference forms: GroupNorm from shifted per-channel sums and the
    scale/shift kernel, the first layer's kernel, upsampling by transposed convolutions), paper preset: at least
    95% of tokens equal to the fp32 model's and to the eager bf16 runner's, and decoded images as close to fp32's
    as the eager bf16 runner's are (mean error within 2x)."""
    torch.manual_seed(0)
    model = Tokenizer(PRESETS["vqgan-f16"]).eval()
    images = smooth_images(16, 256)
    fp32 = prepare_tokenizer(copy.deepcopy(model), "cuda", torch.float32)  # the runner casts in place
    eager = prepare_tokenizer(copy.deepcopy(model), "cuda", torch.bfloat16)
    compiled = prepare_tokenizer(model, "cuda", torch.bfloat16, compile=True)
    want = fp32.encode(images)
    got = compiled.encode(images)
    with_fp32, with_eager = ((got == t).float().mean().item() for t in (want, eager.encode(images)))
    print(f"compiled bf16 token agreement: {with_fp32:.4f} with fp32, {with_eager:.4f} with eager bf16")
    assert with_fp32 >= 0.95 and with_eager >= 0.95
    exact = fp32.decode(want).float()
    err_eager, err_compiled = ((r.decode(want).float() - exact).abs().mean().item() for r in (eager, compiled))
    print(f"decode mean error against fp32: eager bf16 {err_eager:.5f}, compiled bf16 {err_compiled:.5f}")
    assert err_compiled <= 2 * err_eager + 1e-4


def test_compiled_runner_pads_a_short_batch_instead_of_compiling_again(monkeypatch):
    """A compiled runner is specialised to its batch size: a smaller batch (a run's last one) is padded to the
    largest size so far and gives the plain runner's tokens and images, with no new compile; a larger batch
    compiles once more."""
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, options=None, **kw: real_compile(fn, backend=counting, **kw))
    torch._dynamo.reset()
    images, plain, compiled = plain_and_compiled_cpu_runners(6, seed=2)
    want = plain.encode(images)
    assert torch.equal(compiled.encode(images[:4]), want[:4])
    after_first = len(graphs)
    assert torch.equal(compiled.encode(images[4:]), want[4:])  # 2 rows, padded to 4
    assert len(graphs) == after_first
    assert torch.equal(compiled.encode(images), want) and len(graphs) > after_first  # 6 rows: compiled again
    decoded = compiled.decode(want[:4])
    after_decode = len(graphs)
    assert torch.equal(compiled.decode(want[4:]), plain.decode(want[4:])) and len(graphs) == after_decode
    assert torch.equal(decoded, plain.decode(want[:4]))


def test_cuda_graphs_are_for_cuda_devices_only():
    """The default records CUDA graphs on a CUDA device unless compiled; on a CPU, asking for them changes nothing."""
    model = Tokenizer(PRESETS["tok-test"]).eval()
    assert not prepare_tokenizer(copy.deepcopy(model), "cpu", torch.float32).cuda_graphs
    runner = prepare_tokenizer(model, "cpu", torch.float32, cuda_graphs=True)
    assert not runner.cuda_graphs
    images = smooth_images(3, 32)
    assert torch.equal(runner.encode(images), model.encode(images))


@pytest.mark.gpu
def test_cuda_graph_runner_replays_the_eager_runners_kernels():
    """On CUDA the runner records its networks as CUDA graphs and replays them: tokens and images bit for bit the
    eager runner's, batch after batch of new inputs (each copied into the graph's input); a short batch is padded
    into the recorded graph (the eager runner's rows of the same padded batch), recording nothing new; a larger batch
    records again."""
    torch.manual_seed(0)
    model = Tokenizer(PRESETS["small-f16"]).eval()
    eager = prepare_tokenizer(copy.deepcopy(model), "cuda", torch.bfloat16, cuda_graphs=False)
    graphed = prepare_tokenizer(model, "cuda", torch.bfloat16)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    for graphs in (None, True):  # compiled code is never recorded
        assert not prepare_tokenizer(copy.deepcopy(model), "cuda", torch.bfloat16, compile=True,
                                     cuda_graphs=graphs).cuda_graphs
    images = smooth_images(20, 64, seed=3)
    for chunk in (images[:8], images[8:16]):
        tokens = graphed.encode(chunk)
        assert torch.equal(tokens, eager.encode(chunk))
        assert torch.equal(graphed.decode(tokens), eager.decode(tokens))
    pixels = ((images[:8] + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(graphed.encode_uint8(pixels), eager.encode_uint8(pixels))
    recorded = graphed._encode.graph
    short = images[16:19]
    padded = torch.cat([short, short.new_zeros((5, *short.shape[1:]))])
    assert torch.equal(graphed.encode(short), eager.encode(padded)[:3])
    assert graphed._encode.graph is recorded
    assert torch.equal(graphed.encode(images[:12]), eager.encode(images[:12]))
    assert graphed._encode.graph is not recorded and graphed._encode.key[0][0] == 12


@pytest.mark.gpu
def test_a_function_no_cuda_graph_can_hold_is_a_clean_error():
    """Recording fails where a function reads a value back to the host: a RegvqError that says to run with
    --no-cuda-graphs. In a process of its own: on an H200, a recording that failed in the test process left the
    next recordings there holding twice the memory (the memory test below failed after it)."""
    script = textwrap.dedent("""
        import torch
        from regvq_cli.engine.runtime import _Graphed
        from regvq_cli.errors import RegvqError
        try:
            _Graphed(lambda t: t * float(t.sum()))(torch.arange(4.0, device="cuda"))
        except RegvqError as e:
            print("error:", e)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("error: the tokenizer could not be recorded") and "--no-cuda-graphs" in r.stdout


@pytest.mark.gpu
def test_a_recorded_runner_holds_about_the_eager_runners_memory():
    """The warm-up's activations are let go before the graph records its own: the recorded runner's peak of
    reserved GPU memory stays within a quarter of the eager runner's (holding both would take about twice)."""
    torch.manual_seed(0)
    images = smooth_images(16, 256, seed=4)
    peaks = {}
    for graphs in (False, True):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        runner = prepare_tokenizer(Tokenizer(PRESETS["vqgan-f16"]).eval(), "cuda", torch.bfloat16, cuda_graphs=graphs)
        for _ in range(3):
            runner.encode(images)
        torch.cuda.synchronize()
        peaks[graphs] = torch.cuda.max_memory_reserved()
        del runner
    print(f"peak reserved: eager {peaks[False] / 2**30:.2f} GiB, recorded {peaks[True] / 2**30:.2f} GiB")
    assert peaks[True] <= 1.25 * peaks[False]

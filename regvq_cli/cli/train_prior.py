"""`regvq train-prior`: train an autoregressive or discrete-diffusion prior on a token folder.

The options mirror `regvq_cli.priors.training.TrainPriorConfig` field by field; they are declared here (not
read from the dataclass) so that `--help` and shell completion do not import torch. A test checks that every
default below equals the dataclass's; `None` means "the library decides" (for --preset: `<kind>-small`).
--offline is the exception: where models come from is no setting of the run, so it goes to the trainer, not the
config.

`--init MODEL` fine-tunes: the library takes the architecture from MODEL's config and checks its data fields
against the tokens; this command also refuses a --kind, --preset or --num-timesteps given explicitly that MODEL
does not have, before any weights are read. An explicit --preset alone implies its --kind (with --init too);
an explicit --kind it is not for is a usage error.
"""

from __future__ import annotations

import click

from regvq_cli.cli._common import (OutFolder, TRAIN_SEED, FiniteFloatRange, ModelSpec, batch_size_hint,
                                   check_run_start, compiling_note, explicit_options, json_option, offline_option,
                                   report_export, table_options, training_progress, warn)
from regvq_cli.priors.config import DEFAULT_TEXT_ENCODER

PRESET_NAMES = ["ar-test", "ar-small", "ar-m", "ar-b", "ar-l",
                "diffusion-test", "diffusion-small", "diffusion-m", "diffusion-b", "diffusion-l"]
POSITIVE = FiniteFloatRange(min=0, min_open=True)

# (option, config field, click type, default, help). `None` as default: not set (the preset's / the library's).
OPTIONS = [
    # model
    ("--kind", "kind", click.Choice(["ar", "diffusion"]), "ar", "ar: a decoder-only transformer over raster order; diffusion: VQ-Diffusion mask-and-replace. Default: the kind of --preset where one is given, else ar."),
    ("--preset", "preset", click.Choice(PRESET_NAMES), None, "Architecture preset (default: <kind>-small)."),
    ("--dropout", "dropout", FiniteFloatRange(0, 1, max_open=True), None, "Dropout (default: the preset's)."),
    ("--num-timesteps", "num_timesteps", click.IntRange(1), None, "diffusion: number of timesteps T (default: the preset's)."),
    ("--aux-weight", "aux_weight", FiniteFloatRange(0), None, "diffusion: weight of the x_0 cross-entropy (default: the preset's)."),
    ("--init", "init", ModelSpec(), None,
     "Fine-tune: start a new run from this prior's weights (a shipped name, folder, .safetensors file or Hub id). "
     "Its config fixes the architecture (a --kind, --preset or --num-timesteps it does not have is an error) and "
     "must fit TOKENS: codebook size, grid, condition, classes, segmentation labels and text encoder (--cond auto "
     "and the text options' defaults mean the model's). --dropout, --aux-weight, --cond-dropout, lr, ... follow "
     "the command line; the EMA starts from its weights. Ignored when OUT has a resume state."),
    # conditioning
    ("--cond", "cond", click.Choice(["auto", "none", "class", "text", "segmap"]), "auto",
     "Condition: auto takes what the shards carry (labels -> class, captions -> text, maps -> segmap)."),
    ("--cond-dropout", "cond_dropout", FiniteFloatRange(0, 1, max_open=True), 0.1, "Probability of training the null condition (classifier-free guidance)."),
    ("--text-encoder", "text_encoder", str, DEFAULT_TEXT_ENCODER, "text: Hugging Face encoder name or folder (frozen; not saved in the prior)."),
    ("--text-max-tokens", "text_max_tokens", click.IntRange(1), 32, "text: captions are padded / truncated to this many tokens."),
    ("--text-states", "text_states", click.Path(exists=True, dir_okay=False), None,
     "text: precomputed caption states (a text_states.safetensors from an earlier run), so the encoder is not needed."),
    ("--seg-classes", "seg_classes", click.IntRange(1), None, "segmap: number of map labels (default: the largest label in the maps + 1)."),
    # optimisation
    ("--batch-size", "batch_size", click.IntRange(1), 32, "Token grids per step per process."),
    ("--lr", "lr", POSITIVE, 3e-4, "Learning rate (AdamW)."),
    ("--betas", "betas", (FiniteFloatRange(0, 1, max_open=True),) * 2, (0.9, 0.95), "AdamW betas."),
    ("--weight-decay", "weight_decay", FiniteFloatRange(0), 0.05, "Weight decay (matrices and embeddings only)."),
    ("--warmup-steps", "warmup_steps", click.IntRange(0), 0, "Linear learning-rate warm-up steps."),
    ("--lr-schedule", "lr_schedule", click.Choice(["constant", "cosine"]), "constant", "Learning-rate schedule after warm-up."),
    ("--grad-clip", "grad_clip", FiniteFloatRange(0), 1.0, "Clip the gradient norm (0 turns it off)."),
    ("--max-steps", "max_steps", click.IntRange(0), 10_000, "Stop after this many steps (a rerun with more continues)."),
    ("--time-limit", "time_limit", POSITIVE, None, "Seconds of training (summed over resumes): the run stops at the end of the step that passes them, checkpoints and exports."),
    ("--grad-accum", "grad_accum", click.IntRange(1), 1, "Gradient accumulation steps."),
    ("--ema-decay", "ema_decay", FiniteFloatRange(0, 1), 0.999, "EMA decay of the exported weights."),
    ("--compile/--no-compile", "compile", bool, False, "torch.compile the model: a minute or so of compilation first, then on an H200 1.7x the grids/s of an ar-b step (docs/performance.md)."),
    ("--bf16/--no-bf16", "bf16", bool, True, "bf16 autocast on CUDA (CPU training stays fp32)."),
    ("--device", "device", str, None, "cpu, cuda, cuda:N (default: cuda:LOCAL_RANK if available, else cpu)."),
    # bookkeeping
    ("--log-every", "log_every", click.IntRange(1), 50, "Write metrics.jsonl every N steps."),
    ("--sample-every", "sample_every", click.IntRange(0), 1000, "Write sample grids to OUT/samples every N steps (0: never)."),
    ("--checkpoint-every", "checkpoint_every", click.IntRange(1), 1000, "Save the resume state every N steps."),
    ("--val-size", "val_size", click.IntRange(0), None, "Token grids held out of training (a fixed draw) and scored by the EMA weights at every checkpoint and at the end: val_loss in metrics.jsonl, beside the training loss, shows memorising. Default: 1% of the grids, at most 1,000; 0: none."),
    ("--num-samples", "num_samples", click.IntRange(0), 8, "Grids in each sample write."),
    ("--sample-cfg", "sample_cfg", FiniteFloatRange(0), 1.5, "Guidance scale of the sample grids."),
    ("--sample-steps", "sample_steps", click.IntRange(1), None, "diffusion: steps of the sample grids (default: all timesteps)."),
    ("--decode-samples/--no-decode-samples", "decode_samples", bool, True, "Decode sample grids to PNG with the shards' tokenizer when it loads."),
    ("--seed", "seed", TRAIN_SEED, 0, "Random seed."),
]
FLAGS = {name: flag for flag, name, *_ in OPTIONS}
# options that only act under one condition: (fields, that condition)
COND_ONLY = [(("text_encoder", "text_max_tokens", "text_states"), "text"), (("seg_classes",), "segmap")]
DIFFUSION_ONLY = ("num_timesteps", "aux_weight", "sample_steps")


def check_preset_kind(explicit: dict, given: dict) -> None:
    """Take --kind from an explicit --preset that comes without one (the default kind must not refuse the preset);
    a usage error where both are given and disagree."""
    if "preset" not in explicit:
        return
    preset, implied = explicit["preset"], explicit["preset"].split("-")[0]
    if "kind" not in explicit:
        given["kind"] = implied
    elif explicit["kind"] != implied:
        kind = explicit["kind"]
        presets = ", ".join(p for p in PRESET_NAMES if p.startswith(kind + "-"))
        raise click.UsageError(f"--preset {preset} is for --kind {implied}, not {kind}: drop --kind, or choose one of "
                               f"{presets}")


def check_kind_options(fields: dict, cfg) -> None:
    """A usage error for a diffusion option given to an AR prior, which would ignore it or fail at its first use.
    With --init the model's kind decides, which the trainer checks."""
    given = explicit_options(DIFFUSION_ONLY, fields)
    if given and cfg.kind == "ar" and not cfg.init:
        flags = ", ".join(FLAGS[name] for name in given)
        raise click.UsageError(f"{flags} only act{'s' if len(given) == 1 else ''} with --kind diffusion: drop "
                               f"{'it' if len(given) == 1 else 'them'}, or pass --kind diffusion")


def check_cond_options(fields: dict, tokens, cfg) -> None:
    """A usage error for a condition's option given on the command line (--seg-classes, --text-states, ...) where
    another condition is trained, which would ignore it. With --init and --cond auto the model's condition decides,
    which the command line cannot tell: not checked."""
    from regvq_cli.data.shards import ShardReader
    from regvq_cli.priors.training import resolve_cond

    given = explicit_options([name for names, _ in COND_ONLY for name in names], fields)
    if not given or (cfg.init and cfg.cond == "auto"):
        return
    cond = resolve_cond(cfg, set(ShardReader(tokens).fields), tokens)  # auto: what the shards carry
    for names, need in COND_ONLY:
        for name in names:
            if name in given and cond != need:
                why = "" if cfg.cond != "auto" else f" (--cond auto is {cond} for {tokens})"
                raise click.UsageError(f"{FLAGS[name]} only acts with --cond {need}{why}: drop it, or set --cond {need}")


@click.command("train-prior")
@click.argument("tokens", type=click.Path(exists=True))
@click.option("-o", "--out", "run_dir", required=True, type=OutFolder(), help="Run folder (rerun to resume).")
@table_options(OPTIONS)
@offline_option
@json_option
@batch_size_hint
def train_prior(tokens, run_dir, offline, as_json, **fields):
    """Train a prior over the token grids in TOKENS (a folder from `regvq encode`); export it to OUT/model.

    \b
    regvq train-prior tokens/ -o runs/ar --kind ar --preset ar-b --max-steps 100000
    regvq train-prior tokens/ -o runs/t2i --kind diffusion --cond text        # captions from metadata.jsonl
    regvq train-prior tokens/ -o runs/t2i --cond text --text-states runs/old/text_states.safetensors
    regvq train-prior my-tokens/ -o runs/ft --init regvq-text2img --lr 5e-5     # fine-tune a prior
    torchrun --nproc-per-node 8 -m regvq_cli train-prior tokens/ -o runs/big --preset ar-l
    regvq sample -m runs/ar/model --class 3 -n 16 --grid -o sheet.png

    Rerunning on the same OUT resumes from its last checkpoint (raise --max-steps to train longer); SIGTERM or
    Ctrl-C stops after the current step and checkpoints first (exit 128 + the signal). OUT holds
    metrics.jsonl, samples/, state.pt and model/. --init starts a new run (step 0) from a prior's weights; its
    model card records the model. metrics.jsonl logs the model's TFLOP/s per GPU (one step's FLOPs, counted) and
    MFU against the GPU's bf16 peak where it is known (H200) or set in REGVQ_PEAK_TFLOPS.
    """
    import shlex
    import sys

    from regvq_cli.errors import RegvqError
    from regvq_cli.priors.training import TrainPriorConfig, check_init_options, recorded_setting
    from regvq_cli.train.common import pick_training_device
    from regvq_cli.priors.training import train_prior as train

    try:  # a usage error before any data, model or run folder (torch would fail only at the first tensor moved)
        pick_training_device(fields["device"])
    except RegvqError as e:
        raise click.UsageError(str(e)) from None
    given = {k: v for k, v in fields.items() if v is not None}
    explicit = explicit_options(("kind", "preset", "num_timesteps"), given)
    check_preset_kind(explicit, given)
    cfg = TrainPriorConfig(**given, command=shlex.join(["regvq"] + sys.argv[1:]))
    check_kind_options(fields, cfg)
    check_cond_options(fields, tokens, cfg)
    check_run_start(run_dir, cfg.init, explicit, offline, recorded_setting, check_init_options)
    if cfg.compile:
        compiling_note("the prior")
    with training_progress(cfg.max_steps, ("loss", "samples_per_s", "mfu")) as callback:
        folder = train(tokens, run_dir, cfg, callback=callback, on_note=warn, offline=offline)
    report_export(folder, run_dir, callback.steps, cfg.max_steps, as_json)

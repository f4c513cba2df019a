"""`regvq train-tokenizer`: train RegVQ (or the VQ / Gumbel-VQ baselines) on image folders.

The options mirror `regvq_cli.train.tokenizer.TrainTokenizerConfig` field by field; they are declared here
(not read from the dataclass) so that `--help` and shell completion do not import torch. A test checks that
every default below equals the dataclass's, except --preset, whose command-line default is a real model
(the library's is the tiny test preset).

`--init MODEL` fine-tunes: the library takes the architecture from MODEL's config; this command also refuses an
architecture option given explicitly (`--preset` included, whose default it cannot tell from the library's) that
MODEL does not have, before any weights are read.
"""

from __future__ import annotations

import click

from regvq_cli.cli._common import (OutFolder, TRAIN_SEED, FiniteFloatRange, ModelSpec, batch_size_hint,
                                   check_run_start, compiling_note, explicit_options, json_option, offline_option,
                                   report_export, shown, table_options, training_progress, warn)

PRESET_NAMES = ["vqgan-f16", "vqgan-f8", "small-f16", "small-f8", "tok-test", "tok-test-f8"]
# the architecture options that --init decides (TrainTokenizerConfig.ARCH_FIELDS, and the preset)
INIT_ARCH = ("preset", "quantizer", "image_size", "codebook_size", "embed_dim", "logits", "vq_ema", "vq_l2_norm")


# (option, config field, click type, default, help). `None` as default: the preset's value / not set.
OPTIONS = [
    ("--preset", "preset", click.Choice(PRESET_NAMES), "small-f16", "Architecture preset (vqgan-f16 is the paper's; small-f16 runs on a CPU)."),
    ("--quantizer", "quantizer", click.Choice(["regvq", "vq", "gumbel"]), "regvq", "regvq (the paper), or the vq / gumbel baselines."),
    ("--image-size", "image_size", click.IntRange(8), None, "Training resolution (default: the preset's)."),
    ("--codebook-size", "codebook_size", click.IntRange(2), None, "Number of codes N (default: the preset's)."),
    ("--embed-dim", "embed_dim", click.IntRange(1), None, "Code embedding dimension (default: the preset's)."),
    ("--init", "init", ModelSpec(), None,
     "Fine-tune: start a new run from this tokenizer's weights (a shipped name, folder, .safetensors file or Hub id). "
     "Its config fixes the architecture: a --preset, --quantizer, --image-size, --codebook-size, --embed-dim, "
     "--logits, --vq-ema or --vq-l2-norm it does not have is an error. The rest (--prior/--mask/--mask-ratio, "
     "temperatures, losses, lr, ...) follows the command line; the EMA starts from its weights, the discriminator "
     "from scratch. Ignored when OUT has a resume state."),
    # RegVQ components
    ("--prior/--no-prior", "use_prior", bool, True, "Prior distribution regularization: KL of the batch code histogram to uniform."),
    ("--prior-weight", "prior_weight", FiniteFloatRange(0), 0.1, "Weight of the prior KL."),
    ("--prior-start", "prior_start", click.IntRange(0), 0, "Step before which the prior KL is off."),
    ("--prior-ramp", "prior_ramp", click.IntRange(0), 0, "Steps over which the prior weight then ramps up linearly."),
    ("--mask/--no-mask", "use_mask", bool, True, "Stochastic mask regularization (Gumbel-sampled codes at masked positions)."),
    ("--mask-ratio", "mask_ratio", FiniteFloatRange(0, 1), 0.4, "Fraction of positions masked each step."),
    ("--mask-warmup", "mask_warmup", click.IntRange(0), 0, "Steps over which the mask ratio ramps linearly up from 0 (0: from the start)."),
    ("--logits", "logits", click.Choice(["linear", "distance"]), "linear", "Code logits: a 1x1 projection, or -||z - e||^2 / t."),
    ("--logit-init", "logit_init", FiniteFloatRange(min=0, min_open=True), 1.0, "linear logits: scale of the projection's initial weights (>1: sharper code distributions from the start)."),
    ("--temperature", "temperature", FiniteFloatRange(min=0, min_open=True), 1.0, "Gumbel-softmax temperature (initial value when annealed)."),
    ("--temperature-min", "temperature_min", FiniteFloatRange(min=0, min_open=True), 1.0 / 16, "Lowest annealed temperature."),
    ("--temperature-anneal", "temperature_anneal", FiniteFloatRange(0), 0.0, "Anneal rate: t = max(min, t0 * exp(-rate * step))."),
    # baselines
    ("--vq-ema/--no-vq-ema", "vq_ema", bool, False, "vq: EMA codebook updates instead of the codebook loss."),
    ("--vq-l2-norm/--no-vq-l2-norm", "vq_l2_norm", bool, False, "vq: l2-normalised codes (cosine lookup)."),
    ("--commitment-weight", "commitment_weight", FiniteFloatRange(0), 0.25, "vq: commitment loss weight (beta)."),
    ("--codebook-weight", "codebook_weight", FiniteFloatRange(0), 1.0, "vq: codebook loss weight."),
    ("--gumbel-kl-weight", "gumbel_kl_weight", FiniteFloatRange(0), 5e-4, "gumbel: per-position KL weight."),
    # reconstruction and contrastive losses
    ("--l1-weight", "l1_weight", FiniteFloatRange(0), 1.0, "L1 reconstruction weight."),
    ("--perceptual-weight", "perceptual_weight", FiniteFloatRange(0), 1.0, "Perceptual loss weight (0 turns it off)."),
    ("--perceptual-net", "perceptual_net", click.Choice(["inception", "vgg16", "vgg19", "lpips"]), "inception",
     "Frozen feature network for the perceptual and contrastive losses (inception works offline)."),
    ("--perceptual-weights", "perceptual_weights", click.Path(exists=True, dir_okay=False), None,
     "Weights file for vgg16/vgg19/lpips (safetensors, or a torchvision state dict)."),
    ("--contrastive-weight", "contrastive_weight", FiniteFloatRange(0), 0.1, "Contrastive loss weight (0 turns CL/PCL off)."),
    ("--pcl/--no-pcl", "pcl", bool, True, "Probabilistic contrastive loss (off: vanilla PatchNCE)."),
    ("--pcl-floor", "pcl_floor", FiniteFloatRange(0, 1), 0.1, "PCL weight of positions whose code was not perturbed."),
    ("--tau", "tau", FiniteFloatRange(min=0, min_open=True), 0.07, "Contrastive temperature."),
    ("--num-patches", "num_patches", click.IntRange(1), 256, "Locations sampled per feature map for the contrastive loss."),
    # adversarial
    ("--gan-weight", "gan_weight", FiniteFloatRange(0), 0.8, "Adversarial weight (times the adaptive weight; 0 turns it off)."),
    ("--gan-start", "gan_start", click.IntRange(0), 5000, "Step at which the discriminator starts."),
    ("--disc-lr", "disc_lr", FiniteFloatRange(0), None, "Discriminator learning rate (default: --lr)."),
    # optimisation
    ("--batch-size", "batch_size", click.IntRange(1), 8, "Images per step per process."),
    ("--lr", "lr", FiniteFloatRange(0), 1e-4, "Learning rate (Adam)."),
    ("--weight-decay", "weight_decay", FiniteFloatRange(0), 0.0, "Weight decay."),
    ("--warmup-steps", "warmup_steps", click.IntRange(0), 0, "Linear learning-rate warm-up steps."),
    ("--lr-schedule", "lr_schedule", click.Choice(["constant", "cosine"]), "constant", "Learning-rate schedule after warm-up."),
    ("--grad-clip", "grad_clip", FiniteFloatRange(min=0, min_open=True), None, "Clip gradient norm (default: off)."),
    ("--max-steps", "max_steps", click.IntRange(0), 10_000, "Stop after this many steps (a rerun with more continues)."),
    ("--time-limit", "time_limit", FiniteFloatRange(min=0, min_open=True), None, "Seconds of training (summed over resumes): the run stops at the end of the step that passes them, checkpoints and exports."),
    ("--grad-accum", "grad_accum", click.IntRange(1), 1, "Gradient accumulation steps."),
    ("--ema-decay", "ema_decay", FiniteFloatRange(0, 1), 0.999, "EMA decay of the exported weights."),
    ("--compile/--no-compile", "compile", bool, False, "torch.compile the encoder and decoder (all but the last convolution), channels-last on CUDA: a minute or so of compilation first, then on an H200 1.75x the images/s of a vqgan-f16 step with the discriminator (docs/performance.md)."),
    ("--bf16/--no-bf16", "bf16", bool, True, "bf16 autocast on CUDA."),
    ("--feature-dtype", "feature_dtype", click.Choice(["auto", "fp32"]), "auto",
     "Precision of the perceptual/contrastive feature network: auto = bf16 on CUDA with --bf16 (faster), fp32 "
     "elsewhere; fp32 = always fp32. FID evaluation always computes in fp32."),
    ("--device", "device", str, None, "cpu, cuda, cuda:N (default: cuda:LOCAL_RANK if available, else cpu)."),
    ("--workers", "num_workers", click.IntRange(0), None, "Image-decoding processes (default: 2; for a GPU, every core but one, up to 32: two can hold a GPU back)."),
    # bookkeeping
    ("--log-every", "log_every", click.IntRange(1), 50, "Write metrics.jsonl every N steps."),
    ("--sample-every", "sample_every", click.IntRange(0), 500, "Write a reconstruction grid to OUT/samples every N steps (0: never)."),
    ("--checkpoint-every", "checkpoint_every", click.IntRange(1), 500, "Save the resume state every N steps."),
    ("--seed", "seed", TRAIN_SEED, 0, "Random seed."),
]


# options that only act under a setting: (fields, the setting as a test of the options' values, what it is called)
QUANTIZER_ONLY = {
    "regvq": ("use_prior", "prior_weight", "prior_start", "prior_ramp", "use_mask", "mask_ratio", "mask_warmup",
              "logits", "logit_init"),
    "vq": ("vq_ema", "vq_l2_norm", "commitment_weight", "codebook_weight"),
    "gumbel": ("gumbel_kl_weight",),
}
NEEDS = [
    (("prior_weight", "prior_start", "prior_ramp"), lambda f: f["use_prior"], "--prior"),
    (("mask_ratio", "mask_warmup"), lambda f: f["use_mask"], "--mask"),
    (("logit_init",), lambda f: f["logits"] == "linear", "--logits linear"),
    (("temperature", "temperature_min", "temperature_anneal"), lambda f: f["quantizer"] != "vq",
     "--quantizer regvq or gumbel"),
    (("pcl", "pcl_floor", "tau", "num_patches"), lambda f: f["contrastive_weight"] > 0, "--contrastive-weight > 0"),
    (("gan_start", "disc_lr"), lambda f: f["gan_weight"] > 0, "--gan-weight > 0"),
    (("perceptual_weights",), lambda f: f["perceptual_net"] != "inception", "--perceptual-net vgg16, vgg19 or lpips"),
]
FLAGS = {name: flag for flag, name, *_ in OPTIONS}


def check_option_conflicts(fields: dict, quantizer_known: bool) -> None:
    """A usage error for an option given on the command line that its other options make do nothing (--no-prior
    with --prior-weight, --quantizer vq with --mask-ratio, ...). ``quantizer_known``: False with --init and no
    --quantizer, where the model's quantizer decides."""
    given = explicit_options(list(fields), fields)

    def flag(name):
        if isinstance(fields[name], bool):  # the on or the off form of a switch, as it was given
            on, _, off = FLAGS[name].partition("/")
            return on if fields[name] else off
        return FLAGS[name].split("/")[0]

    rules = list(NEEDS)
    if quantizer_known:
        rules += [(names, lambda f, q=q: f["quantizer"] == q, f"--quantizer {q}")
                  for q, names in QUANTIZER_ONLY.items()]
    for names, test, what in rules:
        for name in names:
            if name in given and not test(fields):
                raise click.UsageError(f"{flag(name)} only acts with {what}: drop it, or set {what}")


@click.command("train-tokenizer")
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", "run_dir", required=True, type=OutFolder(), help="Run folder (rerun to resume).")
@table_options(OPTIONS)
@offline_option
@json_option
@batch_size_hint
def train_tokenizer(data, run_dir, offline, as_json, **fields):
    """Train an image tokenizer on image folders DATA; export the EMA weights to OUT/model.

    \b
    regvq train-tokenizer ./photos -o runs/regvq --preset small-f16 --max-steps 20000
    regvq train-tokenizer ./photos -o runs/vq --quantizer vq            # a baseline, same loop
    regvq train-tokenizer ./photos -o runs/abl --no-mask --no-pcl       # one row of the ablation
    regvq train-tokenizer ./faces -o runs/ft --init regvq-tokenizer --lr 2e-5   # fine-tune a model
    torchrun --nproc-per-node 8 -m regvq_cli train-tokenizer ./photos -o runs/big --preset vqgan-f16

    Rerunning on the same OUT resumes from its last checkpoint; SIGTERM or Ctrl-C stops after the current step
    and checkpoints first (exit 128 + the signal). OUT holds metrics.jsonl, samples/, state.pt (the resume state) and model/.
    --init starts a new run (step 0) from a model's weights; its model card records the model. metrics.jsonl
    logs the TFLOP/s per GPU of the whole step (autoencoder, feature network, discriminator; one step's FLOPs,
    counted) and MFU against the GPU's bf16 peak where it is known (H200) or set in REGVQ_PEAK_TFLOPS.
    """
    import shlex
    import sys

    from regvq_cli.errors import RegvqError
    from regvq_cli.train.common import pick_training_device
    from regvq_cli.train.tokenizer import TrainTokenizerConfig, check_init_options, recorded_setting
    from regvq_cli.train.tokenizer import train_tokenizer as train

    check_option_conflicts(fields, quantizer_known=fields["init"] is None or
                           bool(explicit_options(["quantizer"], fields)))
    try:  # a usage error before any data, model or run folder (torch would fail only at the first tensor moved)
        pick_training_device(fields["device"])
    except RegvqError as e:
        raise click.UsageError(str(e)) from None
    given = {k: v for k, v in fields.items() if v is not None}
    if "perceptual_weights" in given:
        given["perceptual_weights"] = [given["perceptual_weights"]]
    cfg = TrainTokenizerConfig(**given, command=shlex.join(["regvq"] + sys.argv[1:]))
    explicit = explicit_options(INIT_ARCH, given)
    check_run_start(run_dir, cfg.init, explicit, offline, recorded_setting, check_init_options)
    if cfg.compile:
        compiling_note("the tokenizer's encoder and decoder")
    with training_progress(cfg.max_steps, ("loss", "usage_pct", "perplexity", "images_per_s", "mfu")) as callback:
        folder = train(list(data), run_dir, cfg, callback=callback,
                       on_skip=lambda path, reason: warn(f"skipped {shown(path)}: {reason}"), on_note=warn,
                       offline=offline)
    report_export(folder, run_dir, callback.steps, cfg.max_steps, as_json)

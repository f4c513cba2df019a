"""End-to-end check that class conditioning survives the whole regvq loop, on Fashion-MNIST, on a CPU.

    python benchmarks/fashion_mnist_check.py --work /tmp/fmnist-check

Every stage runs the real command-line tool (`python -m regvq_cli ...`), as a user would:

  1. data       recipes/fashion_mnist.py: a seeded subset of N train and N test images, upscaled to 32 px,
                in class folders (0_tshirt_top ... 9_ankle_boot).
  2. tokenizer  regvq train-tokenizer (preset tok-test: f4, 8x8 tokens, 64 codes; no perceptual or
                contrastive loss), then regvq eval recon --no-fid on the test split (PSNR) and a
                reconstruction sheet from regvq decode --grid.
  3. encode     regvq encode of the train folder: the class sub-folders become labels.
  4. priors     regvq train-prior --cond class, once --kind ar (ar-test) and once --kind diffusion
                (diffusion-test).
  5. sample     regvq sample --class NAME -n K --seed S for every class, with both priors.
  6. classifier a few conv layers trained here on the real 32 px train images (held-out accuracy on the
                test split); the agreement rate is the fraction of samples it puts in the requested class
                (chance: 10%). The classifier is a yardstick for this check only, not a metric of record.
  7. --fid      regvq eval gen of each prior's samples against the test split (FID, KID, precision/recall).

It prints a small table (tokenizer PSNR, classifier accuracy, agreement per prior, time of each stage) and
writes it to WORK/results.json. Contact sheets (one row per class) go to WORK/sheet_<prior>.png.
Stages whose outputs already exist in WORK are reused (their time is reported as 0); delete WORK to redo.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PRIORS = {"ar": "ar-test", "diffusion": "diffusion-test"}


def regvq(*args: str) -> dict | None:
    """Run `python -m regvq_cli ARGS` (progress on our stderr); the parsed JSON of stdout when --json is given."""
    cmd = [sys.executable, "-m", "regvq_cli", "-q", *map(str, args)]
    print("$ regvq " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"command failed with exit code {res.returncode}: {' '.join(cmd)}")
    return json.loads(res.stdout) if "--json" in args else None


def regvq_all(commands: list[tuple]) -> None:
    """Run several `python -m regvq_cli ARGS` at once and wait for all of them."""
    procs = []
    for args in commands:
        print("$ regvq " + " ".join(map(str, args)) + " &", file=sys.stderr, flush=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "regvq_cli", "-q", *map(str, args)], cwd=ROOT,
                                      stdout=subprocess.DEVNULL))
    failed = [p.args for p in procs if p.wait() != 0]
    if failed:
        raise SystemExit(f"command failed: {' '.join(map(str, failed[0]))}")


def load_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Grayscale images float32 [N, 1, 32, 32] in [0, 1], labels int64 [N], class names (sorted sub-folders)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((folder / name).glob("*.png")):
            xs.append(load_image(f))
            ys.append(label)
    return np.stack(xs), np.array(ys, dtype=np.int64), classes


def load_image(path: Path) -> np.ndarray:
    """[1, 32, 32] float32 in [0, 1]; the decoder writes RGB, the dataset grayscale: both go to L."""
    im = Image.open(path).convert("L")
    if im.size != (32, 32):
        im = im.resize((32, 32), Image.Resampling.BICUBIC)
    return (np.asarray(im, dtype=np.float32) / 255.0)[None]


def make_classifier(num_classes: int):
    import torch.nn as nn

    def block(cin, cout):  # conv-BN-ReLU twice, then halve the resolution
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))

    # [B, 1, 32, 32] -> [B, 32, 16, 16] -> [B, 64, 8, 8] -> [B, 128, 4, 4] -> [B, 128] -> logits
    return nn.Sequential(block(1, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.3), nn.Linear(128, num_classes))


def train_classifier(x: np.ndarray, y: np.ndarray, epochs: int, seed: int):
    """Adam with a cosine schedule; light augmentation (horizontal flips, 2 px shifts) for robustness to
    the small differences between real images and decoded samples."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = make_classifier(int(y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    batch = 128
    total = epochs * ((len(xt) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=total)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            xb, yb = xt[idx], yt[idx]
            flip = torch.rand(len(xb)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(-2, -1))
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def predict(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(x[i:i + 512])).argmax(1) for i in range(0, len(x), 512)]).numpy()


def contact_sheet(rows: list[list[Path]], path: Path, scale: int = 2) -> None:
    """One row per class, one column per sample, each image upscaled `scale` times (nearest)."""
    side = 32 * scale
    sheet = Image.new("RGB", (side * max(len(r) for r in rows), side * len(rows)), "black")
    for r, files in enumerate(rows):
        for c, f in enumerate(files):
            im = Image.open(f).convert("RGB").resize((side, side), Image.Resampling.NEAREST)
            sheet.paste(im, (c * side, r * side))
    sheet.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="working folder (data, runs, samples, results.json)")
    ap.add_argument("--n", type=int, default=5000, help="images per split drawn from Fashion-MNIST")
    ap.add_argument("--tok-steps", type=int, default=1000)
    ap.add_argument("--tok-batch", type=int, default=32)
    ap.add_argument("--tok-lr", type=float, default=1e-3)
    ap.add_argument("--prior-steps", type=int, default=3000)
    ap.add_argument("--prior-batch", type=int, default=64)
    ap.add_argument("--prior-lr", type=float, default=2e-3)
    ap.add_argument("--samples", type=int, default=16, help="samples per class and prior")
    ap.add_argument("--cfg", type=float, default=2.5, help="classifier-free guidance scale of the samples")
    ap.add_argument("--clf-epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ar-preset", default=PRIORS["ar"], help=f"AR prior preset (default {PRIORS['ar']}; ar-b on a GPU)")
    ap.add_argument("--diffusion-preset", default=PRIORS["diffusion"],
                    help=f"diffusion prior preset (default {PRIORS['diffusion']}; diffusion-b on a GPU)")
    ap.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                    help="folder of the Fashion-MNIST IDX .gz files (default: where the Debian package puts them)")
    ap.add_argument("--workers", type=int, default=1, help="image-decoding processes of train-tokenizer and encode")
    ap.add_argument("--quantizer", choices=["regvq", "vq", "gumbel"], default="regvq",
                    help="the tokenizer's quantizer: compare the priors' agreement over each one's tokens")
    ap.add_argument("--codebook-size", type=int, default=0, help="codes of the tokenizer (default: the preset's, 64)")
    ap.add_argument("--tok-extra", default="", help="more train-tokenizer options, e.g. '--prior-weight 0.01'")
    ap.add_argument("--fid", action="store_true",
                    help="also `regvq eval gen` each prior's samples against the test split: FID, KID, precision/recall "
                         "and Inception 5-NN class agreement (a few minutes on a CPU)")
    ap.add_argument("--fid-ref-stats", type=Path, default=None,
                    help="with --fid: the test split's statistics file, written on first use and read after (the "
                         "split depends only on --n and --seed, so runs of a sweep can share it); no class agreement")
    ap.add_argument("--parallel-priors", action="store_true",
                    help="train (and sample) the AR and the diffusion prior at the same time (one GPU holds both)")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data, tok_run, tokens = work / "data", work / "tokenizer", work / "tokens"
    times: dict[str, float] = {}
    results: dict = {"settings": vars(a) | {"work": str(work), "source": str(a.source),
                                             "fid_ref_stats": a.fid_ref_stats and str(a.fid_ref_stats)}}

    def stage(name: str, done: bool, fn) -> None:
        t = time.perf_counter()
        if not done:
            fn()
        times[name] = round(time.perf_counter() - t, 1) if not done else 0.0

    # 1. data
    stage("data", (data / "classes.json").is_file(), lambda: subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "fashion_mnist.py"), "--out", str(data), "--size", "32",
         "--n", str(a.n), "--seed", str(a.seed), "--source", str(a.source)], check=True))

    # 2. tokenizer
    stage("tokenizer", (tok_run / "model" / "config.json").is_file(), lambda: regvq(
        "train-tokenizer", data / "train", "-o", tok_run, "--preset", "tok-test", "--perceptual-weight", "0",
        "--contrastive-weight", "0", "--workers", a.workers, "--max-steps", a.tok_steps, "--batch-size", a.tok_batch,
        "--lr", a.tok_lr, "--sample-every", max(1, a.tok_steps // 4), "--checkpoint-every", a.tok_steps,
        "--seed", a.seed, "--quantizer", a.quantizer, *(["--codebook-size", a.codebook_size] if a.codebook_size else []),
        *a.tok_extra.split()))
    t = time.perf_counter()
    recon = regvq("eval", "recon", data / "test", "-m", tok_run / "model", "--no-fid", "--json")["metrics"]
    times["tokenizer_eval"] = round(time.perf_counter() - t, 1)

    # 3. encode (class sub-folders -> labels)
    stage("encode", (tokens / "manifest.json").is_file(), lambda: regvq(
        "encode", data / "train", "-o", tokens, "-m", tok_run / "model", "--workers", a.workers))
    regvq("decode", tokens, "--limit", 64, "--grid", "-o", work / "recon_sheet.png")

    # 4. priors (side by side with --parallel-priors: on a large GPU neither fills it)
    def train_prior_cmd(kind, preset):
        return ("train-prior", tokens, "-o", work / f"prior_{kind}", "--kind", kind, "--cond", "class", "--preset",
                preset, "--max-steps", a.prior_steps, "--batch-size", a.prior_batch, "--lr", a.prior_lr,
                "--sample-every", 0, "--checkpoint-every", a.prior_steps, "--seed", a.seed)

    todo = [(kind, preset) for kind, preset in (("ar", a.ar_preset), ("diffusion", a.diffusion_preset))
            if not (work / f"prior_{kind}" / "model" / "config.json").is_file()]
    if a.parallel_priors and len(todo) == 2:
        stage("priors_side_by_side", False, lambda: regvq_all([train_prior_cmd(*t) for t in todo]))
    else:
        for kind, preset in (("ar", a.ar_preset), ("diffusion", a.diffusion_preset)):
            stage(f"prior_{kind}", (kind, preset) not in todo, lambda kind=kind, preset=preset:
                  regvq(*train_prior_cmd(kind, preset)))

    # 5. samples: one `regvq sample --class NAME` per class and prior
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())

    def sample_all(kind):
        for name in classes:
            regvq("sample", "-m", work / f"prior_{kind}" / "model", "--class", name, "-n", a.samples,
                  "--seed", a.seed, "--cfg", a.cfg, "-o", work / "samples" / kind / name)

    todo = [kind for kind in PRIORS if not all(len(list((work / "samples" / kind / c).glob("*.png"))) >= a.samples
                                                for c in classes)]
    if a.parallel_priors and len(todo) == 2:
        with ThreadPoolExecutor(2) as pool:  # the two priors' sampling commands side by side
            stage("samples_side_by_side", False, lambda: list(pool.map(sample_all, todo)))
    else:
        for kind in PRIORS:
            stage(f"sample_{kind}", kind not in todo, lambda kind=kind: sample_all(kind))
    for kind in PRIORS:
        contact_sheet([sorted((work / "samples" / kind / c).glob("*.png"))[:a.samples] for c in classes],
                      work / f"sheet_{kind}.png")

    # 6. classifier and agreement
    t = time.perf_counter()
    x_train, y_train, train_classes = load_folder(data / "train")
    x_test, y_test, _ = load_folder(data / "test")
    assert train_classes == classes
    clf = train_classifier(x_train, y_train, a.clf_epochs, a.seed)
    test_acc = float((predict(clf, x_test) == y_test).mean())
    times["classifier"] = round(time.perf_counter() - t, 1)

    agreement, per_class = {}, {}
    hits_all = n_all = 0
    for kind in PRIORS:
        files = [(label, f) for label, c in enumerate(classes)
                 for f in sorted((work / "samples" / kind / c).glob("*.png"))[:a.samples]]
        labels = np.array([label for label, _ in files])
        pred = predict(clf, np.stack([load_image(f) for _, f in files]))
        agreement[kind] = float((pred == labels).mean())
        per_class[kind] = {c: float((pred[labels == i] == i).mean()) for i, c in enumerate(classes)}
        hits_all += int((pred == labels).sum())
        n_all += len(labels)
    agreement["overall"] = hits_all / n_all

    # 7. generation metrics against the test split (class sub-folders on both sides: class agreement too)
    gen_metrics = {}
    if a.fid:
        t = time.perf_counter()
        ref = data / "test"
        if a.fid_ref_stats is not None:
            if not a.fid_ref_stats.is_file():
                regvq("eval", "gen", "--ref", ref, "--save-ref-stats", a.fid_ref_stats, "--size", 32,
                      "--workers", a.workers, "--json")
            ref = a.fid_ref_stats
        for kind in PRIORS:
            m = regvq("eval", "gen", "--samples", work / "samples" / kind, "--ref", ref, "--size", 32,
                      "--fid-method", "eigh", "--workers", a.workers, "--json")["metrics"]
            gen_metrics[kind] = {k: m[k] for k in ("fid", "kid", "kid_std", "precision", "recall")}
            gen_metrics[kind]["inception_class_agreement"] = (m["class_agreement"] or {}).get("rate")
        times["eval_gen"] = round(time.perf_counter() - t, 1)

    results |= {"tokenizer_psnr": recon["psnr"], "tokenizer_ssim": recon["ssim"],
                "tokenizer_codebook_usage": recon["codebook_usage"], "tokenizer_perplexity": recon["codebook_perplexity"],
                "classifier_test_accuracy": test_acc,
                "classifier_test_images": int(len(y_test)), "agreement": agreement,
                "agreement_per_class": per_class, "chance": 1 / len(classes), "seconds": times,
                **({"generation": gen_metrics} if gen_metrics else {})}
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    rows = [("tokenizer PSNR (test, dB)", f"{recon['psnr']:.2f}"),
            ("tokenizer codebook usage (%)", f"{recon['codebook_usage']:.0f}"),
            (f"classifier test accuracy ({len(y_test)} images)", f"{test_acc:.3f}"),
            *[(f"agreement {k}", f"{v:.3f}") for k, v in agreement.items()],
            ("chance", f"{1 / len(classes):.3f}"),
            *[(f"{kind} samples: FID / KID / precision / recall",
               " / ".join("-" if m[k] is None else f"{m[k]:.4g}" for k in ("fid", "kid", "precision", "recall")))
              for kind, m in gen_metrics.items()],
            *[(f"time {k} (s)", f"{v:.1f}") for k, v in times.items()]]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print(f"per class: {json.dumps(per_class)}")
    print(f"wrote {work / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()

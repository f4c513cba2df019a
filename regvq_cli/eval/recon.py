"""Reconstruction quality of a tokenizer: the library behind `regvq eval recon --model M DATA`.

Every image goes through encode -> indices -> decode; the reconstruction is clamped and rounded to
8 bits (as if saved as PNG), then compared with the original: per-image PSNR, SSIM and L1 on [0, 1]
(see `regvq_cli.eval.metrics`), rFID and KID between the originals' and the reconstructions' features
(see `regvq_cli.eval.fid`), and codebook usage / perplexity / dead codes over all encoded positions.
The result follows the schema in `regvq_cli.eval.result` (kind "recon").

The tokenizer is any object with
    encode(images [B, 3, H, W] in [-1, 1]) -> indices [B, h, w] (int)
    decode(indices [B, h, w]) -> images [B, 3, H, W] in [-1, 1]
and, for the codebook metrics, a `codebook_size` attribute (or `config.codebook_size`, or pass it).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from regvq_cli.errors import RegvqError
from regvq_cli.eval import fid as fidlib
from regvq_cli.eval import metrics
from regvq_cli.eval.batches import LoadImage, as_batches, quantize_8bit, to_signed
from regvq_cli.eval.result import PSNR_CAP_DB, feature_info, make_protocol, make_result


def tokenizer_codebook_size(tokenizer) -> int | None:
    """The codebook size a tokenizer declares, or None."""
    for holder in (tokenizer, getattr(tokenizer, "config", None)):
        size = getattr(holder, "codebook_size", None)
        if isinstance(size, int):
            return size
    return None


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def evaluate_recon(
    tokenizer,
    images,
    *,
    device: str | torch.device = "cpu",
    feature_fn: fidlib.FeatureFn | str | None = "default",
    codebook_size: int | None = None,
    load_image: LoadImage | None = None,
    image_size=None,
    batch_size: int = 32,
    resize: str | None = None,
    ref_stats: fidlib.FeatureStats | str | os.PathLike | None = None,
    save_ref_stats: str | os.PathLike | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    fid_method: str = "sqrtm",
    seed: int = 0,
    data: str | None = None,
    model: str | None = None,
    n_total: int | None = None,
    callback: Callable[[int, int | None], None] | None = None,
) -> dict:
    """Reconstruct every image and measure how close it comes back. Returns a result dict (kind "recon").

    images      a list of file paths (loaded with `load_image(path, image_size)`, `batch_size` at a time)
                or an iterable of batches (float [B, 3, H, W] in [-1, 1], or uint8 [B, H, W, 3])
    feature_fn  "default" (the Inception network), a callable images -> [B, D], or None to skip rFID/KID
    ref_stats   cached feature statistics of these same originals (a FeatureStats or a file from
                `save_ref_stats`): skips half the feature work; their protocol must match
    resize      how the loader resized the images (recorded in the protocol)
    callback    called as callback(n_done, n_total) after each batch (n_total None when unknown)
    """
    batches, n_known = as_batches(images, load_image, image_size, batch_size)
    n_total = n_total if n_total is not None else n_known
    if n_known is not None and n_known < fidlib.FID_MIN_IMAGES and feature_fn is not None:
        raise RegvqError(
            f"rFID needs at least {fidlib.FID_MIN_IMAGES} images, got {n_known}; "
            "evaluate more images, or skip rFID (no feature network)"
        )
    if isinstance(feature_fn, str):
        if feature_fn != "default":
            raise RegvqError(f"unknown feature network {feature_fn!r}")
        feature_fn = fidlib.default_feature_network(device)
    if codebook_size is None:
        codebook_size = tokenizer_codebook_size(tokenizer)
    warnings: list[str] = []

    cached_ref = None
    if isinstance(ref_stats, (str, os.PathLike)):
        # fail before the long pass when the feature network already disagrees; the image size is
        # checked once it is known
        fidlib.check_protocol(fidlib.read_stats_protocol(ref_stats), feature_info(feature_fn), f"the statistics in {ref_stats}")
        cached_ref, _ = fidlib.load_stats(ref_stats)
    elif ref_stats is not None:
        cached_ref = ref_stats
    need_features = feature_fn is not None
    real_stats = fidlib.FeatureStats(keep_features=True) if need_features and cached_ref is None else None
    fake_stats = fidlib.FeatureStats(keep_features=True) if need_features else None

    psnrs, ssims, l1s = [], [], []
    hist = torch.zeros(codebook_size, dtype=torch.int64) if codebook_size else None
    n_done, image_hw = 0, None
    with torch.no_grad():
        for batch in batches:
            x = quantize_8bit(to_signed(batch).to(device))
            if image_hw is None:
                image_hw = list(x.shape[-2:])
            elif list(x.shape[-2:]) != image_hw:
                raise RegvqError(f"image sizes differ within the set ({image_hw} then {list(x.shape[-2:])}); give an image size")
            indices = tokenizer.encode(x)
            y = quantize_8bit(tokenizer.decode(indices))
            if y.shape != x.shape:
                raise RegvqError(f"the tokenizer returned images of shape {tuple(y.shape)} for inputs {tuple(x.shape)}")
            x01, y01 = (x + 1) / 2, (y + 1) / 2  # metrics on [0, 1], data range 1
            psnrs += metrics.psnr(x01, y01, data_range=1.0).clamp(max=PSNR_CAP_DB).tolist()
            ssims += metrics.ssim(x01, y01, data_range=1.0).tolist()
            l1s += metrics.l1(x01, y01).tolist()
            if hist is not None:
                hist += metrics.code_histogram(indices, codebook_size)
            if real_stats is not None:
                real_stats.update(feature_fn(x))
            if fake_stats is not None:
                fake_stats.update(feature_fn(y))
            n_done += x.shape[0]
            if callback is not None:
                callback(n_done, n_total)
    if n_done == 0:
        raise RegvqError("no images to evaluate")
    if need_features and n_done < fidlib.FID_MIN_IMAGES:
        # unreadable files were skipped during the pass, so this shows only now; the other metrics hold
        warnings.append(f"{n_done} {'image was' if n_done == 1 else 'images were'} readable, too few for rFID/KID "
                        f"(at least {fidlib.FID_MIN_IMAGES} images); reporting the other metrics")
        need_features, feature_fn = False, None  # the protocol then names no feature network, as with none

    protocol = make_protocol(
        n_images=n_done, image_size=image_hw, feature_fn=feature_fn, resize=resize, seed=seed, data=data, model=model
    )
    rfid = rfid_biased = kid = kid_std = None
    if need_features:
        if cached_ref is not None:
            if isinstance(ref_stats, (str, os.PathLike)):
                fidlib.check_protocol(fidlib.read_stats_protocol(ref_stats), protocol, what=f"the statistics in {ref_stats}")
            if cached_ref.n != n_done:
                warnings.append(
                    f"the cached statistics cover {cached_ref.n} originals but {n_done} were reconstructed; "
                    "rFID compares different sets"
                )
            real_stats = cached_ref
        elif save_ref_stats is not None:
            fidlib.save_stats(save_ref_stats, real_stats, protocol)
        fid = fidlib.fid_from_stats(real_stats, fake_stats, method=fid_method)
        rfid, rfid_biased = fid["fid"], fid["fid_biased"]
        if fid["warning"]:
            warnings.append(fid["warning"])
        if real_stats.features is not None:
            kid, kid_std = fidlib.kernel_inception_distance(
                real_stats.features, fake_stats.features, kid_subsets, kid_subset_size, seed
            )
        else:
            warnings.append("the cached statistics hold no features: KID was not computed")

    if hist is None:
        warnings.append("the tokenizer does not declare its codebook size: codebook metrics were not computed")
    psnr_mean, psnr_std = _mean_std(psnrs)
    ssim_mean, ssim_std = _mean_std(ssims)
    l1_mean, l1_std = _mean_std(l1s)
    result_metrics = {
        "psnr": psnr_mean,
        "psnr_std": psnr_std,
        "ssim": ssim_mean,
        "ssim_std": ssim_std,
        "l1": l1_mean,
        "l1_std": l1_std,
        "rfid": rfid,
        "rfid_biased": rfid_biased,
        "kid": kid,
        "kid_std": kid_std,
        "codebook_size": codebook_size if hist is not None else None,
        "codebook_usage": metrics.codebook_usage(hist) if hist is not None else None,
        "codebook_perplexity": metrics.codebook_perplexity(hist) if hist is not None else None,
        "dead_codes": len(metrics.dead_codes(hist)) if hist is not None else None,
    }
    return make_result("recon", result_metrics, protocol, warnings)

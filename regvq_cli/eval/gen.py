"""Generation quality: the library behind `regvq eval gen --samples DIR --ref DATA`.

Generated samples are compared with reference images through the features of one network: FID,
KID and improved precision/recall (see `regvq_cli.eval.fid`). The reference may be images (file
paths or batches) or a statistics file written by `save_stats` / `save_ref_stats` (its protocol must
match: same image size, resize, feature network and weights). Samples straight from a model (an
iterable of batches in [-1, 1]) are rounded to 8 bits first, exactly as saved files would be.
The result follows the schema in `regvq_cli.eval.result` (kind "gen").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from regvq_cli.errors import RegvqError
from regvq_cli.eval import fid as fidlib
from regvq_cli.eval.batches import LoadImage, as_batches, quantize_8bit, to_signed
from regvq_cli.eval.result import feature_info, make_protocol, make_result


def _features(batches, feature_fn, device, stats, image_hw, what, progress):
    """Feed 8-bit-rounded batches through feature_fn into stats; returns the image size [H, W] seen."""
    with torch.no_grad():
        for batch in batches:
            x = quantize_8bit(to_signed(batch).to(device))
            hw = list(x.shape[-2:])
            if image_hw is None:
                image_hw = hw
            elif hw != image_hw:
                raise RegvqError(f"{what} have size {hw} but the evaluation runs at {image_hw}; resize them to one size")
            stats.update(feature_fn(x))
            progress(x.shape[0])
    return image_hw


def _is_stats_file(ref) -> bool:
    return isinstance(ref, (str, os.PathLike)) and Path(ref).suffix == ".safetensors"


def evaluate_gen(
    samples,
    ref,
    *,
    device: str | torch.device = "cpu",
    feature_fn: fidlib.FeatureFn | str = "default",
    load_image: LoadImage | None = None,
    image_size=None,
    batch_size: int = 32,
    resize: str | None = None,
    save_ref_stats: str | os.PathLike | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    fid_method: str = "sqrtm",
    seed: int = 0,
    data: str | None = None,
    ref_name: str | None = None,
    model: str | None = None,
    n_samples: int | None = None,
    callback: Callable[[int, int | None], None] | None = None,
) -> dict:
    """Compare generated samples with reference images. Returns a result dict (kind "gen").

    samples   a list of file paths (with load_image/image_size) or an iterable of image batches
    ref       the same kinds, a FeatureStats, or a statistics file (.safetensors)
    feature_fn "default" (the Inception network) or a callable images [-1, 1] -> [B, D]
    save_ref_stats  write the reference statistics (with features, when small) here for reuse
    data, ref_name, model  identifiers recorded in the protocol (what the samples are, the reference,
                    the model that made them)
    callback  callback(n_done, n_total) over samples and reference images together
    """
    if feature_fn is None:
        raise RegvqError("generation metrics need a feature network")
    sample_batches, n_sample_known = as_batches(samples, load_image, image_size, batch_size, what="samples")
    n_sample_known = n_samples if n_samples is not None else n_sample_known
    if n_sample_known is not None and n_sample_known < fidlib.FID_MIN_IMAGES:
        raise RegvqError(
            f"FID needs at least {fidlib.FID_MIN_IMAGES} samples, got {n_sample_known}; generate more images"
        )
    if isinstance(feature_fn, str):
        if feature_fn != "default":
            raise RegvqError(f"unknown feature network {feature_fn!r}")
        feature_fn = fidlib.default_feature_network(device)

    ref_stats, ref_protocol, ref_batches, n_ref_known = None, None, None, None
    if _is_stats_file(ref):
        ref_protocol = fidlib.read_stats_protocol(ref)
        # fail before the long pass when the feature network already disagrees
        fidlib.check_protocol(ref_protocol, feature_info(feature_fn), f"the statistics in {ref}")
        ref_stats, _ = fidlib.load_stats(ref)
    elif isinstance(ref, fidlib.FeatureStats):
        ref_stats = ref
    else:
        ref_batches, n_ref_known = as_batches(ref, load_image, image_size, batch_size, what="reference images")

    n_ref_pending = 0 if ref_batches is None else n_ref_known  # images still to run through the network
    n_total = None if n_sample_known is None or n_ref_pending is None else n_sample_known + n_ref_pending
    n_done = 0

    def progress(b: int) -> None:
        nonlocal n_done
        n_done += b
        if callback is not None:
            callback(n_done, n_total)

    sample_stats = fidlib.FeatureStats(keep_features=True)
    image_hw = _features(sample_batches, feature_fn, device, sample_stats, None, "samples", progress)
    if sample_stats.n == 0:
        raise RegvqError("no samples to evaluate")
    if ref_batches is not None:
        ref_stats = fidlib.FeatureStats(keep_features=True)
        _features(ref_batches, feature_fn, device, ref_stats, image_hw, "reference images", progress)
        if ref_stats.n == 0:
            raise RegvqError("no reference images to evaluate against")

    protocol = make_protocol(
        n_images=sample_stats.n,
        n_ref=ref_stats.n,
        image_size=image_hw,
        feature_fn=feature_fn,
        resize=resize,
        seed=seed,
        data=data,
        ref=ref_name if ref_name is not None else (str(ref) if _is_stats_file(ref) else None),
        model=model,
    )
    if ref_protocol is not None:
        fidlib.check_protocol(ref_protocol, protocol, what=f"the statistics in {ref}")
    if save_ref_stats is not None and ref_batches is not None:
        ref_protocol_out = dict(protocol, n_images=ref_stats.n, n_ref=None, data=protocol["ref"], ref=None, model=None)
        fidlib.save_stats(save_ref_stats, ref_stats, ref_protocol_out)

    warnings: list[str] = []
    fid = fidlib.fid_from_stats(sample_stats, ref_stats, method=fid_method)
    if fid["warning"]:
        warnings.append(fid["warning"])
    kid = kid_std = precision = recall = None
    if ref_stats.features is None:
        warnings.append("the reference statistics hold no features: KID and precision/recall were not computed")
    else:
        kid, kid_std = fidlib.kernel_inception_distance(
            ref_stats.features, sample_stats.features, kid_subsets, kid_subset_size, seed
        )
        if min(ref_stats.n, sample_stats.n) > pr_k:
            precision, recall = fidlib.precision_recall(ref_stats.features, sample_stats.features, k=pr_k)
        else:
            warnings.append(f"precision/recall with k={pr_k} needs more than {pr_k} images per set: not computed")
    result_metrics = {
        "fid": fid["fid"],
        "fid_biased": fid["fid_biased"],
        "kid": kid,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }
    return make_result("gen", result_metrics, protocol, warnings)

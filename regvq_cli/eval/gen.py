"""Generation quality: the library behind `regvq eval gen --samples DIR --ref DATA`.

Generated samples are compared with reference images through the features of one network: FID,
KID and improved precision/recall (see `regvq_cli.eval.fid`). The reference may be images (file
paths or batches) or a statistics file written by `save_stats` / `save_ref_stats` (its protocol must
match: same image size, resize, feature network and weights). Samples straight from a model (an
iterable of batches in [-1, 1]) are rounded to 8 bits first, exactly as saved files would be.
The result follows the schema in `regvq_cli.eval.result` (kind "gen").
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import torch

from regvq_cli.errors import RegvqError
from regvq_cli.eval import fid as fidlib
from regvq_cli.eval.batches import LoadImage, as_batches, quantize_8bit, to_signed
from regvq_cli.eval.result import feature_info, make_protocol, make_result


def _features(batches, feature_fn, device, stats, image_hw, what, progress, names=None):
    """Feed 8-bit-rounded batches through feature_fn into stats; returns the image size [H, W] seen.

    A batch may be (images, class names): the names are appended to `names`, in feature order."""
    with torch.no_grad():
        for batch in batches:
            if isinstance(batch, tuple):
                batch, batch_names = batch
                if names is not None:
                    names.extend(batch_names)
            x = quantize_8bit(to_signed(batch).to(device))
            hw = list(x.shape[-2:])
            if image_hw is None:
                image_hw = hw
            elif hw != image_hw:
                raise RegvqError(f"{what} have size {hw} but the evaluation runs at {image_hw}; resize them to one size")
            stats.update(feature_fn(x))
            progress(x.shape[0])
    return image_hw


def is_stats_file(ref) -> bool:
    """Whether `ref` names cached statistics: a .safetensors path, or any existing file that is not an image
    (statistics are written under whatever name they are given)."""
    from regvq_cli.data.inputs import IMAGE_EXTS

    if not isinstance(ref, (str, os.PathLike)):
        return False
    suffix = Path(ref).suffix.lower()
    return suffix == ".safetensors" or (os.path.isfile(ref) and suffix not in IMAGE_EXTS)


def _feature_network(feature_fn, device):
    """"default" -> the Inception network on `device`; a callable stays as it is."""
    if not isinstance(feature_fn, str):
        return feature_fn
    if feature_fn != "default":
        raise RegvqError(f"unknown feature network {feature_fn!r}")
    return fidlib.default_feature_network(device)


def _stats_protocol(protocol: dict, n: int) -> dict:
    """The protocol cached reference statistics carry: the evaluation's, as the statistics' own data."""
    return dict(protocol, n_images=n, n_ref=None, data=protocol["ref"], ref=None, model=None, sampling=None)


def save_reference_stats(
    ref,
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    feature_fn: fidlib.FeatureFn | str = "default",
    load_image: LoadImage | None = None,
    image_size=None,
    batch_size: int = 32,
    resize: str | None = None,
    seed: int = 0,
    ref_name: str | None = None,
    callback: Callable[[int, int | None], None] | None = None,
) -> dict:
    """Run the reference images once through the feature network and write their statistics to `path` (the
    features too, when small enough), for `evaluate_gen(..., ref=path)` later: many models compared with one
    reference set read it once. Returns {"path", "n_images", "features_kept", "protocol"}."""
    feature_fn = _feature_network(feature_fn, device)
    batches, n_known = as_batches(ref, load_image, image_size, batch_size, what="reference images")
    stats, done = fidlib.FeatureStats(keep_features=True), 0

    def progress(b: int) -> None:
        nonlocal done
        done += b
        if callback is not None:
            callback(done, n_known)

    image_hw = _features(batches, feature_fn, device, stats, None, "reference images", progress)
    if stats.n == 0:
        raise RegvqError("no reference images to compute statistics of")
    protocol = _stats_protocol(make_protocol(n_images=stats.n, image_size=image_hw, feature_fn=feature_fn,
                                             resize=resize, seed=seed, ref=ref_name), stats.n)
    kept = fidlib.save_stats(path, stats, protocol)
    return {"path": str(path), "n_images": stats.n, "features_kept": kept, "protocol": protocol}


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
    sampling: dict | None = None,
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
    sampling  how the model sampled them (recorded in the protocol, so the samples can be made again)
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
    feature_fn = _feature_network(feature_fn, device)

    ref_stats, ref_protocol, ref_batches, n_ref_known = None, None, None, None
    if is_stats_file(ref):
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

    sample_stats, sample_names, ref_names = fidlib.FeatureStats(keep_features=True), [], []
    image_hw = _features(sample_batches, feature_fn, device, sample_stats, None, "samples", progress, sample_names)
    if sample_stats.n == 0:
        raise RegvqError("no samples to evaluate")
    if ref_batches is not None:
        ref_stats = fidlib.FeatureStats(keep_features=True)
        _features(ref_batches, feature_fn, device, ref_stats, image_hw, "reference images", progress, ref_names)
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
        ref=ref_name if ref_name is not None else (str(ref) if is_stats_file(ref) else None),
        model=model,
        sampling=sampling,
    )
    if ref_protocol is not None:
        fidlib.check_protocol(ref_protocol, protocol, what=f"the statistics in {ref}")
    if save_ref_stats is not None and ref_batches is not None:
        fidlib.save_stats(save_ref_stats, ref_stats, _stats_protocol(protocol, ref_stats.n))

    for stats, what, more in ((sample_stats, "samples", "generate more images"),
                              (ref_stats, "reference images", "give a reference with more images")):
        if stats.n < fidlib.FID_MIN_IMAGES:  # counted after unreadable files were skipped
            raise RegvqError(f"FID needs at least {fidlib.FID_MIN_IMAGES} {what}, got {stats.n}; {more}")
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
            precision, recall = fidlib.precision_recall(ref_stats.features, sample_stats.features, k=pr_k, device=device)
        else:
            warnings.append(f"precision/recall with k={pr_k} needs more than {pr_k} images per set: not computed")
    agreement = None
    if sample_names:
        if ref_batches is None:
            warnings.append("the samples carry classes but cached reference statistics keep none: class agreement "
                            "not measured (it needs the reference images themselves)")
        elif len(ref_names) != ref_stats.n or ref_stats.features is None:
            warnings.append("the samples carry classes but the reference images do not (class sub-folders): "
                            "class agreement not measured")
        else:
            agreement = knn_agreement(ref_stats.features, ref_names, sample_stats.features, sample_names,
                                      device=device)
            if agreement["unknown_classes"]:
                warnings.append(f"{agreement['n_unknown']} samples ask for classes the reference lacks "
                                f"({', '.join(agreement['unknown_classes'])}): left out of the class agreement")
    result_metrics = {
        "fid": fid["fid"],
        "fid_biased": fid["fid_biased"],
        "kid": kid,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "class_agreement": agreement,
    }
    return make_result("gen", result_metrics, protocol, warnings)


def _knn_vote(sims: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Majority label of each row's k most similar references (ties go to the nearer one). sims [M, N]."""
    top = sims.topk(k, dim=1).indices  # [M, k], most similar first
    votes = labels[top]  # [M, k]
    counts = (votes[:, :, None] == votes[:, None, :]).sum(-1)  # [M, k]: how many of the k share each vote
    # the first (nearest) neighbour among those with the most votes
    best = (counts == counts.max(1, keepdim=True).values).float().argmax(1)
    return votes.gather(1, best[:, None])[:, 0]


def knn_agreement(ref_features, ref_names, sample_features, sample_names, k: int = 5, chunk: int = 1024,
                  device="cpu") -> dict:
    """How often a k-nearest-neighbour classifier (cosine similarity of the feature vectors, majority of k) over
    the labelled reference images names each sample's requested class. Samples whose class the reference does
    not have are left out (and counted). Also the classifier's own leave-one-out accuracy on the references, so
    the rate can be read against what the classifier manages on real images.

    Returns {"rate", "n", "k", "chance", "per_class": {name: rate}, "reference_leave_one_out",
    "unknown_classes", "n_unknown", "classifier"}."""
    classes = sorted(set(ref_names))
    index = {c: i for i, c in enumerate(classes)}
    device = fidlib.float64_device(device)
    ref = torch.nn.functional.normalize(torch.as_tensor(ref_features).to(device).double(), dim=1)
    smp = torch.nn.functional.normalize(torch.as_tensor(sample_features).to(device).double(), dim=1)
    ref_y = torch.tensor([index[c] for c in ref_names], device=device)
    known = [i for i, c in enumerate(sample_names) if c in index]
    unknown = sorted({c for c in sample_names if c not in index})
    k_ref = min(k, len(ref_names))

    def predict(x, exclude_self=False):
        out = []
        for s in range(0, len(x), chunk):
            sims = x[s:s + chunk] @ ref.T  # [m, N]
            if exclude_self:
                sims[torch.arange(len(sims)), torch.arange(s, s + len(sims))] = -math.inf
            out.append(_knn_vote(sims, ref_y, min(k_ref, ref.shape[0] - exclude_self)))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=device)

    want = torch.tensor([index[sample_names[i]] for i in known], dtype=torch.long, device=device)
    hit = (predict(smp[known]) == want) if known else torch.zeros(0, dtype=torch.bool, device=device)
    loo = (predict(ref, exclude_self=True) == ref_y).double().mean().item() if len(ref_names) > 1 else None
    per_class = {c: round(hit[want == i].double().mean().item(), 4) for i, c in enumerate(classes) if (want == i).any()}
    return {"rate": round(hit.double().mean().item(), 4) if known else None, "n": len(known), "k": k_ref,
            "chance": round(1 / len(classes), 4), "per_class": per_class,
            "reference_leave_one_out": None if loo is None else round(loo, 4),
            "unknown_classes": unknown, "n_unknown": len(sample_names) - len(known),
            "classifier": f"{k_ref}-NN, cosine similarity of the feature vectors, over the reference images"}

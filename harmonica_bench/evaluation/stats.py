"""Error bars of the quality figures, and when a difference between two methods is a tie.

Two sources of spread, usable together:

* **Seed sets** (``--seed_sets K``): each point is evaluated on K disjoint sets of noise seeds
  (set j: seeds ``SEED + j * SEED_SET_OFFSET + i``, ``sampling.seed_set``; labels as in set 0). A figure is the mean over
  the sets, reported with its standard deviation over the sets and a Student-t 95% interval of the
  mean (K >= 2).
* **Bootstrap over samples** (``--bootstrap B``): B resamples (with replacement) of the sample
  indices of every seed set, drawn once per run and applied to every method, so two methods are
  always compared on the same resampled seeds (a *paired* bootstrap). FD and KID are recomputed
  from per-image features (the reference set is held fixed), class accuracy / PSNR / SSIM from
  per-image values; FD to the uncached samples (``fd_uncached``) from both sides' features, a
  sample and its uncached twin resampled together. Resampling with replacement repeats images,
  which shifts FD and KID upwards (fewer distinct samples); the interval is therefore the reported value plus the 2.5 / 97.5
  percentiles of the replicates' deviation from their own mean (the shift removed, the spread
  kept). The same rule gives the interval of a paired difference.

A difference whose 95% interval contains 0 is a **tie**; otherwise the better side **wins**.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

LEVEL = 0.95
BOOTSTRAP_MAX_DIM = 512  # FD is bootstrapped in feature space (d x d per resample): judge features, not Inception's 2048

# metric -> True when lower is better
LOWER_IS_BETTER = {"fd": True, "kid_mean": True, "class_accuracy": False, "psnr": False, "ssim": False,
                   "isc_mean": False, "fd_uncached": True}
ERROR_METRICS = tuple(LOWER_IS_BETTER)
# the range a metric's interval is clipped to (FD >= 0, fractions and SSIM bounded; KID may be < 0)
BOUNDS = {"fd": (0.0, math.inf), "fd_uncached": (0.0, math.inf), "class_accuracy": (0.0, 1.0), "ssim": (-1.0, 1.0)}


# ============================================================================== seed sets
def t_quantile(df: int, level: float = LEVEL) -> float:
    """Two-sided Student-t quantile (scipy when available, else a table for small df / normal)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.5 + level / 2, df))
    except ImportError:  # pragma: no cover - scipy comes with torch-fidelity's dependencies
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
        return table.get(df, 1.96)


def over_sets(values) -> dict:
    """Mean of per-seed-set values, their std (ddof 1) and a t interval of the mean (K >= 2)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    out = {"mean": float(v.mean()) if len(v) else None, "n_sets": int(len(v))}
    if len(v) >= 2:
        sd = float(v.std(ddof=1))
        half = t_quantile(len(v) - 1) * sd / math.sqrt(len(v))
        out.update(std=sd, ci=[out["mean"] - half, out["mean"] + half])
    return out


# ============================================================================== bootstrap
@dataclass
class SampleData:
    """Per-image data of one point on one seed set, for the bootstrap."""

    features: np.ndarray | None = None  # [N, d] generated features in the FD / KID space
    correct: np.ndarray | None = None  # [N] judge says the requested class
    psnr: np.ndarray | None = None  # [N] dB to the uncached image (inf where identical)
    ssim: np.ndarray | None = None  # [N]
    uncached_features: np.ndarray | None = None  # [N, d] the uncached images' features, same seeds (FD to uncached)


@dataclass
class ReferenceStats:
    """What FD / KID of a resample need from the (fixed) reference features."""

    mu: np.ndarray
    sigma: np.ndarray
    sqrt_sigma: np.ndarray
    trace: float
    features: np.ndarray
    kyy: float  # mean off-diagonal kernel value among reference features (KID)

    @classmethod
    def of(cls, features: np.ndarray) -> "ReferenceStats":
        f = np.asarray(features, dtype=np.float64)
        mu, sigma = f.mean(0), np.cov(f, rowvar=False)
        w, v = np.linalg.eigh(sigma)
        sqrt_sigma = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m, d = f.shape
        total = 0.0
        for start in range(0, m, 1024):  # the full kernel matrix of 5,000 references does not need to exist
            k = (f[start:start + 1024] @ f.T / d + 1.0) ** 3
            total += k.sum() - np.trace(k[:, start:start + 1024])
        return cls(mu, sigma, sqrt_sigma, float(np.trace(sigma)), f, total / (m * (m - 1)))


def fd_between(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between the feature rows ``x`` and ``y`` (FD of two sample sets)."""
    x = np.asarray(x, dtype=np.float64)
    return fd_from_stats(x.mean(0), np.cov(x, rowvar=False), ReferenceStats.of(y))


def fd_from_stats(mu: np.ndarray, sigma: np.ndarray, ref: ReferenceStats) -> float:
    """Frechet distance, tr sqrt(S1 S2) from the eigenvalues of S2^1/2 S1 S2^1/2 (symmetric)."""
    m = ref.sqrt_sigma @ sigma @ ref.sqrt_sigma
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(m), 0, None)).sum()
    diff = mu - ref.mu
    return float(diff @ diff + np.trace(sigma) + ref.trace - 2 * tr_covmean)


class Bootstrap:
    """``resamples`` draws of sample indices per seed set (as counts), fixed for the whole run."""

    def __init__(self, num_samples: int, num_sets: int = 1, resamples: int = 1000, seed: int = 0,
                 reference: ReferenceStats | None = None):
        rng = np.random.default_rng(seed)
        n = int(num_samples)
        self.num_samples, self.resamples = n, int(resamples)
        self.counts = [rng.multinomial(n, np.full(n, 1.0 / n), size=self.resamples).astype(np.float64)
                       for _ in range(num_sets)]
        self.reference = reference

    # ----------------------------------------------------------------------- per statistic
    @staticmethod
    def _moments(c: torch.Tensor, z: torch.Tensor):
        """Mean and covariance of the rows of ``z`` under each resample's counts ``c`` [b, n]."""
        n = len(z)
        mu = c @ z / n
        second = torch.einsum("bn,nd,ne->bde", c, z, z)
        return mu, (second - n * mu[:, :, None] * mu[:, None, :]) / (n - 1)

    def _fd(self, x: np.ndarray, counts: np.ndarray) -> np.ndarray:
        ref = self.reference
        r = torch.from_numpy(ref.sqrt_sigma)
        xt = torch.from_numpy(x)
        out = np.empty(len(counts))
        for start in range(0, len(counts), 64):
            mu, sigma = self._moments(torch.from_numpy(counts[start:start + 64]), xt)
            m = r @ sigma @ r
            tr_covmean = torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum(-1)
            diff = mu - torch.from_numpy(ref.mu)
            fd = (diff * diff).sum(-1) + sigma.diagonal(dim1=-2, dim2=-1).sum(-1) + ref.trace - 2 * tr_covmean
            out[start:start + 64] = fd.numpy()
        return out

    @classmethod
    def _fd_paired(cls, x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """FD between ``x`` and ``y`` resampled with the *same* indices (a sample and its uncached twin
        stay together): the reference side changes with every resample, unlike ``_fd``'s."""
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        out = np.empty(len(counts))
        for start in range(0, len(counts), 64):
            c = torch.from_numpy(counts[start:start + 64])
            (mx, sx), (my, sy) = cls._moments(c, xt), cls._moments(c, yt)
            w, v = torch.linalg.eigh(sy)
            root = (v * w.clamp_min(0).sqrt()[:, None, :]) @ v.transpose(-1, -2)
            tr_covmean = torch.linalg.eigvalsh(root @ sx @ root).clamp_min(0).sqrt().sum(-1)
            diff = mx - my
            fd = ((diff * diff).sum(-1) + sx.diagonal(dim1=-2, dim2=-1).sum(-1)
                  + sy.diagonal(dim1=-2, dim2=-1).sum(-1) - 2 * tr_covmean)
            out[start:start + 64] = fd.numpy()
        return out

    def _kid(self, x: np.ndarray, counts: np.ndarray) -> np.ndarray:
        ref = self.reference
        n, d = x.shape
        kxx = (x @ x.T / d + 1.0) ** 3
        kxy_rows = np.zeros(n)
        for start in range(0, len(ref.features), 1024):
            kxy_rows += ((x @ ref.features[start:start + 1024].T / d + 1.0) ** 3).sum(1)
        kxy_rows /= len(ref.features)
        # pairs of *distinct* samples only (a repeated sample is not paired with itself), as in the
        # unbiased estimate: sum_{i != j} c_i c_j k_ij / sum_{i != j} c_i c_j
        diag = np.diag(kxx)
        pair_weight = n * n - (counts**2).sum(1)
        xx = (np.einsum("bn,nm,bm->b", counts, kxx, counts) - (counts**2) @ diag) / pair_weight
        return xx + ref.kyy - 2 * counts @ kxy_rows / n

    @staticmethod
    def _mean(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(v)  # PSNR: identical images (inf) are left out, as in the point estimate
        return (counts @ np.where(finite, v, 0.0)) / np.maximum(counts @ finite.astype(np.float64), 1e-12)

    def replicates(self, data: list[SampleData]) -> dict[str, np.ndarray]:
        """``{metric: [resamples]}``: each metric of each resample, averaged over the seed sets."""
        if len(data) != len(self.counts):
            raise ValueError(f"{len(data)} seed sets of data for a bootstrap of {len(self.counts)}")
        per_set: dict[str, list[np.ndarray]] = {}
        for d, counts in zip(data, self.counts):
            if d.features is not None and self.reference is not None:
                x = np.asarray(d.features, dtype=np.float64)
                if len(x) != self.num_samples:
                    raise ValueError(f"{len(x)} feature rows, bootstrap drawn for {self.num_samples}")
                if x.shape[1] <= BOOTSTRAP_MAX_DIM:
                    per_set.setdefault("fd", []).append(self._fd(x, counts))
                per_set.setdefault("kid_mean", []).append(self._kid(x, counts))
                if d.uncached_features is not None and x.shape[1] <= BOOTSTRAP_MAX_DIM:
                    y = np.asarray(d.uncached_features, dtype=np.float64)
                    per_set.setdefault("fd_uncached", []).append(self._fd_paired(x, y, counts))
            if d.correct is not None:
                per_set.setdefault("class_accuracy", []).append(self._mean(d.correct, counts))
            if d.psnr is not None:
                per_set.setdefault("psnr", []).append(self._mean(d.psnr, counts))
            if d.ssim is not None:
                per_set.setdefault("ssim", []).append(self._mean(d.ssim, counts))
        return {k: np.mean(v, axis=0) for k, v in per_set.items() if len(v) == len(self.counts)}


def centered_interval(estimate: float, replicates: np.ndarray, level: float = LEVEL) -> list[float]:
    """``estimate`` + the percentiles of the replicates' deviation from their mean (see the module)."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) < 2 or estimate is None or not np.isfinite(estimate):
        return [float("nan"), float("nan")]
    dev = r - r.mean()
    lo, hi = np.percentile(dev, [50 * (1 - level), 50 * (1 + level)])
    return [float(estimate + lo), float(estimate + hi)]


# ======================================================================= errors of a point
def point_errors(metrics_per_set: list[dict], replicates: dict[str, np.ndarray] | None = None) -> dict:
    """``{metric: {"mean", "n_sets", ["std", "ci" (t over seed sets)], ["boot_ci", "boot_se"]}}``."""
    out = {}
    for key in ERROR_METRICS:
        values = [m.get(key) for m in metrics_per_set]
        if all(v is None for v in values):
            continue
        e = over_sets(values)
        if replicates is not None and key in replicates and e["mean"] is not None:
            e["boot_ci"] = centered_interval(e["mean"], replicates[key])
            e["boot_se"] = float(np.std(replicates[key], ddof=1))
        lo, hi = BOUNDS.get(key, (-math.inf, math.inf))
        for name in ("ci", "boot_ci"):
            if name in e:
                e[name] = [min(max(x, lo), hi) for x in e[name]]
        out[key] = e
    return out


# ======================================================================= paired differences
@dataclass
class Difference:
    """``a - b`` of one metric, with its interval and what it means."""

    metric: str
    diff: float
    ci: list[float] | None
    method: str  # "bootstrap", "t over seed sets" or "none"
    verdict: str  # "tie", "better", "worse" (a relative to b) or "n/a"
    per_set: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "diff": self.diff, "ci": self.ci, "method": self.method,
                "verdict": self.verdict, "per_set": self.per_set}


def verdict(ci: list[float] | None, metric: str) -> str:
    """"tie" when the interval of a - b contains 0, else "better" / "worse" for a."""
    if ci is None or any(not np.isfinite(x) for x in ci):
        return "n/a"
    lo, hi = ci
    if lo <= 0 <= hi:
        return "tie"
    lower = hi < 0
    return "better" if lower == LOWER_IS_BETTER.get(metric, True) else "worse"


def paired_difference(metric: str, a_sets: list, b_sets: list, a_rep: dict | None = None,
                      b_rep: dict | None = None) -> Difference:
    """a - b from per-seed-set values of the two points (same seeds) and, when both have them, their
    bootstrap replicates (same resamples). The bootstrap interval is preferred; without it the
    t interval over seed sets of the paired per-set differences; with neither, no verdict."""
    pairs = [(x, y) for x, y in zip(a_sets, b_sets) if x is not None and y is not None]
    per_set = [float(x - y) for x, y in pairs]
    diff = float(np.mean(per_set)) if per_set else float("nan")
    if a_rep is not None and b_rep is not None and metric in a_rep and metric in b_rep:
        ci, how = centered_interval(diff, np.asarray(a_rep[metric]) - np.asarray(b_rep[metric])), "bootstrap"
    elif len(per_set) >= 2:
        ci, how = over_sets(per_set).get("ci"), "t over seed sets"
    else:
        ci, how = None, "none"
    return Difference(metric, diff, ci, how, verdict(ci, metric), per_set)

"""Every method at its best setting for a speed: the per-level comparison of ``eval/pareto.py``.

For each speed level (default 1.5x, 2x, 2.5x) and each method, the row is the method's best
setting among its points at or above that speed: lowest FD, higher PSNR breaking ties. A point's
speed is its measured speedup, capped at its MACs speedup (a measured speedup above the MACs bound
is noise and never lets a point into a level it cannot reach), or the MACs speedup when nothing was
timed. Each row gets its paired difference to the best row of the level (the best row: to the
runner-up), with the interval from ``stats.paired_difference`` and a word: ``win`` (the best row,
its interval to the runner-up excludes 0), ``tie`` (the interval contains 0), ``loss`` (a worse
row whose interval excludes 0), ``n/a`` (no error bars: one seed set and no bootstrap).
"""

from __future__ import annotations

import math

import numpy as np

from .stats import paired_difference

DEFAULT_LEVELS = (1.5, 2.0, 2.5)


def method_group(point: dict) -> str:
    """The method a point belongs to: its series, or for learned routers how the router was trained
    (the label without its usage / tau), so routers trained at several usages form one method."""
    if point.get("router") is None:
        return point["series"]
    return point["label"].rsplit(" ", 2)[0]


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def credible_speedup(point: dict, key: str = "measured_speedup") -> float | None:
    """The speed a point counts at: measured, capped at its MACs speedup (see the module docstring)."""
    macs = point.get("macs_speedup", point.get("cost", {}).get("macs_speedup"))
    measured = point.get(key) if key == "measured_speedup" else None
    if _finite(measured):
        return min(measured, macs) if _finite(macs) else measured
    return macs if _finite(macs) else None


def _rank(point: dict):
    m = point["metrics"]
    psnr = m.get("psnr")
    return (m["fd"], -(psnr if _finite(psnr) else -math.inf))


def _sets(point: dict, metric: str) -> list:
    per_set = point.get("metrics_per_set") or [point["metrics"]]
    return [m.get(metric) for m in per_set]


def compare_points(a: dict, b: dict, metric: str, replicates: dict | None = None):
    """Paired difference a - b of ``metric`` (``stats.Difference``); bootstrap replicates by point id."""
    replicates = replicates or {}
    return paired_difference(metric, _sets(a, metric), _sets(b, metric), replicates.get(a.get("id")),
                             replicates.get(b.get("id")))


def best_settings(points: list[dict], levels=DEFAULT_LEVELS, key: str = "measured_speedup",
                  replicates: dict | None = None) -> list[dict]:
    """One table per level: ``{"level", "rows": [{"point", "speedup", "fd_diff", "psnr_diff", "word",
    "vs"}, ...]}``, rows best first."""
    tables = []
    for level in levels:
        best: dict[str, dict] = {}
        for p in points:
            if p.get("series") == "none" or not _finite(p["metrics"].get("fd")):
                continue
            speed = credible_speedup(p, key)
            if speed is None or speed < level:
                continue
            group = method_group(p)
            if group not in best or _rank(p) < _rank(best[group]):
                best[group] = p
        ordered = sorted(best.values(), key=_rank)
        rows = []
        for i, p in enumerate(ordered):
            other = (ordered[1] if len(ordered) > 1 else None) if i == 0 else ordered[0]
            row = {"method": method_group(p), "point": p.get("id", p["label"]), "label": p["label"],
                   "knob": p.get("knob"), "knob_name": p.get("knob_name"), "speedup": credible_speedup(p, key),
                   "vs": None, "fd_diff": None, "psnr_diff": None, "word": "only" if other is None else "n/a"}
            if other is not None:
                fd = compare_points(p, other, "fd", replicates)
                row.update(vs=other.get("id", other["label"]), fd_diff=fd.to_dict(),
                           psnr_diff=compare_points(p, other, "psnr", replicates).to_dict())
                if fd.verdict == "tie":
                    row["word"] = "tie"
                elif fd.verdict == "better":
                    row["word"] = "win"
                elif fd.verdict == "worse":
                    row["word"] = "loss"
            rows.append(row)
        tables.append({"level": level, "rows": rows})
    return tables


def replicates_to_arrays(replicates: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{"<point id>::<metric>": array}`` for ``np.savez`` (and back with ``replicates_from_arrays``)."""
    return {f"{pid}::{metric}": np.asarray(v) for pid, reps in replicates.items() for metric, v in reps.items()}


def replicates_from_arrays(arrays) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in arrays.files if hasattr(arrays, "files") else arrays:
        pid, _, metric = name.rpartition("::")
        out.setdefault(pid, {})[metric] = np.asarray(arrays[name])
    return out

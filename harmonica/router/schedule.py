"""Schedules and forecasts: the init grammar, static (FORA / TaylorSeer) schedules, the threshold check and
the Lagrange extrapolation weights of a TaylorSeer-style forecast."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

from .layout import RouterError

LOGIT_BOUND = 5.0
# The threshold of a router built without one (``for_layout``, ``static``) and of training without a target usage;
# a trained router carries the threshold it was trained at (``router.threshold``), used unless overridden.
DEFAULT_THRESHOLD = 0.1
STATIC_INIT_LOGIT = 2.0  # init "static:N": scores 0.88 / 0.12, far enough from 0.5 yet free to move
MAX_HISTORY = 4
INIT_KINDS = ("random", "compute", "reuse", "uniform")
INIT_FORMS = INIT_KINDS + ("static:N", "static:N:W")  # every form parse_init accepts (N, W: integers)


def parse_init(init: str) -> tuple[str, int, int]:
    """``(kind, N, W)`` of a router ``init`` string: one of INIT_KINDS (N = W = 0), ``"static:N"``
    (compute every N-th step) or ``"static:N:W"`` (the first W steps, then every N-th, TaylorSeer's
    schedule with its warm-up)."""
    kind, *numbers = str(init).split(":")
    if kind in INIT_KINDS and not numbers:
        return kind, 0, 0
    if kind == "static" and 1 <= len(numbers) <= 2 and all(n.isdigit() for n in numbers) and int(numbers[0]) >= 1:
        return kind, int(numbers[0]), int(numbers[1]) if len(numbers) == 2 else 0
    raise RouterError(f"init must be one of {', '.join(map(repr, INIT_FORMS))} (N >= 1, W >= 0), got {init!r}")


def static_steps(num_steps: int, every: int, warmup: int = 0) -> list[int]:
    """The steps a static schedule computes: the first ``warmup`` steps, then every ``every``-th
    (counted from the end of the warm-up; step 0 always)."""
    cadence_start = warmup - 1 if warmup else 0  # the last warm-up step starts the cadence
    return sorted({0} | set(range(min(warmup, num_steps))) | set(range(cadence_start, num_steps, every)))


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float, or RouterError when it is not a number strictly between 0 and 1."""
    real = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if not real or math.isnan(float(threshold)) or not (0.0 < float(threshold) < 1.0):
        raise RouterError(
            f"threshold must be a number strictly between 0 and 1, got {threshold!r}. A branch is computed at a step "
            "when its router score exceeds the threshold and rebuilt from the cache otherwise, so a higher threshold "
            "reuses more (faster, further from the uncached images). A trained router carries the threshold it was "
            "trained at (router.threshold), which is used when none is given: give one only to trade speed for "
            "quality."
        )
    return float(threshold)


def computed_before(schedule: Sequence[Sequence[bool]], step: int, slot: int, limit: int) -> list[int]:
    """The last ``limit`` steps before ``step`` where ``slot`` was computed, most recent first (the
    first step always computes)."""
    found = []
    for s in range(step - 1, -1, -1):
        if s == 0 or schedule[s][slot]:
            found.append(s)
            if len(found) == limit:
                break
    return found


def taylor_coefficients(schedule: Sequence[Sequence[bool]], history: int, order: int) -> list:
    """``[step][slot][k]``: Lagrange extrapolation weights through the last ``order + 1`` computed steps
    (fewer where fewer were computed so far), the forecast of a polynomial in the step index; reuse at
    order 0. Computed steps get reuse weights (they are not used there)."""
    table = []
    for step, row in enumerate(schedule):
        table.append([])
        for slot, computed in enumerate(row):
            weights = [0.0] * history
            points = [] if step == 0 or computed else computed_before(schedule, step, slot, order + 1)
            if not points:
                weights[0] = 1.0
            for k, p in enumerate(points):
                w = 1.0
                for j, q in enumerate(points):
                    if j != k:
                        w *= (step - q) / (p - q)
                weights[k] = w
            table[-1].append(weights)
    return table

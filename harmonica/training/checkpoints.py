"""Resumable checkpoints through accelerate's state (model, optimizer, scheduler, RNG, extras).

Checkpoints are written to ``<dir>/checkpoint-<step>`` via a temporary folder and an atomic rename,
so a run killed while saving never leaves a half-written checkpoint as the newest one.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def latest_checkpoint(directory: str | Path) -> tuple[Path | None, int]:
    """The newest complete checkpoint in ``directory`` and its step (``(None, 0)`` when none)."""
    directory = Path(directory)
    best, best_step = None, 0
    if directory.is_dir():
        for child in directory.iterdir():
            m = _PATTERN.match(child.name)
            if m and child.is_dir() and int(m.group(1)) >= best_step:
                best, best_step = child, int(m.group(1))
    return best, best_step


def save_checkpoint(accelerator, directory: str | Path, step: int, keep: int = 2) -> Path:
    """Save accelerate state at ``step``; keep the newest ``keep`` checkpoints."""
    directory = Path(directory)
    final = directory / f"checkpoint-{step}"
    tmp = directory / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        olds = sorted(
            (int(_PATTERN.match(c.name).group(1)), c) for c in directory.iterdir() if _PATTERN.match(c.name)
        )
        for _, old in olds[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator, directory: str | Path) -> int:
    """Load the newest checkpoint if there is one; return the step to continue from."""
    path, step = latest_checkpoint(directory)
    if path is not None:
        accelerator.load_state(str(path))
        accelerator.print(f"resumed from {path} (step {step})")
    return step


def batch_indices(num_items: int, batch_size: int, seed: int, step: int):
    """Indices of the batch at ``step``: a pure function of (seed, step), so resuming needs no sampler state."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, num_items, (batch_size,), generator=g)

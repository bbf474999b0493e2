"""Resumable checkpoints through accelerate's state (model, optimizer, scheduler, RNG, extras).

Checkpoints are written to ``<dir>/checkpoint-<step>`` via a temporary folder and an atomic rename,
so a run killed while saving never leaves a half-written checkpoint as the newest one. A checkpoint
damaged afterwards (a truncated or empty file: full disk, copy cut short) is detected by ``resume``
before anything is loaded from it: it is set aside as ``checkpoint-<step>.broken`` with a warning
naming the file, and the previous intact checkpoint is used.
"""

from __future__ import annotations

import pickle
import re
import shutil
import warnings
import zipfile
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


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be resumed from."""


TORCH_SAVE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")  # accelerate writes these with torch.save (a zip archive)


def broken_files(path: str | Path) -> list[str]:
    """``"file: why"`` for every file of the checkpoint folder ``path`` that cannot be loaded: empty, a
    torch.save file (.bin / .pkl / .pt) that is not a complete zip archive or fails its CRC, a
    .safetensors file whose header does not cover the file. Nothing is unpickled."""
    from safetensors import safe_open

    path = Path(path)
    problems = []
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        name = f.relative_to(path).as_posix()
        if f.stat().st_size == 0:
            problems.append(f"{name}: empty file")
        elif f.suffix in TORCH_SAVE_SUFFIXES:
            if not zipfile.is_zipfile(f):
                problems.append(f"{name}: truncated or not a torch.save file (no complete zip archive)")
                continue
            try:
                with zipfile.ZipFile(f) as archive:
                    bad = archive.testzip()
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
                bad = f"unreadable ({err})"
            if bad:
                problems.append(f"{name}: corrupt (archive member {bad} fails its check)")
        elif f.suffix == ".safetensors":
            try:
                with safe_open(str(f), "pt") as handle:
                    handle.keys()
            except Exception as err:  # safetensors raises its own error types
                problems.append(f"{name}: truncated or corrupt safetensors file ({err})")
    return problems


# what loading a damaged file raises (a shape or key mismatch, a RuntimeError, is a real error and is not caught)
_CORRUPT_LOAD_ERRORS = (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError)


def _on_any_process(accelerator, flag: bool) -> bool:
    """True on every process when ``flag`` is true on one: all processes resume from the same checkpoint."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    total = accelerator.reduce(torch.tensor([int(flag)], device=accelerator.device), reduction="sum")
    return bool(total.item())


def _set_aside(path: Path) -> Path:
    target = path.with_name(path.name + ".broken")
    n = 2
    while target.exists():
        target = path.with_name(f"{path.name}.broken-{n}")
        n += 1
    path.rename(target)
    return target


def resume(accelerator, directory: str | Path) -> int:
    """Load the newest intact checkpoint in ``directory`` if there is one; return the step to continue from.

    A checkpoint with a damaged file (see ``broken_files``) is renamed ``checkpoint-<step>.broken`` (kept,
    never deleted: later saves would otherwise overwrite or rotate it away) with a warning naming the file,
    and the previous one is tried. When checkpoints exist but none is intact, CheckpointError says which
    files are damaged and what to do; nothing is renamed then.
    """
    from safetensors import SafetensorError

    directory = Path(directory)
    found = []
    if directory.is_dir():
        found = sorted(((int(m.group(1)), c) for c in directory.iterdir()
                        if (m := _PATTERN.match(c.name)) and c.is_dir()), reverse=True)
    damaged = []
    for step, path in found:
        problems = broken_files(path)
        if not _on_any_process(accelerator, bool(problems)):
            try:
                accelerator.load_state(str(path))
            except (*_CORRUPT_LOAD_ERRORS, SafetensorError) as err:
                problems = [f"loading failed: {type(err).__name__}: {err}"]
            if not _on_any_process(accelerator, bool(problems)):
                if damaged:
                    for bad_path, bad_problems in damaged if accelerator.is_main_process else ():
                        kept = _set_aside(bad_path)
                        warnings.warn(
                            f"checkpoint {bad_path} is damaged ({'; '.join(bad_problems)}); resumed from the previous "
                            f"intact one, {path}, instead. The damaged checkpoint is kept as {kept.name}: look at it "
                            "or delete it.", stacklevel=2)
                    accelerator.wait_for_everyone()
                accelerator.print(f"resumed from {path} (step {step})")
                return step
        damaged.append((path, problems or ["damaged on another process"]))
    if damaged:
        listing = "; ".join(f"{p.name}: {', '.join(why)}" for p, why in damaged)
        raise CheckpointError(
            f"no checkpoint in {directory} can be resumed from ({listing}). Nothing was changed. To keep the run's "
            f"progress, restore an intact checkpoint-<step> folder there; to start the run over, move or delete "
            f"{directory}."
        )
    return 0


def batch_indices(num_items: int, batch_size: int, seed: int, step: int):
    """Indices of the batch at ``step``: a pure function of (seed, step), so resuming needs no sampler state."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, num_items, (batch_size,), generator=g)


def prepare_model_training(accelerator, model, args, output: str | Path):
    """The embedded models' optimisation, prepared and resumed: AdamW, an EMA of the weights and the
    lr schedule (warm-up, held, then decayed to 0 over ``args.decay_steps``, default the last 20%;
    0: cosine from the warm-up). Returns ``(model, optimizer, lr schedule, ema, start step)``."""
    import torch
    from diffusers.training_utils import EMAModel
    from transformers.optimization import get_cosine_schedule_with_warmup, get_wsd_schedule

    ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=3 / 4)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    decay = round(0.2 * args.steps) if args.decay_steps is None else args.decay_steps
    # accelerate steps a prepared scheduler once per process at every optimizer step: count in those
    n = accelerator.num_processes
    if decay > 0:
        lr_sched = get_wsd_schedule(opt, args.warmup * n, decay * n, num_training_steps=args.steps * n)
    else:
        lr_sched = get_cosine_schedule_with_warmup(opt, args.warmup * n, args.steps * n)
    model, opt, lr_sched = accelerator.prepare(model, opt, lr_sched)
    accelerator.register_for_checkpointing(ema)
    return model, opt, lr_sched, ema, resume(accelerator, output)

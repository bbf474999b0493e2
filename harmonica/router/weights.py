"""A fingerprint of the transformer weights a router was trained on, and how far a model's weights are from it."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

# A summary of the transformer weights a router was trained on (its config's training.transformer_weights):
# per floating-point tensor, [mean, mean |w|, std, p_1, p_2, p_3] with p_k = sum_i s_ki w_i / sqrt(n) for fixed
# pseudo-random signs s_ki = +/-1. A cast to fp16 / bf16 moves each element by at most its rounding error
# (relative 2^-8 for bf16), so mean and mean |w| move by at most that times mean |w|, std by at most that
# times the tensor's rms, and p_k by about that times the rms (rounding errors summed with random signs),
# while N(0, sigma) noise on every weight moves p_k by about sigma. Tensors are compared one by one (see
# weights_distance); eval/weights_check.py measures both on a pipeline.
WEIGHTS_SUMMARY_FORMAT = "harmonica-weights-2"
BF16_ROUNDING = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits); fp16's is 2^-11
FP16_SMALLEST = 2.0**-24  # fp16 subnormal spacing: the absolute rounding error of tiny weights
WEIGHTS_SUMMARY_TOLERANCE = 4.0  # a statistic may move by this many bf16 rounding errors before weights differ
_PROJECTIONS = 3
_SUMMARY_DIGITS = 8


def _projection_signs(n: int, device) -> torch.Tensor:
    """``[_PROJECTIONS, n]`` of +/-1 from an integer hash of the element index: the same on every device."""
    h = (torch.arange(n, device=device, dtype=torch.int64) * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    bits = torch.stack([(h >> (3 * k + 1)) & 1 for k in range(_PROJECTIONS)])
    return (bits * 2 - 1).float()


@torch.no_grad()
def weights_summary(module: nn.Module) -> dict:
    """Per-tensor statistics of ``module``'s floating-point weights (see WEIGHTS_SUMMARY_FORMAT above), JSON-ready:
    ``{"format", "tensors": digest of the tensor names and shapes, "stats": [[mean, mean |w|, std, p1, p2, p3], ...]}``
    in ``state_dict`` order, computed in float32 on the weights' device."""
    import hashlib

    names, stats, signs = [], [], None
    for name, t in _base_tensors(module):
        w = t.detach().reshape(-1).float()  # float32 sums are far more precise than the tolerance needs
        n = w.numel()
        if signs is None or signs.shape[1] < n or signs.device != w.device:  # element i's signs do not depend on n
            signs = _projection_signs(max(n, 1 << 16), w.device)
        mean = w.mean()
        row = torch.cat([torch.stack([mean, w.abs().mean(), (w - mean).square().mean().sqrt()]),
                         (signs[:, :n] @ w) / math.sqrt(n)])
        names.append(f"{name}:{tuple(t.shape)}")
        stats.append([float(f"{v:.{_SUMMARY_DIGITS}g}") for v in row.tolist()])
    digest = hashlib.sha1(";".join(names).encode()).hexdigest()[:16]
    return {"format": WEIGHTS_SUMMARY_FORMAT, "tensors": digest, "stats": stats}


def _base_tensors(module: nn.Module):
    """``module``'s floating-point tensors (``state_dict`` order) as the model without LoRA layers names them: peft
    wraps each layer a LoRA targets, its own weights under ``base_layer`` and the adapters' under ``lora_*``, so a
    router trained on the base model is compared with the base weights (fused adapters have moved those)."""
    for name, t in module.state_dict().items():
        if torch.is_tensor(t) and t.is_floating_point() and t.numel() and ".lora_" not in name:
            yield name.replace(".base_layer.", "."), t


def _tensor_names(module: nn.Module) -> list[str]:
    return [name for name, _ in _base_tensors(module)]


def lora_adapters(module: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The peft LoRA adapters in ``module``: ``(active and not fused, fused)`` names (diffusers' ``load_lora_weights``
    / ``fuse_lora``; a peft tuner layer has ``base_layer``, ``active_adapters`` and ``merged_adapters``)."""
    active, fused = set(), set()
    for m in module.modules():
        if hasattr(m, "base_layer") and hasattr(m, "merged_adapters") and hasattr(m, "active_adapters"):
            fused.update(m.merged_adapters)
            if not getattr(m, "disable_adapters", False):
                active.update(m.active_adapters)
    return tuple(sorted(active - fused)), tuple(sorted(fused))


def weights_distance(recorded, module: nn.Module, summary: dict | None = None) -> tuple[float, str]:
    """How far ``module``'s weights are from those ``recorded`` (a router's ``training.transformer_weights``),
    in units of the tolerance: above 1 they are other weights (retrained or fine-tuned), at most 1 the same
    weights, possibly cast to fp16 / bf16. Returns ``(distance, what moved most)``.

    ``recorded`` is a ``weights_summary``, compared tensor by tensor: the largest move of a statistic, in bf16
    rounding errors of that tensor, over WEIGHTS_SUMMARY_TOLERANCE. ``summary`` is ``weights_summary(module)``
    when already computed.
    """
    if recorded is None:
        return math.inf, "no record of the weights"
    if not (isinstance(recorded, dict) and recorded.get("format") == WEIGHTS_SUMMARY_FORMAT):
        return 0.0, "a record of the weights in a format this version does not read"
    summary = weights_summary(module) if summary is None else summary
    if summary["tensors"] != recorded["tensors"] or len(summary["stats"]) != len(recorded["stats"]):
        return math.inf, "the transformer's tensors have other names or shapes"
    worst, where = 0.0, ""
    for i, (old, new) in enumerate(zip(recorded["stats"], summary["stats"])):
        mean, mean_abs, std = old[:3]
        # bounds of what rounding every element by at most BF16_ROUNDING (relative) does to each statistic:
        # mean and mean |w| move by at most BF16_ROUNDING * mean |w|, std by at most BF16_ROUNDING * rms, and
        # a projection by about BF16_ROUNDING * rms (a sum of rounding errors with random signs)
        rms_unit = BF16_ROUNDING * math.hypot(mean, std) + FP16_SMALLEST
        abs_unit = BF16_ROUNDING * mean_abs + FP16_SMALLEST
        moves = {"mean": abs(new[0] - mean) / abs_unit, "mean |w|": abs(new[1] - mean_abs) / abs_unit,
                 "std": abs(new[2] - std) / rms_unit}
        for k in range(_PROJECTIONS):
            moves[f"projection {k + 1}"] = abs(new[3 + k] - old[3 + k]) / rms_unit
        stat, move = max(moves.items(), key=lambda kv: kv[1] if kv[1] == kv[1] else math.inf)
        if not move <= worst:  # NaN / inf (overflow in fp16) counts as the worst
            worst, where = move, (i, stat, move)
    if not where:
        return 0.0, "no tensor moved"
    i, stat, move = where
    names = _tensor_names(module)
    name = names[i] if i < len(names) else f"tensor {i}"
    return worst / WEIGHTS_SUMMARY_TOLERANCE, (f"{name}: {stat} moved by {move:.3g} bf16 rounding errors of the "
                                               f"tensor, the tolerance for a cast is {WEIGHTS_SUMMARY_TOLERANCE:g}")


def warn_if_other_weights(training_info: dict, transformer: nn.Module, component: str | None = None) -> None:
    """Warn when a router was trained on other weights of the same architecture (a retrained or fine-tuned model,
    or a LoRA fused into the weights): it still runs, but its schedule was not learned for these weights. The
    same weights cast to fp16 / bf16 do not warn (see ``weights_distance``). With peft LoRA layers (not fused)
    the base weights are compared, and a match warns that the router's quality with the LoRA is unmeasured (it
    was trained on the base model). ``component``: the pipeline component holding ``transformer``; a router trained
    on two experts (Wan 2.2 A14B) records the second one's weights under its name (``expert_weights``)."""
    experts = training_info.get("expert_weights") or {}
    trained_on = experts[component] if component in experts else training_info.get("transformer_weights")
    if trained_on is None:
        return
    unfused, fused = lora_adapters(transformer)
    distance, what = weights_distance(trained_on, transformer)
    if not distance <= 1:
        why = (f"the LoRA adapter(s) {', '.join(fused)} fused into them moved them" if fused else
               "a fine-tune, a retrained model, or possibly a LoRA fused into the weights")
        warnings.warn(
            f"this router was trained on other transformer weights ({what}; {why}): its cache schedule may not "
            "fit this model and images may degrade; retrain the router for these weights (train/train_router.py)",
            stacklevel=4,
        )
    elif unfused or fused:
        warnings.warn(
            f"this router was trained on the base transformer weights, which LoRA adapter(s) "
            f"{', '.join(unfused + fused)} modify: its quality with this LoRA is unmeasured (train a router on "
            "the pipeline with the LoRA fused for a measured one)",
            stacklevel=4,
        )

"""The torch reference of the gather-apply: what a run of reused branches does to the residual stream.

For each reused branch ``i`` (in order) the block computes ``hidden = gate_i * f_i + hidden`` (attn2 of
PixArt has no gate: ``hidden = f_i + hidden``), where ``f_i`` is the branch's output rebuilt from the
cache: its last computed output (reuse), or a forecast ``sum_k c_ik * cached_ik`` over its last
computed outputs (``forecast``). The reference does exactly that, one branch after the other in the
tensors' own dtype, with the same ``forecast`` the cache hooks use, so its fp32 result is
bit-identical to the blocks' own code. It runs on any device and is the fallback wherever the fused
kernel is not available.
"""

from __future__ import annotations

from typing import Sequence

import torch


def channel_gate(gate: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
    """``gate`` shaped to broadcast against ``hidden`` ``[batch, *tokens, channels]``.

    Accepted: ``None`` (gate 1), a scalar, ``[channels]``, ``[batch, channels]`` (DiT's raw
    ``gate_msa``; a token axis is inserted) or a tensor of ``hidden``'s rank that broadcasts to it
    (``[batch, 1, channels]`` as DiT's ``gate_msa.unsqueeze(1)`` and PixArt's gates).
    """
    if gate is None:
        return None
    if not torch.is_tensor(gate):
        gate = torch.as_tensor(gate, device=hidden.device)
    if gate.dim() == 2 and hidden.dim() > 2:
        gate = gate.reshape(gate.shape[0], *([1] * (hidden.dim() - 2)), gate.shape[1])
    try:
        torch.broadcast_shapes(gate.shape, hidden.shape)
    except RuntimeError:
        raise ValueError(
            f"a gate of shape {tuple(gate.shape)} does not broadcast to the hidden state {tuple(hidden.shape)}; "
            "pass [batch, 1, channels], [batch, channels], [channels], a scalar or None"
        ) from None
    if torch.broadcast_shapes(gate.shape, hidden.shape) != hidden.shape:
        raise ValueError(f"a gate of shape {tuple(gate.shape)} would enlarge the hidden state {tuple(hidden.shape)}")
    return gate


def forecast(history: Sequence[torch.Tensor], coefficients: Sequence[float] | None = None) -> torch.Tensor:
    """A branch output rebuilt from its last computed outputs (most recent first):
    ``c_0 * h_0 + c_1 * h_1 + ...``, summed in that order. Reuse (no coefficients, or one coefficient
    of exactly 1 given as a number) returns ``h_0`` itself, without arithmetic; coefficients given as
    tensors (router training) always take part, so they receive gradients."""
    if coefficients is None or (len(coefficients) == 1 and not torch.is_tensor(coefficients[0])
                                and coefficients[0] == 1.0):
        return history[0]
    if len(coefficients) != len(history):
        raise ValueError(f"{len(history)} cached outputs but {len(coefficients)} coefficients")
    out = coefficients[0] * history[0]
    for c, h in zip(coefficients[1:], history[1:]):
        out = out + c * h
    return out


def apply_branch(hidden: torch.Tensor, cached: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """One reused branch as the block's own code applies it (out of place): ``gate * cached + hidden``."""
    return (cached if gate is None else gate * cached) + hidden


def gather_apply_reference(
    hidden: torch.Tensor,
    storage: torch.Tensor,
    terms: Sequence[Sequence[int]],
    gates: Sequence[torch.Tensor | None],
    coefficients: Sequence[Sequence[float] | None] | None = None,
    inplace: bool = True,
) -> torch.Tensor:
    """``hidden + sum_i gates[i] * forecast(storage[terms[i]], coefficients[i])``, branch by branch in order.

    ``terms[i]`` are branch ``i``'s pool slots, most recent first (one slot: reuse). ``gates`` must
    already be shaped by ``channel_gate``. With ``inplace`` the sum is accumulated in ``hidden``
    itself, which is returned; otherwise ``hidden`` is left as it was and a new tensor is returned.
    """
    # out of place: a contiguous result, as a block's own residual add gives (its layout is what the
    # next block sees, and compiled blocks are specialised on it)
    out = hidden if inplace else hidden.clone(memory_format=torch.contiguous_format)
    coefficients = coefficients or [None] * len(terms)
    for slots, gate, coefs in zip(terms, gates, coefficients):
        # a history kept in another dtype or in host memory: cast and copy over
        f = forecast([storage[s].to(device=out.device, dtype=out.dtype, non_blocking=True) for s in slots], coefs)
        out.add_(f if gate is None else gate * f)
    return out

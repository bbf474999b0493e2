"""The torch reference of the gather-apply: what a run of reused branches does to the residual stream.

For each reused branch ``i`` (in order) the block computes ``hidden = gate_i * cached_i + hidden``
(attn2 of PixArt has no gate: ``hidden = cached_i + hidden``). The reference does exactly that, one
branch after the other in the tensors' own dtype, so its fp32 result is bit-identical to the blocks'
own code. It runs on any device and is the fallback wherever the fused kernel is not available.
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


def apply_branch(hidden: torch.Tensor, cached: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """One reused branch as the block's own code applies it (out of place): ``gate * cached + hidden``."""
    return (cached if gate is None else gate * cached) + hidden


def gather_apply_reference(
    hidden: torch.Tensor,
    storage: torch.Tensor,
    indices: Sequence[int],
    gates: Sequence[torch.Tensor | None],
    inplace: bool = True,
) -> torch.Tensor:
    """``hidden + sum_i gates[i] * storage[indices[i]]``, adding the branches in order.

    ``gates`` must already be shaped by ``channel_gate``. With ``inplace`` the sum is accumulated in
    ``hidden`` itself, which is returned; otherwise ``hidden`` is left as it was and a new tensor is
    returned.
    """
    out = hidden if inplace else hidden.clone()
    for slot, gate in zip(indices, gates):
        cached = storage[slot]
        out.add_(cached if gate is None else gate * cached)
    return out

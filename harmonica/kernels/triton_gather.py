"""The fused gather-apply kernel in Triton: ``out = hidden + sum_k gate_k * pool[slot_k]`` in one pass.

One launch handles a whole run of reused branches. Each program owns a tile of ``BLOCK_T`` tokens x
``BLOCK_D`` channels of one batch row: it loads the hidden tile once, streams the ``K`` cached tiles
from the pool (slot numbers read from device memory), accumulates ``gate * cached`` in fp32 in the
order given and stores the result once. Memory traffic is ``(K + 2)`` tensors instead of the ``5K`` an
unfused ``gate * cached + hidden`` per branch moves (read, write the product; read it and hidden, write).

Floating-point contraction is disabled (``enable_fp_fusion=False``), so with fp32 tensors every product
and sum is rounded exactly as torch rounds the block's own ``gate * cached + hidden``: results are
bit-identical to the reference. In fp16/bf16 the kernel accumulates in fp32 and rounds once, which is
at least as accurate as the per-branch rounding of the unfused code.

The ``@triton.jit`` decoration is done lazily, once per interpreter mode: Triton picks compiled or
interpreted execution when a function is decorated, so deciding at first use (instead of at import)
makes ``TRITON_INTERPRET=1`` work whenever it is set before the first launch, whoever imported this
module first.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .reference import channel_gate

MAX_TILE = 4096  # elements per program (BLOCK_T * BLOCK_D)
MAX_BLOCK_D = 128


def _gather_apply_kernel(
    hidden_ptr,
    out_ptr,
    pool_ptr,
    slot_ptr,
    gate_ptr,
    num_reused,
    tokens,
    channels,
    hidden_stride_b,
    hidden_stride_t,
    hidden_stride_d,
    out_stride_b,
    out_stride_t,
    out_stride_d,
    slot_numel,
    gate_stride_k,
    gate_stride_b,
    gate_stride_d,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (token block, batch row, channel block) of the fused gather-apply."""
    batch = tl.program_id(1).to(tl.int64)
    token = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    channel = (tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    channel_ok = channel < channels
    mask = (token < tokens)[:, None] & channel_ok[None, :]

    hidden_offsets = batch * hidden_stride_b + token[:, None] * hidden_stride_t + channel[None, :] * hidden_stride_d
    pool_offsets = batch * tokens * channels + token[:, None] * channels + channel[None, :]  # slots are contiguous
    gate_offsets = batch * gate_stride_b + channel * gate_stride_d

    acc = tl.load(hidden_ptr + hidden_offsets, mask=mask, other=0.0).to(tl.float32)
    for k in range(0, num_reused):
        slot = tl.load(slot_ptr + k).to(tl.int64)
        gate = tl.load(gate_ptr + k * gate_stride_k + gate_offsets, mask=channel_ok, other=0.0).to(tl.float32)
        cached = tl.load(
            pool_ptr + slot * slot_numel + pool_offsets, mask=mask, other=0.0, eviction_policy="evict_first"
        ).to(tl.float32)
        acc = acc + gate[None, :] * cached

    out_offsets = batch * out_stride_b + token[:, None] * out_stride_t + channel[None, :] * out_stride_d
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


_KERNELS: dict[bool, object] = {}


def interpreter_enabled() -> bool:
    """Whether Triton would run kernels decorated now in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel():
    """The kernel decorated for the current mode (compiled or interpreted), made once per mode."""
    mode = interpreter_enabled()
    found = _KERNELS.get(mode)
    if found is None:
        found = _KERNELS[mode] = triton.jit(_gather_apply_kernel, do_not_specialize=["num_reused"])
    return found


def gate_table(gates, hidden: torch.Tensor) -> torch.Tensor | None:
    """The gates as one ``[K, batch, channels]`` tensor, or None when a gate varies along the tokens
    (the kernel reads one gate vector per batch row; the reference handles such gates)."""
    batch, channels = hidden.shape[0], hidden.shape[-1]
    rows = []
    for gate in gates:
        gate = channel_gate(gate, hidden)
        if gate is None:
            rows.append(None)
            continue
        full = gate.broadcast_to(hidden.shape)
        for dim in range(1, hidden.dim() - 1):
            if full.stride(dim) != 0 and hidden.shape[dim] != 1:
                return None
        rows.append(full[(slice(None),) + (0,) * (hidden.dim() - 2) + (slice(None),)])
    dtypes = {row.dtype for row in rows if row is not None}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    ones = torch.ones((), dtype=dtype, device=hidden.device).expand(batch, channels)
    if not rows:
        return ones.unsqueeze(0)[:0]
    return torch.stack([ones if row is None else row.to(device=hidden.device, dtype=dtype) for row in rows])


def _as_batch_token_channel(tensor: torch.Tensor) -> torch.Tensor:
    """A ``[batch, tokens, channels]`` view of ``tensor`` (raises RuntimeError when none exists)."""
    if tensor.dim() == 2:
        return tensor.unsqueeze(1)
    if tensor.dim() == 3:
        return tensor
    return tensor.view(tensor.shape[0], -1, tensor.shape[-1])


def _tile(tokens: int, channels: int) -> tuple[int, int]:
    block_d = min(MAX_BLOCK_D, triton.next_power_of_2(channels))
    block_t = min(triton.next_power_of_2(tokens), max(1, MAX_TILE // block_d))
    return block_t, block_d


def gather_apply_triton(
    hidden: torch.Tensor,
    storage: torch.Tensor,
    slots: torch.Tensor,
    gates: torch.Tensor,
    inplace: bool = True,
) -> torch.Tensor:
    """Launch the fused kernel once.

    Args:
        hidden: ``[batch, *tokens, channels]``, any strides (a copy is made only when no
            ``[batch, tokens, channels]`` view exists).
        storage: the pool, contiguous ``[num_slots, *hidden.shape]``.
        slots: int64 slot numbers on ``hidden``'s device, ``[K]``.
        gates: ``[K, batch, channels]`` (from ``gate_table``; strides may be 0).
        inplace: accumulate into ``hidden`` and return it; else return a new tensor.
    """
    if not storage.is_contiguous() or tuple(storage.shape[1:]) != tuple(hidden.shape):
        raise ValueError(
            f"the pool must be contiguous with slots shaped like the hidden state {tuple(hidden.shape)}, "
            f"got {tuple(storage.shape)}"
        )
    copied = False
    try:
        work = _as_batch_token_channel(hidden)
    except RuntimeError:  # a rank > 3 tensor whose token dims cannot be merged without a copy
        work = _as_batch_token_channel(hidden.contiguous())
        copied = True
    out = work if inplace else torch.empty(work.shape, dtype=hidden.dtype, device=hidden.device)
    batch, tokens, channels = work.shape
    num_reused = slots.numel()
    if num_reused:
        block_t, block_d = _tile(tokens, channels)
        grid = (triton.cdiv(tokens, block_t), batch, triton.cdiv(channels, block_d))
        kernel()[grid](
            work, out, storage, slots, gates,
            num_reused, tokens, channels,
            *work.stride(), *out.stride(),
            batch * tokens * channels,
            gates.stride(0), gates.stride(1), gates.stride(2),
            BLOCK_T=block_t, BLOCK_D=block_d,
            num_warps=4, enable_fp_fusion=False,
        )  # fmt: skip
    elif not inplace:
        out.copy_(work)
    if not inplace:
        return out.view(hidden.shape)
    if copied:
        hidden.copy_(work.view(hidden.shape))
    return hidden

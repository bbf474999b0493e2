"""The fused gather-apply kernel in Triton: ``out = hidden + sum_i gate_i * sum_k c_ik * pool[slot_ik]``.

One launch handles a whole run of reused branches. Each program owns a tile of ``BLOCK_T`` tokens x
``BLOCK_D`` channels of one batch row: it loads the hidden tile once, and for every branch streams its
cached tiles from the pool (slot numbers and forecast coefficients read from device memory; one slot
with coefficient 1 is plain reuse), forms the branch's forecast ``sum_k c_k * cached_k`` and adds
``gate * forecast``, all in fp32 in the order given, and stores the result once. Memory traffic is
``(T + 2)`` tensors for ``T`` cached tiles instead of the ``5T`` an unfused per-branch apply moves.

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
    coef_ptr,
    offset_ptr,
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
        first = tl.load(offset_ptr + k)
        last = tl.load(offset_ptr + k + 1)
        slot = tl.load(slot_ptr + first).to(tl.int64)
        coef = tl.load(coef_ptr + first)
        branch = coef * tl.load(
            pool_ptr + slot * slot_numel + pool_offsets, mask=mask, other=0.0, eviction_policy="evict_first"
        ).to(tl.float32)
        for j in range(first + 1, last):
            slot = tl.load(slot_ptr + j).to(tl.int64)
            coef = tl.load(coef_ptr + j)
            branch = branch + coef * tl.load(
                pool_ptr + slot * slot_numel + pool_offsets, mask=mask, other=0.0, eviction_policy="evict_first"
            ).to(tl.float32)
        gate = tl.load(gate_ptr + k * gate_stride_k + gate_offsets, mask=channel_ok, other=0.0).to(tl.float32)
        acc = acc + gate[None, :] * branch

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


_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
MAX_TABLES = 1024


def term_tables(terms, coefficients, num_branches: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Device tables of one run: flat slots, flat fp32 coefficients and per-branch offsets into them.
    ``terms`` None: one slot per branch (the slot table is supplied by the caller), coefficient 1.
    Made once per distinct run and device (forecast runs repeat every call)."""
    key = (None if terms is None else tuple(map(tuple, terms)),
           None if coefficients is None else tuple(None if c is None else tuple(c) for c in coefficients),
           num_branches, str(device))
    found = _TABLES.get(key)
    if found is None:
        if terms is None:
            terms = [[0]] * num_branches
        coefs = [c if c is not None else [1.0] * len(t) for t, c in zip(terms, coefficients or [None] * len(terms))]
        offsets = [0]
        for t in terms:
            offsets.append(offsets[-1] + len(t))
        found = (torch.tensor([s for t in terms for s in t], dtype=torch.int64, device=device),
                 torch.tensor([c for cs in coefs for c in cs], dtype=torch.float32, device=device),
                 torch.tensor(offsets, dtype=torch.int64, device=device))
        if len(_TABLES) >= MAX_TABLES:
            _TABLES.clear()
        _TABLES[key] = found
    return found


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
    plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    gates: torch.Tensor,
    inplace: bool = True,
) -> torch.Tensor:
    """Launch the fused kernel once.

    Args:
        hidden: ``[batch, *tokens, channels]``, any strides (a copy is made only when no
            ``[batch, tokens, channels]`` view exists).
        storage: the pool, contiguous ``[num_slots, *hidden.shape]``.
        plan: ``(slots, coefficients, offsets)`` on ``hidden``'s device (``term_tables``): branch ``k``
            is ``sum_j coefficients[j] * pool[slots[j]]`` over ``offsets[k] <= j < offsets[k + 1]``.
        gates: ``[K, batch, channels]`` for ``K`` branches (from ``gate_table``; strides may be 0).
        inplace: accumulate into ``hidden`` and return it; else return a new tensor.
    """
    slots, coefficients, offsets = plan
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
    num_reused = offsets.numel() - 1
    if num_reused:
        block_t, block_d = _tile(tokens, channels)
        grid = (triton.cdiv(tokens, block_t), batch, triton.cdiv(channels, block_d))
        kernel()[grid](
            work, out, storage, slots, coefficients, offsets, gates,
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

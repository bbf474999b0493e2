"""Feature-cache kernels: a preallocated ``CachePool`` and the fused gather-apply of reused branches.

A run of consecutive reused branches changes the residual stream by ``sum_i gate_i * f_i``, where
``f_i`` is branch ``i``'s cached output (reuse) or a forecast ``sum_k c_ik * cached_ik`` over its last
computed outputs. ``gather_apply(hidden, pool, indices, gates, coefficients=...)`` adds that sum to
``hidden`` in one pass:

* ``"triton"``: the fused Triton kernel (``triton_gather``), used for CUDA tensors when Triton imports;
* ``"triton-interpreter"``: the same kernel in Triton's CPU interpreter, used whenever
  ``TRITON_INTERPRET=1`` is set (for tests; slow);
* ``"torch"``: the reference (``reference``), one ``add_`` per branch, used everywhere else. Choosing
  it because Triton or a GPU is missing is logged once (logger ``harmonica.kernels``).

``backend(device)`` names the implementation used for tensors on ``device``. In fp32 every backend
gives bit-identical results; in fp16/bf16 the kernel rounds once instead of twice per branch.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from .pool import CachePool
from .reference import apply_branch, channel_gate, forecast, gather_apply_reference

__all__ = [
    "CachePool",
    "gather_apply",
    "backend",
    "channel_gate",
    "apply_branch",
    "forecast",
    "TORCH",
    "TRITON",
    "TRITON_INTERPRETER",
]

logger = logging.getLogger(__name__)

TORCH = "torch"
TRITON = "triton"
TRITON_INTERPRETER = "triton-interpreter"
IMPLEMENTATIONS = (TORCH, TRITON, TRITON_INTERPRETER)

_triton_import: tuple[object, str | None] | None = None  # (module or None, why it is missing)
_announced: set[str] = set()  # log messages already written
_failed_devices: dict[str, str] = {}  # device type -> error of a kernel that never launched there
_launched_devices: set[str] = set()  # device types where the kernel has run at least once


def _announce_once(level: int, message: str) -> None:
    if message not in _announced:
        _announced.add(message)
        logger.log(level, message)


def _triton_gather():
    """The ``triton_gather`` module, or None with the reason Triton cannot be used (imported once)."""
    global _triton_import
    if _triton_import is None:
        try:
            from . import triton_gather

            _triton_import = (triton_gather, None)
        except Exception as err:  # ImportError, or a broken Triton install failing on import
            _triton_import = (None, f"{type(err).__name__}: {err}")
    return _triton_import


def backend(device: torch.device | str | None = None) -> str:
    """The implementation ``gather_apply`` uses for tensors on ``device`` (default: CUDA if present,
    else CPU): ``"triton"``, ``"triton-interpreter"`` or ``"torch"``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    module, missing = _triton_gather()
    if module is not None and module.interpreter_enabled():
        return TRITON_INTERPRETER
    if device_type == "cuda":
        if module is None:
            _announce_once(
                logging.WARNING,
                f"harmonica.kernels: Triton is not available ({missing}); cached branches are applied with the "
                "torch reference instead of the fused kernel (install harmonica-cache[triton])",
            )
            return TORCH
        if device_type in _failed_devices:
            return TORCH
        return TRITON
    why = f"Triton is not available ({missing})" if module is None else f"tensors are on {device_type}"
    _announce_once(
        logging.INFO,
        f"harmonica.kernels: using the torch reference for cached branches: the fused kernel needs Triton and "
        f"a CUDA device, and {why}",
    )
    return TORCH


def _terms(indices, coefficients) -> tuple[list[list[int]] | None, list | None]:
    """Per-branch slot lists and coefficient lists (None: a device tensor of one slot per branch)."""
    if torch.is_tensor(indices):
        if indices.dim() != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(
                f"indices must be a 1-D integer tensor or a list of ints, got {indices.dtype} {tuple(indices.shape)}"
            )
        if coefficients is not None:
            raise ValueError("forecast coefficients need indices as a list of slot lists, not a tensor")
        return None, None
    terms = [[int(i)] if isinstance(i, (int,)) or (torch.is_tensor(i) and i.dim() == 0) else [int(j) for j in i]
             for i in indices]
    if any(len(t) == 0 for t in terms):
        raise ValueError("every branch needs at least one cached slot")
    if coefficients is None:
        if any(len(t) != 1 for t in terms):
            raise ValueError("a branch with several cached slots needs its forecast coefficients")
        return terms, None
    # numbers are read once here; tensors (traced by torch.compile) stay tensors for the reference
    coefficients = [None if c is None else c if torch.is_tensor(c) else [float(x) for x in c] for c in coefficients]
    if len(coefficients) != len(terms) or any(c is not None and len(c) != len(t) for c, t in zip(coefficients, terms)):
        raise ValueError("coefficients must give one number per cached slot of every branch")
    return terms, coefficients


def _check_inputs(hidden: torch.Tensor, storage: torch.Tensor, inplace: bool) -> None:
    if not torch.is_tensor(hidden) or hidden.dim() < 2 or not hidden.dtype.is_floating_point:
        raise ValueError("hidden must be a floating-point tensor [batch, *tokens, channels]")
    if tuple(storage.shape[1:]) != tuple(hidden.shape):
        raise ValueError(
            f"pool slots have shape {tuple(storage.shape[1:])} but the hidden state is {tuple(hidden.shape)}"
        )
    if storage.device != hidden.device and storage.device.type != "cpu":
        raise ValueError(f"the pool is on {storage.device} and the hidden state on {hidden.device}")
    if inplace and any(s == 0 and n > 1 for s, n in zip(hidden.stride(), hidden.shape)):
        raise ValueError("cannot update an expanded (stride-0) hidden state in place; pass inplace=False")


def gather_apply(
    hidden: torch.Tensor,
    pool: CachePool | torch.Tensor,
    indices: Sequence[int] | torch.Tensor,
    gates: Sequence[torch.Tensor | None] | torch.Tensor | None = None,
    *,
    coefficients: Sequence[Sequence[float] | None] | None = None,
    inplace: bool = True,
    implementation: str | None = None,
) -> torch.Tensor:
    """Add ``sum_i gates[i] * f_i`` to ``hidden``, branch by branch in the order given, where ``f_i`` is
    ``pool[indices[i]]`` (reuse) or ``forecast(pool[indices[i]], coefficients[i])``.

    Args:
        hidden: the residual stream ``[batch, *tokens, channels]`` (fp32, fp16 or bf16; any strides).
        pool: a ``CachePool`` (its written slots are checked) or a raw ``[num_slots, *hidden.shape]``
            tensor, on the hidden state's device or in host memory (then the torch reference reads it over).
        indices: the run's slots: one int per branch (reuse), or per branch a list of slots, most
            recent first, combined with ``coefficients``; or a 1-D integer tensor of one slot per
            branch (a device tensor skips the host-side checks).
        gates: one gate per index, as a list or a tensor whose rows are the gates (``None`` entries
            mean gate 1; ``None`` for all means no gates).
            Each is ``[batch, 1, channels]``, ``[batch, channels]``, ``[channels]`` or a scalar;
            the fused kernel needs gates constant along the tokens (others use the reference).
        coefficients: per branch, the forecast coefficients of its slots (``None`` for a branch: reuse
            of its one slot); None for all: reuse.
        inplace: if True (default) ``hidden`` itself is updated and returned; if False ``hidden`` is
            left as it was and a new tensor is returned.
        implementation: force ``"torch"`` or ``"triton"`` (default: ``backend(hidden.device)``).
            The fused kernel has no backward: when autograd records through ``hidden``, the pool
            or a gate, the reference is used whatever the choice.

    Returns:
        The updated hidden state (``hidden`` itself when ``inplace``).
    """
    storage = pool.storage if isinstance(pool, CachePool) else pool
    _check_inputs(hidden, storage, inplace)
    terms, coefficients = _terms(indices, coefficients)
    count = len(terms) if terms is not None else indices.numel()
    gates = [None] * count if gates is None else list(gates)
    if len(gates) != count:
        raise ValueError(f"got {count} indices but {len(gates)} gates")
    if terms is not None:
        flat = [s for t in terms for s in t]
        if isinstance(pool, CachePool):
            pool.check_readable(flat)
        elif any(not 0 <= s < storage.shape[0] for s in flat):
            raise IndexError(f"indices {flat} are outside a pool of {storage.shape[0]} slots")

    # under torch.compile the reference is traced and inductor fuses it into one kernel of its own
    chosen = implementation or (TORCH if torch.compiler.is_compiling() else backend(hidden.device))
    if chosen not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if storage.device != hidden.device:  # a history kept in host memory: the reference copies each slot over
        chosen = TORCH
    if chosen != TORCH and not _records_grad(hidden, storage, gates):
        out = _try_fused(hidden, pool, storage, indices, terms, coefficients, gates, inplace, chosen)
        if out is not None:
            return out
    terms = terms if terms is not None else [[s] for s in indices.tolist()]
    shaped = [channel_gate(g, hidden) for g in gates]
    return gather_apply_reference(hidden, storage, terms, shaped, coefficients, inplace)


def _records_grad(hidden: torch.Tensor, storage: torch.Tensor, gates) -> bool:
    """True when autograd would track this update (the fused kernel has no backward)."""
    if not torch.is_grad_enabled():
        return False
    tensors = [hidden, storage] + [g for g in gates if torch.is_tensor(g)]
    return any(t.requires_grad for t in tensors)


def _try_fused(hidden, pool, storage, indices, terms, coefficients, gates, inplace, chosen) -> torch.Tensor | None:
    """Run the Triton kernel; None when the reference must do it instead (the reason is logged once)."""
    module, missing = _triton_gather()
    if module is None:
        raise RuntimeError(f"implementation {chosen!r} was asked for but Triton is not available ({missing})")
    if hidden.device.type != "cuda" and not module.interpreter_enabled():
        raise RuntimeError(
            f"the Triton kernel needs a CUDA device or TRITON_INTERPRET=1; the tensors are on {hidden.device}"
        )
    table = module.gate_table(gates, hidden)
    if table is None:
        _announce_once(
            logging.INFO, "harmonica.kernels: gates that vary along tokens are applied by the torch reference"
        )
        return None
    if terms is None:
        slot_tensor = indices.to(device=hidden.device, dtype=torch.int64)
        plan = module.term_tables(None, None, slot_tensor.numel(), hidden.device)
    else:
        plan = module.term_tables(terms, coefficients, len(terms), hidden.device)
        slot_tensor = pool.index_tensor([s for t in terms for s in t]) if isinstance(pool, CachePool) else plan[0]
    plan = (slot_tensor,) + plan[1:]
    device_type = hidden.device.type
    if device_type in _launched_devices or module.interpreter_enabled():
        return module.gather_apply_triton(hidden, storage, plan, table, inplace)
    try:  # the first launch on a device compiles the kernel: a toolchain problem falls back, once
        out = module.gather_apply_triton(hidden, storage, plan, table, inplace)
    except Exception as err:
        _failed_devices[device_type] = f"{type(err).__name__}: {err}"
        _announce_once(
            logging.WARNING,
            f"harmonica.kernels: the fused Triton kernel failed to launch on {device_type} ({err}); using the "
            "torch reference from now on",
        )
        return None
    _launched_devices.add(device_type)
    return out

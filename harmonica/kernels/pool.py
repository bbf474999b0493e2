"""``CachePool``: one preallocated buffer that holds the cached (un-gated) branch outputs of a call.

The pool is a single tensor ``storage`` of shape ``[num_slots, *shape]`` in the model's dtype on the
model's device. Writing a slot copies a freshly computed branch output into it in place, so sampling
allocates no cache memory after the pool is made: one allocation per pipeline call (or fewer, when
``matches`` says the previous call's pool fits the next one).

Slots are plain integers chosen by the caller. A caller that only caches branches reused at least once
in its schedule can map those branches to ``0 .. num_slots - 1`` and make the pool that much smaller.
"""

from __future__ import annotations

from typing import Sequence

import torch


class CachePool:
    """Preallocated storage for ``num_slots`` tensors of one ``shape``, ``dtype`` and ``device``.

    Args:
        num_slots: how many branch outputs the pool holds.
        shape: the shape of one branch output, e.g. ``(batch, tokens, hidden)``.
        dtype: the model's dtype (branch outputs are cast to it when written).
        device: where the storage lives.
        pin_memory: page-locked host memory (a CPU pool serving a GPU: faster, asynchronous copies).
    """

    def __init__(self, num_slots: int, shape: Sequence[int], dtype: torch.dtype = torch.float32, device="cpu",
                 pin_memory: bool = False):
        if int(num_slots) < 1:
            raise ValueError(f"a CachePool needs at least one slot, got num_slots={num_slots}")
        shape = tuple(int(s) for s in shape)
        if any(s < 1 for s in shape):
            raise ValueError(f"every dimension of a slot must be positive, got shape {shape}")
        self.storage = torch.empty((int(num_slots), *shape), dtype=dtype, device=device, pin_memory=pin_memory)
        self._written = [False] * int(num_slots)
        self._index_tensors: dict[tuple[int, ...], torch.Tensor] = {}

    # ------------------------------------------------------------------------- properties
    @property
    def num_slots(self) -> int:
        return self.storage.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one slot."""
        return tuple(self.storage.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def device(self) -> torch.device:
        return self.storage.device

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()

    def matches(self, num_slots: int, shape: Sequence[int], dtype: torch.dtype, device) -> bool:
        """True when this pool can serve a call needing these slots (so it need not be reallocated)."""
        return (
            self.num_slots == int(num_slots)
            and self.shape == tuple(int(s) for s in shape)
            and self.dtype == dtype
            and self.device == torch.device(device)
        )

    # ----------------------------------------------------------------------- reads and writes
    def _check_slot(self, slot: int) -> int:
        if not 0 <= int(slot) < self.num_slots:
            raise IndexError(f"slot {slot} is outside the pool (it has {self.num_slots} slots)")
        return int(slot)

    def write(self, slot: int, tensor: torch.Tensor) -> torch.Tensor:
        """Copy ``tensor`` into ``slot`` (in place, detached, cast to the pool's dtype); returns the slot."""
        slot = self._check_slot(slot)
        if tuple(tensor.shape) != self.shape:
            raise ValueError(
                f"cannot write a tensor of shape {tuple(tensor.shape)} into a pool of slot shape {self.shape}; "
                "a pool serves one input shape: make a new pool when the batch or resolution changes"
            )
        target = self.storage[slot]
        with torch.no_grad():
            target.copy_(tensor)
        self._written[slot] = True
        return target

    def push(self, first: int, depth: int, tensor: torch.Tensor) -> torch.Tensor:
        """Keep a history in slots ``first .. first + depth - 1``, most recent first: move each written
        slot one place back (the oldest falls off) and write ``tensor`` at ``first``. Slot positions never
        depend on how often a history was written, so compiled graphs that read them are reused."""
        for k in range(depth - 1, 0, -1):
            if self._written[self._check_slot(first + k - 1)]:
                with torch.no_grad():
                    self.storage[first + k].copy_(self.storage[first + k - 1])
                self._written[first + k] = True
        return self.write(first, tensor)

    def read(self, slot: int) -> torch.Tensor:
        """The tensor stored in ``slot``: a view of the pool (no copy), overwritten by the next ``write``."""
        slot = self._check_slot(slot)
        if not self._written[slot]:
            raise RuntimeError(f"slot {slot} of the cache pool has not been written since the pool was cleared")
        return self.storage[slot]

    def is_written(self, slot: int) -> bool:
        return self._written[self._check_slot(slot)]

    def check_readable(self, indices: Sequence[int]) -> None:
        """Raise unless every slot in ``indices`` is inside the pool and has been written."""
        for slot in indices:
            self.read(slot)

    def clear(self) -> None:
        """Forget what the slots hold (the memory stays allocated for the next call)."""
        self._written = [False] * self.num_slots

    def index_tensor(self, indices: Sequence[int]) -> torch.Tensor:
        """``indices`` as an int64 tensor on the pool's device, made once per distinct run of slots.

        The fused kernel reads its slot list from device memory; reusing these tensors saves a small
        host-to-device copy on every step.
        """
        key = tuple(int(i) for i in indices)
        found = self._index_tensors.get(key)
        if found is None:
            for slot in key:
                self._check_slot(slot)
            found = torch.tensor(key, dtype=torch.int64, device=self.device)
            self._index_tensors[key] = found
        return found

    def __repr__(self) -> str:
        return (
            f"CachePool(num_slots={self.num_slots}, shape={self.shape}, dtype={self.dtype}, "
            f"device={self.device}, {self.nbytes / 2**20:.1f} MiB)"
        )

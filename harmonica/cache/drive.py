"""Router training's forwards, run by the same hooks and cache state as inference.

Router training (``harmonica.training``) drives every forward itself: it says which step it is (no scheduler
lookup) and what the branches do, as a mode of the same ``BranchHook`` and ``CacheState`` inference uses, so a
rebuilt branch in training is exactly what inference rebuilds:

* ``"off"``: the plain model (the teacher): no cache read or write;
* ``"fill"``: compute every branch and keep its output (a trajectory's first step, or LTC's clean full pass);
* ``"hard"``: a fixed compute / rebuild row ``compute[slot]``, as inference runs it (gradient-free sampling for
  the image-error proxy);
* ``"mix"``: the student: ``score * fresh + (1 - score) * forecast`` per branch, the fresh output kept
  (detached) where ``write[slot]``, as inference at the current threshold would have computed there.

A rebuilt branch is ``forecast(history, coefficients[slot, :len(history)])`` over its last computed outputs
(at most the router's ``history``); in "mix" the coefficients carry gradients. Outputs are kept per cache
context ("cond" / "uncond") and transformer as inference keeps them; a "fill" starts its cache afresh, and the
first forward of a Wan 2.2 expert taking over from the other fills its own, as inference does (``took_over``);
``isolated()`` runs forwards on fresh caches and restores the caller's afterwards. Fused whole-block applies are
not used: branches are rebuilt one by one.

Gradient checkpointing (``checkpoint_blocks``) recomputes each block of the student's forward in the backward,
the router's mix included. The hooks are stateful (a mixed branch reads its kept outputs, then keeps its fresh
one), so a checkpointed block is a ``Region``: the forward records what its branches read, and the recomputation
rebuilds from those same outputs and keeps nothing, leaving the caches as one forward left them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from ..families import family_for, pipeline_transformers
from ..kernels import forecast
from ..router import HarmoniCaRouter
from .controller import HarmoniCa

MODES = ("off", "fill", "hard", "mix")


@dataclass(frozen=True)
class Drive:
    """What the forwards inside ``DrivenCache.running`` do (see the module docstring)."""

    mode: str
    step: int
    compute: list | None = None
    scores: torch.Tensor | None = None
    write: list | None = None
    coefficients: torch.Tensor | None = None  # the step's [slot, history] (None: plain reuse)


class Region:
    """One checkpointed block call of the student's forward: the kept outputs its branches read (copies: the
    forward's own writes move the pools on), read again when the backward recomputes the block."""

    def __init__(self):
        self.reads: dict[tuple[int, int], tuple | None] = {}
        self.replaying = False  # the recomputation: rebuild from ``reads``, keep nothing

    def rebuild(self, state, slot: int, element: int, coefficients) -> torch.Tensor | None:
        if not self.replaying:
            gathered = state.gather(slot, element, coefficients)
            self.reads[slot, element] = None if gathered is None else ([o.clone() for o in gathered[0]], gathered[1])
        gathered = self.reads[slot, element]
        return None if gathered is None else forecast(*gathered)


class DrivenCache:
    """The cache hooks on ``pipe``'s transformer with the forwards driven by router training."""

    def __init__(self, pipe, router: HarmoniCaRouter):
        self.pipe = pipe
        self.controller = HarmoniCa(pipe, router, None, fused=False, keep=router.history)
        self.controller.drive = Drive("off", 0)
        self.num_slots = self.controller.plans[0].num_slots

    @property
    def mode(self) -> str:
        """The mode of the forwards run now ("off" outside ``running``)."""
        return self.controller.drive.mode

    @property
    def took_over(self) -> bool:
        """Whether a forward of the last ``running`` block filled a transformer's cache instead of following its
        mode: the first forward of a Wan 2.2 expert taking over from the other (inference computes everything
        there too, so that step trains nothing)."""
        return self.controller.took_over

    @property
    def states(self) -> dict:
        """The caches of the driven forwards, per (transformer, cache context)."""
        return self.controller.driven_states

    def snapshot(self) -> dict:
        """What the caches hold now: per (transformer, cache context), each kept branch output's history
        (copies, most recent first)."""
        return {key: {entry: [state.pools[stream].read(i).clone() for i in state.plan.history(state, *entry)]
                      for entry, (stream, _, _) in state.plan.entries.items() if state.kept.get(entry)}
                for key, state in self.states.items()}

    def attach(self) -> "DrivenCache":
        from .api import controller

        if controller(self.pipe) is not None:
            raise RuntimeError("harmonica is enabled on this pipeline: call harmonica.disable(pipe) before training "
                               "a router on it")
        self.controller.attach()
        return self

    def detach(self) -> None:
        self.controller.detach()
        self.controller.driven_states.clear()

    @contextmanager
    def running(self, mode: str, step: int, compute=None, scores: torch.Tensor | None = None, write=None,
                coefficients: torch.Tensor | None = None):
        """Forwards inside the block run in ``mode`` at ``step`` (see the module docstring);
        ``coefficients``: the step's forecast coefficients ``[slot, history]`` (None: reuse)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "hard" and (compute is None or len(compute) != self.num_slots):
            raise ValueError(f"mode 'hard' needs compute flags for all {self.num_slots} branch slots")
        if mode == "mix" and (scores is None or write is None or step == 0):
            raise ValueError("mode 'mix' needs scores and write flags, and never runs at the first step (it fills)")
        saved = self.controller.drive
        self.controller.drive = Drive(mode, step, compute, scores, write, coefficients)
        self.controller.took_over = False
        try:
            yield self
        finally:
            self.controller.drive = saved

    def checkpoint_blocks(self) -> None:
        """Recompute each block of the student's ("mix") forwards in the backward instead of keeping its
        activations (the transformer's own diffusers gradient checkpointing, with ``checkpoint`` as its
        function); every other forward runs as before. Raises ValueError for a transformer without it."""
        transformers = [t for _, t in pipeline_transformers(self.pipe, family_for(self.pipe))]
        if self.controller.layout.units:
            raise ValueError(f"gradient checkpointing: not at granularity {self.controller.layout.granularity!r} "
                             "(a checkpointed block would replay its unit's cache writes); train with branch units "
                             "or without it")
        for transformer in transformers:
            if not getattr(transformer, "_supports_gradient_checkpointing", False):
                raise ValueError(f"gradient checkpointing: {type(transformer).__name__} ({family_for(self.pipe).name})"
                                 " has no diffusers gradient checkpointing to recompute its blocks with; train "
                                 "without it")
        for transformer in transformers:
            transformer.enable_gradient_checkpointing(self.checkpoint)

    def checkpoint(self, block, *args):
        """diffusers' ``_gradient_checkpointing_func``: ``block(*args)`` under non-reentrant checkpointing as a
        ``Region`` when the forward is the student's, else plainly."""
        forward = self.controller.current
        if forward is None or forward.drive is None or forward.drive.mode != "mix":
            return block(*args)
        from torch.utils.checkpoint import checkpoint

        region = Region()
        return checkpoint(
            block.__call__, *args, use_reentrant=False,
            context_fn=lambda: (self._in_region(forward, region, False), self._in_region(forward, region, True)))

    @contextmanager
    def _in_region(self, forward, region: Region, replaying: bool):
        """The hooks see ``forward`` (also in the backward, after the forward has left) in ``region``."""
        ctl = self.controller
        with ctl.lock:
            saved = ctl.current
            region.replaying = replaying
            ctl.current = replace(forward, region=region)
            try:
                yield
            finally:
                ctl.current = saved

    @contextmanager
    def isolated(self):
        """Forwards inside the block start from empty caches; the caller's caches are restored after."""
        saved = self.controller.driven_states
        self.controller.driven_states = {}
        try:
            yield self
        finally:
            self.controller.driven_states = saved

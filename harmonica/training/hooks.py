"""Router training's own hooks on the transformer's branch modules (the inference cache is not involved).

The trainer drives every forward itself and says what it is: which step (passed explicitly, no
scheduler lookup) and what the branches do:

* ``"off"``: the plain model (the teacher): no cache read or write;
* ``"fill"``: compute every branch and keep its output (the first step of a trajectory, or LTC's
  clean full pass);
* ``"hard"``: a fixed compute/rebuild row ``compute[slot]``, as inference runs it (gradient-free
  sampling for the image-error proxy);
* ``"mix"``: the student: ``score * fresh + (1 - score) * forecast`` per branch, the cache written
  (detached) where ``write[slot]``, as inference at the current threshold would have computed there.

A branch rebuilt from the cache is ``forecast(history, coefficients)``, the same function inference
uses: its last computed outputs (most recent first, as many as were computed, at most the router's
``history``) weighted by the step's coefficients (``coefficients[slot, :len(history)]``; in "mix" they
carry gradients). Cached outputs are kept per cache context ("cond" / "uncond" for pipelines that run the guidance
branches as separate forwards), as inference keeps them. ``isolated()`` runs forwards on fresh
caches and restores the caller's afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..families import family_for, pipeline_transformers, transformer_blocks
from ..kernels import forecast

TRAIN_STEP_HOOK = "harmonica_train_step"
TRAIN_BRANCH_HOOK = "harmonica_train_branch"
MODES = ("off", "fill", "hard", "mix")


class _Nothing(BaseState):
    def reset(self):
        pass


class _ContextHook(ModelHook):
    """On the transformer: tells the branch hooks which cache context the forward runs in."""

    _is_stateful = True

    def __init__(self, cache: "TrainingCache"):
        super().__init__()
        self.cache = cache
        self.context = StateManager(_Nothing)

    def reset_state(self, module):
        return module

    def new_forward(self, module, *args, **kwargs):
        context = self.context._context
        self.cache.context_name = "" if context is None else context.name
        return self.fn_ref.original_forward(*args, **kwargs)


class _BranchHook(ModelHook):
    def __init__(self, cache: "TrainingCache", slot: int, elements: int, name: str):
        super().__init__()
        self.cache = cache
        self.slot = slot
        self.elements = elements
        self.name = name

    def new_forward(self, module, *args, **kwargs):
        cache, slot = self.cache, self.slot
        mode = cache.mode
        if mode == "off":
            return self.fn_ref.original_forward(*args, **kwargs)
        if mode == "hard" and not cache.compute[slot]:
            return self._pack(cache.rebuild(slot, self.elements, self.name))
        fresh = self.fn_ref.original_forward(*args, **kwargs)
        parts = fresh if isinstance(fresh, tuple) else (fresh,)
        if mode == "mix":
            cached = cache.rebuild(slot, self.elements, self.name)
            score = cache.scores[slot]
            mixed = tuple(score.to(f.dtype) * f + (1 - score.to(f.dtype)) * c for f, c in zip(parts, cached))
            if cache.write[slot]:
                cache.store(slot, parts)
            return self._pack(mixed)
        cache.store(slot, parts)  # "fill", or a computed branch of "hard"
        return fresh

    def _pack(self, parts):
        return tuple(parts) if self.elements > 1 else parts[0]


class TrainingCache:
    """Hooks router training puts on ``pipe``'s transformer; see the module docstring."""

    def __init__(self, pipe, history: int = 1):
        self.history = int(history)
        family = family_for(pipe)
        transformers = pipeline_transformers(pipe, family)
        if len(transformers) > 1:
            raise ValueError(f"router training drives one transformer; {type(pipe).__name__} has "
                             f"{len(transformers)} ({', '.join(n for n, _ in transformers)})")
        self.transformer = transformers[0][1]
        self.blocks = transformer_blocks(family, self.transformer)
        self.num_slots = sum(len(b.branches) for b in self.blocks)
        self.mode = "off"
        self.step: int | None = None
        self.compute: list[bool] | None = None
        self.scores: torch.Tensor | None = None
        self.write: list[bool] | None = None
        self.coefficients: torch.Tensor | None = None
        self.context_name = ""
        self.states: dict[str, dict[tuple[int, int], list[torch.Tensor]]] = {}
        self._hooked: list[torch.nn.Module] = []

    # ------------------------------------------------------------------ hooks in and out
    def attach(self) -> "TrainingCache":
        for block in self.blocks:
            for slot, branch, module in zip(block.slots, block.branches, block.modules):
                hook = _BranchHook(self, slot, branch.elements, f"{block.list_name}[{block.index}].{branch.name}")
                HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, TRAIN_BRANCH_HOOK)
                self._hooked.append(module)
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.register_hook(_ContextHook(self), TRAIN_STEP_HOOK)
        registry.invalidate_child_registries_cache()
        self._hooked.append(self.transformer)
        return self

    def detach(self) -> None:
        for module in self._hooked:
            registry = module.__dict__.get("_diffusers_hook")
            if registry is not None:
                registry.remove_hook(TRAIN_BRANCH_HOOK, recurse=False)
                registry.remove_hook(TRAIN_STEP_HOOK, recurse=False)
        self._hooked.clear()
        self.states.clear()

    # ------------------------------------------------------------------------- storage
    def store(self, slot: int, parts) -> None:
        state = self.states.setdefault(self.context_name, {})
        for element, tensor in enumerate(parts):
            if tensor is not None:
                kept = state.get((slot, element), [])
                state[slot, element] = [tensor.detach()] + kept[: self.history - 1]

    def rebuild(self, slot: int, elements: int, name: str) -> list[torch.Tensor]:
        """Every element of a branch's output rebuilt from its history with this step's coefficients."""
        state = self.states.get(self.context_name, {})
        found = [state.get((slot, element)) for element in range(elements)]
        if any(not f for f in found):
            raise RuntimeError(f"harmonica training: {name} is reused at step {self.step} but was never computed in "
                               "this trajectory; fill the cache at the trajectory's first step")
        row = self.coefficients[slot] if self.coefficients is not None else None
        return [forecast(h, None if row is None else row[:len(h)]) for h in found]

    # ------------------------------------------------------------------------ forwards
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
        saved = (self.mode, self.step, self.compute, self.scores, self.write, self.coefficients)
        self.mode, self.step, self.compute, self.scores, self.write = mode, step, compute, scores, write
        self.coefficients = coefficients
        try:
            yield self
        finally:
            self.mode, self.step, self.compute, self.scores, self.write, self.coefficients = saved

    @contextmanager
    def isolated(self):
        """Forwards inside the block start from empty caches; the caller's caches are restored after."""
        saved = self.states
        self.states = {}
        try:
            yield self
        finally:
            self.states = saved

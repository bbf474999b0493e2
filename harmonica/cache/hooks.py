"""The diffusers ``ModelHook``s of the cache: step (transformer), branch (branch modules), block (fused runs), unit
(blocks of coarse units)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import StateManager

from ..families.spec import bind_call
from ..kernels import TORCH, gather_apply
from ..macs import count_macs, count_macs_aside
from .plan import SKIP
from .state import _ContextState

if TYPE_CHECKING:
    from ..families.spec import BlockInfo
    from .controller import HarmoniCa

STEP_HOOK = "harmonica_step"
BRANCH_HOOK = "harmonica_branch"
BLOCK_HOOK = "harmonica_block"
UNIT_HOOK = "harmonica_unit"


def remove_hook(registry, name: str) -> None:
    """Remove hook ``name`` from one module's ``registry``, also from under a hook registered after it.

    diffusers' ``HookRegistry.remove_hook`` reconnects the next hook up by setting its ``fn_ref.forward``; for a hook
    with its own ``new_forward`` (a diffusers cache applied after harmonica) that is the hook itself, which would be
    skipped from then on and still call harmonica's forward through ``original_forward``. Here the function that hook
    calls is reconnected instead."""
    if name not in registry.hooks:
        return
    index = registry._hook_order.index(name)
    if index == len(registry._hook_order) - 1:  # the outermost hook: diffusers' own removal is right
        registry.remove_hook(name, recurse=False)
        return
    below = registry._fn_refs[index]
    below = below.original_forward if below.original_forward is not None else below.forward
    above = registry._fn_refs[index + 1]
    if above.original_forward is not None:
        above.original_forward = below
    else:
        above.forward = below
    registry._module_ref = registry.hooks.pop(name).deinitalize_hook(registry._module_ref)
    registry._hook_order.pop(index)
    registry._fn_refs.pop(index)


class BranchHook(ModelHook):
    """Compute a branch and keep its output, or return the kept output without running the branch."""

    def __init__(self, controller: "HarmoniCa", slot: int, name: str, elements: int):
        super().__init__()
        self.controller = controller
        self.slot = slot
        self.name = name
        self.elements = elements

    def new_forward(self, module, *args, **kwargs):
        current = self.controller.current
        if current is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        if current.drive is not None and current.drive.mode == "mix":
            return self._mix(current, self._run(current, args, kwargs))
        if current.compute[self.slot]:
            return self._run(current, args, kwargs, store=True)
        return self._pack(self._rebuild(current))

    def _run(self, current, args, kwargs, store: bool = False):
        """Run the branch (counting its MACs while a new input shape is measured); ``store``: keep its output."""
        if current.counting is not None:
            out, macs = count_macs(lambda: self.fn_ref.original_forward(*args, **kwargs))
            current.counting[self.slot] += macs
        else:
            out = self.fn_ref.original_forward(*args, **kwargs)
        parts = out if isinstance(out, tuple) else (out,)
        if len(parts) != self.elements:
            raise RuntimeError(
                f"harmonica: {self.name} returned {len(parts)} tensors, its family spec named {self.elements} at "
                "harmonica.enable. Was its attention processor changed since (an IP adapter loaded or unloaded, "
                "set_attn_processor)? Call harmonica.enable(pipe, router) again after changing processors; a "
                "processor whose outputs the family spec does not describe cannot be cached."
            )
        if store:
            self._store(current.state, parts)
        return out

    def _store(self, state, parts) -> None:
        for element, tensor in enumerate(parts):
            if tensor is not None:
                state.store(self.slot, element, tensor)

    def _rebuild(self, current) -> list[torch.Tensor]:
        coefficients = current.coefficients()
        state, region = current.state, current.region
        if region is None:
            cached = [state.rebuild(self.slot, element, coefficients) for element in range(self.elements)]
        else:  # a checkpointed block of router training's student: its recomputation reads what the forward read
            cached = [region.rebuild(state, self.slot, element, coefficients) for element in range(self.elements)]
        if any(c is None for c in cached):
            raise RuntimeError(
                f"harmonica: no cached output for {self.name} at step {current.state.step}. Cached features belong "
                "to one pipeline call (or one training trajectory, filled at its first step); call the transformer "
                "through the pipeline's denoising loop."
            )
        return cached

    def _mix(self, current, fresh):
        """Router training's student: ``score * fresh + (1 - score) * rebuilt``, the fresh output kept where the
        trainer says inference would have computed it (``drive.write``)."""
        parts = fresh if isinstance(fresh, tuple) else (fresh,)
        score = current.drive.scores[self.slot]
        mixed = [score.to(f.dtype) * f + (1 - score.to(f.dtype)) * c for f, c in zip(parts, self._rebuild(current))]
        if current.drive.write[self.slot] and not (current.region is not None and current.region.replaying):
            self._store(current.state, parts)  # once: not again when a checkpointed block is recomputed
        return self._pack(mixed)

    def _pack(self, parts):
        return tuple(parts) if self.elements > 1 else parts[0]


class BlockHook(ModelHook):
    """Replaces a run of fully reused blocks by one gather-apply of their cached branches per stream."""

    def __init__(self, controller: "HarmoniCa", info: BlockInfo):
        super().__init__()
        self.controller = controller
        self.info = info

    def new_forward(self, module, *args, **kwargs):
        current = self.controller.current
        entry = None if current is None or current.fused is None else current.fused[self.info.index]
        if entry is None:
            if current is not None and current.counting is not None and self.info.kind.whole_block:
                out, macs = count_macs(lambda: self.fn_ref.original_forward(*args, **kwargs))
                # the whole block (its branch's BranchHook, nested inside, counted part of it already), less the
                # gates that a rebuild of it still computes: what a reuse saves
                kind, call = self.info.kind, bind_call(module, args, kwargs)
                _, kept = count_macs_aside(lambda: kind.fused.gates(module, call))
                current.counting[self.info.first_slot] = macs - kept
                return out
            return self.fn_ref.original_forward(*args, **kwargs)
        fused = self.info.kind.fused
        call = bind_call(module, args, kwargs)
        if entry is SKIP:
            return fused.output(call, fused.streams(call))
        state = current.state
        step_coefficients = current.coefficients()
        streams = fused.streams(call)
        runs: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in streams}
        for block in entry:
            gates = block.kind.fused.gates(block.module, call)
            position = 0
            for slot, branch in zip(block.slots, block.branches):
                for element, stream in enumerate(branch.streams):
                    indices, coefficients, stream_gates = runs[stream]
                    history, coefs = state.terms(slot, element, step_coefficients)
                    indices.append(history)
                    coefficients.append(coefs)
                    stream_gates.append(gates[position])
                    position += 1
        implementation = None if self.controller.fused else TORCH
        updated = {
            name: gather_apply(streams[name], state.pools[name], indices, stream_gates, coefficients=coefficients,
                               inplace=False, implementation=implementation) if indices else streams[name]
            for name, (indices, coefficients, stream_gates) in runs.items()
        }
        return fused.output(call, updated)


class UnitHook(ModelHook):
    """A block inside a coarse unit (a span of blocks: ``Plan.units``). Where the unit is computed, its first block
    keeps its input streams and its last block keeps what the span added to each (its residual); where it is
    rebuilt, the first block returns its inputs plus the forecast residual (one fused add per stream) and the
    span's other blocks pass their inputs through. Router training's student mixes the two at the last block."""

    def __init__(self, controller: "HarmoniCa", info: BlockInfo, slot: int, first: int, last: int):
        super().__init__()
        self.controller = controller
        self.info = info
        self.slot, self.first, self.last = slot, first, last
        self.streams = info.kind.streams

    def new_forward(self, module, *args, **kwargs):
        current = self.controller.current
        if current is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        streams, slot, index = self.streams, self.slot, self.info.index
        call = bind_call(module, args, kwargs)
        mix = current.drive is not None and current.drive.mode == "mix"
        if not (mix or current.compute[slot]):
            if index != self.first:
                return streams.output(call, streams.inputs(call))  # covered by the rebuilt span
            return streams.output(call, self._rebuild(current, streams.inputs(call), fused=True))
        if index == self.first:
            current.unit_inputs[slot] = {n: None if t is None else t.detach().clone() if not mix else t
                                         for n, t in streams.inputs(call).items()}
        if current.counting is not None:
            out, macs = count_macs(lambda: self.fn_ref.original_forward(*args, **kwargs))
            current.counting[slot] += macs
        else:
            out = self.fn_ref.original_forward(*args, **kwargs)
        if index != self.last:
            return out
        start, returned = current.unit_inputs.pop(slot), streams.returned(call, out)
        fresh = [None if returned.get(n) is None or start.get(n) is None else returned[n] - start[n]
                 for n in streams.names]
        write = not mix or current.drive.write[slot]
        if write:
            for element, residual in enumerate(fresh):
                if residual is not None:
                    current.state.store(slot, element, residual)
                else:
                    current.state.absent.add((slot, element))
        if not mix:
            return out
        score = current.drive.scores[slot]
        rebuilt = self._rebuild(current, start, fused=False)
        mixed = {n: returned[n] if r is None else score.to(r.dtype) * returned[n] + (1 - score.to(r.dtype)) * rebuilt[n]
                 for n, r in zip(streams.names, fresh)}
        return streams.output(call, {**returned, **mixed})

    def _rebuild(self, current, inputs: dict, fused: bool) -> dict:
        """The span's input streams plus their forecast residuals (a stream without one passes unchanged)."""
        state, coefficients = current.state, current.coefficients()
        out = dict(inputs)
        for element, name in enumerate(self.streams.names):
            if inputs.get(name) is None or (self.slot, element) not in state.plan.entries or \
                    (self.slot, element) in state.absent:
                continue
            history, coefs = state.terms(self.slot, element, coefficients)
            if not history:
                raise RuntimeError(f"harmonica: no cached residual for blocks {self.first}-{self.last} at step "
                                   f"{state.step}; cached features belong to one pipeline call")
            if fused and not torch.is_tensor(coefs):
                implementation = None if self.controller.fused else TORCH
                out[name] = gather_apply(inputs[name], state.pools[state.plan.entries[self.slot, element][0]],
                                         [history], None, coefficients=[coefs], inplace=False,
                                         implementation=implementation)
            else:
                out[name] = inputs[name] + state.rebuild(self.slot, element, coefficients)
        return out


class StepHook(ModelHook):
    """Finds each forward's step, picks its cache state and decisions, and keeps the call's statistics."""

    _is_stateful = True  # receives diffusers' cache context ("cond" / "uncond") and end-of-call resets

    def __init__(self, controller: "HarmoniCa", transformer_index: int):
        super().__init__()
        self.controller = controller
        self.transformer_index = transformer_index
        self.context = StateManager(_ContextState)

    def reset_state(self, module):  # pipelines of CacheMixin models call this when a call ends
        self.controller.end_thread_call()
        return module

    @torch.compiler.disable(recursive=False)  # this frame runs eagerly; the model forward it calls compiles
    def new_forward(self, module, *args, **kwargs):
        ctl = self.controller
        if not ctl.active or ctl.drive is not None and ctl.drive.mode == "off":
            return self.fn_ref.original_forward(*args, **kwargs)
        forward = ctl.enter(self, module, args, kwargs)
        try:
            if forward.drive is not None:  # router training: no statistics
                return self.fn_ref.original_forward(*args, **kwargs)
            if forward.counting is not None:
                out = ctl.counted(forward, self.fn_ref.original_forward, args, kwargs)
            else:
                out = self.fn_ref.original_forward(*args, **kwargs)
            ctl.end_forward(forward)
        finally:
            ctl.leave()
        return out

"""The shape of a family spec: what harmonica must know about a model family to cache it.

A *branch* is a sub-computation of a block whose output is added to a residual stream, usually after
an adaLN gate. harmonica caches a branch's *un-gated* output, so a reused branch still gets the
current step's gate from the block's own code. A branch is named by the module that computes it
(``attn1``, ``ff``, ...); when the module returns a tuple (joint attention returns image and text
tokens) every element is cached, and ``streams`` names the token stream of each.

A *block kind* says, for one diffusers block class, which branches an instance has and, optionally,
how a block whose branches are all reused is applied without running it (``Fused``): the residual
streams it reads, the gate of each branch output, and how its return value is put together. Runs of
such blocks become one ``gather_apply`` per stream (the Triton kernel on CUDA).

A *family* ties pipelines to their transformer's block lists and kinds, and says how the scheduler's
timestep is found in a transformer forward and how the pipeline is conditioned: all the cache needs.
Router training and the evaluation harness register their own adapters under the family's name,
outside this package: the denoiser (one step of the pipeline's loop, ``harmonica.training.denoisers``)
and the pipeline-call arguments of a batch (``harmonica_bench.evaluation.call_kwargs``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Branch:
    """One cacheable branch of a block: its router name, its module (dotted path inside the block)
    and the token stream of each tensor the module returns (one name: a plain tensor)."""

    name: str
    module: str
    streams: tuple[str, ...] = ("image",)

    @property
    def elements(self) -> int:
        return len(self.streams)

    def resolve(self, block: nn.Module) -> nn.Module:
        module = block
        for part in self.module.split("."):
            module = getattr(module, part)
        return module


@dataclass(frozen=True)
class Fused:
    """How a fully reused block is applied without running it.

    ``streams(call)``: the residual streams the block updates, from its call's arguments
    (``{"image": hidden_states}``, or image and text for a dual-stream block, or a joint stream).
    ``gates(block, call)``: one gate per branch element, in branch order (``None``: ungated), each
    computed exactly as the block computes it.
    ``output(call, streams)``: the block's return value from the updated streams.
    ``applies(block)``: whether this instance can be fused at all (its gates are computable).
    """

    streams: Callable[[dict], dict[str, torch.Tensor]]
    gates: Callable[[nn.Module, dict], list]
    output: Callable[[dict, dict[str, torch.Tensor]], Any]
    applies: Callable[[nn.Module], bool] = lambda block: True


@dataclass(frozen=True)
class Streams:
    """The residual streams of a block as coarse cache units see it (a block, a span of blocks, the body).

    ``inputs(call)``: the streams the block reads, by name (``{"image": hidden_states}``, or image and text);
    ``returned(call, out)``: the same streams in what the block returned (a stream may be None: SD3's last
    block returns no text); ``output(call, streams)``: the block's return value made from streams. A span's
    unit is ``returned`` of its last block minus ``inputs`` of its first, per stream; rebuilt, the first block
    returns ``output(inputs + forecast)`` and the others pass their inputs through. Kinds whose streams have
    the same names can share a span (Flux's double and single blocks both read and return image and text).
    """

    names: tuple[str, ...]
    inputs: Callable[[dict], dict]
    returned: Callable[[dict, Any], dict]
    output: Callable[[dict, dict], Any]


ONE_STREAM = Streams(("image",), inputs=lambda call: {"image": call["hidden_states"]},
                     returned=lambda call, out: {"image": out}, output=lambda call, streams: streams["image"])
TEXT_IMAGE = Streams(("image", "text"),
                     inputs=lambda call: {"image": call["hidden_states"], "text": call["encoder_hidden_states"]},
                     returned=lambda call, out: {"image": out[1], "text": out[0]},
                     output=lambda call, streams: (streams["text"], streams["image"]))
"""Blocks returning ``(encoder_hidden_states, hidden_states)``, SD3's, Flux's and Qwen-Image's."""
IMAGE_TEXT = Streams(TEXT_IMAGE.names, TEXT_IMAGE.inputs, returned=lambda call, out: {"image": out[0], "text": out[1]},
                     output=lambda call, streams: (streams["image"], streams["text"]))
"""Blocks returning ``(hidden_states, encoder_hidden_states)``, HunyuanVideo's and CogVideoX's."""


def clip16(x):
    """What Flux and Qwen-Image blocks do to a stream they return in fp16: clip it to the fp16 range."""
    return x.clip(-65504, 65504) if x is not None and x.dtype == torch.float16 else x


CLIPPED_TEXT_IMAGE = Streams(TEXT_IMAGE.names, TEXT_IMAGE.inputs, TEXT_IMAGE.returned,
                             output=lambda call, streams: (clip16(streams["text"]), clip16(streams["image"])))


@dataclass(frozen=True)
class BlockKind:
    """What harmonica knows about one diffusers block class.

    ``branches(block)`` lists the branches of an instance (SD3's last block has no ``ff_context``;
    PixArt blocks have a cross-attention DiT blocks lack). ``check(block)`` raises when an instance is
    configured in a way a per-branch cache cannot follow. ``whole_block``: the block has one branch
    whose input is made by other modules of the block (Flux's single blocks: attention and MLP feed
    one output projection), so a reuse replaces the whole block (``fused`` is then required).
    ``streams``: the block's residual streams, for units coarser than a branch (``Streams``).
    """

    block_class: str
    branches: Callable[[nn.Module], tuple[Branch, ...]]
    fused: Fused | None = None
    check: Callable[[nn.Module], None] | None = None
    whole_block: bool = False
    streams: Streams | None = None  # coarse units (block, span, body): None allows only branch units

    def matches(self, block: nn.Module) -> bool:
        return any(k.__name__ == self.block_class for k in type(block).__mro__)

    def fusable(self, block: nn.Module) -> bool:
        return self.fused is not None and self.fused.applies(block)


@dataclass(frozen=True)
class Family:
    """One model family: its pipelines, transformer(s) and block lists (``harmonica.register_family`` adds one).

    Attributes:
        name: short name ("dit", "flux", ...).
        pipelines: diffusers pipeline class names served.
        block_lists: attribute names of the transformer's block lists, in forward order.
        kinds: the block kinds found in those lists.
        transformers: pipeline components that hold a transformer of this family (Wan 2.2 has two
            experts, ``transformer`` and ``transformer_2``, taking turns within one call).
        timestep_scale: ``scheduler timestep = timestep_scale(transformer) * the forward's timestep``
            (1 for DiT; 1000 for Flux, which passes t / 1000; Sana scales by its config).
        conditioning: "class" (class labels) or "text" (prompts).
        notes: a line for humans (what is special about the family).
    """

    name: str
    pipelines: tuple[str, ...]
    block_lists: tuple[str, ...]
    kinds: tuple[BlockKind, ...]
    conditioning: str = "text"
    transformers: tuple[str, ...] = ("transformer",)
    timestep_scale: Callable[[nn.Module], float] = lambda transformer: 1.0
    notes: str = ""

    def kind_of(self, block: nn.Module) -> BlockKind | None:
        for kind in self.kinds:
            if kind.matches(block):
                return kind
        return None


# ---------------------------------------------------------------------------- call arguments
_PARAMS: dict[type, list[str]] = {}


def bind_call(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """A forward call's arguments by parameter name (positional ones named from the signature)."""
    klass = type(module)
    names = _PARAMS.get(klass)
    if names is None:
        # the class's own forward: an instance's forward may be wrapped (hooks, a user's patch) by then
        names = _PARAMS[klass] = [p for p in inspect.signature(klass.forward).parameters if p != "self"]
    call = dict(zip(names, args))
    call.update(kwargs)
    return call


@dataclass
class BlockInfo:
    """One block of a transformer as the cache sees it: where it is and which slots it owns."""

    index: int  # position over all block lists
    list_name: str
    module: nn.Module
    kind: BlockKind
    branches: tuple[Branch, ...]
    first_slot: int
    modules: list[nn.Module] = field(default_factory=list)

    @property
    def slots(self) -> range:
        return range(self.first_slot, self.first_slot + len(self.branches))

"""torch.compile with harmonica on (CPU): whole-transformer, wrapper and regional compile.

A router decides every (step, block, branch) before sampling, so the hooks inside the compiled region
read decisions that are constant for a step: dynamo traces each distinct decision pattern once and
never breaks a graph inside a block. The step lookup (which reads the call stack and the scheduler)
runs eagerly, outside the graphs: the one graph break, at the transformer's entry.

Graph counts use dynamo's ``eager`` backend (tracing only, fast); one test runs inductor and
compares outputs with eager execution.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTPipeline
from torch._dynamo.utils import counters

import harmonica
from harmonica import HarmoniCaRouter

STEPS = 10


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """A learned router may have a pattern per step: let dynamo keep more graphs than its default 8."""
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=512):
        yield
    torch._dynamo.reset()


def images(pipe, steps=STEPS):
    return pipe([1, 2], num_inference_steps=steps, guidance_scale=1.5, generator=torch.Generator().manual_seed(0),
                output_type="pt").images


def breaks() -> dict[str, int]:
    """Graph-break reasons (first line) and how often dynamo hit each."""
    return {reason.splitlines()[0]: n for reason, n in counters["graph_break"].items()}


def learned_like_router(pipe, history=1):
    """A router with a different decision pattern at (almost) every step, as learned ones have."""
    router = HarmoniCaRouter.for_layout(harmonica.describe(pipe), STEPS, generator=torch.Generator().manual_seed(5),
                                        history=history, threshold=0.5)
    if history > 1:
        router.init_forecast("taylor")
    return router


def patterns(pipe, router) -> int:
    """Distinct computations over the steps (the first one computes everything): which branches compute,
    and for each rebuilt one how many past outputs its forecast combines (fewer early on)."""
    plan = harmonica.controller(pipe).plans[0]
    depth = {slot: d for (slot, _), (_, _, d) in plan.entries.items()}
    kept = {slot: 1 for slot in depth}  # the first step fills every history with one output
    seen = {(tuple(router.schedule()[0]), ())}
    for row in router.schedule()[1:]:
        seen.add((tuple(row), tuple(sorted((s, kept[s]) for s in depth if not row[s]))))
        for s in depth:
            if row[s]:
                kept[s] = min(kept[s] + 1, depth[s])
    return len(seen)


@pytest.mark.parametrize("history", [1, 3], ids=["reuse", "forecast"])
def test_whole_transformer_compile_traces_one_graph_per_step_pattern(dit_path, history):
    pipe = DiTPipeline.from_pretrained(dit_path)
    router = learned_like_router(pipe, history)
    harmonica.enable(pipe, router)
    expected = images(pipe)
    pipe.transformer.compile(backend="eager")
    got = images(pipe)
    assert torch.equal(got, expected)
    # the only break: the step lookup at the transformer's entry, which runs eagerly
    assert set(breaks()) == {"Skip inlining `torch.compiler.disable()`d function"}, breaks()
    graphs = counters["stats"]["unique_graphs"]
    # one graph per distinct step computation; dynamo may trace one more while it learns the inputs
    assert graphs <= patterns(pipe, router) + 1, (graphs, patterns(pipe, router))
    counters.clear()
    assert torch.equal(images(pipe), expected)  # a second call compiles nothing new
    assert counters["stats"]["unique_graphs"] == 0


def test_regional_compile_has_no_break_inside_blocks(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    router = learned_like_router(pipe, history=3)
    harmonica.enable(pipe, router)
    expected = images(pipe)
    for block in pipe.transformer.transformer_blocks:
        block.compile(backend="eager", fullgraph=True)  # fullgraph: a break inside a block would raise
    assert torch.equal(images(pipe), expected)
    assert breaks() == {}
    # at most one graph per block and distinct computation of that block: its branches' decisions, how
    # many past outputs each rebuilt one combines, and whether it starts, joins or stays out of a fused run
    plan = harmonica.controller(pipe).plans[0]
    depth = {slot: d for (slot, _), (_, _, d) in plan.entries.items()}
    kept = {slot: 1 for slot in depth}
    seen = set()
    for step, row in enumerate(router.schedule()):
        for block in plan.blocks:
            entry = None if step == 0 or plan.fused[step] is None else plan.fused[step][block.index]
            run = entry if entry is None or isinstance(entry, str) else len(entry)
            rebuilt = tuple(kept[s] for s in block.slots if step > 0 and not row[s] and s in kept)
            seen.add((block.index, tuple(row[s] for s in block.slots), rebuilt, run))
        for s in depth:
            if step > 0 and row[s]:
                kept[s] = min(kept[s] + 1, depth[s])
    # blocks share one code object, so dynamo may trace a computation once more for an input layout it
    # has not seen (the first block reads the patch embedding's transposed output): at most twice each
    assert counters["stats"]["unique_graphs"] <= 2 * len(seen), (counters["stats"]["unique_graphs"], len(seen))


def test_compiled_wrapper_assigned_to_the_pipeline(dit_path):
    """pipe.transformer = torch.compile(pipe.transformer), the form diffusers' docs use most, before
    or after enabling harmonica."""
    pipe = DiTPipeline.from_pretrained(dit_path)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, compute_every=2)
    harmonica.enable(pipe, router)
    expected = images(pipe)
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    assert torch.equal(images(pipe), expected)
    assert harmonica.stats(pipe).cache_usage == pytest.approx(router.cache_usage())
    other = DiTPipeline.from_pretrained(dit_path)
    other.transformer = torch.compile(other.transformer, backend="eager")
    harmonica.enable(other, router)  # compiled first, enabled after: the hooks go on the module inside
    assert harmonica.describe(other).transformer_class == "DiTTransformer2DModel"
    assert torch.equal(images(other), expected)


def test_changing_the_router_or_disabling_never_runs_a_stale_graph(dit_path):
    stock = DiTPipeline.from_pretrained(dit_path)
    plain = images(stock)
    pipe = DiTPipeline.from_pretrained(dit_path)
    layout = harmonica.describe(pipe)
    first, second = HarmoniCaRouter.static(layout, STEPS, compute_every=2), HarmoniCaRouter.static(layout, STEPS, 3)
    expected = {}
    for name, router in (("first", first), ("second", second)):
        harmonica.enable(pipe, router)
        expected[name] = images(pipe)
    assert not torch.equal(expected["first"], expected["second"])
    harmonica.enable(pipe, first)
    pipe.transformer.compile(backend="eager")
    assert torch.equal(images(pipe), expected["first"])
    harmonica.enable(pipe, second)
    assert torch.equal(images(pipe), expected["second"])
    with harmonica.paused(pipe):
        assert torch.equal(images(pipe), plain)
    harmonica.disable(pipe)
    assert torch.equal(images(pipe), plain)


def test_inductor_matches_eager(dit_path):
    """Real code generation (inductor, CPU): within float tolerance of eager, reuse and forecast."""
    pipe = DiTPipeline.from_pretrained(dit_path)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), 6, compute_every=3, history=2)
    router.init_forecast("taylor")
    harmonica.enable(pipe, router)
    expected = images(pipe, steps=6)
    pipe.transformer.compile()
    got = images(pipe, steps=6)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert harmonica.stats(pipe).cache_usage == pytest.approx(router.cache_usage())


def test_regional_compile_traces_a_graph_per_block_with_harmonica(dit_path):
    """The limit the README states: stock blocks share one graph, hooked blocks each need their own (the
    decisions and cache slots are constants of a block's graph), so regional compile of a learned
    schedule traces blocks x patterns graphs; the whole-transformer form traces one per pattern."""
    pipe = DiTPipeline.from_pretrained(dit_path)
    expected = images(pipe)
    torch._dynamo.reset()
    blocks = pipe.transformer.transformer_blocks
    for block in blocks:
        block.compile(backend="eager", fullgraph=True)
    images(pipe)
    stock = counters["stats"]["unique_graphs"]
    assert stock <= 2, stock  # one graph for all blocks (+1 for the first block's input layout)
    torch._dynamo.reset()
    counters.clear()
    harmonica.enable(pipe, HarmoniCaRouter.for_layout(harmonica.describe(pipe), STEPS, init="compute"))
    # enabled after compiling: the first call's MAC count runs eagerly (a dispatch mode, which
    # fullgraph blocks would refuse), the rest compiled
    assert torch.equal(images(pipe), expected)
    assert counters["stats"]["unique_graphs"] >= len(blocks) > stock

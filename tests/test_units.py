"""Coarse cache units (``granularity``: block, span:N, body:F,B) on every family's tiny model: an all-compute router
is bit-identical to the stock pipeline; a caching router equals a hand-written reference (patched block forwards:
a computed span keeps what it added to each stream, a rebuilt one adds that to its input and its blocks do not
run); the blocks of a rebuilt span really do not run; bad granularities, mismatched routers and unsupported
combinations get clear errors; router training runs at a coarse granularity and its router round-trips."""

from __future__ import annotations

import pytest
import test_families
import torch
from accelerate import Accelerator
from diffusers import DiTPipeline
from test_families import CASES, VARIANTS, load, run, steps_of, transformers_of

import harmonica
from harmonica import HarmoniCaRouter, RouterError
from harmonica.families.spec import bind_call
from harmonica.training.router_training import RouterTrainer, RouterTrainingConfig

family_paths = test_families.family_paths  # the tiny pipelines' folders (a session fixture)
GRANULARITIES = ["block", "span:2", "body:1,0"]  # the tiny models have 2 to 4 blocks


def unit_router(pipe, granularity, steps, seed=3):
    layout = harmonica.describe(pipe, granularity)
    router = HarmoniCaRouter.for_layout(layout, steps, generator=torch.Generator().manual_seed(seed))
    router.threshold = 0.5
    return router


def unit_reference_images(pipe, kwargs, schedule, units, forwards_per_step):
    """``schedule`` over ``units`` applied by patched block forwards (no harmonica code but the family spec's stream
    accessors): step and CFG pass from the forward count, one cache per pass and transformer, each transformer
    computing everything at the first step it runs."""
    counter, first_step, start, residual, patched, handles = {"n": -1}, {}, {}, {}, [], []

    def count(expert):
        counter["n"] += 1
        first_step.setdefault(expert, counter["n"] // forwards_per_step)

    for expert, (transformer, blocks) in enumerate(transformers_of(pipe)):
        handles.append(transformer.register_forward_pre_hook(lambda *_, _e=expert: count(_e)))
        for unit, (a, b) in enumerate(units):
            for block in blocks[a:b + 1]:
                original, streams = block.module.forward, block.kind.streams

                def forward(*args, _original=original, _s=streams, _u=unit, _i=block.index, _a=a, _b=b, _e=expert,
                            _m=block.module, **kw):
                    step, cfg_pass = divmod(counter["n"], forwards_per_step)
                    key, call = (_e, cfg_pass, _u), bind_call(_m, args, kw)
                    inputs = _s.inputs(call)
                    if not (step == first_step[_e] or schedule[step][_u]):
                        if _i != _a:
                            return _s.output(call, inputs)
                        return _s.output(call, {n: t if residual[key].get(n) is None else t + residual[key][n]
                                                for n, t in inputs.items()})
                    if _i == _a:
                        start[key] = {n: None if t is None else t.clone() for n, t in inputs.items()}
                    out = _original(*args, **kw)
                    if _i == _b:
                        returned = _s.returned(call, out)
                        residual[key] = {n: returned[n] - start[key][n] for n in _s.names
                                         if returned.get(n) is not None and start[key].get(n) is not None}
                    return out

                block.module.forward = forward
                patched.append(block.module)
    try:
        return run(pipe, kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.forward


@pytest.mark.parametrize("name, variant", VARIANTS)
def test_all_compute_unit_router_is_exact(family_paths, name, variant, granularity="block"):
    kwargs, _ = CASES[name][1][variant]
    pipe = load(family_paths(name))
    expected = run(pipe, kwargs)
    router = HarmoniCaRouter.for_layout(harmonica.describe(pipe, granularity), steps_of(kwargs), init="compute")
    harmonica.enable(pipe, router)
    assert torch.equal(run(pipe, kwargs), expected)
    assert harmonica.stats(pipe).cache_usage == 0


# every family and variant at one granularity in turn, and Flux (double and single blocks) at each
REFERENCE_CASES = sorted({(*v, GRANULARITIES[i % len(GRANULARITIES)]) for i, v in enumerate(VARIANTS)}
                         | {("flux", "true-cfg", g) for g in GRANULARITIES})


@pytest.mark.parametrize("name, variant, granularity", REFERENCE_CASES)
def test_matches_hand_written_unit_reference(family_paths, name, variant, granularity, fused=True):
    """(fused=False differs only on CUDA, where fused=True runs the Triton kernel: both are the torch reference
    here.)"""
    kwargs, forwards = CASES[name][1][variant]
    pipe = load(family_paths(name))
    router = unit_router(pipe, granularity, steps_of(kwargs))
    schedule = router.schedule()
    assert any(not c for row in schedule[1:] for c in row)
    expected = unit_reference_images(load(family_paths(name)), kwargs, schedule, router.layout.units, forwards)
    harmonica.enable(pipe, router, fused=fused)
    got = run(pipe, kwargs)
    assert torch.equal(got, expected), (got - expected).abs().max()


@pytest.mark.parametrize("name", list(CASES))
def test_blocks_of_a_rebuilt_span_do_not_run(family_paths, name):
    kwargs, forwards = next(iter(CASES[name][1].values()))
    pipe = load(family_paths(name))
    steps = steps_of(kwargs)
    layout = harmonica.describe(pipe, "span:2")
    harmonica.enable(pipe, HarmoniCaRouter.static(layout, steps, compute_every=2))
    calls = {}
    for transformer, blocks in transformers_of(pipe):
        for block in blocks:
            block.modules[0].register_forward_pre_hook(lambda *_, _i=block.index: calls.update({_i: calls.get(_i, 0) + 1}))
    run(pipe, kwargs)
    computed = len(range(0, steps, 2))
    experts = len(transformers_of(pipe))
    for index, count in calls.items():  # every block runs at the computed steps only (and when an expert fills)
        assert computed * forwards <= count <= (computed + experts - 1) * forwards, (index, count)
    assert harmonica.stats(pipe).macs_speedup > 1.1


def test_unit_routers_round_trip_and_bad_granularities_are_refused(family_paths, tmp_path):
    pipe = load(family_paths("flux"))
    kwargs, _ = CASES["flux"][1]["true-cfg"]
    router = unit_router(pipe, "span:2", steps_of(kwargs))
    router.save_pretrained(tmp_path / "router")
    loaded = HarmoniCaRouter.from_pretrained(tmp_path / "router")
    assert loaded.layout == router.layout and loaded.layout.granularity == "span:2"
    assert "cached as 2 units (span:2)" in loaded.layout.describe_blocks()
    harmonica.enable(pipe, tmp_path / "router")
    assert harmonica.stats(pipe) is None and torch.equal(run(pipe, kwargs), run(pipe, kwargs))
    for bad, message in (("span:0", "granularity must be one of"), ("body:2,2", "leaves no block"),
                         ("blocks", "granularity must be one of")):
        with pytest.raises(RouterError, match=message):
            harmonica.describe(pipe, bad)
    other = unit_router(load(family_paths("sd3")), "block", steps_of(kwargs))  # 2 blocks: not this model's 4
    with pytest.raises(RouterError, match="it has 2 blocks, the transformer has 4"):
        harmonica.enable(pipe, other)


def test_units_need_the_family_spec_to_describe_residual_streams(family_paths):
    import dataclasses

    from harmonica.cache.layout import check_units
    from harmonica.families import FAMILIES, Streams, transformer_blocks

    pipe = load(family_paths("flux"))
    flux = next(f for f in FAMILIES if f.name == "flux")
    blocks = transformer_blocks(flux, pipe.transformer)
    check_units(flux, blocks, ((0, 3),), "body:0,0")  # double and single blocks share image and text
    blocks[2].kind = dataclasses.replace(blocks[2].kind, streams=None)
    with pytest.raises(RouterError, match="caches FluxSingleTransformerBlock by branch only .* 'block' is not allowed"):
        check_units(flux, blocks, ((2, 2),), "block")
    check_units(flux, blocks, ((0, 1),), "span:2")  # spans of the double blocks still are
    blocks[2].kind = dataclasses.replace(blocks[2].kind, streams=Streams(("joint",), *[None] * 3))
    with pytest.raises(RouterError, match="blocks 1-2 of the flux family have residual streams of different names"):
        check_units(flux, blocks, ((1, 2),), "spans")


def test_router_training_at_block_granularity(dit_path, tmp_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    pipe.set_progress_bar_config(disable=True)
    config = RouterTrainingConfig(num_steps=5, trajectories=2, batch_size=2, lambda_every=4, lambda_samples=2,
                                  output_dir=str(tmp_path / "run"), history=2, init="static:2", target_usage=0.4,
                                  coefficient_lr=1e-2, granularity="block")
    trainer = RouterTrainer(pipe, config, Accelerator(cpu=True))
    start = trainer.router.coefficients.detach().clone()
    summary = trainer.train()
    router = HarmoniCaRouter.from_pretrained(tmp_path / "run" / "router")
    assert router.layout.granularity == "block" and router.num_slots == len(router.layout.blocks)
    assert summary["moved_from_init"]["mean_abs_logit_change"] > 0 and not torch.equal(router.coefficients, start)
    with pytest.raises(ValueError, match="init_router .* caches at granularity 'block', this cache is set up at "
                                         "'branch'"):
        RouterTrainer(DiTPipeline.from_pretrained(dit_path), RouterTrainingConfig(
            num_steps=5, output_dir=str(tmp_path / "tune"), history=2, init_router=str(tmp_path / "run" / "router")),
            Accelerator(cpu=True))
    with pytest.raises(ValueError, match="gradient checkpointing: not at granularity 'block'"):
        RouterTrainer(DiTPipeline.from_pretrained(dit_path), RouterTrainingConfig(
            num_steps=5, output_dir=str(tmp_path / "ckpt"), granularity="block", gradient_checkpointing=True),
            Accelerator(cpu=True))
    harmonica.enable(pipe, router)
    pipe(class_labels=[1, 2], num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    assert 0.2 < harmonica.stats(pipe).cache_usage < 0.6

"""Cache memory known before a call allocates it (``harmonica.cache.memory``): the figure the ``max_cache_memory``
check uses is exactly what the call's pools then hold, on every family, variant and cache context; a call over
the budget is refused before its first block runs, naming the figure; ``cache_dtype`` keeps the history in
another dtype."""

from __future__ import annotations

import pytest
import torch
import test_families
from test_families import CASES, VARIANTS, load, mixed_router, run, steps_of

import harmonica
from harmonica import CacheMemoryError, HarmoniCaRouter
from harmonica.cache.controller import HarmoniCa
from harmonica.cache.memory import format_bytes, parse_bytes, plan_memory

family_paths = test_families.family_paths  # the tiny pipelines' folders (a session fixture)


def held_per_state(monkeypatch):
    """Per (transformer, cache context): (bytes its pools hold at its last step, the figure planned for it)."""
    held = {}
    original = HarmoniCa.end_forward

    def end_forward(self, forward):
        shapes = self.output_shapes[forward.shape]
        held[forward.key] = (forward.state.nbytes, plan_memory(forward.state.plan, shapes, self.cache_dtype).nbytes)
        return original(self, forward)

    monkeypatch.setattr(HarmoniCa, "end_forward", end_forward)
    return held


@pytest.mark.parametrize("name, variant, granularity", [(*v, "branch") for v in VARIANTS]
                         + [(*v, "body:1,0") for v in VARIANTS[::2]])
def test_the_planned_figure_is_what_the_pools_hold(family_paths, name, variant, granularity, monkeypatch):
    pipe = load(family_paths(name))
    kwargs, per_step = CASES[name][1][variant]
    router = mixed_router(pipe, steps_of(kwargs)) if granularity == "branch" else \
        HarmoniCaRouter.static(harmonica.describe(pipe, granularity), steps_of(kwargs), compute_every=2, history=2)
    harmonica.enable(pipe, router, max_cache_memory="1TB")
    held = held_per_state(monkeypatch)
    run(pipe, kwargs)
    assert len(held) >= per_step and all(nbytes > 0 for nbytes, _ in held.values())
    assert {key: nbytes for key, (nbytes, _) in held.items()} == {key: planned for key, (_, planned) in held.items()}


def flux(family_paths, **options):
    pipe = load(family_paths("flux"))
    kwargs, _ = CASES["flux"][1]["true-cfg"]
    router = HarmoniCaRouter.static(harmonica.describe(pipe), steps_of(kwargs), compute_every=2, history=3)
    router.init_forecast("taylor", router.threshold)
    return harmonica.enable(pipe, router, **options), kwargs


def test_a_call_over_the_budget_is_refused_before_its_first_block(family_paths, monkeypatch):
    pipe, kwargs = flux(family_paths, max_cache_memory="1TB")
    held = held_per_state(monkeypatch)
    images = run(pipe, kwargs)
    figure = max(planned for _, planned in held.values())
    pipe, _ = flux(family_paths, max_cache_memory=figure - 1)
    ran = []
    pipe.transformer.transformer_blocks[0].register_forward_pre_hook(lambda *a: ran.append(1))
    with pytest.raises(CacheMemoryError, match=rf"would hold {format_bytes(figure)} \(image: .*over max_cache_memory="
                                               rf"{format_bytes(figure - 1)}\. Nothing has run.*the least it can hold"):
        run(pipe, kwargs)
    assert ran == []
    harmonica.enable(pipe, harmonica.controller(pipe).router, max_cache_memory=figure)  # at the figure: it runs
    assert torch.equal(run(pipe, kwargs), images)


def test_history_in_half_precision(family_paths):
    """An fp32 model with its history in bf16: pools half the size, images within bf16 rounding of the fp32
    cache's; an all-compute router is still bit-identical (nothing is rebuilt)."""
    pipe, kwargs = flux(family_paths)
    full = run(pipe, kwargs)
    full_bytes = harmonica.stats(pipe).cache_bytes
    for fused in (True, False):
        pipe, _ = flux(family_paths, cache_dtype=torch.bfloat16, fused=fused)
        half = run(pipe, kwargs)
        assert harmonica.stats(pipe).cache_bytes * 2 == full_bytes
        assert not torch.equal(half, full) and (half - full).abs().max() < 2e-2
    pipe = load(family_paths("flux"))
    stock = run(pipe, kwargs)
    all_compute = HarmoniCaRouter.for_layout(harmonica.describe(pipe), steps_of(kwargs), init="compute")
    harmonica.enable(pipe, all_compute, cache_dtype=torch.float16)
    assert torch.equal(run(pipe, kwargs), stock)


@pytest.mark.parametrize("granularity", ["branch", "span:2"])
def test_history_in_host_memory_is_a_pass_through_here(family_paths, granularity):
    """cache_device="cpu": on a GPU the history lives in pinned host memory and each rebuild copies what it reads
    over; on this CPU-only machine the pools are where they were, and the images bit-identical."""
    pipe = load(family_paths("flux"))
    kwargs, _ = CASES["flux"][1]["true-cfg"]
    router = HarmoniCaRouter.static(harmonica.describe(pipe, granularity), steps_of(kwargs), compute_every=2, history=2)
    router.init_forecast("taylor", router.threshold)
    expected = run(harmonica.enable(pipe, router), kwargs)
    for fused in (True, False):
        assert torch.equal(run(harmonica.enable(pipe, router, fused=fused, cache_device="cpu"), kwargs), expected)


@pytest.mark.parametrize("value, expected", [(4096, 4096), ("4GB", 4 * 10**9), ("3.5 GiB", int(3.5 * 2**30)),
                                             ("512mib", 512 * 2**20), ("100", 100)])
def test_budget_sizes(value, expected):
    assert parse_bytes(value) == expected


@pytest.mark.parametrize("options, message", [
    ({"max_cache_memory": "4 parsecs"}, "is not a size"), ({"max_cache_memory": 0}, "must be > 0"),
    ({"max_cache_memory": True}, "a number of bytes"), ({"cache_dtype": torch.int8}, "cache_dtype must be one of"),
    ({"cache_device": "host"}, "cache_device must be a torch device"),
])
def test_bad_budget_or_dtype_is_refused_before_anything_changes(family_paths, options, message):
    pipe = load(family_paths("flux"))
    with pytest.raises(CacheMemoryError, match=message):
        harmonica.enable(pipe, "no-router-is-loaded", **options)
    assert harmonica.controller(pipe) is None
    with pytest.raises(CacheMemoryError, match=message):
        harmonica.HarmoniCaPipeline.from_pretrained(family_paths("flux"), router="no-such-router", **options)


def test_eval_memory_on_real_sizes(capsys):
    """eval/memory.py on published configs (meta device): Flux.1-dev at 1024² keeps, per pass and output kept,
    19 double blocks x (attention: image + text; ff: image; ff_context: text) and 38 single blocks x the joint
    stream at branch granularity, one image + text residual per block at block granularity, one for the body; each
    token x 3072 channels in bf16. DiT-XL/2 keeps 28 blocks x 2 branches of 256 x 1152."""
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parent.parent / "eval" / "memory.py"))
    rows = {r["model"]: r for r in script["main"](["--model", "dit-xl-2-256", "flux-dev-1024", "--history", "1", "3",
                                                   "--granularity", "branch", "block", "body:1,1"])}
    flux, dit = rows["Flux.1-dev 1024²"], rows["DiT-XL/2 256"]
    tensor = 3072 * 2
    assert flux["cache"]["branch"][1] == (38 * 4096 + 38 * 512 + 38 * (4096 + 512)) * tensor
    assert flux["cache"]["branch"][3] == 3 * flux["cache"]["branch"][1] and flux["cache"]["branch"]["units"] == 95
    assert flux["cache"]["block"][1] == 57 * (4096 + 512) * tensor and flux["cache"]["body:1,1"][1] == 4608 * tensor
    assert flux["FBCache"] == (3 * 4096 + 2 * 512) * tensor and flux["DBCache"] == (2 * 4096 + 512) * tensor
    assert dit["cache"]["branch"][1] == 28 * 2 * 256 * 1152 * 2 and dit["FBCache"] == 3 * 256 * 1152 * 2
    assert 0 < flux["activations"] < flux["cache"]["branch"][1] and flux["weights"] > 20 * 2**30
    out = capsys.readouterr().out
    assert "| Flux.1-dev 1024² | branch | 95 | 2.00 GiB | 6.01 GiB |" in out
    assert "| Flux.1-dev 1024² | 4096x3072 | 24.00 MiB | 78.00 MiB | 51.00 MiB |" in out

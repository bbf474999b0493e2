"""The evaluation harness on tiny pipelines: methods, metrics, extractor, scripts."""

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import generator

import harmonica
from harmonica_bench import evaluation as ev
from harmonica_bench import methods
from harmonica_bench.evaluation import (
    JUDGE_EXTRACTOR,
    CallMeter,
    Extractor,
    class_accuracies,
    class_accuracy,
    fidelity_metrics,
    psnr,
    register_judge_extractor,
    resolve_extractor,
    ssim,
)

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models gain nothing from a second thread, and on a busy 2-core machine two threads
    per process make these tests several times slower (OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dit(dit_path):
    return ev.load_pipeline(dit_path)


@pytest.fixture(scope="module")
def pixart(pixart_path):
    return ev.load_pipeline(pixart_path)


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    from harmonica_bench.judge import ShapesJudge

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("judge")
    ShapesJudge().eval().save_pretrained(path)
    return path


def dit_setup(pipe, batch_size=2):
    return ev.setup_for(pipe, STEPS, 1.5, batch_size=batch_size)


def pixart_setup(pipe):
    return ev.setup_for(pipe, STEPS, 4.5, batch_size=2, prompts=["a red circle", "a blue star on the green"],
                        height=16, width=16)


def flux_setup(pipe, steps):
    """The tiny Flux pipeline with true CFG 4.0 (cond and uncond forwards apart), 2 prompts, 16x16."""
    setup = ev.setup_for(pipe, steps, 4.0, batch_size=2, prompts=["a red circle", "a blue star on the green"],
                         height=16, width=16)
    setup.max_sequence_length = 8
    return setup


def run(pipe, setup, overrides=None, indices=range(2)):
    with torch.no_grad():
        return pipe(**setup.call_kwargs(pipe, indices, overrides)).images


def applied_clone(pipe, name, knob, setup, router=None):
    clone = methods.clone_pipeline(pipe)
    applied = methods.apply_method(clone, name, knob, num_inference_steps=setup.num_inference_steps, router=router,
                                   calibrate=ev.calibration_call(setup))
    return clone, applied


def measured(pipe, setup, overrides=None):
    meter = CallMeter(pipe)
    try:
        with meter.measure():
            out = run(pipe, setup, overrides)
    finally:
        meter.detach()
    return out, meter.cost


# ------------------------------------------------------------------------------ registry
def test_registry_and_method_strings():
    assert {"none", "fewer-steps", "fora", "delta-dit", "fbcache", "taylorseer", "taylorseer2", "pab", "magcache",
            "dbcache", "dbcache-taylorseer", "ltc", "harmonica"} <= set(methods.METHODS)
    for spec in methods.METHODS.values():
        assert (spec.knob is None) == (spec.kind is None)
        assert spec.faster in ("higher", "lower")
    r = methods.parse_method("fora=2,3")
    assert (r.name, r.knobs, r.router) == ("fora", [2, 3], None)
    r = methods.parse_method("harmonica=0.2@runs/my=router")
    assert (r.name, r.knobs, r.router, r.series) == ("harmonica", [0.2], "runs/my=router", "harmonica@my=router")
    with pytest.raises(ValueError, match="unknown method"):
        methods.parse_method("teacache")
    with pytest.raises(ValueError, match="must be a int"):
        methods.parse_method("fora=two")
    with pytest.raises(ValueError, match="takes no router"):
        methods.parse_method("fora=2@somewhere")
    info = methods.PipeInfo(12, ("attn1", "ff"), 20, "DDIMScheduler")
    assert methods.knob_values(methods.parse_method("fewer-steps"), info, sweep=True) == [16, 14, 12, 10, 8]
    assert methods.knob_values(methods.parse_method("delta-dit"), info) == [6]


def test_clone_shares_weights_and_leaves_the_original_alone(dit):
    setup = dit_setup(dit)
    before = run(dit, setup)
    clone, _ = applied_clone(dit, "taylorseer", 2, setup)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(dit.transformer.parameters(), clone.transformer.parameters()))
    assert clone.transformer is not dit.transformer and clone.scheduler is not dit.scheduler
    assert not torch.equal(run(clone, setup), before)
    assert torch.equal(run(dit, setup), before)
    assert "_diffusers_hook" not in dit.transformer.__dict__
    with pytest.raises(RuntimeError, match="before applying"):
        methods.clone_pipeline(clone)


# -------------------------------------------------------------------- methods on tiny DiT
# Knobs that make each method skip work on the tiny random model (thresholds far above its
# residual changes), and knobs that must leave the output exactly as the stock pipeline's.
SKIPPING = {"fewer-steps": 4, "fora": 2, "delta-dit": 2, "fbcache": 10.0, "taylorseer": 2, "taylorseer2": 2,
            "pab": 2, "magcache": 10.0, "dbcache": 10.0, "dbcache-taylorseer": 10.0}
KEEPING = {"fewer-steps": STEPS, "fora": 1, "fbcache": 0.0, "taylorseer": 1, "taylorseer2": 1, "magcache": 0.0}


@pytest.mark.parametrize("name", list(SKIPPING))
def test_method_skips_work_and_is_repeatable(dit, name):
    if name.startswith("dbcache"):
        pytest.importorskip("cache_dit")
    setup = dit_setup(dit)
    stock, stock_cost = measured(methods.clone_pipeline(dit), setup)
    clone, applied = applied_clone(dit, name, SKIPPING[name], setup)
    first = run(clone, setup, applied.call_overrides)
    out, cost = measured(clone, setup, applied.call_overrides)
    assert torch.equal(out, first), "a second call must not see state of the first"
    assert out.shape == stock.shape and torch.isfinite(out).all()
    assert not torch.equal(out, stock)
    assert cost.macs < stock_cost.macs
    if name == "fewer-steps":
        assert cost.transformer_forwards == SKIPPING[name] and cost.cache_usage == 0
    else:
        assert cost.transformer_forwards == STEPS and cost.cache_usage > 0
        assert cost.per_forward_computed[0] == cost.branch_slots // STEPS  # the first step computes everything


@pytest.mark.parametrize("name", list(KEEPING))
def test_method_at_a_no_op_knob_keeps_the_output(dit, name):
    setup = dit_setup(dit)
    stock = run(methods.clone_pipeline(dit), setup)
    clone, applied = applied_clone(dit, name, KEEPING[name], setup)
    out, cost = measured(clone, setup, applied.call_overrides)
    assert torch.equal(out, stock)
    assert cost.cache_usage == 0


def test_fora_counts_match_harmonica_stats(dit):
    setup = dit_setup(dit)
    clone, applied = applied_clone(dit, "fora", 2, setup)
    run(clone, setup)
    _, cost = measured(clone, setup)
    assert cost.cache_usage == pytest.approx(0.5) == harmonica.stats(clone).cache_usage
    assert cost.per_forward_computed == [6, 0, 6, 0, 6, 0]
    stock_macs = measured(methods.clone_pipeline(dit), setup)[1].macs
    assert stock_macs / cost.macs == pytest.approx(harmonica.stats(clone).macs_speedup, rel=0.02)
    assert cost.peak_memory_bytes > 0


ONE_COUNT_CASES = {  # the kinds of branch the meter must find as the cache does
    "flux (whole-block single blocks)": ("tiny_flux_pipeline", {}, "flux_call_kwargs"),
    "sana (convolution MLP)": ("tiny_sana_pipeline", {}, "sana_call_kwargs"),
    "wan 2.2 (two experts)": ("tiny_wan_pipeline", {"two_experts": True, "boundary_ratio": 0.8}, "wan_call_kwargs"),
}


@pytest.mark.parametrize("case, granularity", [(case, "branch") for case in sorted(ONE_COUNT_CASES)]
                         + [("flux (whole-block single blocks)", "span:2")])
@pytest.mark.parametrize("fused", [True, False])
def test_harness_meter_and_harmonica_stats_are_one_count(case, granularity, fused):
    """The harness's per-call meter and harmonica.stats agree exactly on forwards, branch computations and MACs:
    a rebuilt whole block still pays its gates, a Sana MLP is convolutions, Wan 2.2's second expert is metered;
    at a coarse granularity (stats count units) on forwards and MACs."""
    import tiny_models

    from harmonica_bench.evaluation import CallMeter, check_one_count

    build, options, call = ONE_COUNT_CASES[case]
    pipe = getattr(tiny_models, build)(**options)
    pipe.set_progress_bar_config(disable=True)
    kwargs = getattr(tiny_models, call)(num_inference_steps=5)
    harmonica.enable(pipe, harmonica.HarmoniCaRouter.static(harmonica.describe(pipe, granularity), 5, compute_every=2),
                     fused=fused)
    meter = CallMeter(pipe, track_memory=False)
    with torch.no_grad(), meter.measure():
        pipe(**kwargs, generator=generator(0))
    meter.detach()
    stats = check_one_count(pipe, meter.cost)
    assert 0 < stats.macs_spent == meter.cost.macs < stats.macs_full
    assert stats.reused > 0 and meter.cost.transformer_forwards == stats.forwards
    meter.cost.macs += 1  # one count off: the harness refuses the figures
    with pytest.raises(RuntimeError, match="MACs: meter .* harmonica.stats"):
        check_one_count(pipe, meter.cost)


def test_taylorseer_orders_and_cache_dit_calibrator_differ(dit):
    """Order 2 is a different forecast from order 1 on the same schedule; DBCache's TaylorSeer
    calibrator changes what DBCache's reused steps produce, not which steps are reused."""
    setup = dit_setup(dit)
    outs = {}
    for name in ("taylorseer", "taylorseer2"):
        clone, applied = applied_clone(dit, name, 2, setup)
        outs[name], cost = measured(clone, setup)
        assert applied.info["max_order"] == (2 if name == "taylorseer2" else 1)
    assert applied.label == "TaylorSeer-O2 N=2" and not torch.equal(outs["taylorseer"], outs["taylorseer2"])
    pytest.importorskip("cache_dit")
    import cache_dit

    assert hasattr(cache_dit, "TaylorSeerCalibratorConfig")
    # cache-dit 1.5.3 forms its first Taylor derivative from the 4th fully computed step: warm-up 20 // 5 = 4
    setup = ev.setup_for(dit, 20, 1.5, batch_size=2)
    costs = {}
    for name in ("dbcache", "dbcache-taylorseer"):
        clone, applied = applied_clone(dit, name, 10.0, setup)
        outs[name], costs[name] = measured(clone, setup)
    assert applied.info["calibrator"] == {"type": "taylorseer", "taylorseer_order": 1}
    assert costs["dbcache"].per_forward_computed == costs["dbcache-taylorseer"].per_forward_computed
    assert not torch.equal(outs["dbcache"], outs["dbcache-taylorseer"])


def test_router_methods_take_any_router_folder(dit, tmp_path):
    setup = dit_setup(dit)
    layout = harmonica.describe(dit)
    compute = harmonica.HarmoniCaRouter.for_layout(layout, STEPS, init="compute")
    compute.save_pretrained(tmp_path / "compute")
    reuse = harmonica.HarmoniCaRouter.for_layout(layout, STEPS, init="reuse", threshold=0.3)
    reuse.save_pretrained(tmp_path / "reuse")
    stock = run(methods.clone_pipeline(dit), setup)
    clone, applied = applied_clone(dit, "harmonica", None, setup, router=tmp_path / "compute")
    assert torch.equal(run(clone, setup), stock) and applied.knob == compute.threshold
    clone, applied = applied_clone(dit, "ltc", None, setup, router=tmp_path / "reuse")
    assert applied.knob == 0.3 and applied.label == "LTC 83% tau=0.3"  # 5 of 6 steps reused
    out, cost = measured(clone, setup)
    assert cost.per_forward_computed == [6, 0, 0, 0, 0, 0] and not torch.equal(out, stock)
    reuse.training_info = {"objective": "sdt", "config": {"init": "uniform"}}  # named by how it was trained
    reuse.save_pretrained(tmp_path / "sdt")
    assert applied_clone(dit, "harmonica", None, setup, router=tmp_path / "sdt")[1].label == "SDT only (uniform init) 83% tau=0.3"
    reuse.training_info = {"objective": "harmonica", "config": {"init": "static:2", "history": 3, "forecast_init": "reuse"}}
    reuse.save_pretrained(tmp_path / "run-fora" / "router")  # a training run's output folder
    request = methods.parse_method(f"harmonica@{tmp_path / 'run-fora' / 'router'}")
    assert request.series == "harmonica@run-fora"  # named by the run, not by its router/ subfolder
    assert applied_clone(dit, "harmonica", None, setup, router=tmp_path / "run-fora" / "router")[1].label == \
        "HarmoniCa (K=3 from reuse) 83% tau=0.3"
    with pytest.raises(ValueError, match="needs a router folder"):
        applied_clone(dit, "harmonica", None, setup)


@pytest.mark.parametrize("name", ["pab", "taylorseer", "delta-dit", "fbcache", "magcache"])
def test_methods_on_pixart(pixart, name):
    setup = pixart_setup(pixart)
    stock = run(methods.clone_pipeline(pixart), setup)
    knob = {"pab": 2, "taylorseer": 2, "delta-dit": 1, "fbcache": 10.0, "magcache": 10.0}[name]
    clone, applied = applied_clone(pixart, name, knob, setup)
    first = run(clone, setup)
    out, cost = measured(clone, setup)
    assert torch.equal(out, first) and not torch.equal(out, stock) and cost.cache_usage > 0
    if name == "pab":  # cross-attention (attn2) is broadcast too
        assert applied.info["cross_skip_range"] == 4


@pytest.mark.parametrize("name,knob", [("taylorseer", 2), ("dbcache", 10.0), ("magcache", 10.0)])
def test_baselines_cache_on_flux_with_true_cfg(name, knob):
    """Flux with true CFG (cond and uncond forwards apart): the baselines must cache there too.
    cache-dit is told the CFG is separate (else it compares cond with uncond and never caches);
    TaylorSeer forecasts the single blocks' proj_out in place of the attention and MLP feeding it."""
    from tiny_models import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    setup = flux_setup(pipe, 8)
    stock = measured(methods.clone_pipeline(pipe), setup)
    clone, applied = applied_clone(pipe, name, knob, setup)
    single_attn = []
    clone.transformer.single_transformer_blocks[0].attn.to_q.register_forward_pre_hook(lambda m, a: single_attn.append(1))
    out, cost = measured(clone, setup)
    assert cost.cache_usage > 0.2 and cost.macs < 0.85 * stock[1].macs and not torch.equal(out, stock[0])
    if name == "dbcache":
        assert applied.info["enable_separate_cfg"] is True
    if name == "taylorseer":  # computed at the warm-up step and then every other step, per guidance stream
        assert len(single_attn) < 2 * 8 and applied.info["skipped_on_forecast"]
        # a forward either computes every branch or forecasts them all, the single blocks' leaf-Linear
        # proj_out included (the harness once counted it computed whenever its module hooks fired)
        slots = cost.branch_slots // cost.transformer_forwards
        assert set(cost.per_forward_computed) == {0, slots}


def test_pab_keeps_one_state_per_cfg_stream_on_flux():
    """True CFG runs the conditional and unconditional passes as two forwards: each must broadcast its
    own attention (diffusers' hook alone shares one state, so uncond got cond's attention)."""
    from diffusers.hooks.pyramid_attention_broadcast import PyramidAttentionBroadcastHook
    from tiny_models import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    setup = flux_setup(pipe, 8)
    clone, _ = applied_clone(pipe, "pab", 2, setup)
    module = clone.transformer.transformer_blocks[0].attn
    hook = module._diffusers_hook.get_hook("pyramid_attention_broadcast")
    assert isinstance(hook, PyramidAttentionBroadcastHook)
    seen = []  # the hook's iteration count as each forward starts: cond, then uncond, at every step
    module.register_forward_pre_hook(lambda m, a: seen.append(hook.state.iteration))
    out, cost = measured(clone, setup)
    assert seen == [i for step in range(8) for i in (step, step)]
    assert cost.cache_usage > 0 and not torch.equal(out, measured(methods.clone_pipeline(pipe), setup)[0])


def test_delta_dit_refuses_two_stream_blocks_by_name():
    from tiny_models import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    setup = ev.setup_for(pipe, 4, 4.0, batch_size=1, prompts=["a red circle"], height=16, width=16)
    with pytest.raises(ValueError, match="delta-dit is implemented for one list of single-stream blocks.*FluxPipeline"):
        applied_clone(pipe, "delta-dit", 1, setup)


def test_magcache_calibration_measures_one_ratio_per_step(dit):
    from harmonica_bench.methods.magcache import magnitude_ratios

    setup = dit_setup(dit)
    ratios = magnitude_ratios(methods.clone_pipeline(dit), ev.calibration_call(setup), STEPS)
    assert len(ratios) == STEPS and ratios[0] == 1.0 and all(r > 0 for r in ratios)


def test_magcache_on_flux_with_true_cfg_calibrates_each_guidance_stream():
    """Flux with true CFG runs two forwards per step (cond, uncond): one ratio per step, each stream
    against its own previous step; the residual runs from the first double block to the last single one."""
    from harmonica_bench.methods.magcache import magnitude_ratios

    from tiny_models import flux_call_kwargs, tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    calls = []

    def call(p):
        calls.append(1)
        p(generator=torch.Generator().manual_seed(0), **flux_call_kwargs())

    ratios = magnitude_ratios(pipe, call, 4)
    assert len(ratios) == 4 and ratios[0] == 1.0 and all(r > 0 for r in ratios) and calls == [1]
    with pytest.raises(RuntimeError, match="not a multiple of 3 steps"):
        magnitude_ratios(pipe, call, 3)


def test_generation_does_not_depend_on_batching(dit):
    setup = dit_setup(dit, batch_size=3)
    whole = ev.generate(dit, setup, range(5), progress=False)
    setup.batch_size = 1
    parts = torch.cat([ev.generate(dit, setup, [i], progress=False) for i in (0, 1, 2, 3, 4)])
    assert whole.dtype == torch.uint8 and whole.shape == (5, 3, 16, 16)
    assert (whole.int() - parts.int()).abs().max() <= 1
    assert setup.num_classes == 1000 and setup.labels([0, 999, 1000, 1001]) == [0, 999, 0, 1]


def test_seed_sets_are_disjoint_and_kept_separately(dit, judge_dir, tmp_path, monkeypatch):
    from harmonica_bench.evaluation import quality

    setup = dit_setup(dit)
    seeds = [ev.seed_set(setup, j).seed for j in range(3)]
    assert seeds == [0, ev.SEED_SET_OFFSET, 2 * ev.SEED_SET_OFFSET]
    ranges = [set(range(s, s + 1000)) for s in seeds]
    calib = set(range(ev.CALIBRATION_OFFSET, ev.CALIBRATION_OFFSET + setup.batch_size))
    assert all(not (a & b) for i, a in enumerate(ranges) for b in ranges[i + 1:]) and not any(r & calib for r in ranges)
    assert ev.seed_set(setup, 2).labels(range(3)) == setup.labels(range(3))  # labels as in set 0
    with pytest.raises(ValueError, match="disjoint"):
        ev.seed_set(setup, 1, num_samples=ev.CALIBRATION_OFFSET + 1)

    extractor = ev.resolve_extractor("judge", judge=judge_dir)
    judge = ev.load_judge(judge_dir)
    kw = dict(reference=ev.reference_images("shapes", 12), extractor=extractor, judge=judge, seed_sets=2,
              bootstrap=50)
    run = ev.QualityRun(dit, setup, 4, tmp_path, **kw)
    result = run.evaluate(methods.parse_method("fora=2"), 2)
    first = torch.load(tmp_path / "samples" / "fora-2.pt")["images"]
    second = torch.load(tmp_path / "samples" / "set1" / "fora-2.pt")["images"]
    assert first.shape == second.shape == (4, 3, 16, 16) and not torch.equal(first, second)
    assert (tmp_path / "samples" / "set1" / "none-6steps.pt").is_file()
    # set 0 is the single-set evaluation of before: the same images
    assert torch.equal(first, ev.generate(applied_clone(dit, "fora", 2, setup)[0], setup, range(4), progress=False))
    assert result["seeds"] == [0, ev.SEED_SET_OFFSET] and len(result["metrics_per_set"]) == 2
    fds = [m["fd"] for m in result["metrics_per_set"]]
    assert result["metrics"]["fd"] == pytest.approx(sum(fds) / 2)
    e = result["errors"]
    assert e["fd"]["n_sets"] == 2 and e["fd"]["std"] > 0 and e["psnr"]["boot_ci"][0] <= e["psnr"]["mean"]
    assert set(run.replicates["fora-2"]) == {"fd", "kid_mean", "class_accuracy", "psnr", "ssim", "fd_uncached"}
    assert result["metrics"]["fd_uncached"] > 0 and "boot_ci" in e["fd_uncached"]
    stock = run.evaluate(methods.MethodRequest("none", []), None)
    assert "fd_uncached" not in stock["metrics"]  # the uncached samples are the target itself
    # a second run finds every seed set's samples in the store and generates nothing
    monkeypatch.setattr(quality, "generate_distributed", lambda *a, **k: pytest.fail("regenerated kept samples"))
    again = ev.QualityRun(dit, setup, 4, tmp_path, **kw).evaluate(methods.parse_method("fora=2"), 2)
    assert again["metrics"]["fd"] == pytest.approx(result["metrics"]["fd"])
    assert again["errors"]["psnr"]["boot_ci"] == pytest.approx(e["psnr"]["boot_ci"])  # same resamples


# ------------------------------------------------------------------------------- metrics
def test_psnr_and_ssim_on_known_inputs():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 24) * 0.8
    assert psnr(x, x + 0.1) == pytest.approx(torch.full((2,), 20.0), abs=1e-4)
    assert torch.isinf(psnr(x, x)).all()
    assert ssim(x, x) == pytest.approx(torch.ones(2), abs=1e-6)
    noisy = [ssim(x, (x + s * torch.randn_like(x)).clamp(0, 1)).mean().item() for s in (0.02, 0.1, 0.3)]
    assert 1 > noisy[0] > noisy[1] > noisy[2] > 0
    # one 11x11 window: SSIM from Gaussian-weighted global statistics, written out directly
    a, b = torch.rand(1, 1, 11, 11), torch.rand(1, 1, 11, 11)
    g = torch.exp(-((torch.arange(11.0) - 5) ** 2) / (2 * 1.5**2))
    w = torch.outer(g, g) / torch.outer(g, g).sum()
    ma, mb = (w * a).sum(), (w * b).sum()
    va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
    cov = (w * a * b).sum() - ma * mb
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    assert ssim(a, b).item() == pytest.approx(expected.item(), abs=1e-5)
    u8 = (x * 255).round().to(torch.uint8)
    assert ssim(u8, u8) == pytest.approx(torch.ones(2))
    from harmonica_bench.evaluation import similarity

    y = x.clone()
    y[1] += 0.1
    sim = similarity(y, x)
    assert sim["identical"] == 1 and sim["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert sim["psnr_pooled"] == pytest.approx(10 * torch.log10(torch.tensor(2 / 0.01)).item(), abs=1e-3)


def test_class_accuracy_with_a_known_classifier():
    class Sign(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):  # class 1 when the first pixel is bright
            bright = (x[:, 0, 0, 0] > 0).long()
            return torch.nn.functional.one_hot(bright, 10).float()

    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    images[:2] = 255
    assert class_accuracy(Sign(), images, [1, 1, 0, 0]) == 1.0
    assert class_accuracy(Sign(), images, [1, 0, 0, 1]) == 0.5
    assert class_accuracies(Sign(), images, [1, 0, 0, 1]) == (0.5, {0: 0.5, 1: 0.5})
    assert class_accuracies(Sign(), images, [1, 1, 0, 1]) == (0.75, {0: 1.0, 1: pytest.approx(2 / 3)})


def test_judge_is_a_torch_fidelity_extractor(judge_dir):
    from torch_fidelity.utils import create_feature_extractor

    assert register_judge_extractor() == JUDGE_EXTRACTOR == register_judge_extractor()  # idempotent
    fe = create_feature_extractor(JUDGE_EXTRACTOR, ["128", "logits"], cuda=False,
                                  feature_extractor_weights_path=str(judge_dir), verbose=False)
    feats, logits = fe(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (4, 128) and logits.shape == (4, 10)
    feats16, = create_feature_extractor(JUDGE_EXTRACTOR, ["128"], cuda=False,
                                        feature_extractor_weights_path=str(judge_dir), verbose=False)(
        torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    assert feats16.shape == (2, 128)
    from harmonica_bench.evaluation.metrics import _scale_images

    unit, = create_feature_extractor(JUDGE_EXTRACTOR, ["128"], cuda=False,
                                     feature_extractor_weights_path=str(judge_dir), verbose=False)(_scale_images())
    assert unit.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)  # unit scale on real shapes


def test_kept_samples_belong_to_the_weights(dit):
    before = ev.weights_fingerprint(dit)
    clone = methods.clone_pipeline(dit)
    assert ev.weights_fingerprint(clone) == before
    vae = dit.vae
    with torch.no_grad():
        p = next(vae.parameters())
        p.add_(1.0)
        changed = ev.weights_fingerprint(dit)
        p.sub_(1.0)
    assert changed != before


def test_fd_and_kid_are_sane(judge_dir):
    extractor = resolve_extractor("judge", judge=judge_dir)
    shapes_a = ev.reference_images("shapes", 80)
    shapes_b = ev.reference_images("shapes", 160)[80:]
    noise = torch.randint(0, 256, (80, 3, 32, 32), dtype=torch.uint8, generator=generator(1))
    same = fidelity_metrics(shapes_a, shapes_a, extractor, isc=True)
    close = fidelity_metrics(shapes_a, shapes_b, extractor)
    far = fidelity_metrics(noise, shapes_b, extractor)
    assert abs(same["fd"]) < 1e-3 and abs(same["kid_mean"]) < 0.05 * far["kid_mean"]
    assert far["fd"] > 5 * close["fd"] and far["kid_mean"] > close["kid_mean"]
    assert 1.0 <= same["isc_mean"] <= 10.0
    assert same["extractor"] == JUDGE_EXTRACTOR and same["num_generated"] == 80


def test_extractor_choice(judge_dir, tmp_path):
    bogus = tmp_path / "inception.pth"
    bogus.write_bytes(b"not weights")
    got = resolve_extractor("auto", inception_weights=str(bogus), judge=judge_dir)
    assert got.kind == "judge" and "Inception unavailable" in got.note
    with pytest.raises(RuntimeError, match="Inception-v3 weights cannot be loaded"):
        resolve_extractor("inception", inception_weights=str(bogus), judge=judge_dir, try_download=False)
    with pytest.raises(RuntimeError, match="no feature extractor"):
        resolve_extractor("auto", judge=tmp_path / "nowhere", try_download=False)
    assert isinstance(resolve_extractor("judge", judge=judge_dir), Extractor)


def test_inception_is_preferred_whenever_it_loads(judge_dir, monkeypatch):
    import harmonica_bench.evaluation.metrics as hm

    tried = []
    monkeypatch.setattr(hm, "inception_loadable", lambda path=None: (tried.append(path) or True, "stub"))
    got = resolve_extractor("auto", inception_weights="/some/inception.pth", judge=judge_dir)
    assert (got.kind, got.name, got.weights_path, got.distance_name) == (
        "inception", "inception-v3-compat", "/some/inception.pth", "FID")
    assert resolve_extractor("auto", judge=judge_dir).kind == "inception"  # the download, when online
    assert tried == ["/some/inception.pth", None]
    assert resolve_extractor("auto", judge=judge_dir, try_download=False).kind == "judge"
    assert resolve_extractor("judge", judge=judge_dir).kind == "judge"


# ------------------------------------------------------------------------------- scripts
@pytest.mark.parametrize("script", ["fid", "speed", "pareto"])
def test_scripts_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"eval/{script}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "eval" / f"{script}.py"), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--pipeline" in out and "--device" in out and "--method" in out


def script(name):
    return runpy.run_path(str(ROOT / "eval" / f"{name}.py"))


def test_fid_script_end_to_end(dit_path, judge_dir, tmp_path):
    out = tmp_path / "eval"
    common = ["--pipeline", str(dit_path), "--steps", "4", "--batch_size", "4", "--num_samples", "6",
              "--reference", "shapes", "--num_reference", "16", "--judge", str(judge_dir), "--no_download",
              "--device", "cpu", "--out", str(out)]
    results = script("fid")["main"](common + ["--method", "fora=2", "--method", "pab=2"])
    assert [r["label"] for r in results] == ["FORA N=2", "PAB N=2"]
    data = json.loads((out / "fora-2.json").read_text())
    assert data["metrics"]["num_generated"] == 6 and data["cost"]["cache_usage"] == pytest.approx(0.5)
    assert data["metrics"]["psnr"] > 0 and 0 < data["metrics"]["ssim"] <= 1 and "class_accuracy" in data["metrics"]
    lo, hi = data["errors"]["fd"]["boot_ci"]  # a bootstrap interval by default
    assert lo <= data["metrics"]["fd"] <= hi and data["bootstrap"]["resamples"] == 1000
    rows = (out / "results.md").read_text().splitlines()
    assert rows[0].startswith("| method") and len(rows) == 4 and rows[2].startswith("| FORA N=2 |")
    # the uncached samples are kept and reused
    assert (out / "samples" / "none-4steps.pt").is_file()
    from PIL import Image

    grid = Image.open(data["grid"])  # 6 samples of 10 classes: not a full row, so all 6 in one grid
    assert grid.size[0] > 32 and grid.size[1] > 32


def test_speed_and_pareto_scripts_end_to_end(dit_path, judge_dir, tmp_path):
    speed = script("speed")["main"](["--pipeline", str(dit_path), "--steps", "4", "--batch_size", "2",
                                     "--method", "fora=2", "--method", "fewer-steps=2", "--repeats", "1",
                                     "--warmup", "0", "--device", "cpu", "--out", str(tmp_path / "speed")])
    rows = {r["label"]: r for r in speed["rows"]}
    assert list(rows) == ["no caching", "FORA N=2", "DDIM-2"]
    assert rows["DDIM-2"]["macs_speedup"] == pytest.approx(2.0, rel=0.01)
    assert rows["FORA N=2"]["cache_usage"] == pytest.approx(0.5) and rows["no caching"]["speedup"] == 1.0
    assert all(r["latency_s"] > 0 and r["peak_memory_mb"] > 0 for r in speed["rows"])
    assert "| FORA N=2 |" in (tmp_path / "speed" / "speed.md").read_text()

    out = tmp_path / "pareto"
    points = script("pareto")["main"](["--pipeline", str(dit_path), "--steps", "4", "--batch_size", "4",
                                       "--num_samples", "4", "--reference", "shapes", "--num_reference", "16",
                                       "--judge", str(judge_dir), "--no_download", "--method", "fora=2,3",
                                       "--method", "magcache=10", "--timing_batch", "2", "--repeats", "2",
                                       "--warmup", "0", "--levels", "1.1", "9", "--bootstrap", "100",
                                       "--device", "cpu", "--out", str(out)])
    assert [p["label"] for p in points] == ["no caching", "FORA N=2", "FORA N=3", "MagCache 10"]
    assert all(p["measured_speedup"] > 0 and p["metrics"]["fd"] is not None for p in points)
    assert all(p["speedup_spread"]["rounds"] == 2 and "boot_ci" in p["errors"]["fd"] for p in points)
    assert (out / "pareto.png").stat().st_size > 1000
    table = (out / "pareto.md").read_text()
    assert "FD (judge features)" in table and "| FORA N=3 |" in table
    assert "**at >= 1.1x**" in table and "**at >= 9x**" in table and "(no point reaches this speed)" in table
    data = json.loads((out / "pareto.json").read_text())
    assert [t["level"] for t in data["levels"]] == [1.1, 9.0] and data["levels"][1]["rows"] == []
    assert {r["method"] for r in data["levels"][0]["rows"]} <= {"fora", "magcache"}
    assert (out / "bootstrap.npz").is_file()
    (out / "pareto.png").unlink()
    replotted = script("pareto")["main"](["--plot_only", "--out", str(out)])
    assert [p["label"] for p in replotted] == [p["label"] for p in points] and (out / "pareto.png").is_file()
    assert (out / "pareto.md").read_text() == table  # the level tables come back from bootstrap.npz
    script("pareto")["main"](["--plot_only", "--speedup", "macs", "--out", str(out)])  # levels by MACs speedup
    by_macs = (out / "pareto-macs.md").read_text()
    assert "among its points at or above the level's MACs speedup" in by_macs and (out / "pareto-macs.png").is_file()
    assert (out / "pareto.md").read_text() == table  # the measured tables stay as they were
    # a docs page of the sweep: the command that made it, the commit, the plot beside it, the tables
    assert data["command"].startswith("python eval/pareto.py --pipeline") and "--method fora=2,3" in data["command"]
    script("pareto")["main"](["--plot_only", "--out", str(out), "--results_page", str(tmp_path / "docs" / "r.md")])
    page = (tmp_path / "docs" / "r.md").read_text()
    assert f"`{data['command']}`" in page and f"`{data['commit']}`" in page and table.strip() in page
    assert "![speedup against FD](r.png)" in page and (tmp_path / "docs" / "r.png").stat().st_size > 1000
    # PSNR against step count: each method's best point at a MACs level, one line per method
    table = script("step_counts")["main"](["--sweep", str(out), "--level", "1.4", "--out", str(tmp_path / "sc")])
    (series,) = table.values()  # one scheduler
    assert set(series) == {p["series"] for p in points if p["series"] != "none" and p["macs_speedup"] >= 1.4 * 0.98}
    assert set(series["fora"]) == {4}  # the sweep's step count
    assert series["fora"][4]["metrics"]["psnr"] == max(p["metrics"]["psnr"] for p in points if p["series"] == "fora")
    assert (tmp_path / "sc.png").stat().st_size > 1000 and "| fora | FORA N=" in (tmp_path / "sc.md").read_text()
    # --compare: paired differences of two points on the same resamples, in both directions
    there, back = (script("pareto")["main"](["--out", str(out), "--compare", *pair]) for pair in
                   (["fora-2", "fora-3"], ["fora-3", "fora-2"]))
    assert [d.metric for d in there] == ["fd", "psnr", "fd_uncached", "class_accuracy"]
    assert there[0].method == "bootstrap" and there[0].diff == pytest.approx(-back[0].diff)
    assert there[0].ci[0] <= there[0].diff <= there[0].ci[1]
    with pytest.raises(SystemExit, match="matches 2 points"):
        script("pareto")["main"](["--out", str(out), "--compare", "fora", "none"])


@pytest.mark.parametrize("method", ["fora=2", "dbcache=0.3"])
def test_fid_script_splits_work_across_two_processes(dit_path, judge_dir, tmp_path, method):
    """accelerate launch with 2 CPU processes gives the same images as one process. cache-dit's
    DBCache too: it reads 2 processes as model parallelism and averages its decision over them
    (images of one process then depend on the other's; the main process's lone cost call hangs)."""
    if method.startswith("dbcache"):
        pytest.importorskip("cache_dit")
    common = ["--pipeline", str(dit_path), "--steps", "6", "--batch_size", "2", "--num_samples", "5",
              "--reference", "shapes", "--num_reference", "8", "--judge", str(judge_dir), "--no_download",
              "--device", "cpu", "--method", method]
    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port)]
    proc = subprocess.run(launch + [str(ROOT / "eval" / "fid.py")] + common + ["--out", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    script("fid")["main"](common + ["--batch_size", "5", "--out", str(tmp_path / "one")])
    tag = method.replace("=", "-")
    cost = json.loads((tmp_path / "two" / f"{tag}.json").read_text())["cost"]
    assert 0 < cost["cache_usage"] < 1  # DBCache reused some steps and computed others
    for tag in ("none-6steps", tag):
        two = torch.load(tmp_path / "two" / "samples" / f"{tag}.pt")["images"]
        one = torch.load(tmp_path / "one" / "samples" / f"{tag}.pt")["images"]
        assert two.shape == one.shape == (5, 3, 16, 16)
        assert (two.int() - one.int()).abs().max() <= 1


def test_speed_kernel_switch_lists_fused_and_unfused(dit_path):
    from harmonica_bench import methods
    from harmonica_bench.evaluation import with_kernel_setting

    entries = [(methods.parse_method("fora=2"), 2), (methods.parse_method("fewer-steps=4"), 4)]
    both = with_kernel_setting(entries, "both")
    assert [(r.name, r.fused) for r, _ in both] == [("fora", True), ("fora", False), ("fewer-steps", True)]
    assert [(r.name, r.fused) for r, _ in with_kernel_setting(entries, "off")] == [("fora", False), ("fewer-steps", True)]
    assert both[1][0].series.endswith("(kernel off)")


# ----------------------------------------------------------------------------- one MAC counter
def test_one_mac_counter_for_the_cache_stats_and_the_harness(dit):
    """The cache's statistics (harmonica.stats) count with harmonica.macs.count_macs, the harness with the
    same MacCounter, and both agree with torch's own FlopCounterMode on a transformer forward."""
    from torch.utils.flop_counter import FlopCounterMode

    import importlib

    from harmonica import macs

    for name in ("harmonica.cache.hooks", "harmonica.cache.controller"):
        assert importlib.import_module(name).count_macs is macs.count_macs
    blocks = macs
    t = dit.transformer
    x = torch.randn(2, 4, 8, 8, generator=generator(0))
    kw = dict(timestep=torch.tensor([500, 500]), class_labels=torch.tensor([1, 2]))
    with torch.no_grad():
        out, counted = blocks.count_macs(lambda: t(x, **kw).sample)
        with FlopCounterMode(display=False) as flops:
            t(x, **kw)
        with macs.MacCounter() as outer:  # nested counters both see the inner region
            _, inner = macs.count_macs(lambda: t(x, **kw))
    assert counted == flops.get_total_flops() // 2 == inner == outer.macs > 0
    # the harness's per-call count (CallMeter) and the cache's statistics agree on a whole call
    setup = dit_setup(dit)
    clone, _ = applied_clone(dit, "fora", 1, setup)
    _, cost = measured(clone, setup)
    stock = measured(methods.clone_pipeline(dit), setup)[1]
    assert cost.macs == stock.macs == harmonica.stats(clone).macs_full
    assert counted * STEPS * 2 == stock.macs  # batch 2 with CFG = 4 rows = two batch-2 forwards per step


def test_cache_statistics_and_harness_agree_on_flux_macs():
    """harmonica.stats prices each reused branch from a per-branch MAC table; on Flux's single-stream
    blocks (one branch standing for the whole block) it must match the MACs the harness counts."""
    from tiny_models import tiny_flux_pipeline

    from harmonica import HarmoniCaRouter

    pipe = tiny_flux_pipeline()
    setup = flux_setup(pipe, 6)
    harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(pipe), 6, compute_every=2))
    _, cost = measured(pipe, setup)
    st = harmonica.stats(pipe)
    assert st.cache_usage > 0.3
    assert st.macs_spent == pytest.approx(cost.macs, rel=0.01)


def test_fid_script_on_a_flux_pipeline_with_its_harness_defaults(judge_dir, tmp_path):
    """A text-to-image family through the harness: the pipeline folder's harness.json gives guidance (true
    CFG), size, token budget and the labelled 'shapes' prompts, so class and colour accuracy are judged;
    the baselines and a router run on it."""
    from tiny_models import tiny_flux_pipeline

    from harmonica import HarmoniCaRouter

    folder = tmp_path / "flux"
    pipe = tiny_flux_pipeline()
    pipe.save_pretrained(folder)
    (folder / "harness.json").write_text(json.dumps({"guidance_scale": 4.0, "height": 16, "width": 16,
                                                     "max_sequence_length": 8, "prompts": "shapes"}))
    router = HarmoniCaRouter.static(harmonica.describe(pipe), 4, compute_every=2, history=2)
    router.init_forecast("taylor")
    router.save_pretrained(tmp_path / "router")
    out = tmp_path / "eval"
    results = script("fid")["main"](["--pipeline", str(folder), "--steps", "4", "--batch_size", "4", "--num_samples", "4",
                                     "--reference", "shapes", "--num_reference", "16", "--judge", str(judge_dir),
                                     "--no_download", "--device", "cpu", "--bootstrap", "0", "--out", str(out),
                                     "--method", "taylorseer=2", "--method", "magcache=10",
                                     "--method", f"harmonica@{tmp_path / 'router'}"])
    assert len(results) == 3
    for r in results:
        m = r["metrics"]
        assert 0 <= m["class_accuracy"] <= 1 and 0 <= m["colour_accuracy"] <= 1 and m["psnr"] > 0
        assert r["setup"]["guidance_scale"] == 4.0 and r["setup"]["max_sequence_length"] == 8
    forecast = next(r for r in results if r["method"] == "harmonica")
    assert forecast["cost"]["cache_usage"] == pytest.approx(0.5)


def test_harness_names_prompts_the_embedded_flux_model_cannot_draw(tmp_path):
    import warnings
    from types import SimpleNamespace

    from diffusers import FluxPipeline

    from harmonica_bench.embedded import FLUX_PIPELINE
    from harmonica_bench.evaluation.cli import setup_from_args

    pipe = FluxPipeline.from_pretrained(FLUX_PIPELINE)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\na white ring on a black background\n")
    args = SimpleNamespace(pipeline=str(FLUX_PIPELINE), prompts=str(prompts), steps=None, guidance_scale=None,
                           height=None, width=None, max_sequence_length=None, seed=0, batch_size=2, num_classes=None)
    with pytest.warns(UserWarning, match=r"1 of 2 captions.*unknown words \['fox', 'in', 'the', 'snow'\]"):
        setup = setup_from_args(args, pipe)
    assert setup.prompts == ["a red fox in the snow", "a white ring on a black background"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup_from_args(SimpleNamespace(**{**vars(args), "prompts": None}), pipe)  # its harness.json: 'shapes'


def test_loading_the_embedded_dit_prints_no_warning():
    """The id2label of a DiT folder has string keys (JSON has no others); diffusers' type check flagged them on
    every load (a logged warning, not a Python one). harmonica_bench.embedded drops that message, and only it."""
    import logging
    import warnings

    import diffusers
    from diffusers import DiTPipeline

    from harmonica_bench.embedded import EMBEDDED_PIPELINE

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library = logging.getLogger("diffusers")
    before = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_warning()  # the default (the harness and the demo lower it)
    library.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = DiTPipeline.from_pretrained(EMBEDDED_PIPELINE)
        loader = logging.getLogger("diffusers.pipelines.pipeline_utils")
        loader.warning("Expected types for transformer: (A,), got B.")  # any other type warning still shows
    finally:
        library.removeHandler(handler)
        diffusers.utils.logging.set_verbosity(before)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in records] == ["Expected types for transformer: (A,), got B."]
    assert pipe.labels["star"] == 5  # the class names still load


def test_loading_in_half_precision_uses_diffusers_dtype_keyword(dit_path, monkeypatch):
    import warnings

    import diffusers

    from harmonica.pipeline import dtype_kwargs

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # torch_dtype is deprecated from diffusers 0.40 on
        pipe = ev.load_pipeline(dit_path, dtype="bfloat16")
    assert pipe.transformer.dtype == torch.bfloat16
    assert dtype_kwargs(None) == {}
    monkeypatch.setattr(diffusers, "__version__", "0.40.0")
    assert dtype_kwargs(torch.float16) == {"dtype": torch.float16}
    monkeypatch.setattr(diffusers, "__version__", "0.39.2")  # before the rename: no dtype keyword there
    assert dtype_kwargs(torch.float16) == {"torch_dtype": torch.float16}

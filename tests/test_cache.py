"""The cache hooks inside stock diffusers pipelines, on tiny models saved and loaded locally."""

import pytest
import torch
from conftest import generator
from diffusers import DiTPipeline, PixArtAlphaPipeline, PixArtSigmaPipeline
from tiny_models import pixart_call_kwargs

import harmonica
from harmonica import HarmoniCaPipeline, HarmoniCaRouter, RouterError
from harmonica.pipeline import UnsupportedPipelineError

STEPS = 5


def dit_images(pipe, labels=(1, 2), guidance_scale=1.5, steps=STEPS, seed=0):
    return pipe(list(labels), guidance_scale=guidance_scale, num_inference_steps=steps, generator=generator(seed),
                output_type="pt").images


def router_dir(tmp_path, pipe, steps=STEPS, **kwargs):
    kind = kwargs.pop("kind", "compute")
    layout = harmonica.describe(pipe)
    if kind == "static":
        router = HarmoniCaRouter.static(layout, steps, **kwargs)
    else:
        router = HarmoniCaRouter.for_layout(layout, steps, init=kind, **kwargs)
    router.save_pretrained(tmp_path / "router")
    return tmp_path / "router"


def module_state(module):
    """Every attribute of every submodule, by name (what 'left exactly as it was' means)."""
    return {name: sorted(m.__dict__.keys()) for name, m in module.named_modules()}


# ------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("guidance_scale", [1.0, 1.5])
def test_all_compute_router_is_exact_dit(dit_path, tmp_path, guidance_scale):
    stock = DiTPipeline.from_pretrained(dit_path)
    expected = dit_images(stock, guidance_scale=guidance_scale)
    rdir = router_dir(tmp_path, stock)
    pipe = HarmoniCaPipeline.from_pretrained(dit_path, router=rdir)
    assert isinstance(pipe, DiTPipeline)
    got = dit_images(pipe, guidance_scale=guidance_scale)
    assert torch.equal(got, expected)
    assert harmonica.stats(pipe).cache_usage == 0.0


@pytest.mark.parametrize("guidance_scale", [1.0, 4.5])
def test_all_compute_router_is_exact_pixart_alpha(pixart_path, tmp_path, guidance_scale):
    stock = PixArtAlphaPipeline.from_pretrained(pixart_path)
    kwargs = pixart_call_kwargs(guidance_scale=guidance_scale)
    expected = stock(**kwargs, generator=generator()).images
    pipe = HarmoniCaPipeline.from_pretrained(pixart_path, router=router_dir(tmp_path, stock, steps=4))
    assert isinstance(pipe, PixArtAlphaPipeline)
    assert torch.equal(pipe(**kwargs, generator=generator()).images, expected)


def test_all_compute_router_is_exact_pixart_sigma(pixart_sigma_path, tmp_path):
    stock = PixArtSigmaPipeline.from_pretrained(pixart_sigma_path)
    expected = stock(**pixart_call_kwargs(), generator=generator()).images
    pipe = HarmoniCaPipeline.from_pretrained(pixart_sigma_path, router=router_dir(tmp_path, stock, steps=4))
    assert isinstance(pipe, PixArtSigmaPipeline)
    assert torch.equal(pipe(**pixart_call_kwargs(), generator=generator()).images, expected)


# ----------------------------------------------------------------------- real skipping
def count_computations(transformer):
    """Count real computations of every branch (hooks on their inner layers, which a reuse never runs)."""
    counts = {}
    handles = []
    for b, block in enumerate(transformer.transformer_blocks):
        for name, inner in (("attn1", block.attn1.to_q), ("ff", block.ff.net[0])):
            counts[(b, name)] = 0

            def bump(*_, key=(b, name)):
                counts[key] += 1

            handles.append(inner.register_forward_pre_hook(bump))
    return counts, handles


def test_reused_branch_does_not_run(dit_path, tmp_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    layout = harmonica.describe(pipe)
    router = HarmoniCaRouter.for_layout(layout, STEPS, init="compute")
    with torch.no_grad():
        router.logits[2, layout.slot(1, "attn1")] = -5.0  # block 1 attn1 reused at step 2
        router.logits[3:, layout.slot(0, "ff")] = -5.0  # block 0 ff reused at steps 3 and 4
    harmonica.enable(pipe, router)
    counts, _ = count_computations(pipe.transformer)
    dit_images(pipe)
    assert counts[(1, "attn1")] == STEPS - 1
    assert counts[(0, "ff")] == STEPS - 2
    assert counts[(0, "attn1")] == STEPS and counts[(2, "ff")] == STEPS
    stats = harmonica.stats(pipe)
    assert stats.reused == 3 and stats.branch_calls == STEPS * 3 * 2
    assert stats.cache_usage == pytest.approx(3 / 30)
    assert stats.macs_spent < stats.macs_full


def reference_dit_sampling(pipe, compute, labels, guidance_scale, steps, seed, coefficients=None):
    """A hand-written DDIM + CFG loop over the DiT's blocks with the same compute/reuse schedule;
    with ``coefficients[step][block][branch]`` a skipped branch is sum_k c_k * (its k-th last computed
    output) over the outputs computed so far."""
    import torch.nn.functional as F

    tr = pipe.transformer
    sched = pipe.scheduler
    sched.set_timesteps(steps)
    n = len(labels)
    latents = torch.randn((n, 4, 8, 8), generator=generator(seed))
    y = torch.tensor(list(labels) + [1000] * n)
    history = {}

    def branch(i, b, k, fn, arg):
        if compute[i][b][k]:
            history[b, k] = [fn(arg)] + history.get((b, k), [])
        if compute[i][b][k] or coefficients is None:
            return history[b, k][0]
        kept = history[b, k][:len(coefficients[i][b][k])]
        out = coefficients[i][b][k][0] * kept[0]
        for c, h in zip(coefficients[i][b][k][1:], kept[1:]):
            out = out + c * h
        return out

    x = torch.cat([latents, latents])
    for i, t in enumerate(sched.timesteps):
        half = x[:n]
        x = torch.cat([half, half])
        ts = t[None].expand(2 * n)
        h = tr.pos_embed(x)
        for b, block in enumerate(tr.transformer_blocks):
            nh, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(h, ts, y, hidden_dtype=h.dtype)
            h = gate_msa.unsqueeze(1) * branch(i, b, 0, block.attn1, nh) + h
            nh = block.norm3(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            h = gate_mlp.unsqueeze(1) * branch(i, b, 1, block.ff, nh) + h
        cond = tr.transformer_blocks[0].norm1.emb(ts, y, hidden_dtype=h.dtype)
        shift, scale = tr.proj_out_1(F.silu(cond)).chunk(2, dim=1)
        h = tr.proj_out_2(tr.norm_out(h) * (1 + scale[:, None]) + shift[:, None])
        side = int(h.shape[1] ** 0.5)
        p = tr.patch_size
        h = h.reshape(-1, side, side, p, p, tr.out_channels)
        out = torch.einsum("nhwpqc->nchpwq", h).reshape(-1, tr.out_channels, side * p, side * p)
        cond_o, uncond_o = out.split(n)
        guided = uncond_o + guidance_scale * (cond_o - uncond_o)
        x = sched.step(torch.cat([guided, guided]), t, x).prev_sample
    return x[:n]


def test_matches_hand_written_reference_loop(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    router = HarmoniCaRouter.for_layout(harmonica.describe(pipe), STEPS, generator=generator(3))
    compute = router.compute_mask(0.5).reshape(STEPS, 3, 2).tolist()
    assert 0.2 < 1 - router.compute_mask(0.5).float().mean() < 0.8  # a schedule that really mixes
    with torch.no_grad():
        expected = reference_dit_sampling(pipe, compute, (3, 7), 1.5, STEPS, seed=0)
    captured = {}
    harmonica.enable(pipe, router, threshold=0.5)
    original_decode = pipe.vae.decode
    pipe.vae.decode = lambda z, **kw: (captured.setdefault("z", z.clone()), original_decode(z, **kw))[1]
    dit_images(pipe, labels=(3, 7))
    torch.testing.assert_close(captured["z"] * pipe.vae.config.scaling_factor, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_forecast_matches_hand_written_reference_loop(dit_path, fused):
    """A static schedule with Taylor coefficients (history 3, second order) is a TaylorSeer-style forecast."""
    pipe = DiTPipeline.from_pretrained(dit_path)
    steps = 10  # computed at 0, 3, 6, 9: steps 4, 5 forecast to first order, 7, 8 to second order
    router = HarmoniCaRouter.static(harmonica.describe(pipe), steps, compute_every=3, history=3)
    router.init_forecast("taylor")
    mask = router.compute_mask()
    table = router.coefficients.detach()
    used = [(i, s) for i in range(steps) for s in range(6) if not mask[i, s]]
    assert any(len([c for c in table[i, s].tolist() if c != 0]) == 2 for i, s in used)  # first-order steps
    assert any(len([c for c in table[i, s].tolist() if c != 0]) == 3 for i, s in used)  # second-order steps
    compute = mask.reshape(steps, 3, 2).tolist()
    coefficients = [[[[c for c in table[i, b * 2 + k].tolist()] for k in range(2)] for b in range(3)]
                    for i in range(steps)]
    # only as many coefficients as outputs were computed so far (the hooks' rule)
    for i in range(steps):
        for b in range(3):
            for k in range(2):
                done = sum(1 for j in range(i) if compute[j][b][k])
                coefficients[i][b][k] = coefficients[i][b][k][:min(3, done)]
    with torch.no_grad():
        expected = reference_dit_sampling(pipe, compute, (3, 7), 1.5, steps, seed=0, coefficients=coefficients)
        reuse = reference_dit_sampling(pipe, compute, (3, 7), 1.5, steps, seed=0)
    captured = {}
    harmonica.enable(pipe, router, fused=fused)
    original_decode = pipe.vae.decode
    pipe.vae.decode = lambda z, **kw: (captured.setdefault("z", z.clone()), original_decode(z, **kw))[1]
    dit_images(pipe, labels=(3, 7), steps=steps)
    got = captured["z"] * pipe.vae.config.scaling_factor
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got - reuse).abs().max() > 1e-3  # the forecast is not reuse


def test_forecast_fused_equals_branch_by_branch_and_keeps_only_the_history_used(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), 7, compute_every=3, history=3)
    router.init_forecast("taylor:1")
    harmonica.enable(pipe, router, fused=False)
    expected = dit_images(pipe, steps=7)
    harmonica.enable(pipe, router, fused=True)
    assert torch.equal(dit_images(pipe, steps=7), expected)
    plan = harmonica.controller(pipe).plans[0]
    assert {depth for _, _, depth in plan.entries.values()} == {2}  # first order: two outputs per branch kept
    assert plan.capacity == {"image": 2 * 6}
    forecast_bytes = harmonica.stats(pipe).cache_bytes
    router.init_forecast("reuse")  # one output kept per branch: half the cache
    harmonica.enable(pipe, router)
    dit_images(pipe, steps=7)
    assert 2 * harmonica.stats(pipe).cache_bytes == forecast_bytes > 0
    assert "cache 0." in str(harmonica.stats(pipe))


def test_stats_report_usage_and_macs(dit_path):
    from torch.utils.flop_counter import FlopCounterMode

    pipe = DiTPipeline.from_pretrained(dit_path)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, compute_every=2)
    harmonica.enable(pipe, router)
    dit_images(pipe)
    stats = harmonica.stats(pipe)
    assert stats.cache_usage == pytest.approx(router.cache_usage()) == pytest.approx(2 / 5)
    x = torch.randn(4, 4, 8, 8)
    with harmonica.paused(pipe), FlopCounterMode(display=False) as fc:
        pipe.transformer(x, timestep=torch.tensor([10] * 4), class_labels=torch.tensor([1, 2, 1000, 1000]))
    assert stats.macs_full == STEPS * fc.get_total_flops() // 2
    assert 1.2 < stats.macs_speedup < 2.0
    assert stats.reused_per_step == [0, 6, 0, 6, 0]


# ------------------------------------------------------------------ per-call cache state
def test_no_stale_features_across_calls(dit_path):
    """Calls with other batch sizes / CFG settings after a skipping call give what a fresh pipeline gives."""
    def fresh():
        p = DiTPipeline.from_pretrained(dit_path)
        return harmonica.enable(p, HarmoniCaRouter.static(harmonica.describe(p), STEPS, compute_every=3))

    pipe = fresh()
    first = dit_images(pipe, labels=(1, 2), guidance_scale=1.5)
    second = dit_images(pipe, labels=(4, 5, 6), guidance_scale=1.0, seed=1)
    third = dit_images(pipe, labels=(1, 2), guidance_scale=1.5)
    assert torch.equal(first, third)
    assert torch.equal(second, dit_images(fresh(), labels=(4, 5, 6), guidance_scale=1.0, seed=1))
    assert harmonica.controller(pipe).states() == []  # every cache is freed after each call


def test_interrupted_call_does_not_leak_into_the_next(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, compute_every=2))
    expected = dit_images(pipe)
    original_step = pipe.scheduler.step
    calls = {"n": 0}

    def failing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original_step(*args, **kwargs)

    pipe.scheduler.step = failing_step
    with pytest.raises(KeyboardInterrupt):
        dit_images(pipe, labels=(8, 9, 9), seed=5)
    pipe.scheduler.step = original_step
    assert torch.equal(dit_images(pipe), expected)


# -------------------------------------------------------------------- enable / disable
def test_disable_restores_the_model_exactly(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    before = module_state(pipe.transformer)
    expected = dit_images(pipe)
    harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(pipe), STEPS))
    assert not torch.equal(dit_images(pipe), expected)
    harmonica.disable(pipe)
    assert module_state(pipe.transformer) == before
    assert "harmonica" not in pipe.__dict__
    assert torch.equal(dit_images(pipe), expected)


def test_controller_repr_shows_family_router_threshold_and_fusion(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, history=2, threshold=0.3)
    harmonica.enable(pipe, router)
    text = repr(harmonica.controller(pipe))
    assert " at 0x" not in text
    assert text.startswith("HarmoniCa(family='dit', router=<5 steps, blocks [3 x transformer_blocks ['attn1', 'ff']], "
                           "history 2>, threshold=0.3 (the router's), cache usage 40.0%, fused=on")
    harmonica.enable(pipe, router, threshold=0.95, fused=False)
    text = repr(harmonica.controller(pipe))
    assert "threshold=0.95 (the router's is 0.3)" in text and "fused=off" in text
    with harmonica.paused(pipe):
        assert repr(harmonica.controller(pipe)).endswith("fused=off, paused)")


def test_enable_twice_replaces_the_router(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    expected = dit_images(pipe)
    layout = harmonica.describe(pipe)
    harmonica.enable(pipe, HarmoniCaRouter.static(layout, STEPS))
    harmonica.enable(pipe, HarmoniCaRouter.for_layout(layout, STEPS, init="compute"))
    assert torch.equal(dit_images(pipe), expected)


def test_paused_runs_the_stock_model(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    expected = dit_images(pipe)
    harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(pipe), STEPS))
    with harmonica.paused(pipe):
        assert torch.equal(dit_images(pipe), expected)


# ------------------------------------------------------------------------------ bad input
def test_wrong_block_count_rejected_and_nothing_changes(dit_path, tmp_path):
    from tiny_models import tiny_dit_pipeline

    other = tiny_dit_pipeline(num_layers=2)
    rdir = router_dir(tmp_path, other)
    with pytest.raises(RouterError, match="2 blocks, the transformer has 3"):
        HarmoniCaPipeline.from_pretrained(dit_path, router=rdir)
    pipe = DiTPipeline.from_pretrained(dit_path)
    before = module_state(pipe.transformer)
    with pytest.raises(RouterError, match="blocks"):
        harmonica.enable(pipe, HarmoniCaRouter.from_pretrained(rdir))
    assert module_state(pipe.transformer) == before and "harmonica" not in pipe.__dict__


def test_wrong_branch_layout_rejected(dit_path, pixart_path, tmp_path):
    pixart = PixArtAlphaPipeline.from_pretrained(pixart_path)
    rdir = router_dir(tmp_path, pixart, steps=STEPS)
    with pytest.raises(RouterError, match="branches"):
        HarmoniCaPipeline.from_pretrained(dit_path, router=rdir)


def test_wrong_step_count_rejected_and_pipeline_still_works(dit_path, tmp_path):
    stock = DiTPipeline.from_pretrained(dit_path)
    expected = dit_images(stock)
    pipe = HarmoniCaPipeline.from_pretrained(dit_path, router=router_dir(tmp_path, stock))
    with pytest.raises(RouterError, match=f"made for {STEPS} sampling steps, the pipeline runs 7"):
        dit_images(pipe, steps=7)
    assert torch.equal(dit_images(pipe), expected)


def test_bad_threshold_rejected_at_load(dit_path, tmp_path):
    stock = DiTPipeline.from_pretrained(dit_path)
    rdir = router_dir(tmp_path, stock)
    for bad in (0.0, 1.0, 2.0, float("nan")):
        with pytest.raises(RouterError, match="threshold"):
            HarmoniCaPipeline.from_pretrained(dit_path, router=rdir, threshold=bad)


def test_truncated_router_rejected_at_load(dit_path, tmp_path):
    rdir = router_dir(tmp_path, DiTPipeline.from_pretrained(dit_path))
    weights = rdir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    with pytest.raises(RouterError, match="cannot read the router"):
        HarmoniCaPipeline.from_pretrained(dit_path, router=rdir)


def test_unsupported_pipeline_named(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(UnsupportedPipelineError, match="DDPMPipeline.*DiTPipeline, PixArtAlphaPipeline, PixArtSigmaPipeline"):
        HarmoniCaPipeline.from_pretrained(tmp_path / "ddpm", router=HarmoniCaRouter(5, blocks=[["transformer_blocks", 1, ["attn1"]]]))
    ddpm = DDPMPipeline.from_pretrained(tmp_path / "ddpm")
    with pytest.raises(UnsupportedPipelineError, match="supported pipelines"):
        harmonica.describe(ddpm)
    with pytest.raises(UnsupportedPipelineError, match="DDPMPipeline.*supported pipelines"):
        harmonica.enable(ddpm, HarmoniCaRouter(5, blocks=[["transformer_blocks", 1, ["attn1"]]]))


def test_transformer_called_outside_a_pipeline_call_is_named(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(pipe), STEPS))
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="outside a pipeline call.*harmonica.paused"):
        pipe.transformer(x, timestep=torch.tensor([999, 999]), class_labels=torch.tensor([1, 2]))
    with harmonica.paused(pipe):
        assert pipe.transformer(x, timestep=torch.tensor([999, 999]), class_labels=torch.tensor([1, 2])).sample.shape


def test_router_shipped_in_pipeline_folder_is_the_default(dit_path, tmp_path):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(dit_path, folder)
    stock = DiTPipeline.from_pretrained(folder)
    HarmoniCaRouter.static(harmonica.describe(stock), STEPS).save_pretrained(folder / "router")
    pipe = HarmoniCaPipeline.from_pretrained(folder)
    assert harmonica.controller(pipe).router.cache_usage() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no router given"):
        HarmoniCaPipeline.from_pretrained(dit_path)


def test_save_pretrained_keeps_the_router_and_still_loads_with_plain_diffusers(dit_path, tmp_path):
    import json

    from diffusers import DiffusionPipeline

    stock = DiTPipeline.from_pretrained(dit_path)
    expected_stock = dit_images(stock)
    stock.save_pretrained(tmp_path / "stock")
    router = router_dir(tmp_path, stock, kind="static", compute_every=2)
    pipe = HarmoniCaPipeline.from_pretrained(dit_path, router=router, threshold=0.7)
    expected = dit_images(pipe)
    assert not torch.equal(expected, expected_stock)
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "router" / "model.safetensors").is_file()
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index == json.loads((tmp_path / "stock" / "model_index.json").read_text()) and "router" not in index

    reloaded = HarmoniCaPipeline.from_pretrained(tmp_path / "saved")  # finds saved/router
    ctl = harmonica.controller(reloaded)
    assert ctl.threshold == 0.7 and ctl.router.threshold == 0.7  # saved with the threshold in use
    assert torch.equal(ctl.router.logits, HarmoniCaRouter.from_pretrained(router).logits)
    assert torch.equal(dit_images(reloaded), expected)

    plain = DiffusionPipeline.from_pretrained(tmp_path / "saved")  # diffusers ignores router/
    assert type(plain) is DiTPipeline and harmonica.controller(plain) is None
    assert torch.equal(dit_images(plain), expected_stock)

    harmonica.disable(pipe)
    assert "save_pretrained" not in pipe.__dict__
    pipe.save_pretrained(tmp_path / "disabled")
    assert (tmp_path / "disabled" / "model_index.json").is_file() and not (tmp_path / "disabled" / "router").exists()


# --------------------------------------------------------------------- cache pool and fusion
def test_fused_blocks_equal_branch_by_branch_and_skip_the_block(dit_path):
    """Fully reused blocks are replaced by one gather-apply: same images, norms not run."""
    pipe = DiTPipeline.from_pretrained(dit_path)
    layout = harmonica.describe(pipe)
    router = HarmoniCaRouter.static(layout, STEPS, compute_every=2)
    with torch.no_grad():
        router.logits[1, layout.slot(1, "attn1")] = 5.0  # block 1 attn1 computed at step 1: blocks 0 and 2 stay fused
    harmonica.enable(pipe, router, fused=False)
    expected = dit_images(pipe)
    harmonica.enable(pipe, router, fused=True)
    norm_calls = {b: 0 for b in range(3)}
    for b, block in enumerate(pipe.transformer.transformer_blocks):
        block.norm1.register_forward_pre_hook(lambda *_, b=b: norm_calls.__setitem__(b, norm_calls[b] + 1))
    got = dit_images(pipe)
    assert torch.equal(got, expected)
    # steps 0, 2, 4 compute everything; at step 3 all blocks are fused; at step 1 only block 1 runs
    assert norm_calls == {0: 3, 1: 4, 2: 3}
    assert harmonica.stats(pipe).cache_usage == pytest.approx(11 / 30)


def test_fused_pixart_blocks_equal_branch_by_branch(pixart_path):
    pipe = PixArtAlphaPipeline.from_pretrained(pixart_path)
    router = HarmoniCaRouter.static(harmonica.describe(pipe), 4, compute_every=2)
    harmonica.enable(pipe, router, fused=False)
    expected = pipe(**pixart_call_kwargs(), generator=generator()).images
    harmonica.enable(pipe, router, fused=True)
    assert torch.equal(pipe(**pixart_call_kwargs(), generator=generator()).images, expected)


def test_pool_keeps_only_reused_branches(dit_path):
    pipe = DiTPipeline.from_pretrained(dit_path)
    router = HarmoniCaRouter.for_layout(harmonica.describe(pipe), STEPS, init="compute")
    with torch.no_grad():
        router.logits[2:, router.layout.slot(1, "attn1")] = -5.0  # only block 1's attn1 is ever reused
    harmonica.enable(pipe, router)
    seen = []
    ctl = harmonica.controller(pipe)
    pipe.transformer.register_forward_hook(lambda *_: seen.extend(s.pools.get("image") for s in ctl.states()))
    dit_images(pipe)
    pools = [p for p in seen if p is not None]
    assert pools and all(p is pools[0] for p in pools)  # one buffer for the whole call
    assert pools[0].num_slots == 1 and pools[0].shape == (4, 16, 16)
    assert ctl.states() == []


def test_half_precision_pipeline(dit_path, tmp_path):
    """bf16 weights (as users run DiT-XL/2 on GPUs): the cache keeps the model's dtype and an
    all-compute router still reproduces the stock pipeline exactly."""
    import warnings

    from harmonica.pipeline import dtype_kwargs

    stock = DiTPipeline.from_pretrained(dit_path, **dtype_kwargs(torch.bfloat16))
    expected = dit_images(stock)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # diffusers 0.40 renamed torch_dtype to dtype (the old warns)
        pipe = HarmoniCaPipeline.from_pretrained(dit_path, router=router_dir(tmp_path, stock), dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    assert torch.equal(dit_images(pipe), expected)
    harmonica.enable(pipe, HarmoniCaRouter.static(harmonica.describe(pipe), STEPS, compute_every=2))
    pools = []
    ctl = harmonica.controller(pipe)
    pipe.transformer.register_forward_hook(lambda *_: pools.extend(s.pools.get("image") for s in ctl.states()))
    images = dit_images(pipe)
    assert torch.isfinite(images).all()
    assert {p.dtype for p in pools if p is not None} == {torch.bfloat16}


# ------------------------------------------------------------------------- config + apply
def test_apply_harmonica_config_is_enable_and_takes_a_router_folder(dit_path, tmp_path):
    """``apply_harmonica(pipe, HarmoniCaConfig(...))`` is the diffusers-hooks form of ``enable``; both take a
    router instance or a router folder, and refuse bad settings before anything is attached."""
    pipe = DiTPipeline.from_pretrained(dit_path)
    rdir = router_dir(tmp_path, pipe, kind="static", compute_every=2)
    harmonica.enable(pipe, HarmoniCaRouter.from_pretrained(rdir))
    expected = dit_images(pipe)
    harmonica.disable(pipe)
    harmonica.enable(pipe, str(rdir))  # a folder, as from_pretrained takes
    assert torch.equal(dit_images(pipe), expected)
    harmonica.apply_harmonica(pipe, harmonica.HarmoniCaConfig(router=rdir, fused=False))
    assert torch.allclose(dit_images(pipe), expected, atol=1e-6)
    assert harmonica.stats(pipe).cache_usage > 0.3
    with pytest.raises(RouterError, match="threshold must be"):
        harmonica.HarmoniCaConfig(router=rdir, threshold=1.5)
    with pytest.raises(TypeError, match="router must be a HarmoniCaRouter, a NoiseLevelRouter, a router folder or a hub id"):
        harmonica.HarmoniCaConfig(router=3)
    with pytest.raises(RouterError, match="no router at"):
        harmonica.enable(pipe, tmp_path / "missing")
    assert harmonica.controller(pipe).fused is False  # the refused enable left the running cache alone

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from harmonica import HarmoniCaRouter, RouterError, RouterLayout

LAYOUT = RouterLayout.uniform(4, ("attn1", "ff"), "DiTPipeline", "DiTTransformer2DModel", "DDIMScheduler")
MIXED = RouterLayout(  # Flux-like: double-stream blocks, then single-stream blocks with one branch
    (("transformer_blocks", ("attn", "ff", "ff_context")),) * 2 + (("single_transformer_blocks", ("proj_out",)),) * 3,
    "FluxPipeline", "FluxTransformer2DModel", "FlowMatchEulerDiscreteScheduler",
)


def test_scores_first_step_always_computes():
    router = HarmoniCaRouter.for_layout(LAYOUT, 5, init="reuse")
    mask = router.compute_mask(0.1)
    assert mask.shape == (5, 8)
    assert mask[0].all() and not mask[1:].any()
    assert router.cache_usage() == pytest.approx(0.8)


def test_first_step_logits_get_no_gradient():
    router = HarmoniCaRouter.for_layout(LAYOUT, 3, init="random", generator=torch.Generator().manual_seed(0))
    router.scores().sum().backward()
    assert torch.all(router.logits.grad[0] == 0)
    assert torch.all(router.logits.grad[1:] != 0)


def test_static_router_schedule():
    router = HarmoniCaRouter.static(LAYOUT, 6, compute_every=3)
    computed_steps = router.compute_mask().all(dim=1).nonzero().flatten().tolist()
    assert computed_steps == [0, 3]


def test_save_load_round_trip(tmp_path):
    router = HarmoniCaRouter.for_layout(LAYOUT, 5, generator=torch.Generator().manual_seed(1), threshold=0.3)
    router.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_steps"] == 5 and config["blocks"] == [["transformer_blocks", 4, ["attn1", "ff"]]]
    assert config["pipeline_class"] == "DiTPipeline" and config["scheduler_class"] == "DDIMScheduler"
    loaded = HarmoniCaRouter.from_pretrained(tmp_path)
    assert torch.equal(loaded.logits, router.logits)
    assert loaded.threshold == 0.3 and loaded.layout == router.layout


def test_truncated_router_file_is_a_clear_error(tmp_path):
    HarmoniCaRouter.for_layout(LAYOUT, 5).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-20])
    with pytest.raises(RouterError, match="truncated"):
        HarmoniCaRouter.from_pretrained(tmp_path)


def test_garbage_router_file_is_a_clear_error(tmp_path):
    HarmoniCaRouter.for_layout(LAYOUT, 5).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file at all" * 3)
    with pytest.raises(RouterError, match="cannot read the router"):
        HarmoniCaRouter.from_pretrained(tmp_path)


def test_corrupt_config_is_a_clear_error(tmp_path):
    HarmoniCaRouter.for_layout(LAYOUT, 5).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"num_steps": 5, "num_blo')
    with pytest.raises(RouterError):
        HarmoniCaRouter.from_pretrained(tmp_path)


def test_weights_not_matching_config(tmp_path):
    HarmoniCaRouter.for_layout(LAYOUT, 5).save_pretrained(tmp_path)
    save_file({"logits": torch.zeros(7, 4, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(RouterError, match="do not match"):
        HarmoniCaRouter.from_pretrained(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_rejected(tmp_path, bad):
    router = HarmoniCaRouter.for_layout(LAYOUT, 5)
    router.save_pretrained(tmp_path)
    logits = router.logits.detach().clone()
    logits[2, LAYOUT.slot(1, "attn1")] = bad
    save_file({"logits": logits}, str(tmp_path / "model.safetensors"))
    with pytest.raises(RouterError, match="NaN or inf"):
        HarmoniCaRouter.from_pretrained(tmp_path)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5, math.nan, "0.1"])
def test_bad_threshold_rejected(threshold):
    with pytest.raises(RouterError, match="threshold"):
        HarmoniCaRouter.for_layout(LAYOUT, 5, threshold=threshold)
    router = HarmoniCaRouter.for_layout(LAYOUT, 5)
    with pytest.raises(RouterError, match="threshold"):
        router.compute_mask(threshold)


def test_compatibility_names_every_problem():
    router = HarmoniCaRouter.for_layout(LAYOUT, 5)
    other = RouterLayout.uniform(6, ("attn1", "attn2", "ff"), "PixArtAlphaPipeline", "PixArtTransformer2DModel",
                                 "DDIMScheduler")
    with pytest.raises(RouterError) as err:
        router.check_compatible(other, num_steps=20)
    text = str(err.value)
    assert "4 blocks" in text and "6" in text
    assert "attn2" in text
    assert "20" in text and "num_inference_steps=5" in text
    router.check_compatible(LAYOUT, num_steps=5)  # no error


def test_load_router_accepts_a_training_run_folder(tmp_path):
    from harmonica.pipeline import load_router

    layout = RouterLayout.uniform(2, ("attn1", "ff"), "DiTPipeline", "DiTTransformer2DModel", "DDIMScheduler")
    router = HarmoniCaRouter.for_layout(layout, 4, generator=torch.Generator().manual_seed(0))
    router.save_pretrained(tmp_path / "run" / "router")  # as train/train_router.py lays out its output
    (tmp_path / "run" / "run_config.json").write_text("{}")
    assert torch.equal(load_router(tmp_path / "run").logits, router.logits)
    with pytest.raises(RouterError):
        load_router(tmp_path / "run" / "missing")


# ----------------------------------------------------------------- block lists and old files
def test_mixed_layout_round_trip_and_slots(tmp_path):
    router = HarmoniCaRouter.for_layout(MIXED, 4, generator=torch.Generator().manual_seed(2))
    assert router.logits.shape == (4, 2 * 3 + 3)
    assert MIXED.slot(1, "ff_context") == 5 and MIXED.slot(2, "proj_out") == 6 and MIXED.slot(4, "proj_out") == 8
    assert MIXED.slot_names[6] == "single_transformer_blocks.0.proj_out"
    with pytest.raises(RouterError, match="different branches"):
        MIXED.branches
    router.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["blocks"] == [["transformer_blocks", 2, ["attn", "ff", "ff_context"]],
                                ["single_transformer_blocks", 3, ["proj_out"]]]
    loaded = HarmoniCaRouter.from_pretrained(tmp_path)
    assert loaded.layout == MIXED and torch.equal(loaded.logits, router.logits)


def test_router_saved_before_block_lists_loads_with_the_same_schedule(tmp_path):
    """The old file format: config num_blocks + branches, logits [steps, blocks, branches]."""
    logits = torch.randn(5, 4, 2, generator=torch.Generator().manual_seed(3))
    save_file({"logits": logits}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "num_steps": 5, "num_blocks": 4, "branches": ["attn1", "ff"], "pipeline_class": "DiTPipeline",
        "transformer_class": "DiTTransformer2DModel", "scheduler_class": "DDIMScheduler", "threshold": 0.3,
        "training": {}}))
    router = HarmoniCaRouter.from_pretrained(tmp_path)
    assert router.layout == LAYOUT
    assert torch.equal(router.logits, logits.flatten(1))
    expected = torch.sigmoid(logits) > 0.3
    expected[0] = True
    assert torch.equal(router.compute_mask(), expected.flatten(1))


def test_shipped_router_loads():
    from harmonica.embedded import EMBEDDED_ROUTER

    router = HarmoniCaRouter.from_pretrained(EMBEDDED_ROUTER)
    assert router.layout.num_blocks == 12 and router.num_steps == 20


@pytest.mark.parametrize("edit, message", [
    ({"target_usge": 0.9}, "unknown keys"),
    ({"scheduler_class": ""}, "scheduler_class"),
    ({"pipeline_class": None}, "pipeline_class"),
])
def test_bad_config_json_rejected(tmp_path, edit, message):
    HarmoniCaRouter.for_layout(LAYOUT, 5).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(edit)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RouterError, match=message):
        HarmoniCaRouter.from_pretrained(tmp_path)


def test_numpy_threshold_accepted():
    import numpy as np

    router = HarmoniCaRouter.for_layout(LAYOUT, 5, threshold=np.float32(0.25))
    assert router.threshold == pytest.approx(0.25) and isinstance(router.threshold, float)
    assert router.compute_mask(np.float64(0.5)).shape == (5, 8)


def test_timesteps_recorded_and_checked(tmp_path):
    router = HarmoniCaRouter.for_layout(LAYOUT, 3, timesteps=[999.0, 666.0, 333.0])
    router.save_pretrained(tmp_path)
    loaded = HarmoniCaRouter.from_pretrained(tmp_path)
    loaded.check_timesteps([999, 666, 333])
    with pytest.raises(RouterError, match="trained on the timesteps.*timestep_spacing"):
        loaded.check_timesteps([999, 999 - 333, 1])

import json
import math
import warnings

import pytest
import torch
from safetensors.torch import save_file

from harmonica import HarmoniCaRouter, RouterError, RouterLayout
from harmonica_bench.embedded import PIPELINES_DIR as PIPELINES

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


def test_saved_model_card_describes_the_router(tmp_path):
    from huggingface_hub import ModelCard

    router = HarmoniCaRouter.for_layout(LAYOUT, 5, init="static:2", history=2, threshold=0.3)
    router.training_info = {"objective": "harmonica", "iterations": 8,
                            "config": {"trajectories": 2, "batch_size": 4, "guidance_scale": 1.5, "target_usage": 0.4,
                                       "init": "static:2", "forecast_init": "taylor"},
                            "moved": {"decisions": 32, "decisions_changed": 3}}
    router.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    text = card.text
    assert card.data.library_name == "harmonica" and "More Information Needed" not in text
    for fact in ("`DiTPipeline` (harmonica family `dit`)", "`DiTTransformer2DModel`: 4 x transformer_blocks",
                 "`DDIMScheduler`, 5 steps", "num_inference_steps=5", "| threshold | 0.3 ",
                 f"{router.cache_usage():.1%} of the branch computations", "| history | 2: ",
                 "HarmoniCaPipeline.from_pretrained(", "objective: harmonica", "2 trajectories (8 iterations)",
                 "target cache usage of 40%", "initial schedule: static:2", "3 of 32 compute/rebuild decisions"):
        assert fact in text, fact

    router.threshold = 0.9  # saving again describes the router now in the folder...
    router.training_info = {}
    router.save_pretrained(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| threshold | 0.9 " in text and "## Training" not in text
    (tmp_path / "README.md").write_text("my own notes\n")  # ...but a card written by hand is kept
    router.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my own notes\n"


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
    save_file({"logits": logits, "coefficients": router.coefficients.detach()}, str(tmp_path / "model.safetensors"))
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


def test_threshold_error_says_what_the_threshold_is_and_offers_no_reference_value():
    with pytest.raises(RouterError) as err:
        HarmoniCaRouter.for_layout(LAYOUT, 5, threshold=1.5)
    text = str(err.value)
    assert "strictly between 0 and 1" in text and "1.5" in text
    assert "score exceeds the threshold" in text and "router.threshold" in text  # what it means, where it comes from
    assert "reference" not in text and "0.1" not in text


def test_mismatched_classes_are_named_in_plain_words():
    router = HarmoniCaRouter.for_layout(LAYOUT, 5)
    other = RouterLayout(LAYOUT.blocks, "PixArtAlphaPipeline", "PixArtTransformer2DModel", "DPMSolverMultistepScheduler")
    with pytest.raises(RouterError) as err:
        router.check_compatible(other)
    text = str(err.value)
    assert "it was made for a DiTPipeline, this pipeline is a PixArtAlphaPipeline" in text
    assert ("it was made for the transformer class DiTTransformer2DModel, this pipeline's transformer is a "
            "PixArtTransformer2DModel") in text
    assert "it was made for the scheduler DDIMScheduler, this pipeline's scheduler is a DPMSolverMultistepScheduler" in text
    assert "DDIMScheduler scheduler" not in text and "this one is" not in text


def test_load_router_accepts_a_training_run_folder(tmp_path):
    from harmonica.pipeline import load_router

    layout = RouterLayout.uniform(2, ("attn1", "ff"), "DiTPipeline", "DiTTransformer2DModel", "DDIMScheduler")
    router = HarmoniCaRouter.for_layout(layout, 4, generator=torch.Generator().manual_seed(0))
    router.save_pretrained(tmp_path / "run" / "router")  # as train/train_router.py lays out its output
    (tmp_path / "run" / "run_config.json").write_text("{}")
    assert torch.equal(load_router(tmp_path / "run").logits, router.logits)
    with pytest.raises(RouterError):
        load_router(tmp_path / "run" / "missing")


# ----------------------------------------------------------------------------- router paths and hub ids
@pytest.fixture
def hub(monkeypatch, tmp_path):
    """An empty local hub cache; any download from the hub fails the test unless a test allows it."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    calls = []

    def no_hub(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the hub was asked for a path that names a local folder")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_hub)
    return calls


@pytest.mark.parametrize("spec", ["runs/typo", "./typo", "../typo-router", "a/b/c", "my router", "runs/typo/"])
def test_missing_local_router_is_refused_at_once(spec, tmp_path, monkeypatch, hub):
    import time

    from harmonica.pipeline import load_router

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    start = time.perf_counter()
    with pytest.raises(RouterError, match="the folder does not exist") as err:
        load_router(spec)
    assert time.perf_counter() - start < 2
    assert spec in str(err.value) and "taken for a local folder because" in str(err.value)
    assert hub == []


def test_pipeline_with_a_missing_router_folder(dit_path, tmp_path, monkeypatch, hub):
    from harmonica import HarmoniCaPipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(RouterError, match="no router at runs/typo: the folder does not exist"):
        HarmoniCaPipeline.from_pretrained(dit_path, router="runs/typo")


def unreachable_endpoint():
    import socket

    with socket.socket() as s:  # a port nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_hub_id_that_cannot_be_fetched_is_refused_at_once(how, tmp_path, monkeypatch):
    import time

    from huggingface_hub import constants

    from harmonica.pipeline import load_router

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.chdir(tmp_path)
    if how == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.setattr(constants, "ENDPOINT", unreachable_endpoint())
    start = time.perf_counter()
    with pytest.raises(RouterError) as err:
        load_router("someone/harmonica-router")
    assert time.perf_counter() - start < 5  # huggingface_hub alone retries for ~25 s
    text = str(err.value)
    assert "'someone/harmonica-router' is not a folder here" in text and "taken for a hub id" in text
    assert "could not be fetched" in text
    assert ("HF_HUB_OFFLINE=1" if how == "offline" else "the hub cannot be reached") in text


def test_hub_router_in_the_local_cache_loads_while_the_hub_is_unreachable(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from harmonica.pipeline import load_router

    cache = tmp_path / "hub-cache"
    commit = "0" * 40
    snapshot = cache / "models--someone--harmonica-router" / "snapshots" / commit
    router = HarmoniCaRouter.for_layout(LAYOUT, 5, generator=torch.Generator().manual_seed(2))
    router.save_pretrained(snapshot)
    (cache / "models--someone--harmonica-router" / "refs").mkdir()
    (cache / "models--someone--harmonica-router" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", unreachable_endpoint())
    monkeypatch.chdir(tmp_path)
    assert torch.equal(load_router("someone/harmonica-router").logits, router.logits)


# ---------------------------------------------------------------- the transformer weights a router was trained on
@pytest.fixture(scope="module")
def transformer():
    from tiny_models import tiny_dit_pipeline

    return tiny_dit_pipeline().transformer


def variant(transformer, how):
    import copy

    other = copy.deepcopy(transformer)
    with torch.no_grad():
        if how in ("float16", "bfloat16"):
            return other.to(getattr(torch, how))
        g = torch.Generator().manual_seed(0)
        for param in other.parameters():
            if how == "noise":  # a fine-tune: N(0, 1e-3) on every weight
                param.add_(torch.randn(param.shape, generator=g) * 1e-3)
            elif how == "retrained":  # same architecture, other weights
                param.copy_(torch.randn(param.shape, generator=g) * param.std().nan_to_num(0.02))
    return other


def router_trained_on(record):
    return HarmoniCaRouter.for_layout(LAYOUT, 5, training={"transformer_weights": record})


@pytest.mark.parametrize("how", ["float32", "float16", "bfloat16"])
def test_same_weights_in_any_dtype_do_not_warn(transformer, how):
    from harmonica.router import weights_summary

    router = router_trained_on(weights_summary(transformer))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        router.check_weights(variant(transformer, how) if how != "float32" else transformer)


def test_fine_tuned_or_retrained_weights_warn(transformer):
    from harmonica.router import weights_summary

    router = router_trained_on(weights_summary(transformer))
    for how in ("noise", "retrained"):
        with pytest.warns(UserWarning, match=r"on other transformer weights \(.*: .* moved by .* bf16 rounding"):
            router.check_weights(variant(transformer, how))


def test_weights_summary_margins(transformer):
    """A cast moves the summary far less than the tolerance, a fine-tune far more (README: figures)."""
    from harmonica.router import weights_distance, weights_summary

    record = weights_summary(transformer)
    bf16 = weights_distance(record, variant(transformer, "bfloat16"))[0]
    fp16 = weights_distance(record, variant(transformer, "float16"))[0]
    noise = weights_distance(record, variant(transformer, "noise"))[0]
    assert fp16 < bf16 < 0.5 and noise > 2 and noise > 8 * bf16


def test_weights_summary_round_trips_through_the_router_config(transformer, tmp_path):
    from harmonica.router import weights_summary

    record = weights_summary(transformer)
    assert len(record["stats"]) == sum(1 for t in transformer.state_dict().values() if t.is_floating_point())
    router_trained_on(record).save_pretrained(tmp_path)
    loaded = HarmoniCaRouter.from_pretrained(tmp_path)
    assert loaded.training_info["transformer_weights"] == record
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.check_weights(transformer)


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


def test_router_in_the_first_file_format_is_refused_with_what_to_do(tmp_path):
    """harmonica 0.1's first format (config num_blocks + branches, logits [steps, blocks, branches]) is no longer
    read: the shipped router-reuse was re-saved; a user's old file gets told how to convert it."""
    save_file({"logits": torch.zeros(5, 4, 2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "num_steps": 5, "num_blocks": 4, "branches": ["attn1", "ff"], "pipeline_class": "DiTPipeline",
        "transformer_class": "DiTTransformer2DModel", "scheduler_class": "DDIMScheduler", "threshold": 0.3,
        "training": {}}))
    with pytest.raises(RouterError, match=r"first format \(num_blocks \+ branches\).*save it again with harmonica 0.1.0"):
        HarmoniCaRouter.from_pretrained(tmp_path)


def test_shipped_router_loads():
    from harmonica_bench.embedded import EMBEDDED_ROUTER

    router = HarmoniCaRouter.from_pretrained(EMBEDDED_ROUTER)
    assert router.layout.num_blocks == 12 and router.num_steps == 20


@pytest.mark.parametrize("folder", sorted(p.relative_to(PIPELINES) for p in PIPELINES.glob("*/router*")), ids=str)
def test_every_shipped_router_is_the_one_its_training_summary_describes(folder):
    """Each router shipped beside an embedded pipeline loads, fits that pipeline's transformer, and is
    at the threshold and cache usage its training_summary.json records (a stale copy would not be)."""
    path = PIPELINES / folder
    router = HarmoniCaRouter.from_pretrained(path)
    summary = json.loads((path / "training_summary.json").read_text())
    transformer = json.loads((path.parent / "transformer" / "config.json").read_text())
    assert router.layout.num_blocks == transformer.get("num_layers", 0) + transformer.get("num_single_layers", 0)
    assert router.threshold == pytest.approx(summary["threshold"])
    assert router.cache_usage() == pytest.approx(summary["cache_usage"], abs=1e-6)
    assert (path / "TRAINING.md").is_file()


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


def test_loading_a_router_folder_prints_nothing(tmp_path, capsys):
    """huggingface_hub's mixin prints "Loading weights from local directory" on every local load."""
    router = HarmoniCaRouter.for_layout(RouterLayout.uniform(2, ("attn1", "ff"), "DiTPipeline",
                                                             "DiTTransformer2DModel", "DDIMScheduler"), 4)
    router.save_pretrained(tmp_path / "r")
    capsys.readouterr()
    HarmoniCaRouter.from_pretrained(tmp_path / "r")
    assert capsys.readouterr().out == ""

"""The text-to-image embedded model: captioned data, colour judge, FluxPipeline builder, training script.

Everything is built locally at tiny sizes (no hub); the training script runs a few steps, is
interrupted and resumes from its checkpoint.
"""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harmonica_bench import data
from harmonica_bench.data import (
    CLASS_NAMES,
    COLOUR_NAMES,
    COLOUR_RGB,
    MIN_CAPTION_CONTRAST,
    NUM_COLOURS,
    SIZE_WORDS,
    captioned_shapes_dataset,
    make_caption,
    parse_caption,
    render_captioned_shapes,
    render_shapes,
)
from harmonica_bench.embedded import (
    FLUX_MAX_SEQUENCE_LENGTH,
    build_clip_tokenizer,
    build_t5_tokenizer,
    build_text_encoders,
    flux_call_kwargs,
    flux_transformer_config,
    save_flux_pipeline,
    with_latent_stats,
)
from harmonica_bench.judge import colour_accuracy, colour_predictions, colour_report
from tiny_models import randomize_zero_init

REPO = Path(__file__).resolve().parent.parent
TINY = dict(hidden=16, heads=2, double=1, single=2)


def test_plain_shapes_are_unchanged():
    """The shipped DiT was trained on render_shape's pixels: the captioned variant must not move them.
    The digest was taken from the renderer before the captioned variant was added."""
    a, la = render_shapes(range(40), 0)
    b, lb = render_shapes(range(40), 1)
    digest = hashlib.sha256(a.tobytes() + la.tobytes() + b.tobytes() + lb.tobytes()).hexdigest()
    assert digest == "b9fa9b16cb7c8f0adf92d7b8915cb0892b73b2efc1a2bae9bddc230218cd5801"


def test_captions_are_deterministic_and_describe_the_drawing():
    images, labels, colours, captions = render_captioned_shapes(range(120), seed=3)
    again = render_captioned_shapes(range(120), seed=3)
    assert np.array_equal(images, again[0]) and captions == again[3]
    assert render_captioned_shapes([7], seed=3)[3] == [captions[7]]  # any order, any subset
    assert render_captioned_shapes(range(120), seed=4)[3] != captions
    lum = COLOUR_RGB.astype(float) @ np.array([0.299, 0.587, 0.114])
    for img, label, (fg, bg), caption in zip(images, labels, colours, captions):
        assert parse_caption(caption) == (label, fg, bg)
        assert caption.endswith(f"{COLOUR_NAMES[bg]} background") and CLASS_NAMES[label] in caption
        assert abs(lum[fg] - lum[bg]) >= MIN_CAPTION_CONTRAST
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert (np.median(border, axis=0) == COLOUR_RGB[bg]).all()  # background drawn in the named colour
        assert (img.reshape(-1, 3) == COLOUR_RGB[fg]).all(axis=1).sum() >= 4  # shape drawn in the named colour
    sizes = {c.split()[1] for c in captions}
    assert {"small", "large"} <= sizes  # size words occur, and mid sizes carry none
    assert any(c.split()[1] in COLOUR_NAMES for c in captions)
    assert len(set(labels.tolist())) == len(CLASS_NAMES) and len(set(colours[:, 0].tolist())) > NUM_COLOURS // 2


def test_captioned_dataset_matches_the_renderer():
    ds = captioned_shapes_dataset(12, seed=2, start=5)
    images, labels, colours, captions = render_captioned_shapes(range(5, 17), seed=2)
    assert ds["caption"] == captions and ds["label"] == labels.tolist()
    assert ds["foreground"] == colours[:, 0].tolist() and ds["background"] == colours[:, 1].tolist()
    assert np.array_equal(np.asarray(ds[3]["image"]), images[3])
    assert ds.features["foreground"].names == list(COLOUR_NAMES)
    assert all((s in SIZE_WORDS) and (s in c.split() if s else True) for s, c in zip(ds["size"], ds["caption"]))


def test_caption_grammar_and_parsing():
    assert make_caption(5, 0, 5, "small") == "a small red star on a blue background"
    assert make_caption(8, 1, 9) == "an orange dot pair on a black background"
    assert parse_caption("an orange dot pair on a black background") == (8, 1, 9)
    for bad in ("a red star", "a red blob on a blue background", "a red star on a blue sky"):
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_colour_judge_on_clean_renders():
    images, _, colours, captions = render_captioned_shapes(range(300), seed=1)
    assert colour_report(images, colours) == {"foreground": 1.0, "background": 1.0, "both": 1.0}
    assert colour_accuracy(images, captions) == 1.0  # captions are parsed
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # pipeline output (pt, [0, 1])
    assert colour_accuracy(as_float, colours) == 1.0
    swapped = colours[:, ::-1]
    assert colour_report(images, swapped)["both"] == 0.0
    flat = np.full((2, 32, 32, 3), 128, dtype=np.uint8)
    assert colour_predictions(flat)[:, 0].tolist() == [-1, -1]  # no shape: no foreground colour
    with pytest.raises(ValueError):
        colour_report(images[:3], colours[:2])


def test_tokenizers_one_token_per_word_and_round_trip(tmp_path):
    tok, tok2 = build_clip_tokenizer(), build_t5_tokenizer()
    longest = max((make_caption(c, f, b, s) for c in range(len(CLASS_NAMES)) for f, b in data.COLOUR_PAIRS
                   for s in SIZE_WORDS), key=lambda c: len(c.split()))
    words = longest.split()
    clip_ids = tok(longest).input_ids
    t5_ids = tok2(longest).input_ids
    assert len(clip_ids) == len(words) + 2 <= FLUX_MAX_SEQUENCE_LENGTH  # <|startoftext|> words <|endoftext|>
    assert len(t5_ids) == len(words) + 1 <= FLUX_MAX_SEQUENCE_LENGTH  # words </s>
    assert tok.unk_token_id not in clip_ids[1:-1] and tok2.unk_token_id not in t5_ids
    for word in data.caption_vocabulary():
        assert len(tok(word).input_ids) == 3 and len(tok2(word).input_ids) == 2
    tok.save_pretrained(tmp_path / "tokenizer")
    tok2.save_pretrained(tmp_path / "tokenizer_2")
    from transformers import CLIPTokenizer, T5Tokenizer

    assert CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")(longest).input_ids == clip_ids
    assert T5Tokenizer.from_pretrained(tmp_path / "tokenizer_2")(longest).input_ids == t5_ids


def tiny_vae_f4(path=None):
    """A random AutoencoderKL with the embedded VAE's layout (3 blocks: 32x32x3 -> 8x8x4), tiny widths."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=32).eval()
    if path is not None:
        vae.save_pretrained(path)
    return vae


def test_builder_writes_a_flux_folder_that_loads_offline_and_runs_true_cfg(tmp_path, monkeypatch):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip, tok, t5, tok2 = build_text_encoders(width=16)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**flux_transformer_config(**TINY, text_dim=16, pooled_dim=16))
    randomize_zero_init(transformer)  # zero-initialised gates would make cond and uncond outputs equal
    vae = with_latent_stats(tiny_vae_f4(), 0.1, 0.8)
    save_flux_pipeline(tmp_path / "flux", transformer.eval(), vae, clip, tok, t5, tok2)
    index = json.loads((tmp_path / "flux" / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline" and index["tokenizer_2"] == ["transformers", "T5Tokenizer"]

    pipe = FluxPipeline.from_pretrained(tmp_path / "flux")
    pipe.set_progress_bar_config(disable=True)
    assert len(pipe.transformer.transformer_blocks) == 1 and len(pipe.transformer.single_transformer_blocks) == 2
    assert pipe.transformer.config.guidance_embeds is False
    assert (pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor) == (0.1, 0.8)
    assert pipe.vae_scale_factor == 4 and type(pipe.tokenizer_2).__name__ == "T5Tokenizer"
    calls = []
    pipe.transformer.register_forward_hook(lambda m, a, kw, out: calls.append(kw["encoder_hidden_states"].shape),
                                           with_kwargs=True)
    prompts = ["a small red star on a blue background", "a white ring on a black background"]
    out = pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="pt",
               **flux_call_kwargs(len(prompts), num_inference_steps=2))
    assert out.images.shape == (2, 3, 32, 32) and torch.isfinite(out.images).all()
    assert calls == [(2, FLUX_MAX_SEQUENCE_LENGTH, 16)] * 4  # 2 steps x (cond, uncond): true CFG
    no_cfg = pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="pt",
                  **flux_call_kwargs(len(prompts), num_inference_steps=2, true_cfg_scale=1.0))
    assert len(calls) == 6 and not torch.allclose(no_cfg.images, out.images)


def load_train_flux():
    spec = importlib.util.spec_from_file_location("train_flux", REPO / "train" / "train_flux.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_flux_resumes_after_interruption(tmp_path, monkeypatch):
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    tiny_vae_f4(tmp_path / "vae")
    train_flux = load_train_flux()

    def argv(out):
        return ["--vae", str(tmp_path / "vae"), "--judge", "", "--output", str(out), "--num_images", "48",
                "--steps", "5", "--batch_size", "8", "--warmup", "2", "--checkpoint_every", "2", "--eval_every", "0",
                "--eval_per_class", "1", "--eval_steps", "2", "--log_every", "1", "--text_width", "16",
                "--hidden", "16", "--heads", "2", "--double", "1", "--single", "2"]

    train_flux.main(argv(tmp_path / "full"))

    def interrupt(done):
        if done == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_flux, "on_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_flux.main(argv(tmp_path / "cut"))
    assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (tmp_path / "cut" / "pipeline").exists()
    monkeypatch.setattr(train_flux, "on_step", lambda done: None)
    train_flux.main(argv(tmp_path / "cut"))

    weights = "transformer/diffusion_pytorch_model.safetensors"
    full = load_file(tmp_path / "full" / "pipeline" / weights)
    resumed = load_file(tmp_path / "cut" / "pipeline" / weights)
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # same EMA weights as the uninterrupted run
    log = [json.loads(line) for line in (tmp_path / "cut" / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 3, 4, 5]  # step 3 was logged, lost, and redone from checkpoint 2
    full_log = [json.loads(line) for line in (tmp_path / "full" / "training_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log[3:]] == [r["loss"] for r in full_log[2:]]
    report = json.loads((tmp_path / "cut" / "eval_log.jsonl").read_text().splitlines()[-1])
    assert report["step"] == 5 and report["num_samples"] == len(CLASS_NAMES) and 0 <= report["colour_accuracy"] <= 1

    pipe = FluxPipeline.from_pretrained(tmp_path / "cut" / "pipeline")
    assert pipe.vae.config.shift_factor is not None and pipe.scheduler.config.use_dynamic_shifting is False
    with pytest.raises(SystemExit):  # another model size in the same run folder is refused
        train_flux.main(argv(tmp_path / "cut")[:-2] + ["--single", "3"])


def test_shipped_flux_pipeline_loads_with_stock_diffusers_and_draws_the_caption():
    """pipelines/shapes-flux is a stock FluxPipeline folder: from_pretrained offline, true CFG, 32x32."""
    from diffusers import FluxPipeline

    from harmonica_bench.embedded import FLUX_PIPELINE

    pipe = FluxPipeline.from_pretrained(FLUX_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.config.guidance_embeds is False and len(pipe.transformer.single_transformer_blocks) == 8
    prompts = ["a large yellow circle on a blue background", "a large red circle on a white background"]
    images = pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="pt",
                  **flux_call_kwargs(len(prompts))).images
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    # the trained model draws the asked colours (99.5% colour accuracy at full computation)
    assert colour_accuracy((images * 255).round().to(torch.uint8), prompts) == 1.0


def test_flux_caption_check_knows_every_training_caption_and_names_what_it_does_not():
    import warnings

    from harmonica_bench.embedded import check_flux_captions, flux_caption_problem, flux_train_prompts, flux_vocabulary

    assert [c for c in flux_train_prompts() if flux_caption_problem(c) is not None] == []
    vocabulary = flux_vocabulary()
    assert "blue" not in vocabulary["colour_pairs"]["red"] and "white" in vocabulary["colour_pairs"]["red"]
    assert "star" in vocabulary["shapes"] and "dot pair" in vocabulary["shapes"] and "fox" not in vocabulary["words"]
    assert "never trained" in flux_caption_problem("a small red star on a blue background")
    assert "['fox', 'in', 'the', 'snow']" in flux_caption_problem("a red fox in the snow")
    assert "not of the form" in flux_caption_problem("a red star")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_flux_captions(["a small red star on a white background", "a white ring on a black background"]) == []
        assert len(check_flux_captions(["a red fox in the snow"])) == 1
    assert len(caught) == 1 and caught[0].category is UserWarning and "fox" in str(caught[0].message)

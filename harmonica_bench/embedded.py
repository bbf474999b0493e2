"""The embedded models trained by this project on the shapes data.

* The default: a small class-conditional latent DiT, a stock ``DiTPipeline`` folder in
  ``pipelines/shapes-dit``; the judge (classifier) ships in ``pipelines/shapes-dit/judge``.
* A text-to-image Flux-style model (flow matching, double- and single-stream blocks, true CFG) on
  the captioned shapes, a stock ``FluxPipeline`` folder in ``pipelines/shapes-flux``.

Their architectures live here so that the training scripts, the tests and the evaluation build the
same models. An installed wheel carries ``pipelines/`` as ``harmonica_bench/_pipelines``
(``PIPELINES_DIR`` is whichever is in use).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .data import CLASS_NAMES

REPO_ROOT = Path(__file__).resolve().parent.parent  # the source checkout, when harmonica runs from one


def pipelines_dir() -> Path:
    """The embedded pipelines and recipes: the checkout's top-level ``pipelines/`` when harmonica runs from a
    source checkout (also an editable install), else the package data ``harmonica_bench._pipelines`` that an
    installed wheel carries (the same folder, see pyproject.toml)."""
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "pipelines").is_dir():
        return REPO_ROOT / "pipelines"
    from importlib.resources import files

    return Path(str(files("harmonica_bench") / "_pipelines"))


PIPELINES_DIR = pipelines_dir()
RECIPES_DIR = PIPELINES_DIR / "recipes"
EMBEDDED_PIPELINE = PIPELINES_DIR / "shapes-dit"
EMBEDDED_JUDGE = EMBEDDED_PIPELINE / "judge"
EMBEDDED_ROUTER = EMBEDDED_PIPELINE / "router"

# DiTPipeline hard-codes the null class id 1000, so the label table keeps 1000 (+1 null) rows even
# though the data has 10 classes.
NULL_CLASS = 1000
NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 1.5


class _StringKeyedId2Label(logging.Filter):
    """Drops diffusers' "Expected types for id2label: (dict[int, str], ...), got typing.Dict[str, str]" warning,
    and only that one. A DiTPipeline folder's class names (``id2label`` in ``model_index.json``) can only have
    string keys, as JSON has no others, and DiTPipeline turns them into ints itself; diffusers' type check of the
    loaded arguments flags them anyway, on every load of the embedded DiT (and of facebook/DiT-XL-2-256)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Expected types for id2label:") and message.endswith("[str, str]."))


def quiet_id2label_warning() -> None:
    """Install ``_StringKeyedId2Label`` on diffusers' pipeline loader (once; done when this module is imported, as
    everything that finds the embedded DiT does)."""
    loader = logging.getLogger("diffusers.pipelines.pipeline_utils")
    if not any(isinstance(f, _StringKeyedId2Label) for f in loader.filters):
        loader.addFilter(_StringKeyedId2Label())


quiet_id2label_warning()


def vae_config() -> dict:
    """AutoencoderKL: 32x32x3 images -> 8x8x4 latents (two downsamplings)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )


def dit_config() -> dict:
    """DiTTransformer2DModel: 12 blocks, hidden 128 (4 heads x 32), patch 1 on the 8x8x4 latent."""
    return dict(
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=4,
        out_channels=4,
        num_layers=12,
        sample_size=8,
        patch_size=1,
        num_embeds_ada_norm=NULL_CLASS,
        norm_type="ada_norm_zero",
    )


def scheduler_config() -> dict:
    """Cosine noise schedule, v-prediction. DDIM with trailing spacing starts sampling at t=999."""
    return dict(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        timestep_spacing="trailing",
    )


def id2label() -> dict[str, str]:
    return {str(i): name for i, name in enumerate(CLASS_NAMES)}


def save_pipeline(path: str | Path, transformer, vae) -> None:
    """Write a stock DiTPipeline folder (with its class names) from trained modules."""
    from diffusers import DDIMScheduler, DiTPipeline

    scheduler = DDIMScheduler(**scheduler_config())
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=id2label())
    pipe.save_pretrained(path)
    # DiTPipeline takes id2label in __init__ but does not register it; put it in model_index.json so
    # that DiTPipeline.from_pretrained(path).labels knows the class names.
    index_file = Path(path) / "model_index.json"
    index = json.loads(index_file.read_text())
    index["id2label"] = id2label()
    index_file.write_text(json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# The second embedded model: a small text-to-image Flux-style pipeline (stock diffusers
# FluxPipeline, flow matching, double- and single-stream blocks) trained on the captioned shapes
# (harmonica_bench.data.captioned_shapes_dataset). Ships in pipelines/shapes-flux; see its TRAINING.md.

# The reasons for these settings, with the measurements behind them: pipelines/shapes-flux/TRAINING.md.
FLUX_PIPELINE = PIPELINES_DIR / "shapes-flux"
FLUX_MAX_SEQUENCE_LENGTH = 16  # T5 and CLIP token budget (longest caption: 10 T5 / 11 CLIP tokens)
FLUX_NEGATIVE_PROMPT = ""  # the unconditional prompt of true CFG (training drops captions to it)
FLUX_STEPS = 20  # Euler steps, as the DiT's DDIM steps
FLUX_TRUE_CFG = 4.0  # true_cfg_scale: two transformer forwards per step
FLUX_SHIFT = 1.0  # static timestep shift of the scheduler and of the training timesteps
FLUX_IMAGE_SIZE = 32
FLUX_TEXT_SEED = 0  # the frozen random text encoders are a function of this seed (and the configs)


def flux_transformer_config(hidden: int = 128, heads: int = 4, double: int = 4, single: int = 8,
                            text_dim: int = 64, pooled_dim: int = 64) -> dict:
    """FluxTransformer2DModel on the packed 8x8x4 latent (16 tokens of 2x2x4 = 16 channels)."""
    head_dim = hidden // heads
    if head_dim * heads != hidden or head_dim % 4 or head_dim < 8:
        raise ValueError(f"hidden {hidden} must be heads ({heads}) x a multiple of 4 that is at least 8")
    # rotary axes (a constant axis 0, row, column), even sizes summing to the head dim (Flux: 16, 56, 56)
    side = head_dim * 3 // 8 // 2 * 2
    axes = (head_dim - 2 * side, side, side)
    return dict(
        patch_size=1,
        in_channels=16,
        out_channels=None,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=False,
        axes_dims_rope=axes,
    )


def flux_scheduler_config(shift: float = FLUX_SHIFT) -> dict:
    """Flow matching, Euler; a static shift (sampling ignores FluxPipeline's resolution-based mu)."""
    return dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift, use_dynamic_shifting=False)


def _clip_vocab_and_merges(words) -> tuple[dict, list[tuple[str, str]]]:
    """A byte-level BPE vocabulary in which every caption word is one token ("red</w>").

    Merges are added word by word; each word's merges go after all earlier ones, so they never fire
    inside an earlier word (its own, lower-ranked merges always apply first)."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = sorted({c for w in words for c in w})
    vocab: dict[str, int] = {}
    for token in specials + chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []

    def segment(word):
        rank = {m: i for i, m in enumerate(merges)}
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            r, i = min((rank.get(pair, len(merges)), i) for i, pair in enumerate(zip(symbols, symbols[1:])))
            if r == len(merges):
                break
            symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
        return symbols

    for word in words:
        symbols = segment(word)
        while len(symbols) > 1:
            merges.append((symbols[0], symbols[1]))
            vocab.setdefault(symbols[0] + symbols[1], len(vocab))
            symbols = [symbols[0] + symbols[1]] + symbols[2:]
    return vocab, merges


def build_clip_tokenizer():
    """CLIPTokenizer built in memory: one token per caption word, 16 positions."""
    from transformers import CLIPTokenizer

    from .data import caption_vocabulary

    vocab, merges = _clip_vocab_and_merges(caption_vocabulary())
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=FLUX_MAX_SEQUENCE_LENGTH)


def build_t5_tokenizer():
    """T5Tokenizer (unigram) built in memory: one piece per caption word."""
    from transformers import T5Tokenizer

    from .data import caption_vocabulary

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in caption_vocabulary()]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=FLUX_MAX_SEQUENCE_LENGTH)


def clip_text_config(vocab_size: int, width: int = 64):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=FLUX_MAX_SEQUENCE_LENGTH,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=width)


def t5_config(vocab_size: int, width: int = 64):
    from transformers import T5Config

    return T5Config(vocab_size=vocab_size, d_model=width, d_kv=width // 4, d_ff=2 * width, num_layers=2,
                    num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def build_text_encoders(seed: int = FLUX_TEXT_SEED, width: int = 64):
    """(CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer): frozen, randomly initialised
    (never trained), in eval mode. The training script saves them once and reuses the saved copy."""
    import torch
    from transformers import CLIPTextModel, T5EncoderModel

    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_t5_tokenizer()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        clip = CLIPTextModel(clip_text_config(len(tokenizer), width))
        t5 = T5EncoderModel(t5_config(len(tokenizer_2), width))
    finally:
        torch.random.set_rng_state(state)
    return clip.eval().requires_grad_(False), tokenizer, t5.eval().requires_grad_(False), tokenizer_2


def with_latent_stats(vae, shift_factor: float, scaling_factor: float):
    """Set the VAE's latent normalisation (FluxPipeline decodes latents / scaling + shift)."""
    vae.register_to_config(shift_factor=float(shift_factor), scaling_factor=float(scaling_factor))
    return vae


def pack_flux_latents(latents):
    """[B, C, H, W] -> [B, H W / 4, 4 C] (FluxPipeline._pack_latents: 2x2 patches), for training on latents."""
    from diffusers import FluxPipeline

    return FluxPipeline._pack_latents(latents, *latents.shape[:2], *latents.shape[2:])


def flow_matching_sigmas(n: int, generator, mean: float = 0.0, std: float = 1.0, shift: float = FLUX_SHIFT):
    """Training noise levels: logit-normal s in (0, 1) (SD3), then the scheduler's static shift
    s' = shift s / (1 + (shift - 1) s)."""
    import torch

    s = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    return shift * s / (1 + (shift - 1) * s)


def build_flux_pipeline(transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                        shift: float = FLUX_SHIFT):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    if vae.config.shift_factor is None:
        raise ValueError("FluxPipeline needs vae.config.shift_factor: use with_latent_stats(vae, ...)")
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**flux_scheduler_config(shift)),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def save_flux_pipeline(path: str | Path, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                       shift: float = FLUX_SHIFT):
    """Write a stock FluxPipeline folder (loads offline with FluxPipeline.from_pretrained(path))."""
    pipe = build_flux_pipeline(transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, shift)
    pipe.save_pretrained(path)
    return pipe


def flux_call_kwargs(num_prompts: int | None = None, **overrides) -> dict:
    """The arguments every caller of the embedded Flux pipeline passes: 32x32, the shipped step count,
    true CFG against the empty prompt, the fixed token budget. Give ``num_prompts`` (the number of
    prompts in the call) so the unconditional pass gets one empty prompt per image; a single ""
    gives the same images (FluxPipeline broadcasts it inside the transformer) but runs the first
    block's text stream at batch 1."""
    kw = dict(
        height=FLUX_IMAGE_SIZE,
        width=FLUX_IMAGE_SIZE,
        num_inference_steps=FLUX_STEPS,
        negative_prompt=FLUX_NEGATIVE_PROMPT if num_prompts is None else [FLUX_NEGATIVE_PROMPT] * num_prompts,
        true_cfg_scale=FLUX_TRUE_CFG,
        max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH,
    )
    kw.update(overrides)
    return kw


def flux_train_prompts(num_images: int = 2000) -> list[str]:
    """The distinct captions of the first ``num_images`` training items (seed ``TRAIN_SEED``), sorted:
    the prompts a router for the embedded Flux model is trained on (``--prompts shapes``), drawn from
    the model's own training captions, never from the held-out ones the harness evaluates with."""
    from .data import TRAIN_SEED, render_captioned_shape

    return sorted({render_captioned_shape(i, TRAIN_SEED)["caption"] for i in range(num_images)})


FLUX_CAPTION_FORM = "a [small|large] <colour> <shape> on a <colour> background"
FLUX_VOCABULARY_HELP = ("python -m harmonica_bench.demo --vocabulary, or harmonica_bench.embedded.flux_vocabulary() "
                        "in Python")


def flux_vocabulary() -> dict:
    """What the embedded Flux model knows: the caption form, its words, shapes, colours and size words, and
    which background colours each shape colour was trained on (``colour_pairs``: a pair whose luminances are
    too close was never drawn, so the model never learned it). ``format_flux_vocabulary()`` prints it."""
    from .data import CLASS_NAMES, COLOUR_NAMES, COLOUR_PAIRS, SIZE_WORDS, caption_vocabulary

    return {
        "form": FLUX_CAPTION_FORM,
        "words": caption_vocabulary(),
        "shapes": list(CLASS_NAMES),
        "colours": list(COLOUR_NAMES),
        "sizes": [w for w in SIZE_WORDS if w],
        "colour_pairs": {COLOUR_NAMES[f]: [COLOUR_NAMES[b] for g, b in COLOUR_PAIRS if g == f]
                         for f in range(len(COLOUR_NAMES))},
    }


def format_flux_vocabulary() -> str:
    vocabulary = flux_vocabulary()
    lines = [f"The embedded Flux model ({FLUX_PIPELINE}) draws captions of the form", f"    {vocabulary['form']}",
             "(the size word is optional), e.g. 'a small red star on a white background'.",
             f"shapes:  {', '.join(vocabulary['shapes'])}", f"colours: {', '.join(vocabulary['colours'])}",
             "trained colour pairs (shape colour: background colours):"]
    lines += [f"    {fg:<7} on {', '.join(bgs)}" for fg, bgs in vocabulary["colour_pairs"].items()]
    return "\n".join(lines)


def flux_caption_problem(caption: str) -> str | None:
    """Why the embedded Flux model cannot draw ``caption`` (unknown words, another sentence form, a colour pair
    it was never trained on), or None when it is one of its captions."""
    from .data import COLOUR_NAMES, COLOUR_PAIRS, caption_vocabulary, parse_caption

    unknown = [w for w in caption.lower().split() if w not in caption_vocabulary()]
    if unknown:
        return f"{caption!r}: unknown words {unknown}"
    try:
        _, fg, bg = parse_caption(caption)
    except ValueError:
        return f"{caption!r}: not of the form {FLUX_CAPTION_FORM!r}"
    if (fg, bg) not in COLOUR_PAIRS:
        trained = [COLOUR_NAMES[b] for f, b in COLOUR_PAIRS if f == fg]
        return (f"{caption!r}: {COLOUR_NAMES[fg]} on {COLOUR_NAMES[bg]} was never trained (too little contrast); "
                f"{COLOUR_NAMES[fg]} shapes were trained on {', '.join(trained)}")
    return None


def check_flux_captions(captions) -> list[str]:
    """Warn (UserWarning) about the captions the embedded Flux model was not trained to draw: it only knows a
    small vocabulary, and such a caption gives no recognisable shape. Returns the problems (empty: all known)."""
    import warnings

    problems = [p for p in map(flux_caption_problem, captions) if p is not None]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        warnings.warn(f"{len(problems)} of {len(captions)} captions fall outside what the embedded Flux model was "
                      f"trained on and will not give the shape asked for: {shown}. Its vocabulary: "
                      f"{FLUX_VOCABULARY_HELP}.", UserWarning, stacklevel=2)
    return problems


def is_embedded_flux(pipeline) -> bool:
    """Whether ``pipeline`` (a folder, or None) is the embedded Flux model's folder."""
    return pipeline is not None and Path(pipeline).resolve() == FLUX_PIPELINE.resolve()


def flux_eval_set(per_class: int, seed: int | None = None):
    """Held-out prompts for checking the Flux model: the first ``per_class`` captioned held-out items
    of each class, class by class. Returns (captions, labels int64 [N], colour ids int64 [N, 2])."""
    import numpy as np

    from .data import HELDOUT_SEED, NUM_CLASSES, render_captioned_shape

    seed = HELDOUT_SEED if seed is None else seed
    chosen: list[list[dict]] = [[] for _ in range(NUM_CLASSES)]
    index = 0
    while min(len(c) for c in chosen) < per_class:
        item = render_captioned_shape(index, seed)
        if len(chosen[item["label"]]) < per_class:
            chosen[item["label"]].append(item)
        index += 1
    items = [it for per in chosen for it in per]
    return ([it["caption"] for it in items], np.asarray([it["label"] for it in items], dtype=np.int64),
            np.asarray([(it["foreground"], it["background"]) for it in items], dtype=np.int64).reshape(-1, 2))


def evaluate_flux(pipe, judge, per_class: int = 20, seed: int = 0, batch_size: int = 100, out_png=None,
                  style: str = "plain", **call_overrides) -> dict:
    """Sample ``per_class`` held-out captions per class with the stock FluxPipeline (true CFG, the
    shipped step count unless overridden) and judge them: class accuracy (ShapesJudge) and colour
    accuracy (shape and background colour both right; each alone too), against the colours that
    ``style`` paints (``harmonica_bench.data.STYLES``: "swapped" swaps the caption's two). Optionally a
    PNG grid, one row per class (the first 10 samples of each)."""
    import torch

    from .data import NUM_CLASSES
    from .judge import colour_report

    captions, labels, colours = flux_eval_set(per_class)
    generator = torch.Generator().manual_seed(seed)
    images = []
    for start in range(0, len(captions), batch_size):
        prompts = captions[start : start + batch_size]
        out = pipe(prompts, generator=generator, output_type="pt", **flux_call_kwargs(len(prompts), **call_overrides))
        images.append(out.images.float())
    images = torch.cat(images)
    if out_png is not None:
        from .viz import save_image_grid

        save_image_grid(images.reshape(NUM_CLASSES, per_class, *images.shape[1:])[:, :10], out_png)
    report = {"num_samples": len(captions)}
    if judge is not None:
        report["class_accuracy"] = (judge.predict(images * 2 - 1) == torch.from_numpy(labels)).float().mean().item()
    colour = colour_report(images, colours[:, ::-1] if style == "swapped" else colours)
    report.update(colour_accuracy=colour["both"], foreground_accuracy=colour["foreground"],
                  background_accuracy=colour["background"])
    return report

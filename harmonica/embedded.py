"""The embedded default: a small class-conditional latent DiT trained by this project on the shapes data.

Its architecture lives here so that the training scripts, the tests and the evaluation build the
same models. The trained pipeline ships in ``pipelines/shapes-dit`` as a stock ``DiTPipeline``
folder; the judge (classifier) ships in ``pipelines/shapes-dit/judge``. An installed wheel carries
``pipelines/`` as ``harmonica/_pipelines`` (``PIPELINES_DIR`` is whichever is in use).
"""

from __future__ import annotations

import json
from pathlib import Path

from .data import CLASS_NAMES

REPO_ROOT = Path(__file__).resolve().parent.parent  # the source checkout, when harmonica runs from one


def pipelines_dir() -> Path:
    """The embedded pipelines and recipes: the checkout's top-level ``pipelines/`` when harmonica runs from a
    source checkout (also an editable install), else the package data ``harmonica._pipelines`` that an
    installed wheel carries (the same folder, see pyproject.toml)."""
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "pipelines").is_dir():
        return REPO_ROOT / "pipelines"
    from importlib.resources import files

    return Path(str(files("harmonica") / "_pipelines"))


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

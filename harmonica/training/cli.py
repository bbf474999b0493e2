"""Train a HarmoniCa router for a pipeline (Step-Wise Denoising Training + image-error-proxy objective):
``python -m harmonica.train``, from any working directory.

    python -m harmonica.train --recipe shapes-dit-2x --cpu          # a shipped recipe, by name
    python -m harmonica.train --recipe my-recipe.json --trajectories 400
    python -m harmonica.train --pipeline facebook/DiT-XL-2-256 --num_steps 20 --target_usage 0.35

    # several processes (GPUs; or CPU processes with --multi_gpu --cpu: gloo):
    accelerate launch --multi_gpu --num_processes 8 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        -m harmonica.train --recipe dit-xl-2-256 --gradient_checkpointing

--recipe takes a JSON file of settings or the name of a shipped recipe (pipelines/recipes/*.json of the
checkout, installed beside the package). Options given on the command line override the recipe's. A relative
pipeline or prompts path in a recipe is relative to the recipe's folder (the shipped recipes name
../shapes-dit), else to the working directory. A recipe or option that cannot be used (unknown key, wrong
type, out of range, malformed JSON, a pipeline folder that does not exist) is refused before anything is
loaded or written. --objective ltc / sdt train the ablations; --step_counts a noise-level router.
Resumes from <output_dir>/checkpoints; writes <output_dir>/router (save_pretrained), training_log.jsonl and
summary.json.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Literal

from ..cli import HelpFormatter, RecipeError, read_recipe
from .config import RouterTrainingConfig


@dataclass
class ScriptOptions:
    """The script's own options (the training settings are RouterTrainingConfig's)."""

    recipe: str | None = field(default=None, metadata={
        "help": "JSON file of settings, or a shipped recipe's name (e.g. shapes-dit-2x, dit-xl-2-256): any option "
                "below as a key; options given on the command line override it. Relative paths in it are relative "
                "to its folder (else to the working directory)"})
    pipeline: str | None = field(default=None, metadata={
        "help": "pipeline folder or hub id (here or in the recipe)"})
    torch_dtype: Literal["float32", "float16", "bfloat16"] = field(default="float32", metadata={
        "help": "dtype the pipeline is loaded in"})
    prompts_file: str | None = field(default=None, metadata={
        "help": "text-to-image prompts: a .txt (one per line) or .json (list) file, a saved datasets "
                "folder[:column], or 'shapes' (the embedded Flux model's training captions; train/train_router.py)",
        "aliases": ["--prompts"]})
    cpu: bool = field(default=False, metadata={"help": "force CPU (with several processes: gloo)"})


@dataclass
class TrainingOptions(RouterTrainingConfig):
    """RouterTrainingConfig as options and recipe keys; its prompts come from --prompts (a file), not inline."""

    prompts: list[str] = field(default_factory=list, init=False, repr=False)


@dataclass
class Additions:
    """What a caller adds to the trainer: train/train_router.py adds the lab's (``harmonica_bench``, which the
    package cannot import) named prompt sets and its check of the prompts for the embedded Flux model."""

    prompt_sets: dict[str, Callable[[], list[str]]] = field(default_factory=dict)
    check: Callable[[ScriptOptions, list[str]], None] | None = None  # the settings, once the prompts are read


def build_parser():
    from transformers import HfArgumentParser

    return HfArgumentParser((ScriptOptions, TrainingOptions), description=__doc__, formatter_class=HelpFormatter,
                            allow_abbrev=False)


def shipped_recipes() -> Path | None:
    """The recipes shipped with harmonica: the checkout's pipelines/recipes, or the wheel's copy beside the
    package (harmonica_bench/_pipelines/recipes); found on disk, the lab is not imported."""
    root = Path(__file__).resolve().parents[2]
    for folder in (root / "pipelines" / "recipes", root / "harmonica_bench" / "_pipelines" / "recipes"):
        if folder.is_dir():
            return folder
    return None


def find_recipe(spec: str) -> Path:
    """``spec`` itself when it is a file, else the shipped recipe of that name (with or without .json); a
    missing one is named by ``read_recipe``."""
    path, shipped = Path(spec), shipped_recipes()
    if path.is_file() or shipped is None or path.name != spec:
        return path
    for candidate in (shipped / spec, shipped / f"{spec}.json"):
        if candidate.is_file():
            return candidate
    return path


def beside(value, folder: Path):
    """A relative path in a recipe: relative to the recipe's ``folder`` when it exists there, else as given."""
    if isinstance(value, str) and value and not Path(value).is_absolute() and (folder / value).exists():
        return str(folder / value)
    return value


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def pipeline_problem(spec: str) -> str | None:
    """Why ``spec`` names no pipeline (a folder that does not exist and no hub id), or None."""
    if Path(spec).exists() or HUB_ID.fullmatch(spec) and ".." not in spec:
        return None
    return f"pipeline {spec}: no such folder (nor a hub id, org/name)"


def load_prompts(spec, prompt_sets=None):
    """Prompts from a .txt (one per line) or .json (list) file, a local `datasets` folder:column, or a named
    set of ``prompt_sets`` (the lab's 'shapes')."""
    if spec is None:
        return []
    if spec in (prompt_sets or {}):
        prompts = prompt_sets[spec]()
    elif spec.endswith(".txt"):
        prompts = [line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines() if line.strip()]
    elif spec.endswith(".json"):
        prompts = json.loads(Path(spec).read_text(encoding="utf-8"))
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("a .json prompts file must hold a list of strings")
    else:
        import datasets

        path, _, column = spec.partition(":")
        prompts = list(datasets.load_from_disk(path)[column or "prompt"])
    if not prompts:
        raise ValueError("the file holds no prompts")
    return prompts


def parse_settings(argv=None, additions: Additions | None = None) -> tuple[ScriptOptions, RouterTrainingConfig]:
    """Options from the recipe, overridden by the command line; every problem is refused here, before
    anything is loaded or written (argparse error, exit status 2)."""
    additions = additions or Additions()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe")
    recipe = pre.parse_known_args(argv)[0].recipe
    if recipe:
        recipe = find_recipe(recipe)
        try:
            values, (_, from_recipe) = read_recipe(recipe, parser, not_in_file=("recipe",))
            from_recipe.check()
        except RecipeError as err:
            shipped = shipped_recipes()
            names = sorted(p.stem for p in shipped.glob("*.json")) if shipped else []
            parser.error(str(err) + (f" (shipped recipes: {', '.join(names)})" if "no such file" in str(err) else ""))
        except ValueError as err:
            parser.error(f"recipe {recipe}: {err}")
        for key in ("pipeline", "prompts_file"):
            if key in values:
                values[key] = beside(values[key], recipe.parent)
        parser.set_defaults(**values)  # the command line overrides the recipe
    options, training, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True,
                                                                    look_for_args_file=False)
    if unknown:
        close = [m for u in unknown if u.startswith("--")
                 for m in difflib.get_close_matches(u.split("=")[0], parser._option_string_actions, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    config = RouterTrainingConfig(**{f.name: getattr(training, f.name) for f in fields(TrainingOptions) if f.init})
    try:
        config.check()
    except ValueError as err:
        parser.error(str(err))
    if options.pipeline is None:
        parser.error("give --pipeline or a --recipe that names one")
    if config.init_router:
        from ..router import HarmoniCaRouter, RouterError

        try:
            HarmoniCaRouter.from_pretrained(config.init_router)  # what it fits is checked against the pipeline
        except (RouterError, OSError, ValueError) as err:
            parser.error(f"--init_router: {err}")
    if pipeline_problem(options.pipeline):
        parser.error(pipeline_problem(options.pipeline))
    try:
        config.prompts = load_prompts(options.prompts_file, additions.prompt_sets)
    except (OSError, ValueError, KeyError) as err:
        parser.error(f"cannot read the prompts in {options.prompts_file}: {err}")
    if additions.check is not None:
        additions.check(options, config.prompts)
    return options, config


def main(argv=None, additions: Additions | None = None) -> dict:
    import torch
    from accelerate import Accelerator
    from diffusers import DiffusionPipeline

    from ..pipeline import dtype_kwargs
    from .noise_level import NoiseLevelTrainer
    from .router_training import RouterTrainer

    options, config = parse_settings(argv, additions)
    accelerator = Accelerator(cpu=options.cpu)
    dtype = getattr(torch, options.torch_dtype)
    pipe = DiffusionPipeline.from_pretrained(options.pipeline, **dtype_kwargs(dtype)).to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    trainer = NoiseLevelTrainer if config.step_counts else RouterTrainer  # one router for every step count
    summary = trainer(pipe, config, accelerator).train()
    accelerator.print(
        f"router saved to {config.output_dir}/router: cache usage {summary['cache_usage']:.1%} at threshold "
        f"{summary['threshold']:.3g} (target {summary['target_usage']}), {summary['iterations']} iterations, "
        f"{summary['train_seconds_this_run']:.0f} s, peak memory {summary['peak_memory_mb']:.0f} MB"
    )
    return summary

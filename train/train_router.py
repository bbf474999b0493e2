"""Train a HarmoniCa router for a pipeline (Step-Wise Denoising Training + image-error-proxy objective).

    accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        train/train_router.py --recipe pipelines/recipes/shapes-dit.json
    accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        train/train_router.py --pipeline facebook/DiT-XL-2-256 --num_steps 20 --target_usage 0.35

    # 2 CPU processes (gloo; accelerate's own --cpu would start a single process):
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        train/train_router.py --cpu --recipe pipelines/recipes/shapes-dit.json

The launch values are given so that accelerate does not warn that it chose defaults (on N GPUs:
--multi_gpu --num_processes N). Options given on the command line override the recipe's. A recipe or
option that cannot be used (unknown key, wrong type, out of range, malformed JSON) is refused before
anything is loaded or written. --objective ltc / sdt train the ablations from the same script.
Resumes from <output_dir>/checkpoints; writes <output_dir>/router (save_pretrained),
training_log.jsonl and summary.json.
"""

import argparse
import difflib
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from transformers import HfArgumentParser

from harmonica.cli import HelpFormatter, RecipeError, read_recipe
from harmonica.pipeline import dtype_kwargs
from harmonica.training.noise_level import NoiseLevelTrainer
from harmonica.training.router_training import RouterTrainer, RouterTrainingConfig
from harmonica_bench.embedded import check_flux_captions, is_embedded_flux
from harmonica_bench.shapes import SHAPES


@dataclass
class ScriptOptions:
    """The script's own options (the training settings are RouterTrainingConfig's)."""

    recipe: str | None = field(default=None, metadata={
        "help": "JSON file of settings (pipelines/recipes/*.json): any option below as a key; options given on the "
                "command line override it"})
    pipeline: str | None = field(default=None, metadata={
        "help": "pipeline folder or hub id (here or in the recipe)"})
    torch_dtype: Literal["float32", "float16", "bfloat16"] = field(default="float32", metadata={
        "help": "dtype the pipeline is loaded in"})
    prompts_file: str | None = field(default=None, metadata={
        "help": "text-to-image prompts: a .txt (one per line) or .json (list) file, a saved datasets "
                "folder[:column], or 'shapes' (the embedded Flux model's training captions)",
        "aliases": ["--prompts"]})
    cpu: bool = field(default=False, metadata={"help": "force CPU (with several processes: gloo)"})


@dataclass
class TrainingOptions(RouterTrainingConfig):
    """RouterTrainingConfig as options and recipe keys; its prompts come from --prompts (a file), not inline."""

    prompts: list[str] = field(default_factory=list, init=False, repr=False)


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((ScriptOptions, TrainingOptions), description=__doc__, formatter_class=HelpFormatter,
                            allow_abbrev=False)


def load_prompts(spec):
    """Prompts from a .txt (one per line) or .json (list) file, a local `datasets` folder:column, or
    'shapes' (the captions the embedded Flux model was trained on)."""
    if spec is None:
        return []
    if SHAPES.matches(spec):
        prompts = SHAPES.train_captions()
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


def parse_settings(argv=None) -> tuple[ScriptOptions, RouterTrainingConfig]:
    """Options from the recipe, overridden by the command line; every problem is refused here, before
    anything is loaded or written (argparse error, exit status 2)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe")
    recipe = pre.parse_known_args(argv)[0].recipe
    if recipe:
        try:
            values, (_, from_recipe) = read_recipe(recipe, parser, not_in_file=("recipe",))
            from_recipe.check()
        except RecipeError as err:
            parser.error(str(err))
        except ValueError as err:
            parser.error(f"recipe {recipe}: {err}")
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
    try:
        config.prompts = load_prompts(options.prompts_file)
    except (OSError, ValueError, KeyError) as err:
        parser.error(f"cannot read the prompts in {options.prompts_file}: {err}")
    if is_embedded_flux(options.pipeline) and not SHAPES.matches(options.prompts_file):
        check_flux_captions(config.prompts)  # a caption it cannot draw trains the router on noise
    return options, config


def main(argv=None):
    options, config = parse_settings(argv)
    accelerator = Accelerator(cpu=options.cpu)
    from diffusers import DiffusionPipeline

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


if __name__ == "__main__":
    main()

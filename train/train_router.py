"""Train a HarmoniCa router for a pipeline (Step-Wise Denoising Training + image-error-proxy objective).

    accelerate launch train/train_router.py --recipe pipelines/recipes/shapes-dit.json
    accelerate launch train/train_router.py --pipeline facebook/DiT-XL-2-256 --num_steps 20 --target_usage 0.35

Flags override the recipe. --objective ltc / sdt train the ablations from the same script. On 2 CPU
processes: accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no
--dynamo_backend no train/train_router.py --cpu ... Resumes from <output_dir>/checkpoints; writes
<output_dir>/router (save_pretrained), training_log.jsonl and summary.json.
"""

import argparse
import json
from dataclasses import fields

import torch
from accelerate import Accelerator

from harmonica.training.router_training import OBJECTIVES, RouterTrainer, RouterTrainingConfig


def load_prompts(spec):
    """Prompts from a .txt (one per line) or .json (list) file, or a local `datasets` folder:column."""
    if spec is None:
        return []
    if spec.endswith(".txt"):
        return [line.strip() for line in open(spec) if line.strip()]
    if spec.endswith(".json"):
        return list(json.load(open(spec)))
    import datasets

    path, _, column = spec.partition(":")
    return list(datasets.load_from_disk(path)[column or "prompt"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help="JSON file of settings (pipelines/recipes/*.json)")
    p.add_argument("--pipeline", help="pipeline folder or hub id")
    p.add_argument("--torch_dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--prompts", help="PixArt prompts: .txt, .json or datasets-folder:column")
    p.add_argument("--cpu", action="store_true", help="force CPU (with several processes: gloo)")
    for f in fields(RouterTrainingConfig):
        if f.name == "prompts":
            continue
        kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0].replace("'", ""), None)
        if f.name in ("target_usage",):
            kind = float
        if f.name in ("scheduler",):
            kind = str
        p.add_argument(f"--{f.name}", type=kind or str, choices=OBJECTIVES if f.name == "objective" else None)
    args = p.parse_args()

    recipe = json.load(open(args.recipe)) if args.recipe else {}
    settings = {**recipe, **{k: v for k, v in vars(args).items() if v is not None and k != "recipe"}}
    if "pipeline" not in settings:
        p.error("give --pipeline or a --recipe that names one")
    config = RouterTrainingConfig(**{f.name: settings[f.name] for f in fields(RouterTrainingConfig) if f.name in settings})
    config.prompts = load_prompts(settings.get("prompts_file") or settings.get("prompts"))

    accelerator = Accelerator(cpu=bool(settings.get("cpu")))
    from diffusers import DiffusionPipeline

    dtype = getattr(torch, settings.get("torch_dtype", "float32"))
    pipe = DiffusionPipeline.from_pretrained(settings["pipeline"], torch_dtype=dtype).to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    summary = RouterTrainer(pipe, config, accelerator).train()
    accelerator.print(
        f"router saved to {config.output_dir}/router: cache usage {summary['cache_usage']:.1%} at threshold "
        f"{summary['threshold']:.3g} (target {summary['target_usage']}), {summary['iterations']} iterations, "
        f"{summary['train_seconds_this_run']:.0f} s, peak memory {summary['peak_memory_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()

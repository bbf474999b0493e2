"""Train a HarmoniCa router: the packaged trainer (``python -m harmonica.train``, harmonica/training/cli.py) with
the lab's additions: ``--prompts shapes`` (the embedded Flux model's training captions) and a warning for
prompts the embedded Flux model cannot draw.

    accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        train/train_router.py --recipe pipelines/recipes/shapes-dit.json
    accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        train/train_router.py --pipeline facebook/DiT-XL-2-256 --num_steps 20 --target_usage 0.35

    # 2 CPU processes (gloo; accelerate's own --cpu would start a single process):
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        train/train_router.py --cpu --recipe pipelines/recipes/shapes-dit.json

The launch values are given so that accelerate does not warn that it chose defaults (on N GPUs:
--multi_gpu --num_processes N). Options, recipes and outputs are the packaged trainer's (--help).
"""

from harmonica.training.cli import Additions, build_parser
from harmonica.training.cli import main as _main
from harmonica.training.cli import parse_settings as _parse_settings
from harmonica_bench.embedded import check_flux_captions, is_embedded_flux
from harmonica_bench.shapes import SHAPES

__all__ = ["build_parser", "main", "parse_settings"]


def check_prompts(options, prompts) -> None:
    if is_embedded_flux(options.pipeline) and not SHAPES.matches(options.prompts_file):
        check_flux_captions(prompts)  # a caption it cannot draw trains the router on noise


LAB = Additions(prompt_sets={SHAPES.name: SHAPES.train_captions}, check=check_prompts)


def parse_settings(argv=None):
    return _parse_settings(argv, LAB)


def main(argv=None):
    return _main(argv, LAB)


if __name__ == "__main__":
    main()

"""The shapes benchmark: the one object behind every ``shapes`` a command line accepts.

The embedded models (``pipelines/shapes-dit``, ``pipelines/shapes-flux``) are trained on a procedural dataset
of coloured shapes (``harmonica_bench.data``). Everything the lab does with it goes through ``SHAPES``:

* ``train_captions()``: the captions the embedded Flux model was trained on (router training draws its
  prompts from them: ``train/train_router.py --prompts shapes``);
* ``heldout_captions(per_class)``: labelled held-out captions with the class and colours of each (the
  harness's ``--prompts shapes``, judged for class and colour accuracy);
* ``reference_images(num)``: held-out images, the reference set of FD (``--reference shapes``);
* ``judge``: the classifier that judges the samples; ``serves(pipeline)``: whether a pipeline folder is
  one of the embedded models, so that the harness picks the shapes reference and judge by default.
"""

from __future__ import annotations

from pathlib import Path

import torch


class ShapesBenchmark:
    name = "shapes"

    def __repr__(self) -> str:
        return "SHAPES (the embedded models' procedural shapes benchmark)"

    def matches(self, spec) -> bool:
        """Whether a command-line value names this benchmark."""
        return spec == self.name

    @property
    def judge(self) -> Path:
        from .embedded import EMBEDDED_JUDGE

        return EMBEDDED_JUDGE

    def serves(self, pipeline_path) -> bool:
        """Whether ``pipeline_path`` is one of the embedded shapes models (or a folder shipping the judge)."""
        from .embedded import EMBEDDED_PIPELINE, FLUX_PIPELINE

        if pipeline_path is None:
            return False
        path = Path(pipeline_path)
        if (path / "judge" / "config.json").is_file():
            return True
        return path.resolve() in (EMBEDDED_PIPELINE.resolve(), FLUX_PIPELINE.resolve())

    def judge_for(self, pipeline_path) -> Path | None:
        """The judge of a pipeline: ``<pipeline>/judge`` when it ships one, the shapes judge for the embedded
        Flux model, else None."""
        if pipeline_path is not None and (Path(pipeline_path) / "judge" / "config.json").is_file():
            return Path(pipeline_path) / "judge"
        return self.judge if self.serves(pipeline_path) else None

    def train_captions(self, num_images: int = 2000) -> list[str]:
        from .embedded import flux_train_prompts

        return flux_train_prompts(num_images)

    def heldout_captions(self, per_class: int = 100) -> tuple[list[str], list[int], list]:
        """``(captions, class of each, colours of each)`` of the held-out split."""
        from .embedded import flux_eval_set

        captions, labels, colours = flux_eval_set(per_class=per_class)
        return captions, labels.tolist(), colours.tolist()

    def reference_images(self, num: int) -> torch.Tensor:
        """uint8 ``[num, 3, H, W]`` held-out images."""
        from .data import HELDOUT_SEED, render_shapes

        images, _ = render_shapes(range(num), HELDOUT_SEED)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


SHAPES = ShapesBenchmark()

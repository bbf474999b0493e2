"""Sampling: sample ``i`` of an evaluation is a pure function of ``(seed, i)``.

Its noise comes from its own ``torch.Generator(seed + i)`` (made on the CPU, so the same on every
device) and its condition is class ``i % num_classes`` (DiT) or prompt ``i % len(prompts)``
(PixArt). Images are therefore the same whatever the batch size or the number of processes that
share the work, and cached and uncached runs of one setup can be compared image by image
(PSNR / SSIM).

Generation is split across processes with accelerate (``accelerate launch ... eval/fid.py``): each
process takes every ``world``-th index, writes its share to a shard file and the main process
gathers them in index order.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

CALIBRATION_OFFSET = 1_000_000  # calibration samples (MagCache) use indices from here: disjoint from evaluation
SEED_SET_OFFSET = 10_000_000  # seed set j draws its noise seeds from SEED + j * SEED_SET_OFFSET


# ==================================================================== family-specific facts
# What the harness needs of a model family: whether it is conditioned on classes or prompts (its spec,
# harmonica/families/) and the pipeline-call arguments of a batch (call_kwargs.py, by family name).
def is_class_conditional(pipe) -> bool:
    from harmonica.families import family_for

    return family_for(pipe).conditioning == "class"


def family_num_classes(pipe) -> int | None:
    """The class count of a class-conditional pipeline (None for text-to-image)."""
    from harmonica.families.dit import num_classes_of

    return num_classes_of(pipe) if is_class_conditional(pipe) else None


def family_call_kwargs(pipe, setup: "SamplingSetup", indices: list) -> dict:
    """The condition of samples ``indices`` (class labels or prompts) and the family's options."""
    from .call_kwargs import call_kwargs_for

    if is_class_conditional(pipe):
        conditions = setup.labels(indices)
    elif not setup.prompts:
        raise ValueError("a text-to-image pipeline needs prompts (--prompts FILE)")
    else:
        conditions = [setup.prompts[int(i) % len(setup.prompts)] for i in indices]
    options = {key: getattr(setup, key) for key in ("height", "width", "max_sequence_length")}
    return call_kwargs_for(pipe)(pipe, conditions, guidance_scale=setup.guidance_scale, **options)


# ================================================================================ loading
def load_pipeline(path: str | Path, device: str = "cpu", dtype: str = "float32", scheduler: str | None = None):
    """A stock diffusers pipeline of a supported family on ``device``, progress bars off; ``scheduler``: a
    diffusers scheduler class name, built from the pipeline's scheduler config."""
    import diffusers
    from diffusers import DiffusionPipeline

    from harmonica.families import family_for
    from harmonica.pipeline import dtype_kwargs

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    kwargs = {} if dtype == "float32" else dtype_kwargs(getattr(torch, dtype))
    pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs)
    family_for(pipe)  # raises, naming the supported pipelines
    if scheduler:
        klass = getattr(diffusers, scheduler, None)
        if not (isinstance(klass, type) and issubclass(klass, diffusers.SchedulerMixin)):
            raise SystemExit(f"--scheduler must name a diffusers scheduler class (e.g. DDIMScheduler, "
                             f"DPMSolverMultistepScheduler), got {scheduler!r}")
        pipe.scheduler = klass.from_config(pipe.scheduler.config)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ================================================================================ sampling
@dataclass
class SamplingSetup:
    """How samples are drawn. ``num_classes`` / ``prompts`` give the condition of sample ``i``."""

    num_inference_steps: int = 20
    guidance_scale: float = 1.5
    seed: int = 0
    batch_size: int = 16
    num_classes: int | None = None
    prompts: list[str] | None = None
    height: int | None = None  # text-to-image only
    width: int | None = None
    max_sequence_length: int | None = None
    prompt_labels: list[int] | None = None  # the class drawn by each prompt (judged like class labels)
    prompt_colours: list | None = None  # the (shape, background) colour ids each prompt asks for

    @property
    def has_labels(self) -> bool:
        return bool(self.num_classes) or self.prompt_labels is not None

    def labels(self, indices) -> list[int]:
        """The class of samples ``indices``: class-conditional (i % num_classes) or the prompt's class."""
        if self.num_classes:
            return [int(i) % self.num_classes for i in indices]
        if self.prompt_labels is None:
            raise ValueError("neither num_classes nor the prompts' classes are set")
        return [self.prompt_labels[int(i) % len(self.prompt_labels)] for i in indices]

    def colours(self, indices) -> list | None:
        if self.prompt_colours is None:
            return None
        return [self.prompt_colours[int(i) % len(self.prompt_colours)] for i in indices]

    def call_kwargs(self, pipe, indices, overrides: dict | None = None) -> dict:
        indices = list(indices)
        kw = dict(
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=[torch.Generator().manual_seed(self.seed + int(i)) for i in indices],
            output_type="pt",
        )
        kw.update(family_call_kwargs(pipe, self, indices))
        kw.update(overrides or {})
        return kw

    def describe(self) -> dict:
        d = asdict(self)
        if d["prompts"] is not None:
            d["prompts"] = {"count": len(self.prompts),
                            "sha1": hashlib.sha1("\n".join(self.prompts).encode()).hexdigest()[:12]}
        for key in ("prompt_labels", "prompt_colours"):
            d[key] = None if d[key] is None else len(d[key])
        return d



def setup_for(pipe, num_inference_steps: int, guidance_scale: float, seed: int = 0, batch_size: int = 16,
              prompts: list[str] | None = None, num_classes: int | None = None, height: int | None = None,
              width: int | None = None) -> SamplingSetup:
    """A ``SamplingSetup`` with the pipeline's own class count when none is given."""
    if is_class_conditional(pipe):
        num_classes = num_classes or family_num_classes(pipe)
    return SamplingSetup(num_inference_steps, guidance_scale, seed, batch_size, num_classes, prompts, height, width)


def seed_set(setup: SamplingSetup, j: int, num_samples: int | None = None) -> SamplingSetup:
    """The setup of seed set ``j``: sample ``i`` has noise seed ``SEED + j * SEED_SET_OFFSET + i`` and
    the same condition as sample ``i`` of set 0. Sets are disjoint from each other and from the
    calibration samples as long as there are at most ``CALIBRATION_OFFSET`` samples."""
    if num_samples is not None and num_samples > CALIBRATION_OFFSET:
        raise ValueError(f"seed sets are disjoint for at most {CALIBRATION_OFFSET} samples, got {num_samples}")
    return replace(setup, seed=setup.seed + int(j) * SEED_SET_OFFSET)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Pipeline output in [0, 1] -> uint8 ``[N, 3, H, W]`` on the CPU."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


@torch.no_grad()
def generate(pipe, setup: SamplingSetup, indices, overrides: dict | None = None, progress: bool = True,
             desc: str = "sampling", position: int = 0) -> torch.Tensor:
    """uint8 ``[len(indices), 3, H, W]`` images of samples ``indices``, in that order."""
    from tqdm.auto import tqdm

    indices = list(indices)
    out = []
    with tqdm(total=len(indices), desc=desc, unit="img", disable=not progress, position=position,
              leave=False, dynamic_ncols=True) as bar:
        for start in range(0, len(indices), setup.batch_size):
            chunk = indices[start:start + setup.batch_size]
            out.append(to_uint8(pipe(**setup.call_kwargs(pipe, chunk, overrides)).images))
            bar.update(len(chunk))
    if not out:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    return torch.cat(out)


def calibration_call(setup: SamplingSetup, num: int = 4):
    """A pipeline call on ``num`` calibration samples (indices disjoint from any evaluation)."""
    indices = range(CALIBRATION_OFFSET, CALIBRATION_OFFSET + max(1, min(num, setup.batch_size)))

    def run(pipe):
        return pipe(**setup.call_kwargs(pipe, indices))

    return run


def generate_distributed(accelerator, pipe, setup: SamplingSetup, num_samples: int, work_dir: str | Path, tag: str,
                         overrides: dict | None = None) -> torch.Tensor | None:
    """Generate samples ``0..num_samples-1`` split across the accelerate processes. Returns all images
    in index order on the main process, None elsewhere. Without accelerate, pass ``accelerator=None``."""
    if accelerator is None or accelerator.num_processes == 1:
        return generate(pipe, setup, range(num_samples), overrides, desc=tag)
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, num_samples, world))
    images = generate(pipe, setup, mine, overrides, desc=f"{tag} [{rank}]", position=rank,
                      progress=True)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    shard = work_dir / f".{tag}.shard{rank}.pt"
    torch.save({"indices": mine, "images": images}, shard)
    accelerator.wait_for_everyone()
    result = None
    if accelerator.is_main_process:
        parts = [torch.load(work_dir / f".{tag}.shard{r}.pt") for r in range(world)]
        parts = [part for part in parts if len(part["indices"])]
        result = torch.zeros(num_samples, *parts[0]["images"].shape[1:], dtype=torch.uint8)
        for part in parts:
            result[torch.tensor(part["indices"])] = part["images"]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for r in range(world):
            (work_dir / f".{tag}.shard{r}.pt").unlink(missing_ok=True)
    return result

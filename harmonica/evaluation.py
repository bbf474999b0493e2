"""The evaluation harness behind ``eval/fid.py``, ``eval/speed.py`` and ``eval/pareto.py``.

Sample ``i`` of an evaluation is a pure function of ``(seed, i)``: its noise comes from its own
``torch.Generator(seed + i)`` (made on the CPU, so the same on every device) and its condition is
class ``i % num_classes`` (DiT) or prompt ``i % len(prompts)`` (PixArt). Images are therefore the
same whatever the batch size or the number of processes that share the work, and cached and
uncached runs of one setup can be compared image by image (PSNR / SSIM).

Generation is split across processes with accelerate (``accelerate launch ... eval/fid.py``): each
process takes every ``world``-th index, writes its share to a shard file and the main process
gathers them in index order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import methods
from .metrics import CallMeter, weights_bytes
from .families.dit import num_classes_of
from .viz import save_figure, save_image_grid

CALIBRATION_OFFSET = 1_000_000  # calibration samples (MagCache) use indices from here: disjoint from evaluation


# ================================================================================ loading
def load_pipeline(path: str | Path, device: str = "cpu", dtype: str = "float32"):
    """A stock diffusers pipeline (DiT or PixArt) on ``device``, progress bars off."""
    import diffusers
    from diffusers import DiffusionPipeline

    from .families import family_for

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    kwargs = {} if dtype == "float32" else {"torch_dtype": getattr(torch, dtype)}
    pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs)
    family_for(pipe)  # raises, naming the supported pipelines
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def default_judge(pipeline_path: str | Path | None) -> Path | None:
    """``<pipeline>/judge`` when the pipeline is a local folder that ships one (the embedded model)."""
    if pipeline_path is not None and (Path(pipeline_path) / "judge" / "config.json").is_file():
        return Path(pipeline_path) / "judge"
    return None


def load_judge(path: str | Path | None, device: str | torch.device = "cpu"):
    if path is None:
        return None
    from .judge import ShapesJudge

    return ShapesJudge.from_pretrained(str(path)).eval().to(device)


def is_class_conditional(pipe) -> bool:
    from diffusers import DiTPipeline

    return isinstance(pipe, DiTPipeline)


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
    height: int | None = None  # PixArt only
    width: int | None = None
    max_sequence_length: int | None = None

    def labels(self, indices) -> list[int]:
        if not self.num_classes:
            raise ValueError("num_classes is not set")
        return [int(i) % self.num_classes for i in indices]

    def call_kwargs(self, pipe, indices, overrides: dict | None = None) -> dict:
        indices = list(indices)
        kw = dict(
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=[torch.Generator().manual_seed(self.seed + int(i)) for i in indices],
            output_type="pt",
        )
        if is_class_conditional(pipe):
            kw["class_labels"] = self.labels(indices)
        else:
            if not self.prompts:
                raise ValueError("a text-to-image pipeline needs prompts (--prompts FILE)")
            kw["prompt"] = [self.prompts[int(i) % len(self.prompts)] for i in indices]
            kw.update(use_resolution_binning=False, clean_caption=False)
            for key in ("height", "width", "max_sequence_length"):
                if getattr(self, key) is not None:
                    kw[key] = getattr(self, key)
        kw.update(overrides or {})
        return kw

    def describe(self) -> dict:
        d = asdict(self)
        if d["prompts"] is not None:
            d["prompts"] = {"count": len(self.prompts),
                            "sha1": hashlib.sha1("\n".join(self.prompts).encode()).hexdigest()[:12]}
        return d


def setup_for(pipe, num_inference_steps: int, guidance_scale: float, seed: int = 0, batch_size: int = 16,
              prompts: list[str] | None = None, num_classes: int | None = None, height: int | None = None,
              width: int | None = None) -> SamplingSetup:
    """A ``SamplingSetup`` with the pipeline's own class count when none is given."""
    if is_class_conditional(pipe):
        num_classes = num_classes or num_classes_of(pipe)
    return SamplingSetup(num_inference_steps, guidance_scale, seed, batch_size, num_classes, prompts, height, width)


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


# ========================================================================== sample files
@torch.no_grad()
def weights_fingerprint(pipe) -> str:
    """A short digest of every weight of the pipeline's torch modules (sums and shapes), so that kept
    samples are never reused for a retrained model that lives at the same path."""
    h = hashlib.sha1()
    for name, comp in sorted(pipe.components.items()):
        if isinstance(comp, torch.nn.Module):
            for pname, t in comp.state_dict().items():
                if torch.is_tensor(t) and t.is_floating_point():
                    h.update(f"{name}.{pname}{tuple(t.shape)}{t.double().sum().item():.10e}"
                             f"{t.double().abs().sum().item():.10e}".encode())
    return h.hexdigest()[:16]


def _key(meta: dict) -> str:
    return hashlib.sha1(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_samples(path: Path, meta: dict, load: bool = True):
    """Images saved by ``save_samples`` with the same ``meta``, else None. With ``load=False`` only
    says whether they are there (True / None) without reading the images."""
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()).get("key") == _key(meta):
        return torch.load(path)["images"] if load else True
    return None


def save_samples(path: Path, images: torch.Tensor, meta: dict) -> None:
    """Write ``images`` to ``path`` and ``meta`` with its key beside it (``.json``), each atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": _key(meta), "images": images}, tmp)
    os.replace(tmp, path)
    tmp.write_text(json.dumps({"key": _key(meta), "meta": meta}, indent=2, default=_json_default))
    os.replace(tmp, path.with_suffix(".json"))


# ============================================================================ references
def reference_images(reference: str, num: int) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` reference images: ``"shapes"`` (the held-out split of the embedded model's
    data), a folder of png/jpg files (sorted, the first ``num``) or an ``.npz`` (key ``images`` or
    ``arr_0``, NHWC uint8, e.g. ADM's ImageNet reference batches)."""
    if reference == "shapes":
        from .data import HELDOUT_SEED, render_shapes

        images, _ = render_shapes(range(num), HELDOUT_SEED)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    path = Path(reference)
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:num]
        if not files:
            raise ValueError(f"no png/jpg images in {path}")
        arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if path.suffix == ".npz":
        data = np.load(path)
        key = "images" if "images" in data else "arr_0"
        return torch.from_numpy(np.asarray(data[key][:num], dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
    raise ValueError(f"reference must be 'shapes', a folder of images or an .npz file, got {reference!r}")


def default_reference(pipeline_path) -> str | None:
    from .embedded import EMBEDDED_PIPELINE

    if pipeline_path is not None and default_judge(pipeline_path) is not None:
        return "shapes"
    if pipeline_path is not None and Path(pipeline_path).resolve() == EMBEDDED_PIPELINE.resolve():
        return "shapes"
    return None


# ============================================================================== methods
@dataclass
class Prepared:
    """A method applied to its own clone of the pipeline."""

    series: str
    applied: methods.Applied
    pipe: object

    @property
    def label(self) -> str:
        return self.applied.label


def prepare(pipe, request: methods.MethodRequest, knob, setup: SamplingSetup) -> Prepared:
    """Clone ``pipe`` (weights shared) and apply the requested method with ``knob`` to the clone."""
    clone = methods.clone_pipeline(pipe)
    applied = methods.apply_method(clone, request.name, knob, num_inference_steps=setup.num_inference_steps,
                                   router=request.router, calibrate=calibration_call(setup), fused=request.fused)
    if not request.fused:
        applied.label += " (kernel off)"
    return Prepared(request.series, applied, clone)


def measure_cost(prepared_pipe, setup: SamplingSetup, indices, overrides: dict | None = None) -> dict:
    """One measured (untimed) call: cache usage, transformer MACs, peak memory."""
    meter = CallMeter(prepared_pipe)
    try:
        with torch.no_grad(), meter.measure():
            prepared_pipe(**setup.call_kwargs(prepared_pipe, indices, overrides))
    finally:
        meter.detach()
    cost = meter.cost.to_dict()
    cost.pop("per_forward_computed", None)
    cost["computed_per_step"] = meter.cost.per_forward_computed
    return cost


def harmonica_stats(pipe) -> dict | None:
    from .cache import controller

    found = controller(pipe)
    if found is None:
        return None
    st = found.stats_for(pipe)
    return None if st is None else {"cache_usage": st.cache_usage, "macs_speedup": st.macs_speedup}


# ================================================================================= speed
@dataclass
class SpeedRow:
    label: str
    series: str
    knob: object
    latency_s: float
    speedup: float
    cache_usage: float
    macs: int
    macs_speedup: float
    peak_memory_mb: float | None
    info: dict = field(default_factory=dict)


def speed_benchmark(pipe, entries: list[tuple[methods.MethodRequest, object]], setup: SamplingSetup,
                    repeats: int = 5, warmup: int = 2, progress: bool = True) -> dict:
    """Latency of the stock pipeline and of each (method, knob), measured in this process, interleaved
    (A B C A B C ...), after ``warmup`` rounds, median of ``repeats``; plus each one's cache usage,
    transformer MACs and peak working memory from one separate measured call.

    All variants are clones sharing one copy of the weights, so memory numbers differ only by what
    each method allocates. Returns ``{"rows": [...], "setup": ..., "device": ...}``; row 0 is the stock
    pipeline."""
    from .benchmark import time_interleaved

    indices = list(range(setup.batch_size))
    variants = [prepare(pipe, methods.MethodRequest("none", []), None, setup)]
    for request, knob in entries:
        variants.append(prepare(pipe, request, knob, setup))
    names = []
    for v in variants:  # unique display names
        name, k = v.label, 2
        while name in names:
            name, k = f"{v.label} ({k})", k + 1
        names.append(name)
    costs = {}
    for name, v in zip(names, variants):
        costs[name] = measure_cost(v.pipe, setup, indices, v.applied.call_overrides)
        costs[name]["harmonica"] = harmonica_stats(v.pipe)

    def runner(v):
        kwargs = setup.call_kwargs(v.pipe, indices, v.applied.call_overrides)

        def run():
            with torch.no_grad():
                v.pipe(**kwargs)

        return run

    device = pipe.transformer.device
    latency = time_interleaved({n: runner(v) for n, v in zip(names, variants)}, repeats=repeats, warmup=warmup,
                               device=device, progress=progress)
    stock = names[0]
    rows = []
    for name, v in zip(names, variants):
        c = costs[name]
        mem = c["peak_memory_bytes"]
        rows.append(SpeedRow(
            label=name, series=v.series, knob=v.applied.knob, latency_s=latency[name],
            speedup=latency[stock] / latency[name], cache_usage=c["cache_usage"], macs=c["macs"],
            macs_speedup=costs[stock]["macs"] / c["macs"] if c["macs"] else float("nan"),
            peak_memory_mb=None if mem is None else mem / 2**20,
            info={**v.applied.info, "cost": c},
        ))
    return {
        "rows": [asdict(r) for r in rows],
        "setup": setup.describe(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "repeats": repeats,
        "warmup": warmup,
        "weights_mb": weights_bytes(pipe) / 2**20,
        "memory_method": costs[stock]["memory_method"],
    }


def speed_markdown(result: dict) -> str:
    lines = [
        f"Device: {result['device_name']}; batch {result['setup']['batch_size']}, "
        f"{result['setup']['num_inference_steps']} steps; median of {result['repeats']} interleaved repeats after "
        f"{result['warmup']} warm-up rounds. Weights {result['weights_mb']:.1f} MB (shared by all rows). "
        f"Peak memory: {result['memory_method']}.",
        "",
        "| method | latency (s) | speedup | cache usage | transformer GMACs | MACs speedup | peak memory (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        mem = "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.1f}"
        lines.append(f"| {r['label']} | {r['latency_s']:.4f} | {r['speedup']:.2f}x | {r['cache_usage']:.1%} | "
                     f"{r['macs'] / 1e9:.3f} | {r['macs_speedup']:.2f}x | {mem} |")
    return "\n".join(lines) + "\n"


# ============================================================================== quality
def quality_metrics(images: torch.Tensor, *, reference: torch.Tensor | None, extractor, uncached: torch.Tensor | None,
                    judge=None, labels=None, isc: bool = False, device="cpu") -> dict:
    """FD / KID (/ IS) against ``reference``, class accuracy with ``judge``, PSNR / SSIM against
    ``uncached`` (the same samples without caching)."""
    from .metrics import class_accuracies, fidelity_metrics, similarity

    out = {}
    if reference is not None and extractor is not None:
        out.update(fidelity_metrics(images, reference, extractor, isc=isc, device=device))
        out["distance_name"] = extractor.distance_name
    if judge is not None and labels is not None:
        out["class_accuracy"], out["per_class_accuracy"] = class_accuracies(judge, images, labels)
    if uncached is not None:
        if uncached.shape == images.shape:
            out.update(similarity(images, uncached))
    return out


QUALITY_HEADER = ("| method | knob | steps | N | FD / FID | KID x1e3 | IS | class acc. | PSNR (dB) | SSIM | cache usage "
                  "| MACs speedup |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value * scale, spec)


def knob_text(name, value) -> str:
    if value is None:
        return "-"
    return f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def quality_row(result: dict) -> str:
    m = result.get("metrics", {})
    cost = result.get("cost", {})
    return (f"| {result['label']} | {knob_text(result.get('knob_name'), result.get('knob'))} | {result.get('steps')} "
            f"| {m.get('num_generated', result.get('num_samples'))} | {_fmt(m.get('fd'), '.3f')} "
            f"| {_fmt(m.get('kid_mean'), '.3f', 1e3)} | {_fmt(m.get('isc_mean'), '.2f')} "
            f"| {_fmt(m.get('class_accuracy'), '.1%')} | {_fmt(m.get('psnr'), '.2f')} | {_fmt(m.get('ssim'), '.4f')} "
            f"| {_fmt(cost.get('cache_usage'), '.1%')} | {_fmt(cost.get('macs_speedup'), '.2f')}x |")


def append_markdown(path: Path, row: str, header: str = QUALITY_HEADER) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a") as f:
        if new:
            f.write(header)
        f.write(row + "\n")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    return repr(obj)


# ======================================================================= quality: one point
def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


def save_sample_grid(images: torch.Tensor, path: Path, setup: SamplingSetup, rows: int = 10) -> Path:
    """PNG of the first samples, ``rows`` deep: with class-conditional sampling column j holds class j
    (sample i has class i % num_classes), so each column should show one class."""
    cols = setup.num_classes or 10
    n = min(len(images), rows * cols) // cols * cols
    if n == 0:
        return save_image_grid(images.float() / 255, path)
    return save_image_grid(images[:n].float().div(255).reshape(n // cols, cols, *images.shape[1:]), path)


class QualityRun:
    """Generates and scores samples of several (method, knob) points of one pipeline and setup.

    The uncached samples are generated once (and kept in ``<out_dir>/samples``, reused by later runs
    of the same setup) and serve as the PSNR / SSIM target of every point; the stock pipeline's cost
    is measured once and is the denominator of every MACs speedup.
    """

    def __init__(self, pipe, setup: SamplingSetup, num_samples: int, out_dir: str | Path, *, accelerator=None,
                 reference: torch.Tensor | None = None, extractor=None, judge=None, isc: bool = False,
                 pipeline_id: str = "", keep_samples: bool = True):
        self.pipe = pipe
        self.setup = setup
        self.num_samples = int(num_samples)
        self.out_dir = Path(out_dir)
        self.accelerator = accelerator
        self.reference = reference
        self.extractor = extractor
        self.judge = judge
        self.isc = isc
        self.pipeline_id = pipeline_id
        self.keep_samples = keep_samples
        self.fingerprint = weights_fingerprint(pipe)
        self._uncached = None
        self._have_uncached = False
        self._stock_cost = None

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def _barrier(self):
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def _meta(self, tag: str, extra: dict | None = None) -> dict:
        return {"pipeline": self.pipeline_id, "weights": self.fingerprint, "setup": self.setup.describe(),
                "num_samples": self.num_samples, "tag": tag, **(extra or {})}

    def _samples(self, pipe, tag: str, overrides: dict | None, meta_extra: dict | None = None):
        path = self.out_dir / "samples" / f"{safe_name(tag)}.pt"
        meta = self._meta(tag, meta_extra)
        self._barrier()
        if cached_samples(path, meta, load=False):
            return cached_samples(path, meta) if self.is_main else None
        images = generate_distributed(self.accelerator, pipe, self.setup, self.num_samples, self.out_dir / "samples",
                                      safe_name(tag), overrides)
        if self.is_main and self.keep_samples:
            save_samples(path, images, meta)
        return images

    def uncached(self):
        """The uncached samples (on the main process; None elsewhere). Generated once per run."""
        if not self._have_uncached:
            self._uncached = self._samples(self.pipe, f"none-{self.setup.num_inference_steps}steps", None)
            self._have_uncached = True
        return self._uncached

    def stock_cost(self) -> dict:
        if self._stock_cost is None:
            clone = methods.clone_pipeline(self.pipe)
            self._stock_cost = measure_cost(clone, self.setup, range(self.setup.batch_size))
        return self._stock_cost

    def evaluate(self, request: methods.MethodRequest, knob=None) -> dict | None:
        """Score one point; returns the result dict on the main process (None elsewhere)."""
        uncached = self.uncached()
        prepared = prepare(self.pipe, request, knob, self.setup)
        applied = prepared.applied
        if request.name == "none":
            images = uncached
        else:
            tag = f"{request.series}-{applied.knob}"
            images = self._samples(prepared.pipe, tag, applied.call_overrides,
                                   {"method": request.name, "knob": applied.knob, "info": applied.info})
        result = None
        if self.is_main:
            cost = measure_cost(prepared.pipe, self.setup, range(self.setup.batch_size), applied.call_overrides)
            stock = self.stock_cost()
            cost["macs_speedup"] = stock["macs"] / cost["macs"] if cost["macs"] else float("nan")
            cost["harmonica"] = harmonica_stats(prepared.pipe)
            labels = None
            if is_class_conditional(self.pipe):
                labels = self.setup.labels(range(self.num_samples))
            metrics = quality_metrics(
                images, reference=self.reference, extractor=self.extractor,
                uncached=None if request.name == "none" else uncached, judge=self.judge, labels=labels,
                isc=self.isc, device=self.pipe.transformer.device,
            )
            grid = self.out_dir / "grids" / f"{safe_name(request.series)}-{safe_name(str(applied.knob))}.png"
            save_sample_grid(images, grid, self.setup)
            result = {
                "grid": str(grid),
                "method": request.name, "series": request.series, "label": applied.label, "knob": applied.knob,
                "knob_name": methods.get(request.name).knob, "router": request.router,
                "steps": applied.call_overrides.get("num_inference_steps", self.setup.num_inference_steps),
                "num_samples": self.num_samples, "pipeline": self.pipeline_id, "setup": self.setup.describe(),
                "weights": self.fingerprint, "metrics": metrics, "cost": cost, "info": applied.info,
                "extractor_note": None if self.extractor is None else self.extractor.note,
            }
        self._barrier()
        return result


# ========================================================================= command lines
def add_pipeline_args(p, default_steps: int = 20, default_batch: int = 16) -> None:
    """Arguments shared by the eval scripts: pipeline, sampling setup, device."""
    from .embedded import DEFAULT_GUIDANCE, EMBEDDED_PIPELINE

    g = p.add_argument_group("pipeline and sampling")
    g.add_argument("--pipeline", default=str(EMBEDDED_PIPELINE),
                   help="diffusers DiT / PixArt pipeline folder or hub id (default: the embedded shapes model)")
    g.add_argument("--steps", type=int, default=default_steps, help="reference number of sampling steps")
    g.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE)
    g.add_argument("--batch_size", type=int, default=default_batch)
    g.add_argument("--seed", type=int, default=0, help="sample i uses noise seed SEED + i")
    g.add_argument("--num_classes", type=int, default=None,
                   help="DiT: classes to cycle through (default: the pipeline's id2label size, else 1000)")
    g.add_argument("--prompts", default=None, help="PixArt: text file, one prompt per line, cycled through")
    g.add_argument("--height", type=int, default=None, help="PixArt: image height")
    g.add_argument("--width", type=int, default=None, help="PixArt: image width")
    g.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def setup_from_args(args, pipe) -> SamplingSetup:
    prompts = None
    if args.prompts:
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    return setup_for(pipe, args.steps, args.guidance_scale, seed=args.seed, batch_size=args.batch_size,
                     prompts=prompts, num_classes=args.num_classes, height=args.height, width=args.width)


def method_entries(specs: list[str], pipe, setup: SamplingSetup, sweep: bool = False, skip_unavailable: bool = True,
                   pipeline_path=None, log=print) -> list[tuple[methods.MethodRequest, object]]:
    """(request, knob) pairs for method strings; unavailable optional methods are skipped with a note.
    ``harmonica`` without a router folder uses ``<pipeline>/router`` when the pipeline ships one."""
    info = methods.PipeInfo.of(pipe, setup.num_inference_steps)
    entries = []
    for text in specs:
        request = methods.parse_method(text)
        ok, why = methods.available(request.name)
        if not ok:
            if skip_unavailable:
                log(f"skipping {request.name}: {why}")
                continue
            raise RuntimeError(why)
        if methods.get(request.name).needs_router and request.router is None:
            shipped = Path(pipeline_path) / "router" if pipeline_path is not None else None
            if request.name == "harmonica" and shipped is not None and (shipped / "config.json").is_file():
                request.router = str(shipped)
            else:
                raise ValueError(f"{request.name} needs a router folder: '{request.name}@ROUTER_DIR'")
        for knob in methods.knob_values(request, info, sweep=sweep):
            entries.append((request, knob))
    return entries


KERNEL_METHODS = ("harmonica", "ltc", "fora")  # the methods that run on harmonica's own cache


def with_kernel_setting(entries, kernel: str):
    """Entries with the fused kernel "on", "off", or "both" (each harmonica-cache entry twice)."""
    import dataclasses

    out = []
    for request, knob in entries:
        if request.name not in KERNEL_METHODS:
            out.append((request, knob))
            continue
        if kernel in ("on", "both"):
            out.append((dataclasses.replace(request, fused=True), knob))
        if kernel in ("off", "both"):
            out.append((dataclasses.replace(request, fused=False), knob))
    return out


def default_method_specs(pipeline_path=None, include_routers: bool = True) -> list[str]:
    """Every method that runs here without extra input, plus HarmoniCa with the router shipped in
    ``<pipeline>/router`` when there is one."""
    shipped = Path(pipeline_path) / "router" if pipeline_path is not None else None
    specs = []
    for name, spec in methods.METHODS.items():
        if name == "none" or not methods.available(name)[0]:
            continue
        if spec.needs_router:
            if include_routers and name == "harmonica" and shipped is not None and (shipped / "config.json").is_file():
                specs.append(f"harmonica@{shipped}")
            continue
        specs.append(name)
    return specs


# ================================================================================= pareto
def pareto_markdown(points: list[dict], speedup_key: str) -> str:
    """Table of sweep points, grouped by series, fastest last."""
    dist = next((p["metrics"].get("distance_name") for p in points if p["metrics"].get("distance_name")), "FD")
    lines = [f"| method | knob | {dist} | KID x1e3 | class acc. | PSNR (dB) | SSIM | cache usage | MACs speedup "
             f"| measured speedup |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["series"] != "none", p["series"], p.get(speedup_key) or 0)):
        m, c = p["metrics"], p["cost"]
        lines.append(f"| {p['label']} | {knob_text(p.get('knob_name'), p.get('knob'))} | {_fmt(m.get('fd'), '.3f')} | {_fmt(m.get('kid_mean'), '.3f', 1e3)} "
                     f"| {_fmt(m.get('class_accuracy'), '.1%')} | {_fmt(m.get('psnr'), '.2f')} "
                     f"| {_fmt(m.get('ssim'), '.4f')} | {_fmt(c.get('cache_usage'), '.1%')} "
                     f"| {_fmt(c.get('macs_speedup'), '.2f')}x | {_fmt(p.get('measured_speedup'), '.2f')}x |")
    return "\n".join(lines) + "\n"


def _plot_series(point: dict) -> str:
    """The line a point belongs to: its method, or for learned routers how the router was trained
    (the label without its usage / tau), so routers trained at several usages form one line."""
    if point.get("router") is None:
        return point["series"]
    return point["label"].rsplit(" ", 2)[0]


def pareto_plot(points: list[dict], path: str | Path, speedup_key: str = "measured_speedup",
                title: str | None = None) -> Path:
    """PNG: one line per method series, speedup (x) against FD / FID (y, lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dist = next((p["metrics"].get("distance_name") for p in points if p["metrics"].get("distance_name")), "FD")
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    series = {}
    for p in points:
        if p["metrics"].get("fd") is None or p.get(speedup_key) is None:
            continue
        series.setdefault(_plot_series(p), []).append(p)
    markers = "osD^v<>phX*"
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts = sorted(pts, key=lambda p: p[speedup_key])
        xs = [p[speedup_key] for p in pts]
        ys = [p["metrics"]["fd"] for p in pts]
        if name == "none":
            ax.scatter(xs, ys, marker="*", s=180, color="black", zorder=5, label="no caching")
            continue
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=name, linewidth=1.2, markersize=5)
        for p, x, y in zip(pts, xs, ys):
            if p.get("router") is not None:  # learned routers: their cache usage says more than tau
                text = f"{p['cost']['cache_usage']:.0%}"
            elif p.get("knob") is not None:
                text = f"{p['knob']:g}" if isinstance(p["knob"], float) else str(p["knob"])
            else:
                continue
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, alpha=0.8)
    ax.set_xlabel("speedup over the stock pipeline (" + ("measured latency" if speedup_key == "measured_speedup"
                                                          else "transformer MACs") + ")")
    ax.set_ylabel(f"{dist} (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or f"speed vs quality ({dist})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)

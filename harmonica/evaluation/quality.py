"""Quality of one (method, knob) point: its samples scored against the references, the judge and
the uncached samples of the same seeds (``QualityRun``)."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import methods
from ..viz import save_image_grid
from .metrics import class_accuracies, fidelity_metrics, similarity
from .prepare import harmonica_stats, measure_cost, prepare
from .sampling import SamplingSetup, generate_distributed, is_class_conditional
from .store import cached_samples, safe_name, save_samples, weights_fingerprint


def quality_metrics(images: torch.Tensor, *, reference: torch.Tensor | None, extractor, uncached: torch.Tensor | None,
                    judge=None, labels=None, isc: bool = False, device="cpu") -> dict:
    """FD / KID (/ IS) against ``reference``, class accuracy with ``judge``, PSNR / SSIM against
    ``uncached`` (the same samples without caching)."""
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

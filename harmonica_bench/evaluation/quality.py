"""Quality of one (method, knob) point: its samples scored against the references, the judge and
the uncached samples of the same seeds (``QualityRun``), on one or several seed sets, with error
bars (``stats.py``)."""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import torch

from .. import methods
from ..viz import save_image_grid
from .metrics import class_accuracies, feature_vectors, fidelity_metrics, judge_hits
from .similarity import psnr, similarity, ssim
from .prepare import measure_cost, prepare
from .sampling import SamplingSetup, generate_distributed, seed_set
from .stats import Bootstrap, ReferenceStats, SampleData, fd_between, point_errors
from .store import cached_samples, safe_name, save_samples, weights_fingerprint


def quality_metrics(images: torch.Tensor, *, reference: torch.Tensor | None, extractor, uncached: torch.Tensor | None,
                    judge=None, labels=None, colours=None, isc: bool = False, device="cpu") -> dict:
    """FD / KID (/ IS) against ``reference``, class accuracy with ``judge``, colour accuracy against
    the prompts' (shape, background) colours, PSNR / SSIM and FD (``fd_uncached``) against
    ``uncached`` (the same samples without caching): FD to the data can go below full computation's
    when a cache's errors happen to move samples towards the data; FD to the uncached samples is 0
    only for the model's own distribution."""
    out = {}
    if reference is not None and extractor is not None:
        out.update(fidelity_metrics(images, reference, extractor, isc=isc, device=device))
        out["distance_name"] = extractor.distance_name
    if judge is not None and labels is not None:
        out["class_accuracy"], out["per_class_accuracy"] = class_accuracies(judge, images, labels)
    if colours is not None:
        from ..judge import colour_report

        report = colour_report(images, colours)
        out["colour_accuracy"] = report["both"]
        out["shape_colour_accuracy"], out["background_colour_accuracy"] = report["foreground"], report["background"]
    if uncached is not None and uncached.shape == images.shape:
        out.update(similarity(images, uncached))
        if extractor is not None:
            out["fd_uncached"] = fd_between(feature_vectors(images, extractor, device).numpy(),
                                            feature_vectors(uncached, extractor, device).numpy())
    return out


def mean_metrics(per_set: list[dict]) -> dict:
    """One metrics dict from several seed sets': numbers (and dicts of numbers) averaged, the rest
    taken from the first set. One set: that set's dict unchanged."""
    if len(per_set) == 1:
        return dict(per_set[0])

    def is_num(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    out = {}
    for key, first in per_set[0].items():
        values = [m.get(key) for m in per_set]
        if all(is_num(v) for v in values):
            out[key] = float(np.mean(values))
        elif isinstance(first, dict) and all(isinstance(v, dict) for v in values):
            out[key] = {k: float(np.mean([v[k] for v in values if k in v])) for k in first}
        else:
            out[key] = first
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

    The uncached samples are generated once per seed set (and kept in ``<out_dir>/samples``, reused by
    later runs of the same setup) and serve as the PSNR / SSIM target of every point; the stock
    pipeline's cost is measured once and is the denominator of every MACs speedup.

    ``seed_sets`` (K): every point is evaluated on K disjoint seed sets (``sampling.seed_set``); its
    ``metrics`` are the means over the sets, ``metrics_per_set`` the sets' own. Set 0 is the
    single-set evaluation of before (same samples, same store files); set j > 0 is kept in
    ``samples/set<j>/``. ``bootstrap`` (B > 0): B resamples of the sample indices, drawn once and
    shared by every point, give each figure a 95% interval and each pair of points a paired one
    (``replicates[point id]``). Both go to ``errors`` (``stats.point_errors``).
    """

    def __init__(self, pipe, setup: SamplingSetup, num_samples: int, out_dir: str | Path, *, accelerator=None,
                 reference: torch.Tensor | None = None, extractor=None, judge=None, isc: bool = False,
                 pipeline_id: str = "", keep_samples: bool = True, seed_sets: int = 1, bootstrap: int = 0,
                 bootstrap_seed: int = 0):
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
        self.seed_sets = max(1, int(seed_sets))
        self.setups = [seed_set(setup, j, self.num_samples) for j in range(self.seed_sets)]
        self.bootstrap_resamples = max(0, int(bootstrap))
        self.bootstrap_seed = int(bootstrap_seed)
        self._bootstrap = None
        self.replicates: dict[str, dict[str, np.ndarray]] = {}
        self.fingerprint = weights_fingerprint(pipe)
        self._uncached: dict[int, torch.Tensor | None] = {}
        self._stock_cost = None

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def _barrier(self):
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def _meta(self, tag: str, j: int, extra: dict | None = None) -> dict:
        return {"pipeline": self.pipeline_id, "weights": self.fingerprint, "setup": self.setups[j].describe(),
                "num_samples": self.num_samples, "tag": tag, **(extra or {})}

    def sample_dir(self, j: int = 0) -> Path:
        """Where seed set ``j``'s samples are kept (set 0: ``samples/`` as before, set j: ``samples/set<j>``)."""
        return self.out_dir / "samples" if j == 0 else self.out_dir / "samples" / f"set{j}"

    def _samples(self, pipe, tag: str, overrides: dict | None, j: int = 0, meta_extra: dict | None = None):
        folder = self.sample_dir(j)
        path = folder / f"{safe_name(tag)}.pt"
        meta = self._meta(tag, j, meta_extra)
        self._barrier()
        if cached_samples(path, meta, load=False):
            return cached_samples(path, meta) if self.is_main else None
        images = generate_distributed(self.accelerator, pipe, self.setups[j], self.num_samples, folder,
                                      safe_name(tag), overrides)
        if self.is_main and self.keep_samples:
            save_samples(path, images, meta)
        return images

    def uncached(self, j: int = 0):
        """The uncached samples of seed set ``j`` (on the main process; None elsewhere). Generated once."""
        if j not in self._uncached:
            self._uncached[j] = self._samples(self.pipe, f"none-{self.setup.num_inference_steps}steps", None, j)
        return self._uncached[j]

    def stock_cost(self) -> dict:
        if self._stock_cost is None:
            clone = methods.clone_pipeline(self.pipe)
            self._stock_cost = measure_cost(clone, self.setup, range(self.setup.batch_size))
        return self._stock_cost

    # ------------------------------------------------------------------------------ bootstrap
    def bootstrap(self) -> Bootstrap | None:
        """The run's resamples (main process), with the reference statistics FD / KID need."""
        if not self.bootstrap_resamples or not self.is_main:
            return None
        if self._bootstrap is None:
            ref = None
            if self.reference is not None and self.extractor is not None:
                ref = ReferenceStats.of(feature_vectors(self.reference, self.extractor, self.device).numpy())
            self._bootstrap = Bootstrap(self.num_samples, self.seed_sets, self.bootstrap_resamples,
                                        self.bootstrap_seed, ref)
        return self._bootstrap

    @property
    def device(self):
        return self.pipe.transformer.device

    def sample_data(self, images: torch.Tensor, uncached: torch.Tensor | None, labels) -> SampleData:
        """Per-image values of one seed set's samples, for the bootstrap."""
        data = SampleData()
        if self.reference is not None and self.extractor is not None:
            data.features = feature_vectors(images, self.extractor, self.device).numpy()
        if self.judge is not None and labels is not None:
            data.correct = judge_hits(self.judge, images, labels).numpy()
        if uncached is not None and uncached.shape == images.shape:
            data.psnr = psnr(images, uncached).double().numpy()
            data.ssim = ssim(images, uncached).double().numpy()
            if data.features is not None:
                data.uncached_features = feature_vectors(uncached, self.extractor, self.device).numpy()
        return data

    # ------------------------------------------------------------------------------ one point
    def evaluate(self, request: methods.MethodRequest, knob=None) -> dict | None:
        """Score one point; returns the result dict on the main process (None elsewhere)."""
        uncached = [self.uncached(j) for j in range(self.seed_sets)]
        prepared = prepare(self.pipe, request, knob, self.setup)  # calibration (MagCache) on set 0's setup
        applied = prepared.applied
        tag = f"{request.series}-{applied.knob}"
        if request.name == "none":
            images = uncached
        else:
            images = [self._samples(prepared.pipe, tag, applied.call_overrides, j,
                                    {"method": request.name, "knob": applied.knob, "info": applied.info})
                      for j in range(self.seed_sets)]
        result = None
        if self.is_main:
            cost = measure_cost(prepared.pipe, self.setup, range(self.setup.batch_size), applied.call_overrides)
            stock = self.stock_cost()
            cost["macs_speedup"] = stock["macs"] / cost["macs"] if cost["macs"] else float("nan")
            labels = self.setup.labels(range(self.num_samples)) if self.setup.has_labels else None
            colours = self.setup.colours(range(self.num_samples))
            per_set, data = [], []
            boot = self.bootstrap()
            for j in range(self.seed_sets):
                target = None if request.name == "none" else uncached[j]
                per_set.append(quality_metrics(
                    images[j], reference=self.reference, extractor=self.extractor, uncached=target,
                    judge=self.judge, labels=labels, colours=colours, isc=self.isc, device=self.device,
                ))
                if boot is not None:
                    data.append(self.sample_data(images[j], target, labels))
            replicates = boot.replicates(data) if boot is not None else None
            if replicates is not None:
                self.replicates[tag] = replicates
            grid = self.out_dir / "grids" / f"{safe_name(request.series)}-{safe_name(str(applied.knob))}.png"
            save_sample_grid(images[0], grid, self.setup)
            result = {
                "id": tag, "grid": str(grid),
                "method": request.name, "series": request.series, "label": applied.label, "knob": applied.knob,
                "knob_name": methods.get(request.name).knob, "router": request.router,
                "steps": applied.call_overrides.get("num_inference_steps", self.setup.num_inference_steps),
                "num_samples": self.num_samples, "pipeline": self.pipeline_id, "setup": self.setup.describe(),
                "weights": self.fingerprint, "metrics": mean_metrics(per_set), "cost": cost, "info": applied.info,
                "seed_sets": self.seed_sets, "seeds": [s.seed for s in self.setups],
                "metrics_per_set": per_set,
                "errors": point_errors(per_set, replicates),
                "bootstrap": None if boot is None else {"resamples": boot.resamples, "seed": self.bootstrap_seed},
                "extractor_note": None if self.extractor is None else self.extractor.note,
            }
        self._barrier()
        return result

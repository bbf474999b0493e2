"""Measurements of generated images.

* ``fidelity_metrics``: Frechet distance (FD / FID), KID and optionally IS through torch-fidelity,
  in the feature space of Inception-v3 when its weights can be loaded, else in the feature space
  of the embedded model's judge (``ShapesJudge``), registered as the torch-fidelity feature
  extractor ``"harmonica-shapes-judge"``. The judge works offline; Inception needs its weights
  (a local ``.pth`` path, or torch-fidelity's download when the machine is online).
  ``feature_vectors`` gives the same features per image (for bootstrap intervals, ``stats.py``).
* ``class_accuracy``: the fraction of generated images the judge assigns to the requested class.
* ``psnr`` / ``ssim`` / ``similarity`` (agreement with the uncached images): ``similarity.py``.

What a call costs (MACs, cache usage, memory) is measured in ``cost.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

JUDGE_EXTRACTOR = "harmonica-shapes-judge"
INCEPTION_EXTRACTOR = "inception-v3-compat"


# ============================================================================ feature extractors
def _judge_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class JudgeFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity feature extractor built on ``ShapesJudge``.

        Features: ``"128"`` (the penultimate activations, for FD / KID) and ``"logits"`` (the class
        logits, for IS). Input: uint8 ``[N, 3, H, W]`` images in 0..255, as torch-fidelity passes
        them; images not 32x32 are resized (bilinear, antialiased). ``feature_extractor_weights_path``
        is the judge folder (``ShapesJudge.save_pretrained`` output).

        The ``"128"`` features are divided by one constant per judge: their root-mean-square on
        ``FEATURE_SCALE_IMAGES`` held-out shapes images, so that real data has features of unit scale
        per dimension. Without it the judge's activations (tens to hundreds) make KID's cubic
        polynomial kernel (gamma = 1/d, designed for Inception's O(1) features) explode and its
        estimate useless; FD is only rescaled by the same constant squared.
        """

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                from ..embedded import EMBEDDED_JUDGE

                feature_extractor_weights_path = EMBEDDED_JUDGE
            from ..judge import ShapesJudge

            self.judge = ShapesJudge.from_pretrained(str(feature_extractor_weights_path)).eval()
            self.requires_grad_(False)
            self.feature_scale = judge_feature_scale(self.judge)

        @staticmethod
        def get_provided_features_list():
            return ("128", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"fid": "128", "kid": "128", "prc": "128", "isc": "logits"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, x):
            if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
                raise ValueError(f"expected uint8 images [N, 3, H, W], got {getattr(x, 'dtype', type(x))} "
                                 f"{tuple(getattr(x, 'shape', ()))}")
            device = next(self.judge.parameters()).device
            x = judge_input(x.to(device))
            feats = self.judge.features(x)
            out = {"128": feats / self.feature_scale, "logits": self.judge.classifier(feats)}
            return tuple(out[name].float() for name in self.features_list)

    return JudgeFeatureExtractor


FEATURE_SCALE_IMAGES = 512


@functools.lru_cache(maxsize=1)
def _scale_images() -> torch.Tensor:
    from ..data import HELDOUT_SEED, render_shapes

    images, _ = render_shapes(range(FEATURE_SCALE_IMAGES), HELDOUT_SEED)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def judge_feature_scale(judge) -> float:
    """Root-mean-square of the judge's features on the first ``FEATURE_SCALE_IMAGES`` held-out shapes
    images (a fixed set: the scale is a property of the judge alone)."""
    device = next(judge.parameters()).device
    feats = torch.cat([judge.features(judge_input(b.to(device))) for b in _scale_images().split(256)])
    return max(feats.float().pow(2).mean().sqrt().item(), 1e-12)


def judge_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> the judge's input: float in [-1, 1] at 32x32."""
    x = images_uint8.float() / 127.5 - 1.0
    if x.shape[-2:] != (32, 32):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    return x


def register_judge_extractor() -> str:
    """Register the judge as torch-fidelity extractor ``"harmonica-shapes-judge"`` (idempotent)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if JUDGE_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(JUDGE_EXTRACTOR, _judge_extractor_class())
    return JUDGE_EXTRACTOR


@dataclass
class Extractor:
    """Which feature space the distances are measured in."""

    name: str  # torch-fidelity extractor name
    weights_path: str | None
    kind: str  # "inception" or "judge"
    note: str = ""

    @property
    def distance_name(self) -> str:
        return "FID" if self.kind == "inception" else "FD (judge features)"


def inception_loadable(weights_path: str | None = None) -> tuple[bool, str]:
    """Whether torch-fidelity's Inception-v3 can be built: from ``weights_path`` or, when None, from
    its download (cached in torch hub's folder after the first success)."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        FeatureExtractorInceptionV3(INCEPTION_EXTRACTOR, ["2048"], feature_extractor_weights_path=weights_path)
        return True, "loaded from " + (weights_path or "torch-fidelity's download")
    except Exception as err:  # no network, missing or corrupt file
        return False, f"{type(err).__name__}: {str(err)[:200]}"


def resolve_extractor(choice: str = "auto", inception_weights: str | None = None,
                      judge: str | Path | None = None, try_download: bool = True) -> Extractor:
    """Pick the feature space. ``choice``: ``"auto"`` (Inception when its weights load, else the judge),
    ``"inception"`` or ``"judge"``. ``judge`` is the judge folder (default: the embedded one)."""
    if choice not in ("auto", "inception", "judge"):
        raise ValueError(f"extractor must be 'auto', 'inception' or 'judge', got {choice!r}")
    why = "not tried"
    if choice in ("auto", "inception"):
        if inception_weights is not None or try_download:
            ok, why = inception_loadable(inception_weights)
            if ok:
                return Extractor(INCEPTION_EXTRACTOR, inception_weights, "inception", why)
        if choice == "inception":
            raise RuntimeError(f"Inception-v3 weights cannot be loaded ({why}); pass --inception_weights PATH "
                               "(torch-fidelity's weights-inception-2015-12-05-6726825d.pth)")
    if judge is None:
        from ..embedded import EMBEDDED_JUDGE

        judge = EMBEDDED_JUDGE
    if not (Path(judge) / "config.json").is_file():
        raise RuntimeError(
            f"no feature extractor available: Inception-v3 cannot be loaded ({why}) and there is no judge at {judge}. "
            "Pass --inception_weights PATH or --judge DIR."
        )
    register_judge_extractor()
    note = "judge features (offline)" + ("" if choice == "judge" else f"; Inception unavailable: {why}")
    return Extractor(JUDGE_EXTRACTOR, str(judge), "judge", note)


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, images_uint8: torch.Tensor):
        self.images = images_uint8

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def fidelity_metrics(generated: torch.Tensor, reference: torch.Tensor, extractor: Extractor, isc: bool = False,
                     device: str | torch.device = "cpu", batch_size: int = 64, kid_subsets: int = 100,
                     verbose: bool = False) -> dict:
    """FD, KID (and IS of ``generated`` when ``isc``) of uint8 ``[N, 3, H, W]`` image tensors.

    Returns ``{"fd", "kid_mean", "kid_std", ["isc_mean", "isc_std"], "extractor", "num_generated",
    "num_reference"}``. KID's subset size is ``min(1000, N_generated, N_reference)``.
    """
    import torch_fidelity

    for what, x in (("generated", generated), ("reference", reference)):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{what} images must be uint8 [N, 3, H, W], got {x.dtype} {tuple(x.shape)}")
    if min(len(generated), len(reference)) < 2:
        raise ValueError("FD and KID need at least 2 images on each side")
    if extractor.kind == "judge":
        register_judge_extractor()
    cuda = torch.device(device).type == "cuda"
    kwargs = dict(
        input1=_ImageDataset(generated.cpu()),
        input2=_ImageDataset(reference.cpu()),
        cuda=cuda,
        batch_size=batch_size,
        fid=True,
        kid=True,
        isc=False,
        feature_extractor=extractor.name,
        feature_extractor_weights_path=extractor.weights_path,
        kid_subset_size=min(1000, len(generated), len(reference)),
        kid_subsets=kid_subsets,
        save_cpu_ram=True,  # no DataLoader worker processes: the images are already in memory
        cache=False,
        verbose=verbose,
    )
    res = torch_fidelity.calculate_metrics(**kwargs)
    out = {
        "fd": float(res[torch_fidelity.KEY_METRIC_FID]),
        "kid_mean": float(res[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(res[torch_fidelity.KEY_METRIC_KID_STD]),
    }
    if isc:
        kwargs.update(input2=None, fid=False, kid=False, isc=True, isc_splits=min(10, len(generated)))
        res = torch_fidelity.calculate_metrics(**kwargs)
        out["isc_mean"] = float(res[torch_fidelity.KEY_METRIC_ISC_MEAN])
        out["isc_std"] = float(res[torch_fidelity.KEY_METRIC_ISC_STD])
    out.update(extractor=extractor.name, extractor_kind=extractor.kind, num_generated=len(generated),
               num_reference=len(reference))
    return out


@functools.lru_cache(maxsize=2)
def _fid_feature_extractor(name: str, weights_path: str | None, cuda: bool):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    layer = FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("fid")
    return create_feature_extractor(name, [layer], cuda=cuda, verbose=False, feature_extractor_weights_path=weights_path)


@torch.no_grad()
def feature_vectors(images: torch.Tensor, extractor: Extractor, device: str | torch.device = "cpu",
                    batch_size: int = 64) -> torch.Tensor:
    """float64 ``[N, d]`` features of uint8 ``[N, 3, H, W]`` images in the FD / KID feature space of
    ``extractor`` (the layer torch-fidelity uses for FID), one row per image: what the bootstrap
    resamples (``stats.py``)."""
    if extractor.kind == "judge":
        register_judge_extractor()
    cuda = torch.device(device).type == "cuda"
    fe = _fid_feature_extractor(extractor.name, extractor.weights_path, cuda)
    out = []
    for batch in images.cpu().split(batch_size):
        out.append(fe(batch.cuda() if cuda else batch)[0].double().cpu())
    return torch.cat(out)


@torch.no_grad()
def judge_hits(judge, images_uint8: torch.Tensor, labels, batch_size: int = 512) -> torch.Tensor:
    """bool ``[N]``: the judge classifies image ``i`` as ``labels[i]``."""
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) != len(images_uint8):
        raise ValueError(f"{len(images_uint8)} images but {len(labels)} labels")
    device = next(judge.parameters()).device
    preds = torch.cat([judge(judge_input(b.to(device))).argmax(-1).cpu() for b in images_uint8.split(batch_size)])
    return preds == labels


def class_accuracies(judge, images_uint8: torch.Tensor, labels, batch_size: int = 512) -> tuple[float, dict[int, float]]:
    """Fraction of uint8 ``[N, 3, H, W]`` images that ``judge`` classifies as ``labels``, overall and
    per label ({label: fraction}), from one pass of the judge."""
    labels = torch.as_tensor(labels).reshape(-1)
    hits = judge_hits(judge, images_uint8, labels, batch_size)
    return hits.float().mean().item(), {int(c): hits[labels == c].float().mean().item() for c in labels.unique()}


def class_accuracy(judge, images_uint8: torch.Tensor, labels, batch_size: int = 512) -> float:
    """Fraction of uint8 ``[N, 3, H, W]`` images that ``judge`` classifies as ``labels``."""
    return class_accuracies(judge, images_uint8, labels, batch_size)[0]

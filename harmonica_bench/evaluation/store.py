"""The sample store: generated images kept on disk under a key of everything they depend on
(pipeline, weights, sampling setup with its seed, number of samples, method and knob), so that an
interrupted or repeated evaluation reuses them and never reuses images of another setup."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch


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


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


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

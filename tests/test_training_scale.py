"""Router training at scale: per-block gradient checkpointing of the student gives the same gradients and caches,
with fewer activations kept; several processes give the router one process gives on the same draws."""

import os
import subprocess
import sys

import pytest
import torch

from harmonica.training.router_training import RouterTrainer
from test_router_training import REPO, STEPS, make_trainer, same_cache


def recording_gradients(trainer) -> list:
    """Every optimizer step's router gradients (copies), recorded as the trainer steps."""
    grads, step = [], trainer.optimizer.step

    def record(*args, **kwargs):
        grads.append([p.grad.clone() for p in trainer.router.parameters() if p.grad is not None])
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    return grads


def recording_regions(monkeypatch) -> list:
    """Every checkpointed region the driven cache makes (harmonica.cache.drive.Region), as it makes them."""
    from harmonica.cache import drive

    regions = []

    class Region(drive.Region):
        def __init__(self):
            super().__init__()
            regions.append(self)

    monkeypatch.setattr(drive, "Region", Region)
    return regions


def kept_for_backward(trainer, regions: list) -> list:
    """Bytes kept for the backward of each student forward: what autograd saves outside checkpointed blocks, and
    the cached outputs the checkpointed blocks (``regions``) hold for their recomputation."""
    sizes, forward = [], trainer.denoiser.forward

    def counted(x, t, cond):
        if trainer.cache.mode != "mix":
            return forward(x, t, cond)
        total, first = [0], len(regions)

        def pack(tensor):
            total[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = forward(x, t, cond)
        held = sum(o.numel() * o.element_size() for region in regions[first:] for read in region.reads.values()
                   if read is not None for o in read[0])
        sizes.append(total[0] + held)
        return out

    trainer.denoiser.forward = counted
    return sizes


def test_gradient_checkpointing_gives_the_same_gradients_and_caches(dit_path, tmp_path, monkeypatch):
    """history 3 (forecasts with trained coefficients): every step's router gradients, the trained router and the
    caches after the trajectory are those of the plain backward; the recomputation neither keeps a branch output
    twice nor rebuilds from what the forward wrote. Less is kept for the backward."""
    regions = recording_regions(monkeypatch)
    settings = dict(history=3, forecast_init="taylor", target_usage=0.4, trajectories=1)
    plain = make_trainer(dit_path, tmp_path / "plain", **settings)
    checkpointed = make_trainer(dit_path, tmp_path / "checkpointed", gradient_checkpointing=True, **settings)
    assert checkpointed.pipe.transformer.gradient_checkpointing and not plain.pipe.transformer.gradient_checkpointing
    grads = [recording_gradients(t) for t in (plain, checkpointed)]
    kept = [kept_for_backward(t, regions) for t in (plain, checkpointed)]
    for trainer in (plain, checkpointed):
        trainer.sdt_trajectory(0)
    assert len(grads[0]) == len(grads[1]) == STEPS - 1
    for step, (a, b) in enumerate(zip(*grads), start=1):
        assert len(a) == len(b) == 2  # logits and coefficients
        for x, y in zip(a, b):
            assert y.abs().sum() > 0 and torch.allclose(x, y, rtol=1e-5, atol=1e-8), step
    for p, q in zip(plain.router.parameters(), checkpointed.router.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
    assert same_cache(plain.cache.snapshot(), checkpointed.cache.snapshot())
    assert len(kept[0]) == len(kept[1]) == STEPS - 1 and len(regions) == (STEPS - 1) * 3  # 3 blocks per forward
    assert all(c < p / 2 for p, c in zip(*kept)), kept  # the blocks' activations are recomputed, not kept


def test_a_transformer_without_gradient_checkpointing_is_refused(dit_path, tmp_path, monkeypatch):
    from diffusers import DiTTransformer2DModel

    monkeypatch.setattr(DiTTransformer2DModel, "_supports_gradient_checkpointing", False)
    with pytest.raises(ValueError, match="DiTTransformer2DModel .*has no diffusers gradient checkpointing"):
        make_trainer(dit_path, tmp_path, gradient_checkpointing=True)


class AsProcesses(RouterTrainer):
    """One process drawing the trajectories and lambda samples that ``PROCESSES`` processes draw between them."""

    PROCESSES = 2

    @staticmethod
    def joined(draws):
        latents, conditions = zip(*draws)
        return torch.cat(latents), {k: torch.cat([c[k] for c in conditions]) for k in conditions[0]}

    def _trajectory_inputs(self, trajectory, process=None):
        return self.joined([super(AsProcesses, self)._trajectory_inputs(trajectory, p) for p in range(self.PROCESSES)])

    def _lambda_inputs(self, process=None, processes=None):
        return self.joined([super(AsProcesses, self)._lambda_inputs(p, self.PROCESSES) for p in range(self.PROCESSES)])


def test_two_processes_train_the_router_of_one_process(dit_path, tmp_path):
    """history 3: 2 processes (gloo, CPU), each with batch 1, end with the router one process trains on the union of
    their draws (batch 2): logits and forecast coefficients alike, as every gradient is all-reduced. (Reducing
    only the logits' gradients leaves the coefficients apart: the run then fails its end-of-training check.)"""
    from diffusers import DiTPipeline

    from harmonica import HarmoniCaRouter
    from harmonica.training.router_training import RouterTrainingConfig

    settings = dict(num_steps=STEPS, trajectories=2, batch_size=1, lambda_every=3, lambda_samples=2, history=3,
                    forecast_init="taylor", target_usage=0.4, coefficient_lr=1e-2, seed=0)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "harmonica.train",
           "--cpu", "--pipeline", str(dit_path), "--output_dir", str(tmp_path / "ddp"),
           *[a for k, v in settings.items() for a in (f"--{k}", str(v))]]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    two = HarmoniCaRouter.from_pretrained(tmp_path / "ddp" / "router")

    from accelerate import Accelerator

    pipe = DiTPipeline.from_pretrained(dit_path)
    pipe.set_progress_bar_config(disable=True)
    one = AsProcesses(pipe, RouterTrainingConfig(**settings, output_dir=str(tmp_path / "one")), Accelerator(cpu=True))
    summary = one.train()
    assert summary["iterations"] == 2 * (STEPS - 1) and one.state.refreshes == 1  # lambda was measured once
    assert (one.router.coefficients - one.initial["coefficients"]).abs().max() > 1e-3  # the coefficients moved
    assert torch.allclose(two.logits, one.router.logits, rtol=0, atol=1e-5)
    assert torch.allclose(two.coefficients, one.router.coefficients, rtol=0, atol=1e-5)
    assert two.threshold == pytest.approx(one.router.threshold, abs=1e-5)

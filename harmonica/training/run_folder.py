"""A router training run's folder and record: its counters (``TrainState``, checkpointed with the router), the
settings it belongs to (``run_config.json``, checked before a resume), its log (``training_log.jsonl``, cut back
to the checkpoint on a resume), its random draws (pure functions of their keys) and its summary's figures."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..router import weights_distance

# settings that may change between a run and its resumption (they change neither the draws nor the gradients)
RESUMABLE_CHANGES = ("checkpoint_every", "output_dir", "gradient_checkpointing")


class TrainState:
    """Counters and IEPO weights, checkpointed with the router."""

    def __init__(self, num_steps: int, first_refresh: int = 0):
        self.trajectory = 0
        self.iteration = 0
        self.lam = torch.ones(num_steps)
        self.lam[0] = 0.0
        self.next_refresh = first_refresh  # iteration at or after which lambda is refreshed
        self.refreshes = 0

    def state_dict(self) -> dict:
        return {"trajectory": self.trajectory, "iteration": self.iteration, "lam": self.lam.clone(),
                "next_refresh": self.next_refresh, "refreshes": self.refreshes}

    def load_state_dict(self, state: dict) -> None:
        self.trajectory = int(state["trajectory"])
        self.iteration = int(state["iteration"])
        self.lam = state["lam"].clone()
        self.next_refresh = int(state["next_refresh"])
        self.refreshes = int(state["refreshes"])


def check_same_run(output: Path, config, router, transformer, weights_summary: dict, accelerator,
                   experts: dict | None = None) -> None:
    """A run folder belongs to one set of settings: resuming its checkpoints with others would mix
    two trainings (or, with fewer trajectories, return the old router as if newly trained). ``experts``: a
    second expert's ``{component name: (module, weights summary)}`` (Wan 2.2 A14B), compared as the first."""
    experts = experts or {}
    path = output / "run_config.json"
    current = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}
    current["layout"] = [router.pipeline_class, router.transformer_class, router.layout.groups]
    # a router is tied to the weights it was trained on: a retrained model at the same path is another run
    # (compared with weights_distance, so that the same weights in another dtype are the same run)
    current["transformer_weights"] = weights_summary
    if experts:
        current["expert_weights"] = {name: summary for name, (_, summary) in experts.items()}
    current = json.loads(json.dumps(current))
    if path.exists():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in set(saved) | set(current)
                         if k not in ("transformer_weights", "expert_weights") and saved.get(k) != current.get(k))
        differ = [f"{k}={saved.get(k)!r} there, {current.get(k)!r} now" for k in changed]
        weights = [("transformer_weights", saved.get("transformer_weights"), transformer, weights_summary)]
        weights += [(f"expert_weights[{name}]", (saved.get("expert_weights") or {}).get(name), module, summary)
                    for name, (module, summary) in experts.items()]
        for key, recorded, module, summary in weights:
            distance, what = weights_distance(recorded, module, summary)
            if not distance <= 1:
                changed.append(key)
                differ.append(f"{key}: {what}")
        if changed:
            raise ValueError(
                f"{output} holds a router training run with other settings ({', '.join(changed)} "
                f"differ: {', '.join(differ)}). Give a new --output_dir, or delete that folder to start over."
            )
    elif accelerator.is_main_process:
        if (output / "checkpoints").exists():
            raise ValueError(f"{output}/checkpoints has no run_config.json; give a new --output_dir")
        path.write_text(json.dumps(current, indent=2) + "\n")
    accelerator.wait_for_everyone()


def truncate_log(log_path: Path, iteration: int) -> None:
    """After a resume, drop log rows written after the checkpoint."""
    if not log_path.exists():
        return
    rows = [line for line in log_path.read_text().splitlines()
            if line.strip() and json.loads(line)["iteration"] <= iteration]
    log_path.write_text("".join(r + "\n" for r in rows))


def draw_generator(*keys: int) -> torch.Generator:
    """The generator of one random draw, a pure function of its keys (seed, trajectory, process, ...): a resumed
    run draws what an uninterrupted one would."""
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k)) % (2**62)
    return torch.Generator().manual_seed(seed)


def peak_memory_mb(device) -> float:
    """Peak memory of the run: CUDA's allocator peak, else the process's peak RSS."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@torch.no_grad()
def step_router_movement(router, initial: dict, threshold: float) -> dict:
    """How far a step router moved from its initialisation: hard decisions changed (compute <-> rebuild, steps
    1..T-1, at the initial and final thresholds), mean |logit change|, and the coefficient change on the
    branches the final schedule rebuilds."""
    final = router.compute_mask(threshold)
    changed = (final[1:] != initial["schedule"][1:]).sum().item()
    rebuilt = ~final
    delta = (router.coefficients - initial["coefficients"]).abs()
    return {
        "decisions_changed": int(changed),
        "decisions": int(final[1:].numel()),
        "mean_abs_logit_change": round((router.logits - initial["logits"])[1:].abs().mean().item(), 4),
        "mean_abs_coefficient_change": round(delta[rebuilt].mean().item(), 4) if rebuilt.any() else 0.0,
        "max_abs_coefficient_change": round(delta[rebuilt].max().item(), 4) if rebuilt.any() else 0.0,
    }

"""The learned router: per (sampling step, block, branch), a compute/skip logit and forecast coefficients.

A branch is computed at step ``s`` when ``sigmoid(logit[s, slot]) > threshold``; otherwise its output is
rebuilt from the cache as ``sum_k coefficients[s, slot, k] * h_k`` over its last ``history`` computed
outputs ``h_0`` (most recent), ``h_1``, ... (only those computed so far count). ``history = 1`` with
coefficient 1 is plain reuse (every router saved before forecasts loads as such); a static schedule
with Taylor coefficients (``init_forecast("taylor")``: polynomial extrapolation through the steps
where the branch was computed) is a TaylorSeer-style forecast. Scores and coefficients do not depend
on the input, so a whole sampling schedule is known before sampling starts and routing costs nothing
at inference. The first step always computes everything: it fills the cache, so its logits are not
used.

Routers are saved as ``model.safetensors`` + ``config.json`` through huggingface_hub's
``PyTorchModelHubMixin`` (``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``). The config
records what the router was trained for, and ``check_compatible`` compares it with a pipeline.
"""

from .layout import GRANULARITIES, RouterError, RouterLayout, units_for
from .files import CONFIG_KEYS, ROUTER_KINDS, check_config
from .model import TIMESTEP_TOLERANCE, HarmoniCaRouter
from .noise_level import GRID_SIZE, NoiseLevelRouter, Resolution, newton_coefficients, noise_levels
from .schedule import (DEFAULT_THRESHOLD, INIT_FORMS, INIT_KINDS, LOGIT_BOUND, MAX_HISTORY, STATIC_INIT_LOGIT,
                       check_threshold, computed_before, parse_init, static_steps, taylor_coefficients)
from .weights import WEIGHTS_SUMMARY_FORMAT, lora_adapters, weights_distance, weights_summary

ROUTER_KINDS.update({HarmoniCaRouter.kind: HarmoniCaRouter, NoiseLevelRouter.kind: NoiseLevelRouter})
ROUTERS = (HarmoniCaRouter, NoiseLevelRouter)  # what enable takes

__all__ = [
    "CONFIG_KEYS", "DEFAULT_THRESHOLD", "GRANULARITIES", "units_for", "GRID_SIZE", "INIT_FORMS", "INIT_KINDS", "LOGIT_BOUND", "MAX_HISTORY",
    "NoiseLevelRouter", "ROUTERS", "Resolution", "STATIC_INIT_LOGIT", "TIMESTEP_TOLERANCE", "WEIGHTS_SUMMARY_FORMAT",
    "HarmoniCaRouter", "RouterError", "RouterLayout", "check_config", "check_threshold", "newton_coefficients",
    "lora_adapters", "noise_levels",
    "computed_before", "parse_init", "static_steps", "taylor_coefficients", "weights_distance",
    "weights_summary",
]

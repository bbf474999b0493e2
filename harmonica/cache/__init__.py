"""The feature cache: diffusers ModelHooks that compute or reuse each branch as the router decides.

Three kinds of hook, on diffusers' own hook machinery (``diffusers.hooks.HookRegistry``), all
attached to the transformer's modules and sharing one controller (``HarmoniCa``) that lives with
them, not with any pipeline object:

* ``StepHook`` on the transformer finds the denoising step of each forward (``harmonica.steps``:
  from the pipeline's cache context, or from the timestep looked up in the scheduler of the pipeline
  whose call is running) and picks the call's cache state for this thread and cache context ("cond"
  / "uncond": pipelines with true CFG run two forwards per step, each with its own cache). The first
  forward of a call (or of a transformer within a call) fills the cache; the last frees it.
* ``BranchHook`` on every branch module either runs the module and stores its output, or returns
  the stored output without running the module. The block's own code then applies the current step's
  adaLN gate and the residual add, so what is cached is the un-gated branch output.
* ``BlockHook`` on every block the family can fuse: a run of consecutive blocks whose branches are
  all reused at a step is replaced by one ``stream + sum(gate * cached)`` per residual stream
  (``harmonica.kernels.gather_apply``: one fused Triton kernel on CUDA, the torch reference
  elsewhere), the gates computed as the blocks compute them (the family's ``Fused`` spec).

Cached outputs live in one ``CachePool`` per token stream and call, holding only the branches the
schedule ever reuses (``memory``: their size for any input shape, known before a call allocates them, from
a meta-device twin of the transformer; ``max_cache_memory`` bounds it). Forwards are serialised by a lock, and each thread's call has its own state.

``enable(pipe, router)`` attaches the hooks and ``disable(pipe)`` removes them, leaving every module as
it was. ``stats(pipe)`` tells what the last call of that pipeline computed, reused and spent in
multiply-accumulates.

Files: ``config`` (``HarmoniCaConfig``, ``apply_harmonica``), ``api`` (enable, disable, paused, stats,
controller), ``layout`` (``describe``), ``controller`` (``HarmoniCa``), ``hooks``, ``plan`` (the schedule
resolved at enable), ``state`` (per-call caches), ``stats`` (``CacheStats``), ``coexist`` (diffusers' own caches
refused beside harmonica), ``memory`` (cache sizes, the budget, ``cache_dtype``).
"""

from .api import controller, disable, enable, paused, stats
from .config import HarmoniCaConfig, apply_harmonica
from .controller import HarmoniCa
from .hooks import BLOCK_HOOK, BRANCH_HOOK, STEP_HOOK, BlockHook, BranchHook, StepHook
from .layout import describe
from .memory import CacheMemory, CacheMemoryError
from .plan import SKIP, Plan
from .state import CacheState, CallRecord, Forward
from .stats import CacheStats

__all__ = [
    "BLOCK_HOOK", "BRANCH_HOOK", "SKIP", "STEP_HOOK", "BlockHook", "BranchHook", "CacheMemory", "CacheMemoryError", "CacheState", "CacheStats", "CallRecord",
    "Forward", "HarmoniCa", "HarmoniCaConfig", "Plan", "StepHook", "apply_harmonica", "controller", "describe", "disable", "enable", "paused", "stats",
]

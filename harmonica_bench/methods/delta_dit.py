"""A Delta-DiT-style schedule (Chen et al., 2024, "Delta-DiT"), implemented here with diffusers hooks.

Delta-DiT caches the *delta* a contiguous group of blocks adds to the hidden states (group output
minus group input) and, on cached steps, replaces the whole group by ``input + cached delta``.
Its observation is that the rear blocks shape the outline early in sampling and the front blocks the
details late, so it caches the rear blocks in the first stage of sampling and the front blocks in
the second. Choices here (documented, not tuned): the stage boundary is half of the steps, the
delta is refreshed every ``INTERVAL`` = 2 steps (and at the first step of each stage), and the knob
is the number of blocks in the cached group.
"""

from __future__ import annotations

from diffusers.hooks import HookRegistry, ModelHook

from .base import Applied, Context, MethodSpec, PipeInfo
from .steps import StepTracker, forwards_per_step, refresh_registries

DELTA_HOOK = "harmonica_eval_delta_dit"
INTERVAL = 2


class DeltaState:
    def __init__(self, tracker: StepTracker, num_blocks: int, group: int, boundary: int, interval: int):
        self.tracker = tracker
        self.num_blocks = num_blocks
        self.group = group
        self.boundary = boundary
        self.interval = interval
        self.reset()

    def reset(self):
        self.delta = {"rear": None, "front": None}
        self.group_input = None
        self.skip = False

    def stage(self) -> tuple[str, int, int]:
        """The cached group at the current step: ('rear', start, end) early, ('front', 0, group) late."""
        if self.tracker.step is not None and self.tracker.step < self.boundary:
            return "rear", self.num_blocks - self.group, self.num_blocks
        return "front", 0, self.group


class DeltaBlockHook(ModelHook):
    _is_stateful = True

    def __init__(self, state: DeltaState, index: int):
        super().__init__()
        self.state = state
        self.index = index

    def reset_state(self, module):
        self.state.reset()
        return module

    def new_forward(self, module, *args, **kwargs):
        st = self.state
        stage, start, end = st.stage()
        if not start <= self.index < end:
            return self.fn_ref.original_forward(*args, **kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.index == start:
            step = st.tracker.step
            st.skip = st.delta[stage] is not None and step % st.interval != 0
            st.group_input = hidden
            if st.skip:
                return hidden + st.delta[stage]
        elif st.skip:
            return hidden  # inside a skipped group: its delta was added at the group's first block
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.index == end - 1:
            st.delta[stage] = out - st.group_input
        return out


def _refuse_unsupported(pipe, ctx: Context) -> None:
    """This Delta-DiT keeps one delta of one hidden-state stream: refuse what it cannot follow, by name."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    from harmonica.families import blocks_of

    blocks = blocks_of(pipe)
    lists = dict.fromkeys(b.list_name for b in blocks)
    kind = type(blocks[0].module)
    try:
        two_streams = TransformerBlockRegistry.get(kind).return_encoder_hidden_states_index is not None
    except ValueError:
        two_streams = False
    if len(lists) > 1 or two_streams:
        raise ValueError(f"delta-dit is implemented for one list of single-stream blocks (DiT, PixArt); "
                         f"{type(pipe).__name__}'s blocks ({', '.join(lists)}: {kind.__name__}) carry text and "
                         "image streams: use another method")
    if forwards_per_step(pipe, ctx) == 2:
        raise ValueError(f"delta-dit keeps one delta per step, but {type(pipe).__name__} runs the conditional and "
                         "unconditional passes as separate forwards here (true CFG): use another method")


def apply(pipe, knob, ctx: Context) -> Applied:
    _refuse_unsupported(pipe, ctx)
    blocks = pipe.transformer.transformer_blocks
    group = int(knob)
    if not 1 <= group <= len(blocks):
        raise ValueError(f"delta-dit caches 1..{len(blocks)} blocks, got {knob}")
    tracker = StepTracker.attach(pipe)
    boundary = ctx.num_inference_steps // 2
    state = DeltaState(tracker, len(blocks), group, boundary, INTERVAL)
    for i, block in enumerate(blocks):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(DeltaBlockHook(state, i), DELTA_HOOK)
    refresh_registries(pipe.transformer)
    return Applied("delta-dit", group, f"Delta-DiT {group} blocks",
                   info={"cached_blocks": group, "interval": INTERVAL, "stage_boundary_step": boundary})


def sweep(info: PipeInfo) -> list[int]:
    n = info.num_blocks
    return sorted({max(1, round(n * f)) for f in (1 / 6, 1 / 3, 1 / 2, 2 / 3)})


SPEC = MethodSpec(
    name="delta-dit",
    title="Delta-DiT-style",
    knob="cached_blocks",
    kind=int,
    apply=apply,
    default=lambda info: max(1, info.num_blocks // 2),
    sweep=sweep,
    faster="higher",
    description="delta of the rear blocks cached in the first half of sampling, of the front blocks in the "
    "second, refreshed every 2 steps",
)

"""Cache memory on real models, per CFG pass, before any of it is allocated: a markdown table.

Each transformer is built from its published config on the meta device (``harmonica_bench.real_models``: no
weights, no memory, no download) and run once at the resolution people use, by the code path a real call
takes (``harmonica.cache.memory``): the branch modules record their output shapes, and the plan's pools give
the bytes. For each model the table gives harmonica's cache with every branch keeping its last K computed
outputs (K = 1 is plain reuse, K = 3 a third-order forecast; a router keeps only the units it ever
rebuilds, usually nearly all of them), at each granularity: branch (every branch of every block), block (each
block's residual), span:N (runs of N blocks), body:F,B (one residual between F front and B back blocks).
Beside it, on the same residual streams, what the one-residual caches hold:

* FBCache (diffusers ``FirstBlockCacheConfig``): the first block's output (image and text streams) and
  residual (image), and the remaining blocks' residual (image and text): 3 image + 2 text tensors;
* DBCache (cache-dit, without its TaylorSeer): the first Fn blocks' residual (image) and the middle span's
  residual (image and text): 2 image + 1 text tensors;

and, for scale, the forward's own activation peak (inference, tensors alive at once, its inputs included:
the harness's ``LiveTensorBytes``; attention as a flash kernel allocates it: no score matrix) and the weights.
A call with CFG holds twice the cache column (two passes: one batched context or two contexts alike).

    python eval/memory.py                                   # every model, bf16, K = 1 2 3; offline, seconds
    python eval/memory.py --history 1 --summary             # the README's table
    python eval/memory.py --model flux-dev-1024 wan21-14b-720p --history 1 --granularity block span:4
"""

from __future__ import annotations

import argparse
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harmonica.cache.memory import format_bytes, output_shapes, plan_memory  # noqa: E402
from harmonica.cache.plan import Plan  # noqa: E402
from harmonica.cli import HelpFormatter  # noqa: E402
from harmonica.families import FAMILIES, transformer_blocks  # noqa: E402
from harmonica.router import units_for  # noqa: E402
from harmonica_bench.evaluation.cost import LiveTensorBytes  # noqa: E402
from harmonica_bench.real_models import REAL_MODELS  # noqa: E402

ONE_RESIDUAL = {"FBCache": (3, 2), "DBCache": (2, 1)}  # (image, text) tensors kept, see the docstring


@contextmanager
def flash_attention():
    """``scaled_dot_product_attention`` as a flash kernel allocates (its output, no score matrix): on the meta
    device torch would decompose it into the math path, whose [heads, tokens, tokens] scores no GPU run holds."""
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, *args, **kwargs):
        return query.new_empty((*query.shape[:-1], value.shape[-1]))

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def family_of(pipeline: str):
    return next(f for f in FAMILIES if pipeline in f.pipelines)


def measure(name: str, dtype: torch.dtype, histories, granularities) -> dict:
    model = REAL_MODELS[name]
    family = family_of(model.pipeline)
    transformer = model.build(dtype)
    blocks = transformer_blocks(family, transformer)
    live = LiveTensorBytes()
    with flash_attention():
        with live:
            shapes = output_shapes(family, transformer, (), model.forward_inputs(transformer))
        per_block = output_shapes(family, transformer, (), model.forward_inputs(transformer), units=units_for("block", len(blocks)))
    cache = {}
    for granularity in granularities:
        units = units_for(granularity, len(blocks))
        unit_shapes = shapes if not units else {(slot, e): per_block[b, e] for slot, (_, b) in enumerate(units)
                                                for e in range(len(blocks[b].kind.streams.names)) if (b, e) in per_block}
        cache[granularity] = {k: plan_memory(Plan.keeping(blocks, k, units=units), unit_shapes).nbytes
                              for k in histories}
        cache[granularity]["units"] = Plan.count_slots(blocks, units)
    one = {s: shape for (slot, e), (shape, _) in per_block.items() if slot == 0
           for s in [blocks[0].kind.streams.names[e]]}
    size = {s: math.prod(shape) * dtype.itemsize for s, shape in one.items()}
    image, text = size["image"], size.get("text", 0)
    return {
        "model": model.title, "tokens_x_width": "x".join(map(str, one["image"][1:])), "tensor": image,
        "blocks": len(blocks), "cache": cache,
        **{method: i * image + t * text for method, (i, t) in ONE_RESIDUAL.items()},
        "activations": live.peak, "weights": sum(p.numel() * p.element_size() for p in transformer.parameters()),
    }


def markdown(rows: list[dict], histories, granularities) -> str:
    head = ["model", "image tokens x width", "one tensor", *ONE_RESIDUAL, "forward activations (peak, flash attention)",
            "weights"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["model"], r["tokens_x_width"], format_bytes(r["tensor"]),
                                        *(format_bytes(r[m]) for m in ONE_RESIDUAL), format_bytes(r["activations"]),
                                        format_bytes(r["weights"])]) + " |")
    head = ["model", "granularity", "units", *(f"harmonica K={k}" for k in histories)]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        for g in granularities:
            c = r["cache"][g]
            lines.append("| " + " | ".join([r["model"], g, str(c["units"]), *(format_bytes(c[k]) for k in histories)])
                         + " |")
    return "\n".join(lines)


def summary(rows: list[dict], k: int, granularities) -> str:
    """One line per model: every granularity at K = ``k`` beside FBCache and the forward's activations."""
    head = ["model", *(f"{g}, K={k}" for g in granularities), "FBCache", "forward activations"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["model"], *(format_bytes(r["cache"][g][k]) for g in granularities),
                                        format_bytes(r["FBCache"]), format_bytes(r["activations"])]) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", nargs="+", default=list(REAL_MODELS), choices=list(REAL_MODELS))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--history", nargs="+", type=int, default=[1, 2, 3], help="outputs kept per unit (K)")
    p.add_argument("--granularity", nargs="+", default=["branch", "block", "span:8", "body:1,1"],
                   help="cache units (harmonica.router.units_for)")
    p.add_argument("--summary", action="store_true", help="one line per model, at the first --history (the README's)")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    rows = [measure(name, dtype, args.history, args.granularity) for name in args.model]
    print(f"Cache per CFG pass, batch 1, {args.dtype} (a call with CFG holds twice the cache):\n")
    print(summary(rows, args.history[0], args.granularity) if args.summary else
          markdown(rows, args.history, args.granularity))
    return rows


if __name__ == "__main__":
    main()

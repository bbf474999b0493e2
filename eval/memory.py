"""Cache memory on real models, per CFG pass, before any of it is allocated: a markdown table.

Each transformer is built from its published config on the meta device (``harmonica_bench.real_models``: no
weights, no memory, no download) and run once at the resolution people use, by the code path a real call
takes (``harmonica.cache.memory``): the branch modules record their output shapes, and the plan's pools give
the bytes. For each model the table gives harmonica's cache with every branch keeping its last K computed
outputs (K = 1 is plain reuse, K = 3 a third-order forecast; a router keeps only the branches it ever
rebuilds, usually nearly all of them), then, on the same residual streams, what the one-residual caches hold:

* FBCache (diffusers ``FirstBlockCacheConfig``): the first block's output (image and text streams) and
  residual (image), and the remaining blocks' residual (image and text): 3 image + 2 text tensors;
* DBCache (cache-dit, without its TaylorSeer): the first Fn blocks' residual (image) and the middle span's
  residual (image and text): 2 image + 1 text tensors;

and, for scale, the forward's own activation peak (inference, tensors alive at once, attention as a flash
kernel allocates it: no score matrix) and the weights.
A call with CFG holds twice the cache column (two passes: one batched context or two contexts alike).

    python eval/memory.py                                   # every model, bf16, K = 1 2 3; offline, seconds
    python eval/memory.py --model flux-dev-1024 wan21-14b-720p --history 1 --dtype float16
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harmonica.cache.memory import LiveBytes, format_bytes, output_shapes, plan_memory  # noqa: E402
from harmonica.cache.plan import Plan  # noqa: E402
from harmonica.cli import HelpFormatter  # noqa: E402
from harmonica.families import FAMILIES, transformer_blocks  # noqa: E402
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


def measure(name: str, dtype: torch.dtype, histories) -> dict:
    model = REAL_MODELS[name]
    family = family_of(model.pipeline)
    transformer = model.build(dtype)
    live = LiveBytes()
    with flash_attention():
        shapes = output_shapes(family, transformer, (), model.forward_inputs(dtype), live)
    blocks = transformer_blocks(family, transformer)
    slots = sum(len(b.branches) for b in blocks)
    cache = {k: plan_memory(Plan(blocks, [[True] * slots], [[[1.0]] * slots], False, keep=k), shapes)
             for k in histories}
    memory = cache[histories[0]]
    stream = {s: memory.stream_bytes(s) // memory.entries[s] for s in memory.entries}  # one tensor of each stream
    image, text = stream["image"], stream.get("text", 0)
    return {
        "model": model.title, "tokens_x_width": "x".join(map(str, memory.shapes["image"][1:])),
        "tensor": image, "branches": slots, "blocks": len(blocks),
        **{f"K={k}": m.nbytes for k, m in cache.items()},
        **{method: i * image + t * text for method, (i, t) in ONE_RESIDUAL.items()},
        "activations": live.peak, "weights": sum(p.numel() * p.element_size() for p in transformer.parameters()),
    }


def markdown(rows: list[dict], histories) -> str:
    head = (["model", "image tokens x width", "one tensor", "branches"] + [f"harmonica K={k}" for k in histories]
            + list(ONE_RESIDUAL) + ["forward activations (peak, flash attention)", "weights"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([r["model"], r["tokens_x_width"], format_bytes(r["tensor"]), f"{r['branches']} in {r['blocks']} blocks"]
                 + [format_bytes(r[f"K={k}"]) for k in histories]
                 + [format_bytes(r[m]) for m in ONE_RESIDUAL] + [format_bytes(r["activations"]), format_bytes(r["weights"])])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", nargs="+", default=list(REAL_MODELS), choices=list(REAL_MODELS))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--history", nargs="+", type=int, default=[1, 2, 3], help="outputs kept per branch (K)")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    rows = [measure(name, dtype, args.history) for name in args.model]
    print(f"Cache per CFG pass, batch 1, {args.dtype} (a call with CFG holds twice the cache):\n")
    print(markdown(rows, args.history))
    return rows


if __name__ == "__main__":
    main()

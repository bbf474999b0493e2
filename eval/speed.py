"""Latency of the stock pipeline and of caching methods, measured in one process.

All variants share one copy of the weights (each has its own transformer module objects and
scheduler). They are timed interleaved (stock, A, B, ..., stock, A, B, ...) after warm-up rounds,
and the median of the repeats is reported, so a slow phase of the machine hits every variant alike.
For each variant one extra, untimed call measures cache usage (fraction of block-branch
computations not run), the transformer MACs actually spent (their ratio to the stock pipeline's is
the theoretical speedup) and the peak memory of tensors allocated during the call.

    python eval/speed.py --method fora=2 --method fbcache=0.1 --batch_size 8
    python eval/speed.py --pipeline facebook/DiT-XL-2-256 --device cuda --dtype float16 \\
        --method harmonica@path/to/router --method fewer-steps=14

Without --method: every method available here at its default knob (HarmoniCa too when the pipeline
folder ships a router/). Writes <out>/speed.json and <out>/speed.md.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser():
    from harmonica.cli import HelpFormatter
    from harmonica_bench.evaluation import add_pipeline_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_pipeline_args(p, default_batch=8)
    p.add_argument("--method", action="append", default=None,
                   help="method string NAME[=KNOB[,KNOB]][@ROUTER_DIR] (repeatable); default: all available")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's; on a shared CPU, 1 keeps timings stable)")
    p.add_argument("--kernel", choices=["on", "off", "both"], default="on",
                   help="methods on harmonica's cache (harmonica, ltc, fora): fused gather-apply of fully reused "
                        "blocks on, off, or both side by side (measures the kernel's effect on latency)")
    p.add_argument("--out", default="outputs/speed", help="output folder")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch

    from harmonica_bench import evaluation as ev

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ev.resolve_device(args.device)
    pipe = ev.load_pipeline(args.pipeline, device, args.dtype, args.scheduler)
    setup = ev.setup_from_args(args, pipe)
    specs = args.method or ev.default_method_specs(args.pipeline)
    entries = ev.method_entries(specs, pipe, setup, pipeline_path=args.pipeline)
    entries = ev.with_kernel_setting(entries, args.kernel)
    result = ev.speed_benchmark(pipe, entries, setup, repeats=args.repeats, warmup=args.warmup)
    result["pipeline"] = str(args.pipeline)
    out = Path(args.out)
    ev.write_json(out / "speed.json", result)
    table = ev.speed_markdown(result)
    (out / "speed.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()

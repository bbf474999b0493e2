"""Time the fused gather-apply of reused branches against the blocks' unfused math.

For every (batch, tokens, run length K) the script times
  * unfused: ``hidden = gate_k * cached_k + hidden`` for each branch, as the blocks apply a reused
    branch (two kernels and a temporary per branch, ~5 tensor passes each);
  * fused: ``harmonica.kernels.gather_apply`` on a ``CachePool`` (one pass: K reads + hidden read + write),
and reports achieved memory bandwidth (bytes each version must move / time) and its fraction of the
device's peak (memory clock x bus width, or --peak-gbps). DiT-XL/2 has hidden size 1152.

On a machine without CUDA it runs the torch reference on small --quick shapes and says GPU figures are
pending. Examples:
  python eval/kernel_bench.py                     # quick on CPU, full grid on CUDA
  python eval/kernel_bench.py --batch 16 --tokens 4096 --runs 2 8 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harmonica.cli import HelpFormatter
from harmonica.kernels import CachePool, apply_branch, backend, gather_apply

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FULL = dict(batch=[2, 8, 16], tokens=[256, 1024, 4096], runs=[1, 2, 4, 8])
QUICK = dict(batch=[2], tokens=[256], runs=[1, 4])
L2_FLUSH_BYTES = 256 * 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes (the default without CUDA)")
    parser.add_argument("--full", action="store_true", help="the full DiT-XL/2 grid even on the CPU (slow)")
    parser.add_argument("--batch", type=int, nargs="+", help=f"batch sizes (full: {FULL['batch']})")
    parser.add_argument("--tokens", type=int, nargs="+", help=f"tokens per image (full: {FULL['tokens']})")
    parser.add_argument("--runs", type=int, nargs="+", help=f"reused branches per run, K (full: {FULL['runs']})")
    parser.add_argument("--hidden", type=int, default=1152, help="channels (default 1152, DiT-XL/2)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--repeats", type=int, help="timed repetitions per case (default 50 CUDA, 5 CPU)")
    parser.add_argument("--peak-gbps", type=float, help="device peak memory bandwidth in GB/s (default: queried)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    return parser.parse_args(argv)


def peak_bandwidth_gbps(device: torch.device) -> float | None:
    """Theoretical DRAM bandwidth: memory clock (kHz) x 2 (double data rate) x bus width (bytes)."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return clock_khz * 1e3 * 2 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def time_it(fn, device: torch.device, repeats: int) -> float:
    """Median seconds per call; on CUDA the L2 cache is flushed before every timed call."""
    fn()  # warm-up (and Triton compilation)
    if device.type == "cuda":
        flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
        times = []
        for _ in range(repeats):
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_case(batch, tokens, channels, runs, dtype, device, repeats):
    """Seconds for the unfused and fused versions, and the largest difference between their results."""
    shape = (batch, tokens, channels)
    gen = torch.Generator(device=device).manual_seed(0)
    pool = CachePool(runs, shape, dtype, device)
    for slot in range(runs):
        pool.write(slot, torch.randn(shape, generator=gen, device=device, dtype=dtype))
    gates = [0.1 * torch.randn(batch, 1, channels, generator=gen, device=device, dtype=dtype) for _ in range(runs)]
    slots = pool.index_tensor(range(runs))
    hidden = torch.randn(shape, generator=gen, device=device, dtype=dtype)

    def unfused():
        h = hidden
        for slot in range(runs):
            h = apply_branch(h, pool.read(slot), gates[slot])
        return h

    def fused():
        return gather_apply(hidden, pool, slots, gates)  # in place, as a cache hook would use it

    expected = unfused()
    got = gather_apply(hidden.clone(), pool, slots, gates)
    max_diff = (expected.float() - got.float()).abs().max().item()
    return time_it(unfused, device, repeats), time_it(fused, device, repeats), max_diff


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    quick = args.quick or (not on_gpu and not args.full)
    grid = QUICK if quick else FULL
    batches = args.batch or grid["batch"]
    tokens_list = args.tokens or grid["tokens"]
    runs_list = args.runs or grid["runs"]
    dtype = DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
    repeats = args.repeats or (50 if on_gpu else 5)
    if not on_gpu:
        torch.set_num_threads(args.threads)
    peak = args.peak_gbps or peak_bandwidth_gbps(device)
    element = torch.empty((), dtype=dtype).element_size()
    chosen = backend(device)
    fused_passes = (lambda k: k + 2) if chosen != "torch" else (lambda k: 5 * k)  # the reference is unfused

    name = torch.cuda.get_device_name(device) if on_gpu else f"cpu, torch threads={torch.get_num_threads()}"
    print(f"device {name}; gather_apply backend: {chosen}; {str(dtype).removeprefix('torch.')}, "
          f"hidden {args.hidden}; {'quick shapes' if quick else 'full grid'}; median of {repeats}")
    print(f"peak memory bandwidth: {f'{peak:.0f} GB/s' if peak else 'n/a'}")
    print(f"{'batch':>5} {'tokens':>6} {'K':>2} | {'unfused us':>10} {'GB/s':>7} {'%peak':>6} | "
          f"{'gather us':>9} {'GB/s':>7} {'%peak':>6} | {'speedup':>7} {'max|diff|':>9}")
    for batch in batches:
        for tokens in tokens_list:
            for runs in runs_list:
                t_unfused, t_fused, diff = bench_case(batch, tokens, args.hidden, runs, dtype, device, repeats)
                tensor_bytes = batch * tokens * args.hidden * element
                bw_unfused = 5 * runs * tensor_bytes / t_unfused / 1e9
                bw_fused = fused_passes(runs) * tensor_bytes / t_fused / 1e9
                share = (lambda bw: f"{100 * bw / peak:5.1f}%") if peak else (lambda bw: f"{'n/a':>6}")
                print(f"{batch:>5} {tokens:>6} {runs:>2} | {t_unfused * 1e6:>10.1f} {bw_unfused:>7.1f} "
                      f"{share(bw_unfused)} | {t_fused * 1e6:>9.1f} {bw_fused:>7.1f} {share(bw_fused)} | "
                      f"{t_unfused / t_fused:>6.2f}x {diff:>9.2e}")
    if not on_gpu:
        print(f"GPU figures pending: this run used the {chosen} backend on the CPU; run on a CUDA device for "
              "the compiled Triton kernel and bandwidth as a fraction of peak.")
    print("GB/s = bytes each version must move / time: 5 tensor passes per branch for torch code, K + 2 for "
          "the fused kernel; the L2 cache is flushed before each timed call on CUDA.")


if __name__ == "__main__":
    main()

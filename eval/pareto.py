"""Speed / quality sweep: each method's knob over a range, FD against speedup, on one pipeline.

For every method (default: all available here, each over its default sweep, plus HarmoniCa when
the pipeline folder ships a router/) and every knob value: N samples are generated (split across
accelerate processes), scored as in eval/fid.py (FD / KID in Inception's or the judge's feature
space, class accuracy, PSNR / SSIM against the uncached samples of the same seeds) and costed
(cache usage, transformer MACs). Then the main process times every point and the stock pipeline
interleaved in one process (median of --repeats) for the measured speedup.

Every figure has its error bar (--seed_sets K disjoint seed sets and/or --bootstrap B paired resamples
of the samples, see harmonica_bench/evaluation/stats.py); every measured speedup the [min-max] of its
per-round ratios, and one above its MACs speedup is flagged "(!> MACs ...)", never taken as a result.
Then, for each speed level (--levels, default 1.5 2 2.5), one table with each method at its best
setting at or above that speed (lowest FD, PSNR breaking ties) and its paired difference to the best
row with a 95% interval: "tie" when it contains 0, else "win" / "loss".

Writes <out>/pareto.png (speedup vs FD, error bars on both axes), <out>/pareto.md (all points, then
the level tables; with --results_page PATH also a docs page of them with the command and the commit), <out>/pareto.json (points, timing, levels), <out>/bootstrap.npz (the resampled
figures of every point, so --plot_only redraws the level tables) and one JSON per point. Samples are
kept in <out>/samples (seed set j > 0 in samples/set<j>), so an interrupted sweep resumes without
regenerating them.

    python eval/pareto.py --num_samples 1000                 # embedded model, every method
    python eval/pareto.py --num_samples 1000 --seed_sets 3 --method taylorseer2=2,3 --method dbcache=0.08,0.12
    python eval/pareto.py --method fora=2,3,4 --method harmonica@runs/r1 --method harmonica@runs/r2
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no eval/pareto.py --device cpu

Method strings: NAME (default sweep), NAME=K1,K2,... (these knob values), NAME[=...]@ROUTER_DIR
(ltc / harmonica: one series per router folder; knob = threshold, default the router's own).
"""

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser():
    from harmonica.cli import HelpFormatter
    from harmonica_bench.evaluation import DEFAULT_LEVELS, add_error_bar_args, add_pipeline_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_pipeline_args(p)
    add_error_bar_args(p)
    p.add_argument("--method", action="append", default=None, help="method string (repeatable); default: all")
    p.add_argument("--num_samples", type=int, default=1000)
    g = p.add_argument_group("metrics")
    g.add_argument("--reference", default=None, help="'shapes' (default for the embedded model), folder or .npz")
    g.add_argument("--num_reference", type=int, default=5000)
    g.add_argument("--extractor", default="auto", choices=["auto", "inception", "judge"])
    g.add_argument("--inception_weights", default=None)
    g.add_argument("--no_download", action="store_true")
    g.add_argument("--judge", default=None, help="judge folder (default: <pipeline>/judge when present)")
    t = p.add_argument_group("timing")
    t.add_argument("--speedup", default="measured", choices=["measured", "macs"],
                   help="x axis: measured latency ratio or transformer MACs ratio")
    t.add_argument("--timing_batch", type=int, default=8, help="batch size of the timed calls")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--warmup", type=int, default=1)
    t.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (on a shared CPU, 1 keeps timings stable)")
    t.add_argument("--levels", type=float, nargs="+", default=list(DEFAULT_LEVELS),
                   help="speed levels of the best-setting tables (speedups, e.g. 1.5 2 2.5)")
    p.add_argument("--out", default="outputs/pareto")
    p.add_argument("--results_page", default=None, metavar="PATH",
                   help="also write a docs page (e.g. docs/results-mine.md): the command, the commit, the plot "
                        "(copied beside it) and the tables")
    p.add_argument("--plot_only", action="store_true",
                   help="redraw <out>/pareto.png and .md from <out>/pareto.json; with --speedup macs on a timed "
                        "sweep: <out>/pareto-macs.png and .md, the level tables by MACs speedup")
    p.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                   help="(repeatable) print the paired differences A - B of two points of <out>/pareto.json "
                        "(FD, PSNR, FD to uncached, class accuracy; bootstrap intervals on the same resamples), "
                        "each point named by its id or a unique part of it, e.g. --compare abl40-sdt abl40-reuse-only")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.compare:
        return compare(Path(args.out), args.compare)
    if args.plot_only:
        return replot(Path(args.out), args.speedup, args.results_page)
    import dataclasses

    from accelerate import Accelerator

    from harmonica_bench import evaluation as ev
    from harmonica_bench import methods

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ev.resolve_device(args.device)
    accelerator = Accelerator(cpu=device == "cpu")
    pipe = ev.load_pipeline(args.pipeline, accelerator.device if device != "cpu" else "cpu", args.dtype,
                            args.scheduler)
    setup = ev.setup_from_args(args, pipe)
    log = accelerator.print
    specs = args.method or ev.default_method_specs(args.pipeline)
    entries = ev.method_entries(specs, pipe, setup, sweep=True, pipeline_path=args.pipeline, log=log)
    log(f"{len(entries)} points: " + ", ".join(f"{r.series}={k}" for r, k in entries))

    judge_path = args.judge or ev.default_judge(args.pipeline)
    reference_name = args.reference or ev.default_reference(args.pipeline)
    extractor = reference = judge = None
    if accelerator.is_main_process:
        if reference_name is None:
            raise SystemExit("pareto needs reference images for FD: --reference")
        extractor = ev.resolve_extractor(args.extractor, args.inception_weights, judge_path,
                                      try_download=not args.no_download)
        log(f"feature space: {extractor.distance_name} ({extractor.note})")
        reference = ev.reference_images(reference_name, args.num_reference)
        judge = ev.load_judge(judge_path, accelerator.device)
    run = ev.QualityRun(pipe, setup, args.num_samples, args.out, accelerator=accelerator, reference=reference,
                        extractor=extractor, judge=judge, pipeline_id=str(args.pipeline), seed_sets=args.seed_sets,
                        bootstrap=args.bootstrap, bootstrap_seed=args.bootstrap_seed)
    out = Path(args.out)
    points = []
    for request, knob in [(methods.MethodRequest("none", []), None)] + entries:
        point = run.evaluate(request, knob)
        if accelerator.is_main_process:
            ev.write_json(out / "points" / f"{ev.safe_name(request.series)}-{ev.safe_name(point['knob'])}.json", point)
            points.append(point)

    if accelerator.is_main_process:
        if args.speedup == "measured":
            timing_setup = dataclasses.replace(setup, batch_size=args.timing_batch)
            speed = ev.speed_benchmark(pipe, entries, timing_setup, repeats=args.repeats, warmup=args.warmup)
            for point, row in zip(points, speed["rows"]):  # both: stock first, then entries in order
                point["measured_speedup"] = row["speedup"]
                point["latency_s"] = row["latency_s"]
                point["latencies_s"] = row["latencies_s"]
                point["speedup_spread"] = row["speedup_spread"]
                point["above_macs_bound"] = row["above_macs_bound"]
            timing = {k: v for k, v in speed.items() if k != "rows"}
        else:
            timing = None
        for point in points:
            point["macs_speedup"] = point["cost"]["macs_speedup"]
        data = {"pipeline": str(args.pipeline), "setup": setup.describe(), "num_samples": args.num_samples,
                "seed_sets": args.seed_sets, "bootstrap": {"resamples": args.bootstrap, "seed": args.bootstrap_seed},
                "reference": reference_name, "extractor": dataclasses.asdict(extractor), "timing": timing,
                "levels_asked": args.levels, "points": points, "scheduler": type(pipe.scheduler).__name__,
                "command": shlex.join(["python", "eval/pareto.py", *(sys.argv[1:] if argv is None else argv)]),
                "commit": ev.source_commit()}
        if run.replicates:
            np.savez(out / "bootstrap.npz", **ev.replicates_to_arrays(run.replicates))
        elif (out / "bootstrap.npz").exists():
            (out / "bootstrap.npz").unlink()  # resamples of an earlier run: not these points'
        table, png = write_table_and_plot(out, data, run.replicates)
        ev.write_json(out / "pareto.json", data)
        log(table)
        log(f"wrote {png}, {out / 'pareto.md'}, {out / 'pareto.json'}")
        if args.results_page:
            log(f"wrote {ev.results_page(args.results_page, data, table, png)}")
    accelerator.wait_for_everyone()
    return points if accelerator.is_main_process else None


def write_table_and_plot(out: Path, data: dict, replicates: dict | None = None, key: str | None = None):
    """<out>/pareto.md and <out>/pareto.png from a pareto.json document (its "levels" recomputed from
    the points and the bootstrap replicates); returns (table, png path). ``key``: the speedup of the
    x axis and the level tables, by default the measured one when the sweep was timed; the MACs one
    asked of a timed sweep goes to pareto-macs.md / .png."""
    from harmonica_bench import evaluation as ev

    points, setup = data["points"], data["setup"]
    default = "measured_speedup" if data.get("timing") else "macs_speedup"  # no timing: --speedup macs
    key = key or default
    stem = "pareto" if key == default else "pareto-macs"
    levels = ev.best_settings(points, data.get("levels_asked") or ev.DEFAULT_LEVELS, key, replicates)
    if key == default:
        data["levels"] = levels
    table = ev.pareto_markdown(points, key) + "\n" + ev.levels_markdown(levels, points, key)
    (out / f"{stem}.md").write_text(table)
    sets = data.get("seed_sets", 1) or 1
    png = ev.pareto_plot(points, out / f"{stem}.png", key,
                         title=f"{Path(str(data['pipeline'])).name}: {setup['num_inference_steps']} steps, "
                               f"CFG {setup['guidance_scale']}, N={data['num_samples']}"
                               + (f" x {sets} seed sets" if sets > 1 else ""))
    return table, png


def load_sweep(out: Path) -> tuple[dict, dict | None]:
    """<out>/pareto.json and, when the sweep saved them, its bootstrap replicates."""
    import json

    import numpy as np

    from harmonica_bench import evaluation as ev

    data = json.loads((out / "pareto.json").read_text())
    replicates = None
    if (out / "bootstrap.npz").is_file():
        with np.load(out / "bootstrap.npz") as arrays:
            replicates = ev.replicates_from_arrays(arrays)
    return data, replicates


def compare(out: Path, pairs: list[list[str]]) -> list:
    """Paired differences A - B of named points of a finished sweep, printed one metric a line."""
    from harmonica_bench import evaluation as ev

    data, replicates = load_sweep(out)

    def find(name: str) -> dict:
        found = [p for p in data["points"] if p["id"] == name] or [p for p in data["points"] if name in p["id"]]
        if len(found) != 1:
            ids = ", ".join(p["id"] for p in data["points"])
            raise SystemExit(f"--compare {name!r} matches {len(found)} points of {out / 'pareto.json'}; "
                             f"give a unique part of one of: {ids}")
        return found[0]

    differences = []
    for a, b in pairs:
        pa, pb = find(a), find(b)
        print(f"{pa['label']}  -  {pb['label']}")
        for metric in ("fd", "psnr", "fd_uncached", "class_accuracy"):
            d = ev.compare_points(pa, pb, metric, replicates)
            ci = f"[{d.ci[0]:+.3f}, {d.ci[1]:+.3f}]" if d.ci else "(no interval)"
            print(f"  {metric:15s} {d.diff:+.3f} {ci} {d.verdict}")
            differences.append(d)
    return differences


def replot(out: Path, speedup: str = "measured", results_page: str | None = None):
    from harmonica_bench import evaluation as ev

    data, replicates = load_sweep(out)
    key = "macs_speedup" if speedup == "macs" else None
    table, png = write_table_and_plot(out, data, replicates, key)
    print(f"wrote {png}, {png.with_suffix('.md')}")
    if results_page:
        print(f"wrote {ev.results_page(results_page, data, table, png)}")
    return data["points"]


if __name__ == "__main__":
    main()

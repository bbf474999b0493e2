"""PSNR against step count: finished eval/pareto.py sweeps, one per (step count, scheduler), on one plot.

For every sweep folder and every method (a series: one router, or one training-free method over its knobs)
the point shown is the one with the highest PSNR among those at or above the MACs-speedup level (--level,
2% tolerance below it), with its 95% interval. Writes <out>.png (one panel per scheduler, one line per
method) and <out>.md (the same as a table, with each point's MACs speedup and FD to uncached).

    python eval/step_counts.py --sweep outputs/nl-dit-ddim-10 --sweep outputs/nl-dit-ddim-20 --level 2 \\
        --out docs/step_counts_dit
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best_at_level(points: list[dict], level: float) -> dict[str, dict]:
    """Per series, its highest-PSNR point at or above ``level`` (within 2%) of MACs speedup."""
    best = {}
    for point in points:
        psnr = point["metrics"].get("psnr")
        if psnr is None or point["macs_speedup"] < level * 0.98:
            continue
        if point["series"] not in best or psnr > best[point["series"]]["metrics"]["psnr"]:
            best[point["series"]] = point
    return best


def scheduler_of(pipeline: str) -> str:
    """The scheduler class a pipeline folder ships (sweeps before pareto.json recorded it ran with it)."""
    config = Path(pipeline) / "scheduler" / "scheduler_config.json"
    return json.loads(config.read_text())["_class_name"] if config.is_file() else "the pipeline's scheduler"


def collect(sweeps: list[Path], level: float) -> dict:
    """``{scheduler: {series: {steps: point}}}`` over the sweeps."""
    table: dict = {}
    for sweep in sweeps:
        data = json.loads((sweep / "pareto.json").read_text())
        steps = data["setup"]["num_inference_steps"]
        scheduler = data.get("scheduler") or scheduler_of(data["pipeline"])
        for series, point in best_at_level(data["points"], level).items():
            table.setdefault(scheduler, {}).setdefault(series, {})[steps] = point
    return table


def main(argv=None):
    from harmonica.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--sweep", action="append", required=True, help="a finished eval/pareto.py --out folder")
    p.add_argument("--level", type=float, default=2.0, help="MACs speedup at or above which a point counts")
    p.add_argument("--out", default="outputs/step_counts", help="writes <out>.png and <out>.md")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harmonica_bench.evaluation import interval_of
    from harmonica_bench.viz import save_figure

    table = collect([Path(s) for s in args.sweep], args.level)
    fig, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4.2), squeeze=False)
    lines = [f"PSNR (dB) to the uncached images at >= {args.level:g}x MACs (each method's best point there: its "
             "setting, **PSNR** [95% interval], MACs speedup, FD to uncached)", ""]
    names = sorted({name for series in table.values() for name in series})
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}  # one colour per method in every panel
    for ax, (scheduler, series) in zip(axes[0], sorted(table.items())):
        counts = sorted({n for by_steps in series.values() for n in by_steps})
        lines += [f"**{scheduler}**", "", "| method | " + " | ".join(f"{n} steps" for n in counts) + " |",
                  "|---|" + "---|" * len(counts)]
        for name, by_steps in sorted(series.items()):
            xs = sorted(by_steps)
            ys = [by_steps[n]["metrics"]["psnr"] for n in xs]
            errors = [interval_of(by_steps[n]["errors"].get("psnr")) or [y, y] for n, y in zip(xs, ys)]
            ax.errorbar(xs, ys, yerr=[[y - e[0] for y, e in zip(ys, errors)], [e[1] - y for y, e in zip(ys, errors)]],
                        marker="o", capsize=3, label=name, color=colours[name])
            cells = []
            for n in counts:
                q = by_steps.get(n)
                if q is None:
                    cells.append("-")
                    continue
                ci = interval_of(q["errors"].get("psnr"))
                cells.append(f"{q['label']}: **{q['metrics']['psnr']:.2f}**" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
                             + f", {q['macs_speedup']:.2f}x, {q['metrics'].get('fd_uncached', float('nan')):.3f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        ax.set(title=f"{scheduler}, >= {args.level:g}x MACs", xlabel="sampling steps", ylabel="PSNR to uncached (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = save_figure(fig, Path(args.out).with_suffix(".png"))
    md = Path(args.out).with_suffix(".md")
    md.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {png}, {md}")
    return table


if __name__ == "__main__":
    main()

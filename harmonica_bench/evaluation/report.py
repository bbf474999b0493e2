"""Reporting: markdown tables and the speed / quality plot.

A quality cell reads ``mean ±std [lo, hi]``: the mean over seed sets, their standard deviation
(two or more sets) and the 95% interval (the bootstrap's when there is one, else the t interval
over seed sets). A speedup reads ``median [min-max]`` over interleaved rounds; one above its MACs
speedup is marked ``2.30x (!> MACs 2.00x)``: noise, not a result.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..viz import save_figure
from .compare import method_group

QUALITY_HEADER = ("| method | knob | steps | N | FD / FID | KID x1e3 | IS | class acc. | PSNR (dB) | SSIM | cache usage "
                  "| MACs speedup |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value * scale, spec)


def knob_text(name, value) -> str:
    if value is None:
        return "-"
    return f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def interval_of(errors: dict | None) -> list[float] | None:
    """The 95% interval to show: the bootstrap's, else the t interval over seed sets."""
    if not errors:
        return None
    ci = errors.get("boot_ci") or errors.get("ci")
    if ci is None or any(x is None or not math.isfinite(x) for x in ci):
        return None
    return ci


def value_text(result: dict, key: str, spec: str, scale: float = 1.0) -> str:
    """``mean ±std [lo, hi]`` of a metric of a point (only what it has: one seed set and no
    bootstrap give the plain value, as before)."""
    text = _fmt(result.get("metrics", {}).get(key), spec, scale)
    errors = (result.get("errors") or {}).get(key)
    if not errors or text in ("-", "inf"):
        return text
    if errors.get("std") is not None:
        text += f" ±{_fmt(errors['std'], spec, scale)}"
    ci = interval_of(errors)
    if ci is not None:
        text += f" [{_fmt(ci[0], spec, scale)}, {_fmt(ci[1], spec, scale)}]"
    return text


def speedup_text(speedup, macs_speedup=None, spread: dict | None = None) -> str:
    """``1.83x [1.80-1.86]``; above the MACs bound: ``2.30x (!> MACs 2.00x)`` (flagged, not a result)."""
    if speedup is None or (isinstance(speedup, float) and not math.isfinite(speedup)):
        return "-"
    text = f"{speedup:.2f}x"
    if spread and spread.get("rounds", 0) > 1:
        text += f" [{spread['min']:.2f}-{spread['max']:.2f}]"
    if macs_speedup is not None and math.isfinite(macs_speedup) and speedup > macs_speedup:
        text += f" (!> MACs {macs_speedup:.2f}x)"
    return text


def quality_row(result: dict) -> str:
    m = result.get("metrics", {})
    cost = result.get("cost", {})
    return (f"| {result['label']} | {knob_text(result.get('knob_name'), result.get('knob'))} | {result.get('steps')} "
            f"| {m.get('num_generated', result.get('num_samples'))}{_sets_text(result)} | {value_text(result, 'fd', '.3f')} "
            f"| {value_text(result, 'kid_mean', '.3f', 1e3)} | {value_text(result, 'isc_mean', '.2f')} "
            f"| {value_text(result, 'class_accuracy', '.1%')} | {value_text(result, 'psnr', '.2f')} "
            f"| {value_text(result, 'ssim', '.4f')} "
            f"| {_fmt(cost.get('cache_usage'), '.1%')} | {_fmt(cost.get('macs_speedup'), '.2f')}x |")


def _sets_text(result: dict) -> str:
    k = result.get("seed_sets", 1) or 1
    return f" x{k} sets" if k > 1 else ""


def append_markdown(path: Path, row: str, header: str = QUALITY_HEADER) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a") as f:
        if new:
            f.write(header)
        f.write(row + "\n")


def speed_markdown(result: dict) -> str:
    lines = [
        f"Device: {result['device_name']}; batch {result['setup']['batch_size']}, "
        f"{result['setup']['num_inference_steps']} steps; median of {result['repeats']} interleaved repeats after "
        f"{result['warmup']} warm-up rounds, [min-max] of the per-round speedups; (!> MACs) marks a measured "
        f"speedup above its MACs speedup (noise, not a result). Weights {result['weights_mb']:.1f} MB (shared by "
        f"all rows). Peak memory: {result['memory_method']}.",
        "",
        "| method | latency (s) | speedup | cache usage | transformer GMACs | MACs speedup | peak memory (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(result["rows"]):
        mem = "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.1f}"
        lat = r.get("latencies_s") or []
        lat_text = f"{r['latency_s']:.4f}" + (f" [{min(lat):.4f}-{max(lat):.4f}]" if len(lat) > 1 else "")
        speed = speedup_text(r["speedup"], None if i == 0 else r["macs_speedup"], None if i == 0 else r.get("speedup_spread"))
        lines.append(f"| {r['label']} | {lat_text} | {speed} | {r['cache_usage']:.1%} | "
                     f"{r['macs'] / 1e9:.3f} | {r['macs_speedup']:.2f}x | {mem} |")
    return "\n".join(lines) + "\n"


def pareto_markdown(points: list[dict], speedup_key: str) -> str:
    """Table of sweep points, grouped by series, fastest last."""
    dist = next((p["metrics"].get("distance_name") for p in points if p["metrics"].get("distance_name")), "FD")
    lines = [f"| method | knob | {dist} | KID x1e3 | class acc. | PSNR (dB) | SSIM | {dist} to uncached | cache usage "
             f"| MACs speedup | measured speedup |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["series"] != "none", p["series"], p.get(speedup_key) or 0)):
        c = p["cost"]
        measured = "-" if p.get("measured_speedup") is None else speedup_text(
            p["measured_speedup"], None if p["series"] == "none" else c.get("macs_speedup"), p.get("speedup_spread"))
        lines.append(f"| {p['label']} | {knob_text(p.get('knob_name'), p.get('knob'))} | {value_text(p, 'fd', '.3f')} "
                     f"| {value_text(p, 'kid_mean', '.3f', 1e3)} "
                     f"| {value_text(p, 'class_accuracy', '.1%')} | {value_text(p, 'psnr', '.2f')} "
                     f"| {value_text(p, 'ssim', '.4f')} | {value_text(p, 'fd_uncached', '.3f')} "
                     f"| {_fmt(c.get('cache_usage'), '.1%')} "
                     f"| {_fmt(c.get('macs_speedup'), '.2f')}x | {measured} |")
    return "\n".join(lines) + "\n"


def _diff_text(diff: dict | None, spec: str) -> str:
    if not diff or diff.get("diff") is None or not math.isfinite(diff["diff"]):
        return "-"
    text = format(diff["diff"], "+" + spec)
    if diff.get("ci"):
        text += f" [{format(diff['ci'][0], '+' + spec)}, {format(diff['ci'][1], '+' + spec)}]"
    return text


def levels_markdown(tables: list[dict], points: list[dict], speedup_key: str = "measured_speedup") -> str:
    """One table per speed level (``compare.best_settings``): each method at its best setting."""
    by_id = {p.get("id", p["label"]): p for p in points}
    what = "measured speedup (capped at the MACs speedup)" if speedup_key == "measured_speedup" else "MACs speedup"
    out = [f"Each method at its best setting (lowest FD, PSNR breaking ties) among its points at or above the "
           f"level's {what}. The difference is to the best row of the level (the best row: to the runner-up), "
           f"paired on the same seeds, with its 95% interval; tie = the interval contains 0.", ""]
    for table in tables:
        out += [f"**at >= {table['level']:g}x**", ""]
        if not table["rows"]:
            out += ["(no point reaches this speed)", ""]
            continue
        out += ["| method | best setting | speedup | FD | FD - best | verdict | PSNR (dB) | PSNR - best | class acc. "
                "| KID x1e3 | SSIM | FD to uncached |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in table["rows"]:
            p = by_id[row["point"]]
            out.append(
                f"| {row['method']} | {p['label']} | {_fmt(row['speedup'], '.2f')}x | {value_text(p, 'fd', '.3f')} "
                f"| {_diff_text(row['fd_diff'], '.3f')} | {row['word']} | {value_text(p, 'psnr', '.2f')} "
                f"| {_diff_text(row['psnr_diff'], '.2f')} | {value_text(p, 'class_accuracy', '.1%')} "
                f"| {value_text(p, 'kid_mean', '.3f', 1e3)} | {value_text(p, 'ssim', '.4f')} "
                f"| {value_text(p, 'fd_uncached', '.3f')} |")
        out.append("")
    return "\n".join(out)


def pareto_plot(points: list[dict], path: str | Path, speedup_key: str = "measured_speedup",
                title: str | None = None) -> Path:
    """PNG: one line per method series, speedup (x) against FD / FID (y, lower is better), with error
    bars: x the [min, max] of the per-round speedups, y the 95% interval of FD (else its std over
    seed sets) when the points have them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dist = next((p["metrics"].get("distance_name") for p in points if p["metrics"].get("distance_name")), "FD")
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    series = {}
    for p in points:
        if p["metrics"].get("fd") is None or p.get(speedup_key) is None:
            continue
        series.setdefault(method_group(p), []).append(p)
    markers = "osD^v<>phX*"
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts = sorted(pts, key=lambda p: p[speedup_key])
        xs = [p[speedup_key] for p in pts]
        ys = [p["metrics"]["fd"] for p in pts]
        if name == "none":
            ax.scatter(xs, ys, marker="*", s=180, color="black", zorder=5, label="no caching")
            _, yerr = _error_bars(pts, xs, ys, speedup_key)
            if yerr is not None:
                ax.errorbar(xs, ys, yerr=yerr, fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
            continue
        colour = plt.get_cmap("tab20")(2 * (i % 10) + (i // 10) % 2)  # 10 dark hues, then their light twins
        learned = any(p.get("router") is not None for p in pts)
        line = ax.plot(xs, ys, marker=markers[i % len(markers)], color=colour, label=name,
                       linewidth=2.4 if learned else 1.2, markersize=6 if learned else 5)[0]
        xerr, yerr = _error_bars(pts, xs, ys, speedup_key)
        if xerr is not None or yerr is not None:
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=line.get_color(), elinewidth=0.8,
                        capsize=2, alpha=0.7)
        for p, x, y in zip(pts, xs, ys):
            if p.get("router") is not None:  # learned routers: their cache usage says more than tau
                text = f"{p['cost']['cache_usage']:.0%}"
            elif p.get("knob") is not None:
                text = f"{p['knob']:g}" if isinstance(p["knob"], float) else str(p["knob"])
            else:
                continue
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, alpha=0.8)
    ax.set_xlabel("speedup over the stock pipeline (" + ("measured latency" if speedup_key == "measured_speedup"
                                                          else "transformer MACs") + ")")
    ax.set_ylabel(f"{dist} (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or f"speed vs quality ({dist})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _error_bars(pts: list[dict], xs: list[float], ys: list[float], speedup_key: str):
    """Asymmetric (2, n) error arrays for matplotlib, or None where no point has that spread."""
    xerr = [[0.0] * len(pts), [0.0] * len(pts)]
    yerr = [[0.0] * len(pts), [0.0] * len(pts)]
    have_x = have_y = False
    for i, (p, x, y) in enumerate(zip(pts, xs, ys)):
        spread = p.get("speedup_spread") if speedup_key == "measured_speedup" else None
        if spread and spread.get("rounds", 0) > 1:
            xerr[0][i], xerr[1][i] = max(0.0, x - spread["min"]), max(0.0, spread["max"] - x)
            have_x = True
        errors = (p.get("errors") or {}).get("fd")
        ci = interval_of(errors)
        if ci is not None:
            yerr[0][i], yerr[1][i] = max(0.0, y - ci[0]), max(0.0, ci[1] - y)
            have_y = True
        elif errors and errors.get("std") is not None:
            yerr[0][i] = yerr[1][i] = errors["std"]
            have_y = True
    return (xerr if have_x else None), (yerr if have_y else None)


def source_commit(repo: str | Path | None = None) -> str | None:
    """The git commit the code runs from (``<hash> + uncommitted changes`` when the tree is dirty), None outside
    a git checkout."""
    import subprocess

    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" + uncommitted changes" if dirty else "")


def results_page(path: str | Path, data: dict, table: str, png: Path) -> Path:
    """A docs page of a sweep: what was measured, by which command at which commit, the plot and the tables.
    The plot is copied beside the page."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = path.with_name(f"{path.stem}.png")
    shutil.copyfile(png, image)
    setup = data["setup"]
    sets = data.get("seed_sets", 1) or 1
    boot = (data.get("bootstrap") or {}).get("resamples")
    lines = [
        f"# Results: {Path(str(data['pipeline'])).name}",
        "",
        f"{data['num_samples']} samples per point" + (f" x {sets} seed sets" if sets > 1 else "")
        + f", {setup['num_inference_steps']} steps, guidance {setup['guidance_scale']}"
        + (f", {boot} paired bootstrap resamples" if boot else "") + ".",
        "",
        f"Measured by `{data.get('command') or 'eval/pareto.py (command not recorded)'}` at commit "
        f"`{data.get('commit') or 'unknown'}`.",
        "",
        f"![speedup against FD]({image.name})",
        "",
        table.rstrip(),
        "",
    ]
    path.write_text("\n".join(lines))
    return path

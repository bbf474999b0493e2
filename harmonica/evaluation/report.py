"""Reporting: markdown tables and the speed / quality plot."""

from __future__ import annotations

import math
from pathlib import Path

from ..viz import save_figure


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


def quality_row(result: dict) -> str:
    m = result.get("metrics", {})
    cost = result.get("cost", {})
    return (f"| {result['label']} | {knob_text(result.get('knob_name'), result.get('knob'))} | {result.get('steps')} "
            f"| {m.get('num_generated', result.get('num_samples'))} | {_fmt(m.get('fd'), '.3f')} "
            f"| {_fmt(m.get('kid_mean'), '.3f', 1e3)} | {_fmt(m.get('isc_mean'), '.2f')} "
            f"| {_fmt(m.get('class_accuracy'), '.1%')} | {_fmt(m.get('psnr'), '.2f')} | {_fmt(m.get('ssim'), '.4f')} "
            f"| {_fmt(cost.get('cache_usage'), '.1%')} | {_fmt(cost.get('macs_speedup'), '.2f')}x |")


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
        f"{result['warmup']} warm-up rounds. Weights {result['weights_mb']:.1f} MB (shared by all rows). "
        f"Peak memory: {result['memory_method']}.",
        "",
        "| method | latency (s) | speedup | cache usage | transformer GMACs | MACs speedup | peak memory (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        mem = "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.1f}"
        lines.append(f"| {r['label']} | {r['latency_s']:.4f} | {r['speedup']:.2f}x | {r['cache_usage']:.1%} | "
                     f"{r['macs'] / 1e9:.3f} | {r['macs_speedup']:.2f}x | {mem} |")
    return "\n".join(lines) + "\n"


def pareto_markdown(points: list[dict], speedup_key: str) -> str:
    """Table of sweep points, grouped by series, fastest last."""
    dist = next((p["metrics"].get("distance_name") for p in points if p["metrics"].get("distance_name")), "FD")
    lines = [f"| method | knob | {dist} | KID x1e3 | class acc. | PSNR (dB) | SSIM | cache usage | MACs speedup "
             f"| measured speedup |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["series"] != "none", p["series"], p.get(speedup_key) or 0)):
        m, c = p["metrics"], p["cost"]
        lines.append(f"| {p['label']} | {knob_text(p.get('knob_name'), p.get('knob'))} | {_fmt(m.get('fd'), '.3f')} | {_fmt(m.get('kid_mean'), '.3f', 1e3)} "
                     f"| {_fmt(m.get('class_accuracy'), '.1%')} | {_fmt(m.get('psnr'), '.2f')} "
                     f"| {_fmt(m.get('ssim'), '.4f')} | {_fmt(c.get('cache_usage'), '.1%')} "
                     f"| {_fmt(c.get('macs_speedup'), '.2f')}x | {_fmt(p.get('measured_speedup'), '.2f')}x |")
    return "\n".join(lines) + "\n"


def _plot_series(point: dict) -> str:
    """The line a point belongs to: its method, or for learned routers how the router was trained
    (the label without its usage / tau), so routers trained at several usages form one line."""
    if point.get("router") is None:
        return point["series"]
    return point["label"].rsplit(" ", 2)[0]


def pareto_plot(points: list[dict], path: str | Path, speedup_key: str = "measured_speedup",
                title: str | None = None) -> Path:
    """PNG: one line per method series, speedup (x) against FD / FID (y, lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dist = next((p["metrics"].get("distance_name") for p in points if p["metrics"].get("distance_name")), "FD")
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    series = {}
    for p in points:
        if p["metrics"].get("fd") is None or p.get(speedup_key) is None:
            continue
        series.setdefault(_plot_series(p), []).append(p)
    markers = "osD^v<>phX*"
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts = sorted(pts, key=lambda p: p[speedup_key])
        xs = [p[speedup_key] for p in pts]
        ys = [p["metrics"]["fd"] for p in pts]
        if name == "none":
            ax.scatter(xs, ys, marker="*", s=180, color="black", zorder=5, label="no caching")
            continue
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=name, linewidth=1.2, markersize=5)
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

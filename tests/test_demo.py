"""`make demo` (harmonica_bench.demo) on a tiny pipeline saved locally."""

from harmonica_bench import demo


def test_demo_writes_grid_and_heatmap_and_reports(dit_path, tmp_path, capsys):
    result = demo.main(["--pipeline", str(dit_path), "--out", str(tmp_path), "--steps", "6", "--per_class", "1",
                        "--repeats", "1"])
    assert (tmp_path / "side_by_side.png").stat().st_size > 0
    assert (tmp_path / "router_heatmap.png").stat().st_size > 0
    stats = result["stats"]
    assert 0.4 < stats.cache_usage < 0.6  # static every-other-step router when none is shipped
    assert result["speedup"] > 0
    out = capsys.readouterr().out
    assert "speedup" in out and "cache" in out and "static every-other-step" in out


def test_flux_demo_runs_true_cfg_captions(tmp_path, capsys):
    """`make demo-flux` (--model flux) on a tiny FluxPipeline: held-out captions, true CFG."""
    from tiny_models import tiny_flux_pipeline

    tiny_flux_pipeline().save_pretrained(tmp_path / "flux")
    result = demo.main(["--model", "flux", "--pipeline", str(tmp_path / "flux"), "--out", str(tmp_path / "out"),
                        "--steps", "4", "--per_class", "1", "--repeats", "1"])
    assert (tmp_path / "out" / "side_by_side.png").stat().st_size > 0
    assert result["stats"].forwards == 2 * 4  # true CFG: two forwards per step
    assert "true CFG" in capsys.readouterr().out

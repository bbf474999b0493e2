"""`make demo` (harmonica.demo) on a tiny pipeline saved locally."""

from harmonica import demo


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

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


def test_vocabulary_flag_prints_what_the_flux_model_knows(capsys):
    from harmonica_bench.data import CLASS_NAMES, COLOUR_NAMES

    assert demo.main(["--vocabulary"]) is None
    out = capsys.readouterr().out
    assert "a [small|large] <colour> <shape> on a <colour> background" in out
    assert all(name in out for name in CLASS_NAMES + COLOUR_NAMES)
    red = next(line for line in out.splitlines() if line.split()[:2] == ["red", "on"])
    assert "white" in red and "blue" not in red  # red on blue was never trained


def test_flux_demo_warns_about_a_caption_the_model_does_not_know(tmp_path, capsys):
    """--prompt draws your captions with the embedded Flux model; one outside its vocabulary is named."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        demo.main(["--model", "flux", "--out", str(tmp_path), "--per_class", "1", "--repeats", "1",
                   "--prompt", "a small red star on a blue background", "--prompt", "a white ring on a black background"])
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    about = [m for m in messages if "embedded Flux model" in m]
    assert len(about) == 1 and about[0].startswith("1 of 2 captions")
    assert "red on blue was never trained" in about[0] and "--vocabulary" in about[0]
    assert "white ring" not in about[0]
    assert (tmp_path / "side_by_side.png").stat().st_size > 0
    assert "a small red star on a blue background" in capsys.readouterr().out

"""Error bars, paired differences, the speed flag and the per-level tables, on synthetic numbers."""

import numpy as np
import pytest
import torch

from harmonica_bench import evaluation as ev
from harmonica_bench.evaluation.stats import Bootstrap, ReferenceStats, SampleData, fd_between, fd_from_stats


def gaussian_features(n, d=16, shift=0.0, scale=1.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) * scale + shift


def test_fd_and_kid_of_a_resample_agree_with_torch_fidelity():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    ref, gen = gaussian_features(600, seed=1), gaussian_features(200, shift=0.3, scale=1.2, seed=2)
    stats = ReferenceStats.of(ref)
    tf = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(gen)),
                                  fid_features_to_statistics(torch.from_numpy(ref)), False)
    fd = fd_from_stats(gen.mean(0), np.cov(gen, rowvar=False), stats)
    assert fd == pytest.approx(next(iter(tf.values())), rel=1e-9)
    # the identity resample (every sample once) gives the full-sample FD; KID near torch-fidelity's
    boot = Bootstrap(200, 1, 2, reference=stats)
    ones = np.ones((1, 200))
    assert boot._fd(gen, ones)[0] == pytest.approx(fd, rel=1e-9)
    kid = kid_features_to_metric(torch.from_numpy(gen), torch.from_numpy(ref), kid_subsets=50,
                                 kid_subset_size=200, verbose=False, rng_seed=0)
    assert boot._kid(gen, ones)[0] == pytest.approx(next(iter(kid.values())), abs=0.02)


def test_fd_to_uncached_is_zero_for_the_model_itself_and_resamples_pairs_together():
    """FD between a point's samples and the uncached samples of the same seeds: 0 for identical
    features, torch-fidelity's FD otherwise; the bootstrap resamples a sample with its uncached twin."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    uncached = gaussian_features(300, seed=4)
    cached = uncached + gaussian_features(300, scale=0.3, seed=5)  # each image near its twin
    assert fd_between(uncached, uncached) == pytest.approx(0.0, abs=1e-9)
    tf = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(cached)),
                                  fid_features_to_statistics(torch.from_numpy(uncached)), False)
    assert fd_between(cached, uncached) == pytest.approx(next(iter(tf.values())), rel=1e-6)
    boot = Bootstrap(300, 1, 200, seed=0, reference=ReferenceStats.of(gaussian_features(600, seed=6)))
    ones = np.ones((1, 300))
    assert boot._fd_paired(cached, uncached, ones)[0] == pytest.approx(fd_between(cached, uncached), rel=1e-9)
    same = boot.replicates([SampleData(features=uncached, uncached_features=uncached)])["fd_uncached"]
    assert np.abs(same).max() < 1e-6  # resampled together, the model's own samples stay at 0
    reps = boot.replicates([SampleData(features=cached, uncached_features=uncached)])["fd_uncached"]
    assert (reps > 0).all()
    lo, hi = ev.centered_interval(fd_between(cached, uncached), reps)
    assert lo <= fd_between(cached, uncached) <= hi


def interval_width(n, seed=0):
    ref = gaussian_features(2000, seed=10)
    gen = gaussian_features(n, shift=0.2, seed=seed)
    rng = np.random.default_rng(seed)
    data = SampleData(features=gen, correct=rng.random(n) < 0.8, psnr=rng.normal(35, 3, n), ssim=rng.random(n))
    boot = Bootstrap(n, 1, 300, seed=0, reference=ReferenceStats.of(ref))
    reps = boot.replicates([data])
    stats = ReferenceStats.of(ref)
    point = {"fd": fd_from_stats(gen.mean(0), np.cov(gen, rowvar=False), stats),
             "class_accuracy": data.correct.mean(), "psnr": data.psnr.mean(), "ssim": data.ssim.mean()}
    widths = {}
    for key, value in point.items():
        lo, hi = ev.centered_interval(value, reps[key])
        assert lo <= value <= hi, key  # contains the point estimate
        widths[key] = hi - lo
    assert set(reps) == {"fd", "kid_mean", "class_accuracy", "psnr", "ssim"}
    return widths


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_samples():
    small, large = interval_width(100), interval_width(800)
    for key in small:
        assert large[key] < 0.7 * small[key], key  # ~ 1/sqrt(8) = 0.35


def test_bootstrap_resamples_are_shared_and_paired():
    """Two methods resampled with the same indices: their difference's interval is much narrower
    than either interval when they move together (same seeds), as the harness's points do."""
    rng = np.random.default_rng(0)
    base = rng.normal(35, 4, 500)  # per-image PSNR of method A
    other = base - 0.3 + rng.normal(0, 0.1, 500)  # B: slightly worse on the same images
    boot = Bootstrap(500, 1, 400, seed=3)
    ra, rb = boot.replicates([SampleData(psnr=base)]), boot.replicates([SampleData(psnr=other)])
    alone = np.subtract(*ev.centered_interval(base.mean(), ra["psnr"])[::-1])
    d = ev.paired_difference("psnr", [other.mean()], [base.mean()], rb, ra)
    assert d.method == "bootstrap" and d.verdict == "worse" and d.ci[1] < 0
    assert d.ci[1] - d.ci[0] < 0.2 * alone
    assert Bootstrap(500, 1, 400, seed=3).counts[0].tolist() == boot.counts[0].tolist()  # drawn once, reproducibly


def test_tie_logic_on_synthetic_numbers():
    assert ev.verdict([-0.1, 0.2], "fd") == "tie"
    assert ev.verdict([0.05, 0.2], "fd") == "worse" and ev.verdict([-0.3, -0.1], "fd") == "better"
    assert ev.verdict([0.5, 1.0], "psnr") == "better"  # higher PSNR is better
    assert ev.verdict(None, "fd") == "n/a"
    # seed sets only: t interval of the per-set paired differences
    d = ev.paired_difference("fd", [2.31, 2.03, 2.25], [2.28, 2.00, 2.21])  # +0.03, +0.03, +0.04
    assert d.method == "t over seed sets" and d.diff == pytest.approx(0.03333, abs=1e-4)
    assert d.verdict == "worse" and d.ci[0] > 0
    d = ev.paired_difference("fd", [2.30, 2.00, 2.25], [2.28, 2.05, 2.21])  # +0.02, -0.05, +0.04
    assert d.verdict == "tie" and d.ci[0] < 0 < d.ci[1]
    assert ev.paired_difference("fd", [2.3], [2.2]).verdict == "n/a"  # one set, no bootstrap: no call
    s = ev.over_sets([2.28, 2.00])
    assert s["mean"] == pytest.approx(2.14) and s["std"] == pytest.approx(0.19799, abs=1e-4)
    assert s["ci"][0] < 2.0 and s["ci"][1] > 2.28  # t with 1 df: wide


def test_errors_and_mean_metrics_of_seed_sets():
    per_set = [{"fd": 2.0, "psnr": 30.0, "per_class_accuracy": {0: 1.0}, "extractor": "x"},
               {"fd": 2.4, "psnr": 32.0, "per_class_accuracy": {0: 0.5}, "extractor": "x"}]
    mean = ev.mean_metrics(per_set)
    assert mean == {"fd": pytest.approx(2.2), "psnr": 31.0, "per_class_accuracy": {0: 0.75}, "extractor": "x"}
    errors = ev.point_errors(per_set)
    assert errors["fd"]["std"] == pytest.approx(0.28284, abs=1e-4) and errors["fd"]["n_sets"] == 2
    assert ev.mean_metrics(per_set[:1]) == per_set[0]
    acc = ev.point_errors([{"class_accuracy": 0.0}, {"class_accuracy": 0.125}])["class_accuracy"]
    assert acc["ci"][0] == 0.0 < acc["ci"][1] <= 1.0  # an interval stays inside the metric's range
    assert ev.value_text({"metrics": mean, "errors": errors}, "fd", ".3f").startswith("2.200 ±0.283 [")
    assert ev.value_text({"metrics": {"fd": 2.2}}, "fd", ".3f") == "2.200"  # no error bars: as before


def test_speed_spread_and_the_macs_bound_flag():
    spread = ev.speed_spread([2.0, 2.2, 1.8], [1.0, 1.0, 1.2])
    assert spread["min"] == pytest.approx(1.5) and spread["max"] == pytest.approx(2.2) and spread["rounds"] == 3
    assert ev.above_macs_bound(2.3, 2.0) and not ev.above_macs_bound(1.8, 2.0)
    assert not ev.above_macs_bound(float("nan"), 2.0)
    assert ev.speedup_text(2.3, 2.0) == "2.30x (!> MACs 2.00x)"
    assert ev.speedup_text(1.83, 2.04, spread) == "1.83x [1.50-2.20]"
    # a flagged point counts at its MACs speed in the level tables
    assert ev.credible_speedup({"measured_speedup": 2.3, "cost": {"macs_speedup": 2.0}}) == 2.0
    assert ev.credible_speedup({"measured_speedup": 1.8, "cost": {"macs_speedup": 2.0}}) == 1.8
    assert ev.credible_speedup({"cost": {"macs_speedup": 2.0}}, "macs_speedup") == 2.0


def point(series, knob, speed, fd_sets, psnr_sets, macs=None):
    return {"id": f"{series}-{knob}", "series": series, "label": f"{series} {knob}", "knob": knob,
            "knob_name": "k", "router": None, "measured_speedup": speed,
            "cost": {"macs_speedup": macs or speed + 0.3},
            "metrics": {"fd": float(np.mean(fd_sets)), "psnr": float(np.mean(psnr_sets))},
            "metrics_per_set": [{"fd": f, "psnr": p} for f, p in zip(fd_sets, psnr_sets)]}


def test_best_setting_per_speed_level():
    points = [
        point("none", None, 1.0, [2.0, 2.1, 2.0], [40, 40, 40]),
        point("fora", 2, 1.8, [2.50, 2.60, 2.55], [36, 36, 36]),
        point("fora", 3, 2.4, [2.90, 3.00, 2.95], [30, 30, 30]),
        point("taylorseer", 2, 1.6, [2.30, 2.40, 2.35], [39, 39, 39]),
        point("taylorseer", 3, 2.1, [2.33, 2.38, 2.30], [38, 38, 38]),  # ties with TaylorSeer 2's FD
        point("magcache", 0.1, 2.6, [2.34, 2.36, 2.40], [35, 35, 35], macs=2.2),  # flagged: counts at 2.2x
        point("fbcache", 0.1, 1.55, [2.34, 2.35, 2.36], [32, 33, 34]),
    ]
    tables = ev.best_settings(points, levels=(1.5, 2.0, 2.5))
    assert [t["level"] for t in tables] == [1.5, 2.0, 2.5]
    at15 = tables[0]["rows"]
    assert [r["point"] for r in at15] == ["taylorseer-3", "fbcache-0.1", "magcache-0.1", "fora-2"]
    # best row: against the runner-up (FBCache), a tie; FORA N=2 is clearly worse than the best
    assert at15[0]["vs"] == "fbcache-0.1" and at15[0]["word"] == "tie"
    assert at15[-1]["vs"] == "taylorseer-3" and at15[-1]["word"] == "loss"
    assert at15[-1]["fd_diff"]["diff"] == pytest.approx(2.55 - 2.33667, abs=1e-4)
    assert at15[-1]["fd_diff"]["method"] == "t over seed sets"
    at2 = tables[1]["rows"]
    assert [r["method"] for r in at2] == ["taylorseer", "magcache", "fora"]
    assert tables[2]["rows"] == []  # MagCache's 2.6x is above its MACs bound: it does not reach 2.5x
    md = ev.levels_markdown(tables, points)
    assert "**at >= 1.5x**" in md and "| taylorseer | taylorseer 3 |" in md and "(no point reaches this speed)" in md
    assert "| tie |" in md and "| loss |" in md
    # PSNR breaks an exact FD tie within a method
    twin = dict(point("fora", 4, 2.0, [2.50, 2.60, 2.55], [37, 37, 37]))
    rows = ev.best_settings(points + [twin], levels=(1.5,))[0]["rows"]
    assert next(r for r in rows if r["method"] == "fora")["point"] == "fora-4"


def test_level_table_uses_the_paired_bootstrap_when_there_is_one():
    rng = np.random.default_rng(0)
    boot = Bootstrap(300, 1, 300, seed=1)
    psnr_a, psnr_b = rng.normal(36, 3, 300), rng.normal(35, 3, 300)
    reps = {"a-1": {"fd": rng.normal(2.0, 0.05, 300), **boot.replicates([SampleData(psnr=psnr_a)])},
            "b-1": {"fd": rng.normal(2.0, 0.05, 300), **boot.replicates([SampleData(psnr=psnr_b)])}}
    pts = [point("a", 1, 2.0, [2.0], [psnr_a.mean()]), point("b", 1, 2.0, [2.01], [psnr_b.mean()])]
    rows = ev.best_settings(pts, levels=(1.5,), replicates=reps)[0]["rows"]
    assert rows[0]["fd_diff"]["method"] == "bootstrap" and rows[0]["word"] == "tie"
    assert rows[1]["psnr_diff"]["method"] == "bootstrap"

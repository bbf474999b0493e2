"""The evaluation harness behind ``eval/fid.py``, ``eval/speed.py`` and ``eval/pareto.py``.

One module per concern; this file only re-exports them:

* ``sampling``   – which image sample ``i`` is (seeds, conditions), generation split across processes;
                   the family-specific call arguments live there, in one block
* ``store``      – generated samples kept on disk under a key of everything they depend on
* ``references`` – reference images (FD / KID) and the judge (class accuracy)
* ``prepare``    – a method applied to a clone of the pipeline; the measured cost of one call
* ``cost``       – ``CallMeter``: branches run, transformer MACs, peak memory of a call
* ``metrics``    – FD / KID / IS (torch-fidelity), the judge as a feature extractor, class accuracy,
                   PSNR / SSIM
* ``speed``      – interleaved latency of several methods, with the spread of the rounds
* ``quality``    – ``QualityRun``: every quality figure of one (method, knob) point, over seed sets
* ``stats``      – error bars: seed-set spread, paired bootstrap, tie / win of a difference
* ``compare``    – each method at its best setting per speed level, paired differences to the best
* ``report``     – markdown tables and the speed / quality plot
* ``cli``        – the command-line arguments and method entries shared by the scripts
"""

from .compare import (
    DEFAULT_LEVELS,
    best_settings,
    compare_points,
    credible_speedup,
    method_group,
    replicates_from_arrays,
    replicates_to_arrays,
)
from .cli import (
    KERNEL_METHODS,
    add_error_bar_args,
    add_pipeline_args,
    default_method_specs,
    method_entries,
    resolve_device,
    setup_from_args,
    with_kernel_setting,
)
from .cost import CallCost, CallMeter, LiveTensorBytes, weights_bytes
from .metrics import (
    INCEPTION_EXTRACTOR,
    JUDGE_EXTRACTOR,
    Extractor,
    class_accuracies,
    class_accuracy,
    fidelity_metrics,
    inception_loadable,
    judge_feature_scale,
    feature_vectors,
    judge_hits,
    judge_input,
    register_judge_extractor,
    resolve_extractor,
)
from .prepare import Prepared, check_one_count, measure_cost, prepare
from .quality import QualityRun, mean_metrics, quality_metrics, save_sample_grid
from .references import default_judge, default_reference, load_judge, reference_images
from .report import (
    QUALITY_HEADER,
    results_page,
    source_commit,
    append_markdown,
    interval_of,
    knob_text,
    levels_markdown,
    pareto_markdown,
    pareto_plot,
    quality_row,
    speed_markdown,
    speedup_text,
    value_text,
)
from .sampling import (
    CALIBRATION_OFFSET,
    SEED_SET_OFFSET,
    SamplingSetup,
    calibration_call,
    generate,
    generate_distributed,
    is_class_conditional,
    load_pipeline,
    seed_set,
    setup_for,
    to_uint8,
)
from .similarity import psnr, similarity, ssim
from .speed import SpeedRow, above_macs_bound, speed_benchmark, speed_spread
from .stats import (
    Bootstrap,
    Difference,
    ReferenceStats,
    SampleData,
    centered_interval,
    over_sets,
    paired_difference,
    point_errors,
    verdict,
)
from .store import cached_samples, safe_name, save_samples, weights_fingerprint, write_json

__all__ = [
    "CALIBRATION_OFFSET", "DEFAULT_LEVELS", "INCEPTION_EXTRACTOR", "JUDGE_EXTRACTOR", "KERNEL_METHODS",
    "QUALITY_HEADER", "SEED_SET_OFFSET", "above_macs_bound", "add_error_bar_args", "add_pipeline_args", "append_markdown",
    "best_settings", "Bootstrap", "cached_samples", "calibration_call", "CallCost", "CallMeter", "check_one_count",
    "centered_interval", "class_accuracies", "class_accuracy", "compare_points", "credible_speedup",
    "default_judge", "default_method_specs", "default_reference", "Difference", "Extractor", "feature_vectors",
    "fidelity_metrics", "generate", "generate_distributed", "inception_loadable", "interval_of",
    "is_class_conditional", "judge_feature_scale", "judge_hits", "judge_input", "knob_text", "levels_markdown",
    "LiveTensorBytes", "load_judge", "load_pipeline", "mean_metrics", "measure_cost", "method_entries",
    "method_group", "over_sets", "paired_difference", "pareto_markdown", "pareto_plot", "point_errors", "prepare",
    "Prepared", "psnr", "quality_metrics", "quality_row", "replicates_from_arrays", "replicates_to_arrays", "QualityRun", "reference_images", "ReferenceStats",
    "register_judge_extractor", "resolve_device", "results_page", "source_commit", "resolve_extractor", "safe_name", "SampleData", "SamplingSetup",
    "save_sample_grid", "save_samples", "seed_set", "setup_for", "setup_from_args", "similarity", "speed_benchmark",
    "speed_markdown", "speed_spread", "SpeedRow", "speedup_text", "ssim", "to_uint8", "value_text", "verdict",
    "weights_bytes", "weights_fingerprint", "with_kernel_setting", "write_json",
]

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
* ``speed``      – interleaved latency of several methods
* ``quality``    – ``QualityRun``: every quality figure of one (method, knob) point
* ``report``     – markdown tables and the speed / quality plot
* ``cli``        – the command-line arguments and method entries shared by the scripts
"""

from .cli import (
    KERNEL_METHODS,
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
    judge_input,
    psnr,
    register_judge_extractor,
    resolve_extractor,
    similarity,
    ssim,
)
from .prepare import Prepared, harmonica_stats, measure_cost, prepare
from .quality import QualityRun, quality_metrics, save_sample_grid
from .references import default_judge, default_reference, load_judge, reference_images
from .report import (
    QUALITY_HEADER,
    append_markdown,
    knob_text,
    pareto_markdown,
    pareto_plot,
    quality_row,
    speed_markdown,
)
from .sampling import (
    CALIBRATION_OFFSET,
    SamplingSetup,
    calibration_call,
    generate,
    generate_distributed,
    is_class_conditional,
    load_pipeline,
    setup_for,
    to_uint8,
)
from .speed import SpeedRow, speed_benchmark
from .store import cached_samples, safe_name, save_samples, weights_fingerprint, write_json

__all__ = [
    "CALIBRATION_OFFSET", "INCEPTION_EXTRACTOR", "JUDGE_EXTRACTOR", "KERNEL_METHODS", "QUALITY_HEADER",
    "CallCost", "CallMeter", "Extractor", "LiveTensorBytes", "Prepared", "QualityRun", "SamplingSetup", "SpeedRow",
    "add_pipeline_args", "append_markdown", "cached_samples", "calibration_call", "class_accuracies",
    "class_accuracy", "default_judge", "default_method_specs", "default_reference", "fidelity_metrics", "generate",
    "generate_distributed", "harmonica_stats", "inception_loadable", "is_class_conditional", "judge_feature_scale",
    "judge_input", "knob_text", "load_judge", "load_pipeline", "measure_cost", "method_entries", "pareto_markdown",
    "pareto_plot", "prepare", "psnr", "quality_metrics", "quality_row", "reference_images",
    "register_judge_extractor", "resolve_device", "resolve_extractor", "safe_name", "save_sample_grid",
    "save_samples", "setup_for", "setup_from_args", "similarity", "speed_benchmark", "speed_markdown", "ssim",
    "to_uint8", "weights_bytes", "weights_fingerprint", "with_kernel_setting", "write_json",
]

"""eval/scale.py (speed at real model scale, GPU) runs end to end on tiny configs of the same architectures."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "eval" / "scale.py"


@pytest.mark.parametrize("arch", ["flux-dev"])
def test_scale_script_on_tiny_configs(tmp_path, arch):
    spec = importlib.util.spec_from_file_location("scale", SCRIPT)
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    rows = scale.main(["--tiny", "--arch", arch, "--batch", "1", "--compile", "none", "--repeats", "1",
                       "--warmup", "1", "--dtype", "fp32", "--out", str(tmp_path)])
    variants = rows[0]["variants"]
    assert set(variants) == {"stock", "fora", "router", "router+taylor", "all-compute"}
    assert variants["router"]["cache_usage"] == pytest.approx(0.5, abs=0.02)
    assert variants["fora"]["macs_speedup"] > 1.5 and variants["all-compute"]["macs_speedup"] == 1.0
    assert variants["router+taylor"]["cache_usage"] == variants["router"]["cache_usage"]
    assert variants["router+taylor"]["cache_mib"] == 2 * variants["router"]["cache_mib"] > 0  # K = 2 vs reuse
    assert (tmp_path / "scale.md").read_text().count("| flux-dev |") == 5

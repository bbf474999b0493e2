"""A regular (non-editable) install: the wheel carries the embedded pipelines, and harmonica finds them there."""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(cmd, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="10000")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_wheel_in_a_fresh_venv_finds_the_embedded_pipeline(tmp_path):
    # build from a copy, so that setuptools' build/ and egg-info stay out of the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("harmonica", "harmonica_bench", "pipelines"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
         src])
    (wheel,) = (tmp_path / "dist").glob("harmonica_cache-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.parent.relative_to(REPO).as_posix() for top in ("harmonica", "harmonica_bench")
                      for p in (REPO / top).rglob("__init__.py"))
    assert [p for p in packages if f"{p}/__init__.py" not in names] == [], "add them to pyproject's packages"
    data = sorted(p.relative_to(REPO / "pipelines").as_posix() for p in (REPO / "pipelines").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
    assert "shapes-dit/model_index.json" in data and "recipes/shapes-dit.json" in data
    lab_records = [f for f in data if f.endswith(("TRAINING.md", "training_log.jsonl"))]
    assert lab_records and not [f for f in lab_records if f"harmonica_bench/_pipelines/{f}" in names]
    assert [f for f in data if f not in lab_records and f"harmonica_bench/_pipelines/{f}" not in names] == []

    # a fresh venv that sees this environment's dependencies through a .pth line; .pth files inside that
    # folder (the editable install's finder) are not processed, so harmonica can only come from the wheel
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_outer_environment.pth").write_text("".join(f"{p}\n" for p in sorted(outer)))
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel])

    work = tmp_path / "elsewhere"  # outside the checkout: nothing can be found relative to the working directory
    work.mkdir()
    check = textwrap.dedent(f"""
        import sys
        from pathlib import Path

        import harmonica
        from harmonica_bench.embedded import EMBEDDED_PIPELINE, EMBEDDED_ROUTER, RECIPES_DIR

        venv = Path({str(venv)!r}).resolve()
        assert Path(harmonica.__file__).resolve().is_relative_to(venv), harmonica.__file__
        assert not any("editable" in getattr(f, "__name__", type(f).__name__).lower() for f in sys.meta_path)
        assert EMBEDDED_PIPELINE.resolve().is_relative_to(venv), EMBEDDED_PIPELINE
        assert (RECIPES_DIR / "shapes-dit.json").is_file()
        from diffusers import DiTPipeline

        pipe = DiTPipeline.from_pretrained(EMBEDDED_PIPELINE)
        router = harmonica.HarmoniCaRouter.from_pretrained(EMBEDDED_ROUTER)
        harmonica.enable(pipe, router)
        image = pipe([0], num_inference_steps=router.num_steps, output_type="pt").images
        assert abs(harmonica.stats(pipe).cache_usage - router.cache_usage()) < 1e-6
        print("ok", tuple(image.shape))
    """)
    out = run([python, "-c", check], cwd=work)
    assert "ok (1, 3, 32, 32)" in out.splitlines(), out  # one image, sampled with the shipped router
    help_text = run([python, "-m", "harmonica_bench.demo", "--help"], cwd=work)
    assert f"(default: {venv}/lib" in help_text and "_pipelines/shapes-dit)" in help_text  # in the venv
    # the packaged trainer finds a shipped recipe by name, and the recipe its pipeline, inside the venv
    out = run([python, "-m", "harmonica.train", "--recipe", "shapes-dit", "--cpu", "--num_steps", "3", "--trajectories",
               "1", "--batch_size", "1", "--lambda_samples", "1", "--output_dir", "run"], cwd=work)
    assert "router saved to run/router" in out and (work / "run" / "router").is_dir(), out


def test_no_file_sends_the_reader_to_notes_outside_the_repository():
    """What a user needs (why a pin, why a setting) is said where it is used, not in a notes folder that only
    the project's own machines have (shared/*.md next to the checkout)."""
    import re

    cited = re.compile(r"\bshared/[A-Za-z_-]+\.md")
    files = [REPO / "Makefile", REPO / "pyproject.toml", REPO / "README.md",
             *(p for folder in ("harmonica", "harmonica_bench", "train", "eval", "pipelines", "docs")
               for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".md", ".json", ".sh"))]
    found = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in files for m in cited.finditer(p.read_text())]
    assert found == []

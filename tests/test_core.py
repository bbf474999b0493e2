"""The core package stands alone: ``import harmonica`` pulls in none of the lab's or training's dependencies,
it runs a cached pipeline with them made unimportable, and in the import graph nothing in the core imports
the lab (``harmonica_bench``), router training (``harmonica.training``) or the scripts."""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "harmonica"
HEAVY = ("accelerate", "datasets", "torch_fidelity", "matplotlib")


def run_python(code: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_import_harmonica_adds_no_lab_or_training_module():
    """diffusers itself may import accelerate when it is installed: what counts is what harmonica adds."""
    out = run_python("""
        import sys
        import diffusers, diffusers.hooks
        from diffusers import DiffusionPipeline
        before = set(sys.modules)
        import harmonica
        added = sorted(m for m in set(sys.modules) - before
                       if m.split(".")[0] in ("accelerate", "datasets", "torch_fidelity", "matplotlib", "transformers",
                                              "harmonica_bench") or m.startswith("harmonica.training"))
        print("added:", added)
    """)
    assert "added: []" in out.splitlines(), out


def test_core_runs_with_the_heavy_dependencies_unimportable():
    out = run_python(f"""
        import sys

        for name in {HEAVY + ("peft",)!r}:  # as if not installed (peft, the tests' LoRA, needs accelerate): import
            # fails, importlib.util.find_spec says None
            sys.modules[name] = None
        import torch
        import harmonica
        from tiny_models import tiny_dit_pipeline

        pipe = tiny_dit_pipeline()
        pipe.set_progress_bar_config(disable=True)
        router = harmonica.HarmoniCaRouter.static(harmonica.describe(pipe), 4, compute_every=2)
        harmonica.enable(pipe, router)
        pipe([1, 2], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt")
        print("usage", round(harmonica.stats(pipe).cache_usage, 3))
        print("loaded", sorted(m for m, module in sys.modules.items() if m.split(".")[0] in {HEAVY!r} and module))
    """)
    assert "loaded []" in out.splitlines(), out
    assert any(line.startswith("usage 0.") and line != "usage 0.0" for line in out.splitlines()), out


def imports_of(source: str, package: str) -> set[str]:
    """Every module that code in ``package`` imports, at any depth (function-level too), relative imports made
    absolute."""
    parts = package.split(".")
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(REPO).parent.parts)


def test_core_imports_neither_the_lab_nor_training():
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        # harmonica/train.py is training's entry point (python -m harmonica.train): nothing in the core imports it
        in_training = rel.startswith("harmonica/training/") or rel == "harmonica/train.py"
        for module in imports_of(path.read_text(), package_of(path)):
            top = module.split(".")[0]
            if top in ("harmonica_bench", "train", "eval", "tests") or top in HEAVY and not in_training:
                offenders.append(f"{rel} imports {module}")
            elif not in_training and module.startswith("harmonica.training"):
                offenders.append(f"{rel} imports {module}")
    assert offenders == []


def test_the_graph_check_sees_relative_and_function_level_imports():
    source = "def f():\n    from ..training import denoisers\n    from harmonica_bench import embedded\n"
    found = imports_of(source, "harmonica.families")
    assert "harmonica.training.denoisers" in found and "harmonica_bench" in found
    assert "harmonica.cache.state" in imports_of("from .state import CacheState", "harmonica.cache")

"""The README's snippets run as written (against the embedded pipeline shipped in the repo), and what it
links to exists.

Snippets that need the hub and a GPU (they name ``"cuda"``) cannot run here: they are compiled, and every
``harmonica.X`` they use must exist."""

import ast
import os
import re
from pathlib import Path

import pytest

import harmonica

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, re.S)
OFFLINE = [s for s in SNIPPETS if '"cuda"' not in s]
HUB = [s for s in SNIPPETS if '"cuda"' in s]


def test_readme_is_short_and_its_snippets_are_found():
    assert len(README.splitlines()) <= 300
    assert len(OFFLINE) >= 2 and HUB  # the embedded DiT, an existing pipeline; Flux from the hub


def test_readme_offline_snippets_run_in_order(capsys):
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        namespace = {}
        for i, block in enumerate(OFFLINE):
            exec(compile(block, f"README.md snippet {i + 1}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert len(namespace["images"]) == 3 and len(namespace["stock"]) == 3
    out = capsys.readouterr().out
    assert "cache usage" in out
    assert harmonica.controller(namespace["pipe"]) is None  # the last snippet disables it again


@pytest.mark.parametrize("block", HUB)
def test_readme_hub_snippets_compile_and_name_real_functions(block):
    tree = ast.parse(block)
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "harmonica"}
    assert used and all(hasattr(harmonica, name) for name in used), used


def test_readme_links_exist():
    targets = re.findall(r"\]\(((?:docs|pipelines|tests)/[^)#]+)\)", README)
    assert targets
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, missing
    for page in (REPO / "docs").glob("*.md"):  # the docs pages' own links to images and pages
        links = re.findall(r"\]\(([^)#:]+)\)", page.read_text())
        assert all((page.parent / link).exists() for link in links), (page.name, links)

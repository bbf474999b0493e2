"""The README's usage example runs as written (against the embedded pipeline shipped in the repo)."""

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_example_runs(capsys):
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Use\s+```python\n(.*?)```", text, re.S).group(1)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        namespace = {}
        exec(compile(block, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert len(namespace["images"]) == 3
    assert "cache usage" in capsys.readouterr().out

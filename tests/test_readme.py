"""Every ```python block of README.md (and of docs/own_data.md, the section it takes) runs as written.

Each block runs on its own, in a fresh interpreter, in an empty folder, on CPU (no GPU needed
even where a block picks CUDA when present), with no MLflow environment: what a reader who pastes
it into a notebook gets.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# docs/own_data.md is the "Your own model and data" section until it moves into the README.
DOCS = [doc for doc in (ROOT / "README.md", ROOT / "docs" / "own_data.md") if doc.is_file()]
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[str, str]]:
    """``(id, code)`` of every python block, id = file:line of its fence."""
    blocks = []
    for doc in DOCS:
        text = doc.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((f"{doc.relative_to(ROOT)}:{line}", match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_the_docs_have_python_blocks() -> None:
    found = {block_id.split(":")[0] for block_id, _ in BLOCKS}
    assert found == {str(doc.relative_to(ROOT)) for doc in DOCS} and "README.md" in found, found
    assert any("tracked_range_test(" in code for _, code in BLOCKS)  # the notebook path is shown and run


@pytest.mark.slow
@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[block_id for block_id, _ in BLOCKS])
def test_python_block_runs_as_written(code: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

"""The README's notebook example prints the numbers the README shows (issue 22): it is seeded, so
only the run ids differ from one run to the next."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_env

RUN_ID = re.compile(r"run_id='[0-9a-f]+'")


def _example() -> tuple[str, list[str]]:
    """The README's notebook block and the two lines it shows as its output."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**From a notebook**"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]
    shown = re.search(r"```\n(TrackedRangeTest\(.*?)```", section, re.DOTALL)[1]
    return code, shown.strip().splitlines()


@pytest.mark.slow
def test_the_notebook_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    code, shown = _example()
    assert "torch.manual_seed(0)" in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.strip().splitlines()
    assert [RUN_ID.sub("run_id=...", line) for line in printed] == [RUN_ID.sub("run_id=...", line) for line in shown]

"""The wheel ships conf/ inside the package, and --cfg job works from an installed wheel elsewhere."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_the_config_and_runs_from_another_folder(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(ROOT)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("lrtrack-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert yamls and {f"lrtrack/conf/{y}" for y in yamls} <= names

    # A fresh venv that sees the test environment's packages (torch is not needed for --cfg
    # job, but hydra is) and gets lrtrack only from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    venv_site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    # Make the test env's dependencies importable, but not its editable lrtrack.
    (Path(venv_site) / "deps.pth").write_text(site + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import lrtrack, sys; print(lrtrack.__file__)"], cwd=elsewhere,
                           check=True, capture_output=True, text=True).stdout
    assert str(venv) in where, f"lrtrack imported from {where}, not from the wheel"
    start = time.perf_counter()
    proc = subprocess.run([str(py), "-m", "lrtrack", "--cfg", "job", "+model=mnist_cnn"], cwd=elsewhere,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert time.perf_counter() - start < 30
    assert "_target_: lrtrack.engine.models.MnistCNN" in proc.stdout and "num_iter: 100" in proc.stdout
    missing = subprocess.run([str(py), "-m", "lrtrack"], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "available: mlp, mnist_cnn" in missing.stderr
    # --help names the folder its YAML files are in: the wheel's lrtrack/conf, which exists there.
    helped = subprocess.run([str(py), "-m", "lrtrack", "--help"], cwd=elsewhere, capture_output=True, text=True,
                            timeout=120)
    (folder,) = re.findall(r"its YAML file under (\S+)\):", helped.stdout)
    assert folder.startswith(str(venv)) and folder.endswith("lrtrack/conf") and (Path(folder) / "config.yaml").is_file()

"""One job on two "nodes": two torchrun launchers on this host, one process each, meeting through a
c10d rendezvous on 127.0.0.1, run the CLI pipeline as ONE set of runs (rank 0's).

This is the README's several-machines row (``torchrun --nnodes=2 ... --rdzv-backend=c10d
--rdzv-endpoint=$HEAD:29400 -m lrtrack ...``) with both nodes on localhost: the rendezvous, not
``--standalone``, assigns the ranks, and the launcher that binds the endpoint hosts its store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import free_port
from tests.test_distributed import _check_one_explore_and_one_final


def launcher(node: int, port: int, args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """One node's ``torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d`` running ``-m lrtrack ARGS``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LRTRACK_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lrtrack-two-nodes",
               "--max-restarts=0", "-m", "lrtrack", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_torchrun_nodes_on_one_host_run_one_set_of_runs(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)  # a fresh store is created once, before the job (as the README says for a cluster)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["+model=mnist_cnn", "+experiment=smoke", "data.batch_size=32", f"tracking.tracking_uri={uri}"]
    port = free_port()
    nodes = [launcher(node, port, args, tmp_path) for node in (0, 1)]
    outputs = []
    try:
        for proc in nodes:
            out, err = proc.communicate(timeout=240)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in nodes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for code, out, err in outputs:
        assert code == 0, (out + err)[-4000:]
    both = SimpleNamespace(returncode=0, stdout="".join(o for _, o, _ in outputs),
                           stderr="".join(e for _, _, e in outputs))
    found = _check_one_explore_and_one_final(tmp_path, both)  # one explore, one final, one pipeline run
    final = found["final"]
    assert final.data.params["bounds.steps_per_epoch"] == "16"  # 1,024 samples / (2 ranks x 32): one global batch
    assert final.data.tags["lrtrack.range_test_run_id"] == found["explore"].info.run_id
    assert "torchrun: 2 ranks" in both.stdout + both.stderr

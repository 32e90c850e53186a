"""What a launcher (torchrun) told this process through its environment, read without torch.

The recipe needs the rank before the process group exists and before torch is imported (rank 0
alone starts the tracking relay, first thing); :mod:`lrtrack.engine.distributed` asks here too.
"""

from __future__ import annotations

import os

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher with its environment) started this process."""
    return all(os.environ.get(k) for k in TORCHRUN_VARS)


def launch_rank() -> int:
    """The rank the launcher gave this process (0 when none did)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0

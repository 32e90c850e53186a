"""One job on several processes: sharding, the rank helpers, 2 gloo ranks against 1 process, torchrun.

The equivalence tests spawn two CPU processes in a gloo group (``torch.multiprocessing``), each
with per-rank batch B/2 on its shard of the same global order, and compare with one process at
batch B: the same LR grid, the same losses (to float rounding), the same suggestions, the same
training run. The model is lrtrack's MLP (no dropout, so no random masks differ). The CLI tests
run ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m lrtrack`` for real.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

from lrtrack.data import InMemoryLoader, ShardedBatches, StridedBatches, shard, shard_bundle
from lrtrack.engine import distributed as dist
from lrtrack.engine.train import set_data_epoch

# ---------------------------------------------------------------------- sharding (no processes)


def _batches(loader: Any) -> list[torch.Tensor]:
    return [b[1].clone() for b in loader]


def _tagged(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and targets whose target is the sample's index (so a batch shows which samples it holds)."""
    return torch.randn(n, 1, 2, 2), torch.arange(n)


def test_one_rank_keeps_the_loaders_order() -> None:
    x, y = _tagged(100)
    plain = InMemoryLoader(x, y, 16, seed=3)
    same = InMemoryLoader(x, y, 16, seed=3, rank=0, world_size=1)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(3))
    expected = [order[i:i + 16] for i in range(0, 100, 16)]
    for loader in (plain, same):
        got = _batches(loader)
        assert len(loader) == len(got) == 7
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("n", [128, 100, 97])
def test_ranks_take_disjoint_slices_of_each_global_batch(n: int) -> None:
    """2 ranks x batch 8 see, step by step, exactly the samples of 1 process x batch 16."""
    x, y = _tagged(n)
    one = _batches(InMemoryLoader(x, y, 16, seed=5))
    ranks = [shard(InMemoryLoader(x, y, 8, seed=5), r, 2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    per_rank = [_batches(r) for r in ranks]
    for k, (a, b) in enumerate(zip(*per_rank)):
        assert set(a.tolist()).isdisjoint(b.tolist())
        assert sorted(a.tolist() + b.tolist()) == sorted(one[k].tolist())
        assert abs(len(a) - len(b)) <= 1
    # 97 = 6 x 16 + 1: one sample is left for 2 ranks, so that last global batch is left out
    assert len(per_rank[0]) == len(one) - (1 if n % 16 == 1 else 0)


def test_a_last_global_batch_smaller_than_the_world_is_left_out() -> None:
    x, y = _tagged(33)
    ranks = [shard(InMemoryLoader(x, y, 8, seed=0), r, 2) for r in range(2)]
    assert [len(r) for r in ranks] == [2, 2]  # 33 = 2 x 16 + 1: the 1 leftover sample is dropped
    assert all(len(b) == 8 for r in ranks for b in _batches(r))
    drop = ShardedBatches(40, 8, rank=1, world_size=2, drop_last=True)
    assert len(drop) == 2 and len(ShardedBatches(40, 8, rank=1, world_size=2)) == 3


def test_every_pass_reshuffles_the_same_way_on_every_rank() -> None:
    x, y = _tagged(64)
    ranks = [shard(InMemoryLoader(x, y, 8, seed=1), r, 2) for r in range(2)]
    epoch1 = [torch.cat(_batches(r)) for r in ranks]
    epoch2 = [torch.cat(_batches(r)) for r in ranks]
    assert not torch.equal(epoch1[0], epoch2[0])  # a new order each pass
    for epoch in (epoch1, epoch2):
        assert sorted(torch.cat(epoch).tolist()) == list(range(64))  # together: every sample once


def test_validation_loaders_shard_in_order() -> None:
    x, y = _tagged(10)
    val = InMemoryLoader(x, y, 4, shuffle=False)
    ranks = [_batches(shard(val, r, 2)) for r in range(2)]
    assert [b.tolist() for b in ranks[0]] == [[0, 1, 2, 3], [8]]
    assert [b.tolist() for b in ranks[1]] == [[4, 5, 6, 7], [9]]


def test_a_dataloader_keeps_its_global_order_and_its_settings() -> None:
    """Sharded, a shuffled DataLoader's ranks together give the order of the unsharded one."""
    x, y = _tagged(64)
    ds = TensorDataset(x, y)

    def make(batch: int) -> DataLoader:
        return DataLoader(ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(7))

    one = _batches(make(16))
    ranks = [shard(make(8), r, 2) for r in range(2)]
    assert isinstance(ranks[0].batch_sampler, ShardedBatches)
    for k, (a, b) in enumerate(zip(*(_batches(r) for r in ranks))):
        assert torch.equal(torch.cat([a, b]), one[k])


def test_loaders_shard_passes_through_or_falls_back() -> None:
    x, y = _tagged(12)
    ds = TensorDataset(x, y)
    already = DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, num_replicas=2, rank=0))
    assert shard(already, 0, 2) is already
    assert shard(None, 0, 2) is None
    loader = InMemoryLoader(x, y, 4)
    assert shard(loader, 0, 1) is loader

    class Stream(IterableDataset):
        def __iter__(self):
            yield from zip(x, y)

    strided = [shard(DataLoader(Stream(), batch_size=2), r, 2) for r in range(2)]
    assert all(isinstance(s, StridedBatches) for s in strided)
    got = [[b[1].tolist() for b in s] for s in strided]
    assert got == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [10, 11]]]
    assert list(StridedBatches([1, 2, 3, 4, 5], 0, 2)) == [1, 3]  # an incomplete round is dropped
    assert len(StridedBatches([1, 2, 3, 4, 5], 1, 2)) == 2


def test_shard_bundle_shards_train_and_val() -> None:
    from lrtrack.data import fake

    bundle = fake(batch_size=16, val_batch_size=32, fake_size=128)
    sharded = shard_bundle(bundle, 1, 2)
    assert (len(bundle.train), len(sharded.train)) == (8, 4)
    assert sharded.val.world_size == 2 and sharded.name == bundle.name and sharded.num_train == 128
    assert shard_bundle(bundle, 0, 1) is bundle


def test_set_data_epoch_reaches_a_distributed_sampler() -> None:
    ds = TensorDataset(*_tagged(8))
    sampler = DistributedSampler(ds, num_replicas=2, rank=0, seed=0)
    set_data_epoch(DataLoader(ds, sampler=sampler), 3)
    assert sampler.epoch == 3
    set_data_epoch([1, 2], 1)  # no sampler: nothing to do


# ---------------------------------------------------------------------- the helpers outside a group


def test_outside_a_group_every_helper_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in dist.TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    assert not dist.launched_by_torchrun() and not dist.is_distributed()
    assert (dist.rank(), dist.world_size(), dist.local_rank(), dist.is_main()) == (0, 1, 0, True)
    value = torch.tensor(2.5)
    assert dist.mean_over_ranks(value) is value and dist.sum_over_ranks(value) is value
    assert dist.weighted_mean_over_ranks(0.5, 10) == 0.5
    marker = object()
    assert dist.broadcast_object(marker) is marker
    assert dist.init_from_env() is False
    with dist.process_group() as grouped:
        assert grouped is False
    dist.barrier()
    model = torch.nn.Linear(2, 2)
    assert dist.wrap_model(model, torch.device("cpu")) is model and dist.unwrap(model) is model
    assert dist.unwrap(torch.nn.DataParallel(model)) is model
    assert dist.rank_zero_only(lambda: 7)() == 7
    assert dist.backend_for("cpu") == "gloo"
    assert dist.backend_for("cuda:1") == "nccl"
    assert dist.backend_for(None) == ("nccl" if torch.cuda.is_available() else "gloo")


def test_torchrun_environment_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    assert dist.launched_by_torchrun() and dist.local_rank() == 1


def test_too_few_gpus_for_the_ranks_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    problem = dist.launch_problem("cuda")
    assert problem is not None and "--nproc_per_node=1" in problem and "device=cpu" in problem
    assert dist.launch_problem("cpu") is None  # gloo: any number of processes
    with pytest.raises(RuntimeError, match="1 GPU"):
        dist.init_from_env("cuda")


def test_the_helpers_in_a_group_of_one(tmp_path: Path) -> None:
    """A real gloo group (world size 1) in this process: the reductions, DDP and mean_loss run."""
    from lrtrack.engine.steps import mean_loss, supervised_step

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        assert dist.is_distributed() and (dist.rank(), dist.world_size()) == (0, 1)
        assert dist.mean_over_ranks(torch.tensor(3.0)).item() == 3.0
        assert dist.mean_over_ranks(torch.tensor(3)).item() == 3.0
        assert dist.sum_over_ranks(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]
        assert dist.weighted_mean_over_ranks(0.25, 8) == 0.25
        assert dist.broadcast_object({"lr": 0.1}) == {"lr": 0.1}
        dist.barrier()
        model = torch.nn.Linear(4, 3)
        wrapped = dist.wrap_model(model, torch.device("cpu"))
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) and dist.unwrap(wrapped) is model
        assert dist.wrap_model(wrapped, torch.device("cpu")) is wrapped
        x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
        step = supervised_step(torch.nn.CrossEntropyLoss())
        loss = mean_loss(wrapped, [(x[:6], y[:6]), (x[6:], y[6:])], step, device=torch.device("cpu"))
        assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(model(x), y).item(), rel=1e-6)
        assert dist.rank_zero_only(lambda: "written")() == "written"
    finally:
        dist.destroy()
    assert not dist.is_distributed()


# ---------------------------------------------------------------------- 2 gloo ranks vs 1 process

N, BATCH, VAL_BATCH, SEED = 512, 32, 64, 11  # BATCH is the global batch: each of 2 ranks takes 16


def _experiment(world_size: int, rank: int) -> dict[str, Any]:
    """The range test (train loss, then validation loss) and a training run, as one rank runs them."""
    from lrtrack.data import fake_tensors
    from lrtrack.engine.finder import run_range_test
    from lrtrack.engine.models import MLP
    from lrtrack.engine.schedules import onecycle
    from lrtrack.engine.train import train

    torch.manual_seed(SEED)
    model = dist.wrap_model(MLP(hidden=32), torch.device("cpu"))
    x, y = fake_tensors(N, seed=SEED)
    vx, vy = fake_tensors(N // 4, seed=SEED + 1)
    per_rank = BATCH // world_size
    train_loader = shard(InMemoryLoader(x, y, per_rank, seed=SEED), rank, world_size)
    val_loader = shard(InMemoryLoader(vx, vy, VAL_BATCH // world_size, shuffle=False), rank, world_size)
    out: dict[str, Any] = {}
    settings = dict(criterion=torch.nn.NLLLoss(), start_lr=1e-4, end_lr=10.0, num_iter=24, device="cpu",
                    progress=False)
    for name, extra in (("train", {}), ("val", {"val_loader": val_loader, "val_batches": 2})):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        result = run_range_test(model, optimizer, train_loader, **settings, **extra)
        out[name] = {"lrs": result.lrs, "losses": result.losses, "stop": result.stop_reason,
                     "suggestions": {k: s.lr for k, s in result.suggestions.items()},
                     "probes": [(p.lr, p.losses) for p in result.probes]}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = onecycle(optimizer, max_lr=0.2, base_lr=0.05, steps_per_epoch=len(train_loader), epochs=2)
    fit = train(model, optimizer, train_loader, epochs=2, schedule=schedule, criterion=torch.nn.NLLLoss(),
                val_loader=val_loader, device="cpu", progress=False)
    out["fit"] = {"lrs": fit.lrs, "losses": fit.losses, "epochs": fit.epochs, "steps": fit.steps}
    out["weights"] = [p.detach().clone() for p in dist.unwrap(model).parameters()]
    return out


def _rank_main(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        torch.save(_experiment(world_size, rank), Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("ddp")
    try:
        mp.spawn(_rank_main, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    except mp.ProcessExitedException:
        # gloo now and then aborts a rank inside destroy_process_group ("terminate called without an
        # active exception", SIGABRT; 1 run in 5 here, before and after this session's changes), after
        # both ranks saved their results: those are what the tests compare. A rank that saved nothing failed.
        if not all((folder / f"rank{r}.pt").is_file() for r in range(2)):
            raise
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_process() -> dict[str, Any]:
    return _experiment(1, 0)


def _close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(math.isclose(u, v, rel_tol=tol, abs_tol=tol) for u, v in zip(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "val"])
def test_two_ranks_give_the_range_test_of_one_process(two_ranks, one_process, mode: str) -> None:
    ref = one_process[mode]
    for rank in two_ranks:
        got = rank[mode]
        assert got["lrs"] == ref["lrs"]  # the same LR grid, and the same stop
        assert got["stop"] == ref["stop"]
        assert _close(got["losses"], ref["losses"]), (got["losses"][:5], ref["losses"][:5])
        # The rules read the losses, which agree to float rounding (the all-reduce sums in another
        # order); the upward probes' refinement places confirmed from those losses too.
        assert set(got["suggestions"]) == set(ref["suggestions"])
        for rule, lr in ref["suggestions"].items():
            assert (got["suggestions"][rule] is None) == (lr is None), rule
            assert lr is None or math.isclose(got["suggestions"][rule], lr, rel_tol=1e-4), rule
        assert [lr for lr, _ in got["probes"]] == [lr for lr, _ in ref["probes"]]
    assert two_ranks[0][mode]["losses"] == two_ranks[1][mode]["losses"]  # bit for bit: one decision


@pytest.mark.slow
def test_two_ranks_train_like_one_process(two_ranks, one_process) -> None:
    ref = one_process["fit"]
    for rank in two_ranks:
        got = rank["fit"]
        assert got["steps"] == ref["steps"] == 2 * N // BATCH
        assert got["lrs"] == pytest.approx(ref["lrs"], rel=1e-12)
        assert _close(got["losses"], ref["losses"], 1e-4)
        for e_got, e_ref in zip(got["epochs"], ref["epochs"]):
            assert e_got == pytest.approx(e_ref, rel=1e-4)  # val_loss and val_accuracy reduced over ranks
    for w0, w1, w in zip(two_ranks[0]["weights"], two_ranks[1]["weights"], one_process["weights"]):
        assert torch.equal(w0, w1)
        assert torch.allclose(w0, w, atol=1e-5)


# ---------------------------------------------------------------------- torchrun, end to end


def torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m lrtrack ARGS`` in ``cwd``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LRTRACK_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "lrtrack", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _check_one_explore_and_one_final(folder: Path, proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "rank 1 of 2 (gloo)" in out and "rank 0 of 2 (gloo)" in out
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([exp.experiment_id], max_results=100)
    stages = sorted(r.data.tags["lrtrack.stage"] for r in runs)
    assert stages == ["explore", "final", "pipeline"]  # rank 0 alone created runs
    by = {r.data.tags["lrtrack.stage"]: r for r in runs}
    explore, final = by["explore"], by["final"]
    assert all(r.info.status == "FINISHED" for r in runs)
    steps = int(explore.data.metrics["steps"])
    assert len(client.get_metric_history(explore.info.run_id, "loss")) == steps  # one point per step, once
    assert len(client.get_metric_history(final.info.run_id, "loss")) == int(final.data.params["bounds.steps_per_epoch"])
    assert len(list(folder.glob("outputs/*/*/checkpoints/last.pt"))) == 1  # one checkpoint, rank 0's
    return {"explore": explore, "final": final, "client": client}


@pytest.mark.slow
def test_torchrun_two_ranks_on_cpu(tmp_path: Path) -> None:
    """The issue's command on CPU: one store (created once), one explore and one final run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = torchrun(["+model=mnist_cnn", "+experiment=smoke", "data.batch_size=32", f"tracking.tracking_uri={uri}"],
                    tmp_path)
    found = _check_one_explore_and_one_final(tmp_path, proc)
    assert found["final"].data.params["bounds.steps_per_epoch"] == "16"  # 1,024 samples / (2 ranks x 32)
    assert "torchrun: 2 ranks" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_torchrun_two_ranks_on_real_mnist(tmp_path: Path, mnist_root: Path, premade_store) -> None:
    premade_store(tmp_path)  # creating the store once is test_torchrun_two_ranks_on_cpu's
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = torchrun(["+model=mnist_cnn", "data=mnist", f"data.root={mnist_root}", "data.fallback=null",
                     "data.download=false", "finder.num_iter=12", "train.epochs=1", "progress=false",
                     "bounds.max_lr_rule=steepest", f"tracking.tracking_uri={uri}"], tmp_path)
    found = _check_one_explore_and_one_final(tmp_path, proc)
    assert found["final"].data.params["bounds.steps_per_epoch"] == "16"  # 8,000 images / (2 ranks x 256)
    assert found["explore"].data.tags["lrtrack.data"] == "mnist"
    assert found["final"].data.metrics["val_accuracy"] > 0.2

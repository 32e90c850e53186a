"""torch-lr-finder's own tests, run against ``lrtrack.compat.LRFinder`` (slow; PyPI once).

The torch-lr-finder 0.2.2 sdist on PyPI carries the upstream test module
(``tests/test_lr_finder.py``) but not the helper modules it imports (``conftest.py``,
``task.py``, ``model.py``, ``dataset.py``). So these tests download the sdist once (``pip
download``, cached in pytest's cache folder, checked against a pinned SHA-256), take its test
module with only its import lines changed to import lrtrack instead of torch_lr_finder, and run
it in a subprocess pytest beside stand-ins written here for the missing helpers (tasks with
the same names and the properties the tests rely on). Nothing of torch-lr-finder is stored in
this repository; ``torch_lr_finder`` itself cannot even be imported in that run.

``LRTRACK_UPSTREAM_CHECKOUT=/path/to/pytorch-lr-finder`` runs a checkout's whole ``tests/``
folder instead, with its own helpers (the suite the compat mode was developed against).
Without network the tests skip, unless ``LRTRACK_REQUIRE_UPSTREAM=1`` makes that a failure.

Two checks:

* compat mode passes every upstream test that does not need apex (or, on a machine without
  a GPU, CUDA): 44 on a CPU;
* the default mode fails exactly the tests in :data:`DOCUMENTED_FAILURES`, each because of a
  difference listed in :data:`lrtrack.compat.DIFFERENCES`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from lrtrack.compat import DIFFERENCES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SDIST_REQUIREMENT = "torch-lr-finder==0.2.2"
SDIST_NAME = "torch_lr_finder-0.2.2.tar.gz"
SDIST_SHA256 = "d659725028e1ab860deeabe01f445e07f758285c524c8720bd9cc3f39343c778"
SHIM = "lrtrack_upstream_shim"

#: Upstream tests that cannot run here: apex is not installed (and lrtrack refuses it), and
#: the torch-amp accumulation test needs CUDA. TestMixedPrecision's torch test sits in a class
#: that skips without apex.
NEEDS_APEX = {
    "TestGradientAccumulation::test_gradient_accumulation_with_apex_amp",
    "TestMixedPrecision::test_mixed_precision_apex",
    "TestMixedPrecision::test_mixed_precision_torch",
}
NEEDS_CUDA = {"TestGradientAccumulation::test_gradient_accumulation_with_torch_amp"}
COLLECTED = 48
PASSED_ON_CPU = COLLECTED - len(NEEDS_APEX) - len(NEEDS_CUDA)  # 44

#: Default-mode failures, each with a phrase of the DIFFERENCES entry that explains it.
_TOO_SHORT = "when the curve is too short"
DOCUMENTED_FAILURES = {
    "TestDataLoaderIter::test_run_range_test_with_valdataloaderiter": "`val_batches=5` fixed",
    "TestDataLoaderIter::test_run_range_test_with_trainloaderiter_without_subclassing": (
        "may be any iterable of batches"
    ),
    "TestDataLoaderIter::test_run_range_test_with_valloaderiter_without_subclassing": (
        "may be any iterable of batches"
    ),
    **{
        # 11 steps leave fewer than the 2 points a suggestion needs when the skips sum to >= 10
        f"test_plot_with_skip_and_suggest_lr[{a}-{b}-True]": _TOO_SHORT
        for a, b in [(0, 10), (5, 5), (5, 10), (10, 0), (10, 5), (10, 10)]
    },
    "test_suggest_lr": "every LR must be > 0",  # its made-up LRs start at 0
}


# --------------------------------------------------------------------------- the run folder


@pytest.fixture(scope="module")
def suite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the upstream tests with lrtrack's harness, ready for pytest."""
    run = tmp_path_factory.mktemp("upstream_suite")
    tests = run / "tests"
    checkout = os.environ.get("LRTRACK_UPSTREAM_CHECKOUT")
    if checkout:
        source = Path(checkout) / "tests"
        if not (source / "test_lr_finder.py").is_file():
            pytest.fail(f"LRTRACK_UPSTREAM_CHECKOUT={checkout} has no tests/test_lr_finder.py")
        shutil.copytree(source, tests)
    else:
        _extract_tests(_sdist(request, tmp_path_factory), tests)
        for name, text in STAND_INS.items():
            if not (tests / name).exists():
                (tests / name).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    _swap_imports(tests / "test_lr_finder.py")
    for path in tests.glob("*.py"):
        leftover = re.search(r"(?m)^\s*(from|import) torch_lr_finder\b", path.read_text("utf-8"))
        assert leftover is None, f"{path.name} still imports torch_lr_finder"
    (run / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # not lrtrack's settings
    (run / "conftest.py").write_text(textwrap.dedent(HARNESS).lstrip(), encoding="utf-8")
    (run / f"{SHIM}.py").write_text(textwrap.dedent(SHIM_MODULE).lstrip(), encoding="utf-8")
    return run


def _sdist(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, from pytest's cache or downloaded into it (skip when offline)."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("torch_lr_finder_sdist") if cache else tmp_path_factory.mktemp("sdist")
    path = Path(folder) / SDIST_NAME
    if not path.is_file():
        cmd = [sys.executable, "-m", "pip", "download", SDIST_REQUIREMENT, "--no-binary",
               ":all:", "--no-deps", "--disable-pip-version-check", "-d", str(folder)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0 or not path.is_file():
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            message = f"cannot download the {SDIST_REQUIREMENT} sdist from PyPI: {reason}"
            if os.environ.get("LRTRACK_REQUIRE_UPSTREAM") == "1":
                pytest.fail(message)
            pytest.skip(message)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        path.unlink()
        pytest.fail(f"{SDIST_NAME} has SHA-256 {digest}, expected {SDIST_SHA256}")
    return path


def _extract_tests(sdist: Path, dest: Path) -> None:
    """Copy the sdist's tests/*.py files (only test_lr_finder.py in 0.2.2) into ``dest``."""
    dest.mkdir()
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and parts[1] == "tests":
                if parts[2].endswith(".py"):
                    data = archive.extractfile(member)
                    assert data is not None
                    (dest / parts[2]).write_bytes(data.read())
    if not (dest / "test_lr_finder.py").is_file():
        pytest.fail(f"{sdist.name} no longer carries tests/test_lr_finder.py")


def _swap_imports(path: Path) -> None:
    """``from torch_lr_finder[.lr_finder] import X`` -> ``from lrtrack_upstream_shim import X``."""
    text = path.read_text(encoding="utf-8")
    pattern = r"(?m)^(\s*)from torch_lr_finder(?:\.lr_finder)? import"
    text, count = re.subn(pattern, rf"\1from {SHIM} import", text)
    assert count >= 2, f"expected the two torch_lr_finder imports in {path.name}, found {count}"
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- running it


def _run(suite: Path, mode: str) -> dict[str, str]:
    """Run the suite in a subprocess; return ``{test id: passed|failed|error|skipped}``."""
    report = suite / f"report-{mode}.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        LRTRACK_UPSTREAM_MODE=mode,
        MPLBACKEND="Agg",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    cmd = [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider",
           f"--junitxml={report}", "-o", "junit_family=xunit2"]  # fmt: skip
    done = subprocess.run(
        cmd, cwd=suite, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if not report.is_file():
        pytest.fail(f"the upstream suite did not run:\n{done.stdout[-4000:]}\n{done.stderr}")
    outcomes = _outcomes(report)
    print(f"upstream suite, {mode} mode:\n{done.stdout[-3000:]}")
    return outcomes


def _outcomes(report: Path) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        cls = case.get("classname", "").split(".")[-1]
        name = case.get("name", "")
        test_id = f"{cls}::{name}" if cls.startswith("Test") else name
        tags = {child.tag for child in case}
        if "error" in tags:
            outcome = "error"
        elif "failure" in tags:
            outcome = "failed"
        elif "skipped" in tags:
            outcome = "skipped"
        else:
            outcome = "passed"
        # A teardown error is reported as a second testcase with the same id: keep the worst.
        if outcomes.get(test_id) not in ("error", "failed"):
            outcomes[test_id] = outcome
    return outcomes


def _with(outcomes: dict[str, str], outcome: str) -> set[str]:
    return {test_id for test_id, got in outcomes.items() if got == outcome}


def test_compat_mode_passes_torch_lr_finders_own_suite(suite: Path) -> None:
    outcomes = _run(suite, "compat")
    assert len(outcomes) == COLLECTED
    assert _with(outcomes, "failed") | _with(outcomes, "error") == set()
    cuda = torch.cuda.is_available() and not os.environ.get("LRTRACK_UPSTREAM_CPU_ONLY")
    assert _with(outcomes, "skipped") == NEEDS_APEX | (set() if cuda else NEEDS_CUDA)
    assert len(_with(outcomes, "passed")) == PASSED_ON_CPU + (len(NEEDS_CUDA) if cuda else 0)


def test_default_mode_differs_from_the_suite_only_where_documented(suite: Path) -> None:
    for phrase in set(DOCUMENTED_FAILURES.values()):
        assert any(phrase in line for line in DIFFERENCES), phrase
    outcomes = _run(suite, "default")
    assert len(outcomes) == COLLECTED
    assert _with(outcomes, "error") == set()
    assert _with(outcomes, "failed") == set(DOCUMENTED_FAILURES)


# --------------------------------------------------------------------------- generated files

#: Imported by the rewritten test module in place of torch_lr_finder.
SHIM_MODULE = '''
    """torch_lr_finder's names served by lrtrack.compat (LRTRACK_UPSTREAM_MODE=compat|default)."""
    import os

    from lrtrack.compat import DataLoaderIter, TrainDataLoaderIter, ValDataLoaderIter
    from lrtrack.compat import LRFinder as _LRFinder

    __all__ = ["DataLoaderIter", "LRFinder", "TrainDataLoaderIter", "ValDataLoaderIter"]
    COMPAT = os.environ.get("LRTRACK_UPSTREAM_MODE", "compat") == "compat"


    class LRFinder(_LRFinder):
        """lrtrack's LRFinder, in compat mode unless LRTRACK_UPSTREAM_MODE=default."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("compat", COMPAT)
            super().__init__(*args, **kwargs)
'''

#: The run folder's conftest.py: the reference cannot be imported; a ``mocker.spy`` fixture
#: (the upstream tests use pytest-mock's, which lrtrack does not depend on).
HARNESS = '''
    """lrtrack's harness around torch-lr-finder's tests (generated by test_compat_upstream.py)."""
    import sys
    from unittest import mock

    import pytest
    import torch

    sys.modules["torch_lr_finder"] = None  # any import of the reference now fails
    torch.set_num_threads(1)  # tiny models: one thread is fastest on shared cores


    class _Mocker:
        def __init__(self):
            self._patches = []

        def spy(self, obj, name):
            spy = mock.MagicMock(side_effect=getattr(obj, name))
            patcher = mock.patch.object(obj, name, spy)
            patcher.start()
            self._patches.append(patcher)
            return spy

        def stopall(self):
            while self._patches:
                self._patches.pop().stop()


    @pytest.fixture
    def mocker():
        helper = _Mocker()
        yield helper
        helper.stopall()
'''

#: Stand-ins for the helper modules the sdist leaves out, written for lrtrack: the task classes
#: the upstream tests name, each with model, optimizer (SGD at lr=1e-5, the start the LR-history
#: tests expect), criterion, device and loaders (a 90/10 split with validate=True).
STAND_INS = {
    "conftest.py": '''
        """Seeds every test run the same way; --cpu_only keeps CUDA out."""
        import os
        import random

        import numpy as np
        import torch


        def pytest_addoption(parser):
            parser.addoption("--cpu_only", action="store_true", help="run every task on the CPU")


        def pytest_configure(config):
            if config.getoption("--cpu_only"):
                os.environ["LRTRACK_UPSTREAM_CPU_ONLY"] = "1"
            random.seed(1)
            np.random.seed(1)
            torch.manual_seed(1)
    ''',
    "dataset.py": '''
        """Small data sets: bit parity (tensor inputs), words (non-tensor inputs), noise."""
        import random

        import torch
        from torch.utils.data import Dataset


        class ParityDataset(Dataset):
            """``n`` rows of ``bits`` random bits; the label (a float) is their parity."""

            def __init__(self, n, bits=8, extras=0):
                self.x = torch.randint(0, 2, (n, bits)).float()
                self.y = (self.x.sum(dim=1, keepdim=True) % 2).float()
                self.extras = torch.randint(0, 2, (n, extras))

            def __len__(self):
                return len(self.x)

            def __getitem__(self, i):
                if self.extras.shape[1]:  # [x, y, extra, ...]: more than (inputs, labels)
                    return [self.x[i], self.y[i], *self.extras[i]]
                return self.x[i], self.y[i]


        class WordsDataset(Dataset):
            """Random lowercase words (str, not tensors); the class is 1 when 'a' occurs twice."""

            def __init__(self, n=40, seed=0):
                rng = random.Random(seed)
                self.words = [
                    "".join(rng.choice("abcde") for _ in range(rng.randint(3, 7))) for _ in range(n)
                ]
                self.labels = [int(word.count("a") >= 2) for word in self.words]

            def __len__(self):
                return len(self.words)

            def __getitem__(self, i):
                return self.words[i], self.labels[i]


        class RandomDataset(Dataset):
            """``length`` rows of 4 uniform features with one uniform target."""

            def __init__(self, length):
                self.x = torch.rand(length, 4)
                self.y = torch.rand(length, 1)

            def __len__(self):
                return len(self.x)

            def __getitem__(self, i):
                return self.x[i], self.y[i]
    ''',
    "model.py": '''
        """Models for the stand-in tasks."""
        import torch
        from torch import nn


        class LinearStack(nn.Module):
            """Linear layers of the given widths, no activations."""

            def __init__(self, widths):
                super().__init__()
                self.net = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(widths, widths[1:])))

            def forward(self, x):
                return self.net(x)


        class CharacterBag(nn.Module):
            """Averages character embeddings of each word: takes a list of str, not a tensor."""

            def __init__(self, classes=2, dim=6):
                super().__init__()
                self.embed = nn.EmbeddingBag(128, dim, mode="mean")
                self.out = nn.Linear(dim, classes)

            def forward(self, words):
                device = self.out.weight.device
                codes = torch.tensor([ord(c) for w in words for c in w], device=device)
                lengths = torch.tensor([0] + [len(w) for w in words[:-1]], device=device)
                bags = self.embed(codes, torch.cumsum(lengths, dim=0))
                return torch.log_softmax(self.out(bags), dim=1)
    ''',
    "task.py": '''
        """The tasks the upstream tests name; any class here ending in Task is collected."""
        import os

        import torch
        from torch import nn
        from torch.utils.data import DataLoader, Subset

        from dataset import ParityDataset, WordsDataset
        from model import CharacterBag, LinearStack


        def use_cuda():
            return torch.cuda.is_available() and not os.environ.get("LRTRACK_UPSTREAM_CPU_ONLY")


        def _loaders(data, batch_size, validate, collate_fn=None):
            def loader(part):
                return DataLoader(part, batch_size=batch_size, collate_fn=collate_fn)

            if not validate:
                return loader(data), None
            cut = int(len(data) * 0.9)
            return loader(Subset(data, range(cut))), loader(Subset(data, range(cut, len(data))))


        def _words_and_labels(items):
            return [word for word, _ in items], torch.tensor([label for _, label in items])


        class BaseTask:
            """Holds batch_size, model, optimizer, criterion, device and the two loaders."""

            def _place(self):
                self.device = torch.device("cuda") if use_cuda() else None
                if self.device is not None:
                    self.model.to(self.device)


        class XORTask(BaseTask):
            def __init__(self, batch_size=8, steps=100, validate=False, extras=0):
                self.batch_size = batch_size
                data = ParityDataset(batch_size * steps, extras=extras)
                self.train_loader, self.val_loader = _loaders(data, batch_size, validate)
                self.model = LinearStack([8, 4, 1])
                self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-5)
                self.criterion = nn.MSELoss()
                self._place()


        class ExtraXORTask(XORTask):
            """Batches carry two extra items after (inputs, labels)."""

            def __init__(self, batch_size=8, steps=100, validate=False):
                super().__init__(batch_size, steps, validate, extras=2)


        class DiscriminativeLearningRateTask(XORTask):
            """Two parameter groups with different LRs (1e-3 and 1e-5), SGD with momentum."""

            def __init__(self, batch_size=8, steps=100, validate=False):
                super().__init__(batch_size, steps, validate)
                first, second = self.model.net[0], self.model.net[1]
                self.optimizer = torch.optim.SGD(
                    [{"params": first.parameters(), "lr": 1e-3},
                     {"params": second.parameters(), "lr": 1e-5}],
                    lr=1e-5,
                    momentum=0.5,
                )


        class SimplePOSTaggerTask(BaseTask):
            """Inputs are lists of words (not tensors); NLL loss on two classes."""

            def __init__(self, batch_size=2, steps=100, validate=False):
                self.batch_size = batch_size
                data = WordsDataset()
                self.train_loader, self.val_loader = _loaders(
                    data, batch_size, validate, collate_fn=_words_and_labels
                )
                self.model = CharacterBag()
                self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-5)
                self.criterion = nn.NLLLoss()
                self._place()
    ''',
}

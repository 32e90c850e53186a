"""One switch for the suggestion rule (issue 22): ``finder.suggestion`` is the rule the training
bounds use unless ``bounds.max_lr_rule`` is set; ``finder.probe_steps=0`` with the default rule
picks the documented curve rule (``minimum``) with a one-line notice."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lrtrack.app.config import NO_PROBES_RULE, max_lr_rule, suggestion_rule
from tests.conftest import composed, errors_of, run_cli_here

SMOKE = ["+experiment=smoke"]


def test_finder_suggestion_is_the_bounds_rule_unless_max_lr_rule_is_set() -> None:
    assert (suggestion_rule(composed()), max_lr_rule(composed())) == (("confirmed", None), "confirmed")
    cfg = composed("finder.suggestion=valley")
    assert (suggestion_rule(cfg)[0], max_lr_rule(cfg)) == ("valley", "valley")
    cfg = composed("finder.suggestion=valley", "bounds.max_lr_rule=min_loss_div10")
    assert (suggestion_rule(cfg)[0], max_lr_rule(cfg)) == ("valley", "min_loss_div10")


def test_no_probes_with_the_default_rule_picks_the_documented_curve_rule() -> None:
    cfg = composed("finder.probe_steps=0")
    assert errors_of(cfg) == []
    rule, notice = suggestion_rule(cfg)
    assert (rule, max_lr_rule(cfg)) == (NO_PROBES_RULE, NO_PROBES_RULE) == ("minimum", "minimum")
    assert notice == ("finder.probe_steps=0: no confirmation probes, so the suggestion is the 'minimum' curve rule "
                      "(set finder.suggestion to choose another)")
    assert suggestion_rule(composed("finder.probe_steps=0", "finder.suggestion=valley")) == ("valley", None)
    # Asked for by name, confirmed without probes is still an error (it would have no answer).
    assert errors_of(composed("finder.probe_steps=0", "bounds.max_lr_rule=confirmed")) == [
        "bounds.max_lr_rule='confirmed' is invalid: needs the confirmation probes, but finder.probe_steps=0; set "
        "finder.probe_steps=null (auto), or bounds.max_lr_rule=null (finder.suggestion's rule) or a curve rule "
        "(steepest, valley, minimum, slide)"]


def _final_params(tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lrtrack-mnist_cnn")
    runs = {r.data.tags["lrtrack.stage"]: r for r in client.search_runs([exp.experiment_id])}
    return runs["explore"].data.tags, runs["final"].data.params


@pytest.mark.slow
def test_the_readmes_no_probe_command_works_in_the_default_stage(tmp_path: Path) -> None:
    proc = run_cli_here(["+model=mnist_cnn", *SMOKE, "finder.probe_steps=0", "finder.suggestion=valley"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    tags, params = _final_params(tmp_path)
    assert tags["lrtrack.suggestion_rule"] == "valley"
    assert params["bounds.rule_used"].startswith("max_lr = valley suggestion")
    assert float(params["bounds.max_lr_used"]) == pytest.approx(float(tags["lrtrack.suggestion.valley"]), rel=1e-5)


@pytest.mark.slow
def test_probes_off_alone_trains_with_the_minimum_rule_and_says_so_once(tmp_path: Path) -> None:
    proc = run_cli_here(["+model=mnist_cnn", *SMOKE, "finder.probe_steps=0"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("finder.probe_steps=0: no confirmation probes, so the suggestion is the 'minimum' curve rule") == 1
    tags, params = _final_params(tmp_path)
    assert tags["lrtrack.suggestion_rule"] == "minimum"
    assert params["bounds.rule_used"].startswith("max_lr = minimum suggestion")

"""What a range test's curve showed, when it leaves no LR to suggest (no Hydra, no MLflow).

A rule that finds no suggestion says why in its own terms ("no fixed-LR probe lowered the loss",
"lower the start LR"), which blames the LR for what is often the data or the model: a loss that was
not finite from the first step, a loss that never moved. :func:`curve_diagnosis` names that, and
:func:`no_suggestion_message` makes the one line a user sees, with what the data checks noted
(:mod:`lrtrack.data.checks`: inputs far from normalised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: A loss whose spread over the whole sweep is below this share of its level "never moved".
FLAT_SHARE = 1e-3


def curve_diagnosis(lrs: Sequence[float], losses: Sequence[float]) -> str | None:
    """One phrase on what the curve showed that no LR explains, or None when it looks like a curve."""
    if not losses:
        return "the range test recorded no step"
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if bad is not None and bad <= 1:
        return (f"the loss was not finite from step {bad} (lr {lrs[bad]:.3g}), before the LR could matter: the "
                "data (inf/NaN, values far from normalised) or the model's initialisation, not the LR")
    finite = [v for v in losses[: bad if bad is not None else len(losses)]]
    spread = max(finite) - min(finite)
    level = max(abs(finite[0]), 1e-12)
    if len(finite) > 2 and spread <= FLAT_SHARE * level:
        return (f"the loss never moved ({finite[0]:.4g} over {len(finite)} steps, lr {lrs[0]:.3g} to "
                f"{lrs[len(finite) - 1]:.3g}): the model is not learning (frozen or disconnected parameters, "
                "constant inputs or targets), whatever the LR")
    return None  # a loss that turned non-finite later is the LR's doing: the rules' reasons say so


def no_suggestion_message(reason: str, lrs: Sequence[float], losses: Sequence[float],
                          data_notes: Sequence[str] = ()) -> str:
    """The line shown when the chosen rule has no suggestion: what the curve showed (and what the data
    checks noted) when that explains it, else the rule's own ``reason``."""
    shown = curve_diagnosis(lrs, losses)
    if shown is None and not data_notes:
        return reason
    what = "; ".join([*(x for x in [shown] if x), *data_notes])
    return (f"no learning rate can be suggested: {what}; fix that and run the range test again, or set "
            "bounds.max_lr to an explicit LR")

"""The validation curve a training stage reports (train, prune, distill) and an HPO trial's.

`validation_scorer` and `curve_callback` give a stage's `fit` its `on_epoch`: the job's metric
on validation rows, added to `StageContext.curve` when a point is due. `trial_curve` is the
curve a run starts with: wired to the pruner rebuilt from its trial context when there is one.
Torch and Optuna are imported where they are used (the control plane imports no ML library).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kompaktor.evaluate import has_rows, higher_is_better, scorer
from kompaktor.models import Predictor
from kompaktor.stages.base import Curve, StageContext

if TYPE_CHECKING:
    from torch import nn

    from kompaktor.api.run import TrialContext
    from kompaktor.data import Dataset

#: The job's metric on fixed rows as a function of the model's predictor.
Scorer = Callable[[Predictor], float]


def validation_scorer(ctx: StageContext[Any], data: Dataset | None = None) -> Scorer | None:
    """The job's metric on the validation rows of `data` (default: the run's dataset), for
    scoring again and again; the reference's predictions (fidelity) are made once. None when
    there are no validation rows."""
    data = ctx.dataset if data is None else data
    if not has_rows(data, "val"):
        return None
    from kompaktor.models import predictor_for

    reference = predictor_for(ctx.reference) if ctx.metric == "fidelity" else None
    return scorer(ctx.metric, data, "val", reference)


def curve_callback(
    curve: Curve,
    score: Scorer | None,
    module: nn.Module,
    epochs: int,
    first: int = 0,
) -> Callable[[int, float], bool] | None:
    """`fit`'s `on_epoch`: scores `module` into `curve` when a point is due and answers whether
    to stop (pruned). Epoch e of this fit is epoch first + e of the `epochs` the run reports
    for. None when there is nothing to score on."""
    if score is None:
        return None
    from kompaktor.models.predict import TorchPredictor

    def on_epoch(epoch: int, _loss: float) -> bool:
        return curve.after_epoch(first + epoch, epochs, lambda: score(TorchPredictor(module)))

    return on_epoch


def trial_curve(context: TrialContext | None, metric: str, log: Callable[[str], None]) -> Curve:
    """A run's validation curve; in an HPO trial with a pruner (`context`), a point every
    `context.stride` epochs, each judged by the study rebuilt from the finished trials."""
    maximize = higher_is_better(metric)
    if context is None:
        return Curve(maximize=maximize, log=log)
    from kompaktor.search.pruning import TrialPruner

    pruner = TrialPruner(context)
    return Curve(stride=context.stride, prune=pruner.report, maximize=maximize, log=log)

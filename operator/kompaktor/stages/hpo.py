"""hpo: search another stage's params with Optuna; each trial is one run of that stage.

The plan runs the trials (as pods, in parallel) and keeps them in `status.trials`; the search
is pure functions over those records, in the modules beside this one: what to try next
(`hpo_proposals.propose`), how a finished run scores (`hpo_scoring.trial_values`), when the
search is over (`hpo_proposals.is_done`) and which trial wins (`hpo_winner.select_best`).
Nothing is kept between calls, so a controller restart loses nothing, and the same records and
seed always give the same proposals. `HpoStage.run` drives the same functions in-process
(`hpo_inprocess`) for `kompaktor stage run --type hpo`.

This module is the stage type; one job a module beside it: `hpo_params` (the params model and
search space), `hpo_fields` and `hpo_target` (the target stage's params as the search sees
them), `hpo_checks` (pre-flight), `hpo_proposals` (the next points, the budget), `hpo_pruning`
(trial curves and pruning context), `hpo_scoring` (a trial's values), `hpo_winner` (selection,
Pareto set), `hpo_report` (the stage's result).
"""

from __future__ import annotations

from typing import Any, ClassVar

from kompaktor.models import ModelFormat
from kompaktor.stages.base import (
    PlanContext,
    Precision,
    SparseLayers,
    Stage,
    StageContext,
    StageParams,
    StageResult,
)
from kompaktor.stages.hpo_checks import check
from kompaktor.stages.hpo_params import HpoParams
from kompaktor.stages.hpo_proposals import propose
from kompaktor.stages.hpo_report import result_details
from kompaktor.stages.hpo_target import extremes, target_stage, trial_points

#: The stage type, and the search functions the docs name as hpo's (docs/design-notes.md); the
#: rest of the search is imported from the module that defines it.
__all__ = ["HpoStage", "propose", "result_details"]


def _least_accepted(formats: set[ModelFormat]) -> ModelFormat:
    """Of several formats the winner may have, the one the fewest stage types take: a later
    stage that takes it takes the others too (pt2 and torchscript go wherever onnx goes), so
    validation refuses a later stage that cannot take every possible winner."""
    from kompaktor.stages.base import registry

    stages = registry().values()
    return min(sorted(formats), key=lambda f: sum(f in s.accepts for s in stages))


class HpoStage(Stage[HpoParams]):
    """In a job, the plan runs an hpo stage's trials (as pods, or local processes) through the
    functions of the hpo_* modules. `kompaktor stage run --type hpo` runs the same search
    in-process: trials one after another, in batches of `parallelism` proposed together as the
    plan would."""

    Params: ClassVar[type[StageParams]] = HpoParams
    type: ClassVar[str] = "hpo"
    accepts: ClassVar[frozenset[ModelFormat]] = frozenset({"pt2", "torchscript", "onnx"})
    produces: ClassVar[ModelFormat | None] = None
    sparse_layers: ClassVar[SparseLayers] = "run"  # its trials see them (train fine-tunes them)

    def output_format(self, input_format: ModelFormat, params: HpoParams) -> ModelFormat:
        """The trials' common output format; when the space gives several (quantize's mode:
        bf16 writes pt2, static onnx), the one the fewest stages take, so that a later stage
        that cannot take every possible winner is refused before the search runs."""
        stage = target_stage(params)()
        formats = {stage.output_format(input_format, point) for _, _, point in trial_points(params)}
        return formats.pop() if len(formats) == 1 else _least_accepted(formats)

    def format_cause(
        self, input_format: ModelFormat, params: HpoParams, output: ModelFormat
    ) -> str | None:
        """The searched params whose values decide that the target writes `output` models: the
        search may pick any of them (None when no searched value changes the format)."""
        stage = target_stage(params)()
        formats: dict[str, list[tuple[Any, ModelFormat]]] = {}
        for key, value, point in trial_points(params):
            if key is not None:
                formats.setdefault(key, []).append(
                    (value, stage.output_format(input_format, point))
                )
        leads = {
            key: [value for value, made in pairs if made == output]
            for key, pairs in formats.items()
            if len({made for _, made in pairs}) > 1
        }
        leads = {key: values for key, values in leads.items() if values}
        if not leads:
            return None
        return "; ".join(
            f"params.space.{key}: {', '.join(map(str, values))} (of "
            f"{', '.join(map(str, extremes(params)[key]))}) "
            f"{'makes' if len(values) == 1 else 'make'} {params.target} write {output} models, "
            f"and the search may pick {'it' if len(values) == 1 else 'any of them'}"
            for key, values in leads.items()
        )

    def output_precision(self, input_precision: Precision, params: HpoParams) -> Precision:
        """The trials' common output precision; when they differ, the first that differs from
        the input's (the winner may be quantized: a later stage must allow for it)."""
        stage = target_stage(params)()
        precisions = [
            stage.output_precision(input_precision, point) for _, _, point in trial_points(params)
        ]
        if len(set(precisions)) == 1:
            return precisions[0]
        return next(p for p in precisions if p != input_precision)

    def check(self, params: HpoParams, plan: PlanContext) -> None:
        check(params, plan)

    def preflight(self, params: HpoParams) -> None:
        check(params)

    def run(self, ctx: StageContext[HpoParams]) -> StageResult:
        from kompaktor.stages.hpo_inprocess import run_search

        return run_search(ctx)

"""`kompaktor params`: the stage params reference, generated from the Params models, and the
committed docs/stages.md that must match them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kompaktor.cli import main
from kompaktor.stages import registry
from kompaktor.stages.reference import (
    REFERENCE_PATH,
    REGENERATE,
    param_docs,
    render_markdown,
    stage_types,
)

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stage_reference_is_up_to_date() -> None:
    committed = (ROOT / REFERENCE_PATH).read_text()
    assert committed == render_markdown(stage_types()), (
        f"{REFERENCE_PATH} is stale: run `{REGENERATE}`"
    )


def test_the_reference_covers_every_built_in_type_and_param() -> None:
    designed = ["benchmark", "compress", "distill", "hpo", "prune", "quantize", "train"]
    assert stage_types() == designed
    for stage_type in stage_types():
        model = registry()[stage_type].Params
        top = [row.name for row in param_docs(model) if "." not in row.name and "[" not in row.name]
        assert top == [info.alias or name for name, info in model.model_fields.items()]


def test_params_prints_a_type_with_types_defaults_bounds_and_descriptions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["params", "train"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("train: Fine-tune the model")
    assert "\n  lr: number, default 0.001, > 0\n      Learning rate.\n" in out
    assert "\n  optimizer: string, default adam, one of adam, adamw, sgd\n" in out
    assert "\n  seed: integer, default unset\n" in out
    assert "hpo" not in out.split("\n", 1)[0]


def test_the_hpo_search_params_are_listed_with_their_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["params", "hpo"]) == 0
    out = capsys.readouterr().out
    assert "\n  target: string, default required, one of train, prune, distill, " in out
    assert "\n  objectives: list of string, default [metric], one of metric, latency, size\n" in out
    assert "\n  select: string, default best-metric, one of best-metric, " in out
    assert "\n  sampler: string, default tpe, one of grid, random, tpe, gp, cmaes, nsga2\n" in out
    assert "\n  pruner: string, default none, one of none, median, " in out
    assert "\n  space.<name>.low: number, default unset\n" in out


def test_markdown_goes_to_the_file_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "stages.md"
    assert main(["params", "--markdown", "-o", str(target)]) == 0
    assert capsys.readouterr().out == ""
    text = target.read_text()
    assert text == render_markdown(stage_types())
    assert "| `teacher.fromStage` | string | unset |  | Name of an earlier stage" in text
    assert "| `featureLayers[].teacher` | string | required |" in text


def test_an_unknown_type_is_refused_with_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["params", "trian"])
    assert "invalid choice: 'trian' (choose from 'benchmark', 'compress'" in capsys.readouterr().err

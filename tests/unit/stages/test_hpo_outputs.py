"""An hpo stage's output format and precision stand for every trial's, not the first one's."""

from __future__ import annotations

from typing import Any

import pytest

from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.errors import JobSpecError
from kompaktor.stages.hpo import HpoStage
from kompaktor.stages.hpo_params import HpoParams
from kompaktor.stages.validate import validate_job


def spec(modes: list[str], *after: dict[str, Any]) -> OptimizationJobSpec:
    hpo = {
        "name": "tune",
        "type": "hpo",
        "params": {
            "target": "quantize",
            "sampler": "grid",
            "trials": 10,
            "base": {"calibrationSamples": 64},
            "space": {"mode": {"choices": modes}},
        },
    }
    return OptimizationJobSpec.model_validate(
        {
            "model": {"uri": "file:///m/model.pt2"},
            "dataset": {"uri": "sklearn:digits"},
            "objective": {"metric": "accuracy", "maxDrop": 0.01},
            "stages": [hpo, *after],
        }
    )


TRAIN = {"name": "ft", "type": "train", "params": {"epochs": 1}}
BENCH = {"name": "bench", "type": "benchmark", "params": {}}


@pytest.mark.parametrize("modes", [["bf16", "fp16", "static"], ["static", "bf16"], ["fp16"]])
def test_a_stage_that_cannot_take_every_possible_winner_is_refused(modes: list[str]) -> None:
    """bf16 first once passed validation: the static-int8 ONNX won and train failed on it."""
    with pytest.raises(JobSpecError, match=r"ft.*cannot take onnx models"):
        validate_job(spec(modes, TRAIN))


@pytest.mark.parametrize("modes", [["bf16", "fp16", "static"], ["bf16"]])
def test_a_space_with_several_output_formats_is_fine_last_or_before_a_stage_taking_all(
    modes: list[str],
) -> None:
    validate_job(spec(modes))
    validate_job(spec(modes, BENCH))


def test_a_single_format_space_keeps_its_format() -> None:
    validate_job(spec(["bf16"], TRAIN))  # bf16 writes pt2: train takes it
    p = HpoParams.model_validate(spec(["bf16"]).stages[0].params)
    assert HpoStage().output_format("pt2", p) == "pt2"
    assert HpoStage().output_precision("float32", p) == "bf16"


def test_mixed_outputs_give_the_format_fewest_stages_take_and_a_quantized_precision() -> None:
    p = HpoParams.model_validate(spec(["bf16", "fp16", "static"]).stages[0].params)
    assert HpoStage().output_format("pt2", p) == "onnx"
    assert HpoStage().output_precision("float32", p) == "bf16"


def test_the_refusal_names_the_hpo_stage_the_search_param_and_the_values_behind_it() -> None:
    with pytest.raises(JobSpecError) as error:
        validate_job(spec(["bf16", "fp16", "static"], TRAIN))
    assert str(error.value) == (
        "stage 'ft' (spec.stages[1], train): cannot take onnx models (it needs pt2, "
        "torchscript), and stage 'tune' (spec.stages[0], hpo): params.space.mode: fp16, static "
        "(of bf16, fp16, static) make quantize write onnx models, and the search may pick any "
        "of them; keep only choices that give pt2 or torchscript models"
    )
    two = spec(["static", "bf16"], TRAIN).model_dump(by_alias=True)
    two["stages"][0]["params"]["space"]["calibrationSamples"] = {"low": 16, "high": 64}
    del two["stages"][0]["params"]["base"]["calibrationSamples"]
    with pytest.raises(JobSpecError) as error:  # only the param that decides the format
        validate_job(OptimizationJobSpec.model_validate(two))
    assert "params.space.mode: static (of static, bf16) makes quantize write onnx" in str(
        error.value
    )
    assert "calibrationSamples" not in str(error.value)


def test_a_format_no_search_param_chooses_is_refused_as_before() -> None:
    with pytest.raises(JobSpecError) as error:
        validate_job(spec(["fp16"], TRAIN))
    assert "params.space" not in str(error.value)
    assert "the stage before it or spec.model.uri gives onnx" in str(error.value)

# ruff: noqa: F811  (fixtures are imported from the shared support modules)
"""The compress stage on the trained digits CNN: low rank really removes parameters at the
chosen energy, an impossible rank is named, weight sharing leaves at most k values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from compress_quantize_support import (  # noqa: F401  (fixtures)
    cancer_data,
    cancer_mlp,
    cancer_mlp_state,
)
from prune_distill_support import (  # noqa: F401  (fixtures)
    accuracy,
    context,
    digits_cnn,
    digits_cnn_state,
    digits_data,
    no_training,
)
from torch import fx, nn

from kompaktor.compression import choose_rank
from kompaktor.compression.codebook import CodebookWeight
from kompaktor.data import Dataset
from kompaktor.errors import JobSpecError, StageError
from kompaktor.stages.base import PlanContext, StageResult
from kompaktor.stages.compress import CompressParams, CompressStage
from kompaktor.stages.validate import parse_params
from kompaktor.surgery import stored_elements


def run(params: dict[str, Any], model: nn.Module, data: Dataset, tmp_path: Path) -> StageResult:
    return CompressStage().run(
        context(CompressParams.model_validate(params), model, data, tmp_path)
    )


def test_rank_from_energy_is_the_smallest_that_reaches_it() -> None:
    singular = torch.tensor([3.0, 2.0, 1.0, 0.5])  # squares 9, 4, 1, .25 of 14.25
    assert choose_rank(singular, 4, 4, energy=0.6) == 1
    assert choose_rank(singular, 4, 4, energy=0.9) == 2
    assert choose_rank(singular, 4, 4, energy=1.0) == 4
    assert choose_rank(singular, 100, 100, ratio=0.1) == 5


def test_lowrank_keeps_the_energy_and_the_accuracy_with_fewer_parameters(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    before, acc = stored_elements(digits_cnn), accuracy(digits_cnn, digits_data)
    untuned = run({"energy": 0.9, "fineTuneEpochs": 0}, digits_cnn, digits_data, tmp_path)
    ranks = untuned.details["ranks"]
    assert all(r["energyKept"] >= 0.9 for r in ranks.values())
    assert ranks["fc1"]["factorized"] and ranks["fc1"]["rank"] < ranks["fc1"]["fullRank"]
    assert not ranks["conv1"]["factorized"]  # 9 inputs: a rank-6 split would add parameters
    assert stored_elements(untuned.module) == untuned.metrics["parametersAfter"] < 0.8 * before
    assert untuned.metrics["parametersBefore"] == before
    assert accuracy(untuned.module, digits_data) >= acc - 0.1
    tuned = run({"energy": 0.9, "fineTuneEpochs": 1}, digits_cnn, digits_data, tmp_path)
    assert accuracy(tuned.module, digits_data) >= acc - 0.02
    program = torch.export.export(  # the rewritten graph still exports, batch size free
        tuned.module, (torch.zeros(3, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim.AUTO},)
    )
    assert sum(v.numel() for v in program.state_dict.values()) == stored_elements(tuned.module)


def test_lowrank_on_an_mlp_with_a_target_ratio(
    cancer_mlp: fx.GraphModule, cancer_data: Dataset, tmp_path: Path
) -> None:
    acc = accuracy(cancer_mlp, cancer_data)
    result = run({"ratio": 0.25, "fineTuneEpochs": 2}, cancer_mlp, cancer_data, tmp_path)
    assert result.metrics["parametersAfter"] < 0.4 * result.metrics["parametersBefore"]
    assert accuracy(result.module, cancer_data) >= acc - 0.03


def test_a_rank_above_a_layers_full_rank_is_named(
    digits_cnn: fx.GraphModule,
    digits_data: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_training(monkeypatch)  # the error comes before any training
    with pytest.raises(
        StageError, match=r"params\.rank: 12 is larger than layer fc2's full rank 10"
    ):
        run({"rank": 12, "skip": ["conv1"], "fineTuneEpochs": 1}, digits_cnn, digits_data, tmp_path)


@pytest.mark.parametrize("clusters", [4, 16])
def test_weight_sharing_leaves_at_most_k_values_per_layer(
    clusters: int, digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    acc = accuracy(digits_cnn, digits_data)
    result = run(
        {"method": "weightsharing", "clusters": clusters, "fineTuneEpochs": 1},
        digits_cnn,
        digits_data,
        tmp_path,
    )
    out = result.module
    for layer in ("conv1", "conv2", "fc1", "fc2"):
        encoded = out.get_submodule(f"{layer}.weight")
        assert isinstance(encoded, CodebookWeight), layer  # no float weight is stored
        values = torch.unique(encoded())
        assert len(values) == result.details["clusters"][layer] <= clusters, layer
        assert sorted(values.tolist()) == pytest.approx(
            sorted(result.details["codebooks"][layer]), abs=1e-6
        )
        assert result.details["indexBits"][layer] == {4: 2, 16: 4}[clusters]
    assert result.metrics["bitsPerWeight"] < {4: 2.1, 16: 4.1}[clusters]
    assert result.metrics["storedBytesAfter"] < 0.2 * result.metrics["storedBytesBefore"]
    assert accuracy(out, digits_data) >= acc - (0.1 if clusters == 4 else 0.02)
    assert len(torch.unique(digits_cnn.get_parameter("fc1.weight"))) > 256  # input untouched


def test_rank_rules_exclude_each_other() -> None:
    with pytest.raises(JobSpecError, match=r"give one of energy, ratio, rank"):
        parse_params("compress", {"energy": 0.9, "rank": 4}, "stages[0] (compress)")


@pytest.mark.parametrize("clusters", [0, 1, 257])
def test_clusters_outside_2_to_256_are_refused(clusters: int) -> None:
    with pytest.raises(JobSpecError) as error:
        parse_params(
            "compress", {"method": "weightsharing", "clusters": clusters}, "stages[0] (compress)"
        )
    assert str(error.value).startswith("stages[0] (compress): params.clusters: ")
    assert ("256" if clusters > 256 else "2") in str(error.value)


@pytest.mark.parametrize("method", ["lowrank", "weightsharing"])
def test_a_torchscript_input_is_refused_at_validation(method: str) -> None:
    with pytest.raises(ValueError, match=rf"params\.method: {method} needs a pt2 model"):
        CompressStage().check(
            CompressParams(method=method),  # type: ignore[arg-type]
            PlanContext("compress", "torchscript", (), "classification"),
        )

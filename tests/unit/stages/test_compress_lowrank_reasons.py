"""The compress stage (lowrank) on a trained conv1d model of digit rows: the conv1d layer is
factorized, and every layer left whole is in details.ranks and the log with the reason (a
depthwise convolution, a layer params.skip names). Before, conv1d layers were silently never
factorized and layers left whole were missing from the report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from prune_distill_support import accuracy, context, digits
from torch import fx, nn

from kompaktor.data import Dataset
from kompaktor.models import load_model, save_torch
from kompaktor.stages.compress import CompressParams, CompressStage
from kompaktor.training import fit


class RowsCNN(nn.Module):
    """Each 8×8 digit as a sequence of 8 steps with 8 channels (its rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 32, 3, padding=1)
        self.depthwise = nn.Conv1d(32, 32, 3, padding=1, groups=32)
        self.head = nn.Linear(32 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.depthwise(torch.relu(self.conv(x))))
        out: torch.Tensor = self.head(x.flatten(1))
        return out


@pytest.fixture(scope="module")
def rows_data() -> Dataset:
    data: Dataset = digits()
    return replace(data, x={split: (x[0][:, 0],) for split, x in data.x.items()})


@pytest.fixture(scope="module")
def rows_cnn(rows_data: Dataset) -> fx.GraphModule:
    torch.manual_seed(0)
    model = fit(RowsCNN(), rows_data, epochs=4, lr=1e-2, batch_size=32, seed=0).eval()
    program = torch.export.export(
        model, (torch.zeros(4, 8, 8),), dynamic_shapes=({0: torch.export.Dim.AUTO},)
    )
    return program.module()


def test_the_report_names_the_factorized_conv1d_and_why_the_others_stay(
    rows_cnn: fx.GraphModule, rows_data: Dataset, tmp_path: Path
) -> None:
    acc = accuracy(rows_cnn, rows_data)
    assert acc > 0.9
    params = CompressParams.model_validate({"rank": 4, "skip": ["head"], "fineTuneEpochs": 1})
    lines: list[str] = []
    ctx = replace(context(params, rows_cnn, rows_data, tmp_path), log=lines.append)
    result = CompressStage().run(ctx)
    ranks = result.details["ranks"]
    conv = dict(ranks["conv"])
    assert 0.5 < conv.pop("energyKept") < 1.0
    assert conv == {"rank": 4, "fullRank": 24, "factorized": True}  # no reason: replaced
    assert ranks["depthwise"] == {
        "rank": 1,
        "fullRank": 1,
        "energyKept": 1.0,
        "factorized": False,
        "groups": 32,
        "reason": "depthwise convolution: nothing to factorize (each group is one filter)",
    }
    assert ranks["head"]["reason"] == "skipped by params.skip ('head')"
    assert not ranks["head"]["factorized"]
    assert result.metrics["layersFactorized"] == 1.0
    # conv: 32·24 weights become 4·(24 + 32)
    saved = 32 * 24 - 4 * (24 + 32)
    assert result.metrics["parametersBefore"] - result.metrics["parametersAfter"] == saved
    assert any(
        "2 layer(s) left as they are" in line
        and "depthwise: depthwise convolution" in line
        and "head: skipped by params.skip" in line
        for line in lines
    )
    json.dumps(result.details)  # what result.json gets
    assert accuracy(result.module, rows_data) >= acc - 0.05
    path = save_torch(result.module, (torch.zeros(2, 8, 8),), tmp_path / "out.pt2")
    loaded = load_model(path).module
    assert loaded is not None
    assert accuracy(loaded, rows_data) == accuracy(result.module, rows_data)

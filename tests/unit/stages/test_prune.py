"""The prune stage on a trained digits CNN: sparsity reached, zeros exact, channels really gone."""

# ruff: noqa: F811  (fixtures are imported from the shared support module)

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from prune_distill_support import (  # noqa: F401  (fixtures)
    accuracy,
    context,
    digits_cnn,
    digits_cnn_state,
    digits_data,
    exported,
)
from torch import fx, nn

from kompaktor.data import Dataset
from kompaktor.errors import JobSpecError, StageError
from kompaktor.stages.base import PlanContext
from kompaktor.stages.prune import PruneParams, PruneStage
from kompaktor.stages.validate import parse_params
from kompaktor.surgery import multiply_adds, prunable_weights, sparsity_of

PRUNED_LAYERS = ("conv1", "conv2", "fc1")


def run(params: dict[str, object], model: fx.GraphModule, data: Dataset, tmp_path: Path):  # type: ignore[no-untyped-def]
    ctx = context(PruneParams.model_validate(params), model, data, tmp_path)
    return PruneStage().run(ctx)


def masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: w.detach() != 0 for name, w in prunable_weights(model).items()}


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_reaches_the_requested_sparsity(
    scope: str, digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    result = run(
        {"method": "magnitude", "scope": scope, "sparsity": 0.8, "fineTuneEpochs": 1},
        digits_cnn,
        digits_data,
        tmp_path,
    )
    weights = prunable_weights(result.module)
    assert set(weights) == set(PRUNED_LAYERS)  # the classifier (fc2) is kept whole
    assert abs(sparsity_of(weights) - 0.8) <= 0.01
    assert abs(result.metrics["sparsity"] - 0.8) <= 0.01
    assert int((result.module.fc2.weight == 0).sum()) == 0
    if scope == "layer":
        for name, w in weights.items():
            assert abs(sparsity_of({name: w}) - 0.8) <= 0.01, name
    else:  # global ranking prunes the big fc1 harder than the small conv1
        assert sparsity_of({"fc1": weights["fc1"]}) > sparsity_of({"conv1": weights["conv1"]})
    assert accuracy(result.module, digits_data) >= 0.85


def test_zeros_survive_iterative_fine_tuning(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    result = run(
        {"sparsity": 0.9, "steps": 3, "schedule": "cubic", "fineTuneEpochs": 2, "l1": 1e-5},
        digits_cnn,
        digits_data,
        tmp_path,
    )
    assert abs(sparsity_of(prunable_weights(result.module)) - 0.9) <= 0.01
    assert result.details["schedule"][-1] == pytest.approx(0.9)
    assert result.details["schedule"][0] > 0.9 / 3  # cubic front-loads the pruning
    assert accuracy(result.module, digits_data) >= 0.8


def test_taylor_reaches_sparsity_with_a_different_mask_than_magnitude(
    digits_cnn_state: dict[str, torch.Tensor], digits_data: Dataset, tmp_path: Path
) -> None:
    from prune_distill_support import DigitsCNN

    found = {}
    for method in ("magnitude", "taylor"):
        model = DigitsCNN()
        model.load_state_dict(digits_cnn_state)
        result = run(
            {"method": method, "sparsity": 0.7, "fineTuneEpochs": 0, "taylorBatches": 4},
            exported(model),
            digits_data,
            tmp_path,
        )
        assert abs(result.metrics["sparsity"] - 0.7) <= 0.01
        found[method] = masks(result.module)
    differing = sum(int((found["magnitude"][n] != found["taylor"][n]).sum()) for n in PRUNED_LAYERS)
    total = sum(m.numel() for m in found["magnitude"].values())
    assert differing > 0.02 * total


def test_structured_removes_channels_for_real(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    example = (torch.as_tensor(digits_data.x["test"][0][:5]),)
    macs_before = multiply_adds(digits_cnn, example)
    result = run(
        {"method": "structured", "sparsity": 0.5, "fineTuneEpochs": 2},
        digits_cnn,
        digits_data,
        tmp_path,
    )
    module = result.module
    assert module.conv1.weight.shape == (8, 1, 3, 3)
    assert module.bn1.running_mean.shape == (8,)
    assert module.conv2.weight.shape == (16, 8, 3, 3)
    assert module.fc1.weight.shape == (32, 16 * 16)
    assert module.fc2.weight.shape == (10, 32)  # the output layer keeps its classes
    assert result.details["notPruned"] == {"fc2": "feeds the model's output"}
    m = result.metrics
    assert m["channelsRemoved"] == 8 + 16 + 32
    assert m["parametersAfter"] < 0.35 * m["parametersBefore"]
    assert multiply_adds(module, example) < 0.4 * macs_before
    reexported = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim.AUTO},))
    assert reexported.module()(example[0]).shape == (5, 10)
    assert accuracy(module, digits_data) >= 0.85


class Branches(nn.Module):
    """Two branches concatenated (which pins their channels) and a depthwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.head(x.mean(dim=(2, 3)))  # type: ignore[no-any-return]


def test_structured_says_what_keeps_each_layer(digits_data: Dataset, tmp_path: Path) -> None:
    """It said "no layer has removable channels" and left the user to guess which op."""
    batch = {0: torch.export.Dim.AUTO}
    gm = torch.export.export(Branches(), (torch.randn(2, 1, 8, 8),), dynamic_shapes=(batch,))
    gm = gm.module()
    with pytest.raises(StageError) as caught:
        run({"method": "structured", "sparsity": 0.5}, gm, digits_data, tmp_path)
    message = str(caught.value)
    assert "a: feeds aten.cat; b: feeds aten.cat" in message
    assert "dw: is a grouped (depthwise) convolution" in message
    assert "head: feeds the model's output" in message


def test_structured_taylor_criterion_and_skip(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    result = run(
        {
            "method": "structured",
            "criterion": "taylor",
            "sparsity": 0.25,
            "steps": 2,
            "fineTuneEpochs": 0,
            "skip": ["fc*"],
        },
        digits_cnn,
        digits_data,
        tmp_path,
    )
    assert result.details["channels"] == {"conv1": [16, 12], "conv2": [32, 24]}
    assert result.module.fc1.weight.shape == (64, 24 * 16)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1])
def test_sparsity_outside_the_open_interval_is_rejected(value: float) -> None:
    with pytest.raises(JobSpecError, match=r"params\.sparsity: must be in \(0, 1\)"):
        parse_params("prune", {"sparsity": value}, "stages[0] (prune)")


def test_sparse_runtime_needs_an_unstructured_method() -> None:
    with pytest.raises(JobSpecError, match=r"params\.runtime: sparse needs an unstructured"):
        parse_params("prune", {"method": "structured", "sparsity": 0.5, "runtime": "sparse"}, "s")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_structured_needs_a_pt2_model(fmt: str) -> None:
    params = PruneParams.model_validate({"method": "structured", "sparsity": 0.5})
    plan = PlanContext("prune", fmt, (), "classification")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"params\.method: structured .* pt2 .*got {fmt}"):
        PruneStage().check(params, plan)
    PruneStage().check(params, PlanContext("prune", "pt2", (), "classification"))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_sparse_runtime_needs_a_pt2_model(fmt: str) -> None:
    params = PruneParams.model_validate({"sparsity": 0.9, "runtime": "sparse"})
    plan = PlanContext("prune", fmt, (), "classification")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"params\.runtime: sparse needs a pt2 model \(got {fmt}"):
        PruneStage().check(params, plan)
    PruneStage().check(params, PlanContext("prune", "pt2", (), "classification"))


def test_sparse_runtime_keeps_the_pruned_function(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    dense = run(
        {"sparsity": 0.8, "fineTuneEpochs": 0}, copy.deepcopy(digits_cnn), digits_data, tmp_path
    ).module
    result = run(
        {"sparsity": 0.8, "fineTuneEpochs": 0, "runtime": "sparse"},
        digits_cnn,
        digits_data,
        tmp_path,
    )
    x = torch.as_tensor(digits_data.x["test"][0])
    with torch.no_grad():
        torch.testing.assert_close(result.module(x), dense(x), rtol=1e-4, atol=1e-4)
    assert result.details["runtime"] in {"sparse", "dense (kompaktor_kernels not importable)"}
    if result.details["runtime"] == "sparse":
        assert result.metrics["sparseLayers"] >= 1


def test_sparse_int8_runtime_keeps_the_accuracy(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    """int8 layers from 50 %: the CNN's 60 %-sparse hidden linear layer runs on the int8
    kernels (fp32 keeps it dense, under its 80 %; the output layer is not pruned), within a
    point of the fp32 result."""
    params = {"sparsity": 0.6, "scope": "layer", "fineTuneEpochs": 0, "runtime": "sparse"}
    fp32 = run(params, copy.deepcopy(digits_cnn), digits_data, tmp_path)
    int8 = run({**params, "sparseDtype": "int8"}, digits_cnn, digits_data, tmp_path)
    assert fp32.metrics["sparseLayers"] == 0.0
    assert int8.metrics["sparseLayers"] == 1.0 and int8.details["sparseDtype"] == "int8"
    layers = [m for m in int8.module.modules() if type(m).__name__ == "SparseLinear"]
    assert [m.dtype for m in layers] == [torch.int8]
    assert abs(accuracy(int8.module, digits_data) - accuracy(fp32.module, digits_data)) <= 0.01
    with pytest.raises(
        JobSpecError, match=r"params\.sparseDtype: .*only applies to runtime sparse"
    ):
        parse_params("prune", {"sparsity": 0.5, "sparseDtype": "int8"}, "stages[0] (prune)")


def test_sparse_runtime_logs_the_layers_it_keeps_dense() -> None:
    """An attention block's out_proj is read by its owner, so sparsify keeps it dense and
    warns; the stage's log, not stderr, is where a user looks for that."""
    from types import SimpleNamespace

    from kompaktor.stages.prune import _sparse_runtime

    model = torch.nn.ModuleDict(
        {"attn": torch.nn.MultiheadAttention(16, 2), "head": torch.nn.Linear(16, 4)}
    )
    with torch.no_grad():  # 90 % zeros in every tensor, whatever the random state
        for param in model.parameters():
            param.mul_((torch.arange(param.numel()) % 10 == 0).view_as(param))
    lines: list[str] = []
    params = PruneParams.model_validate({"sparsity": 0.9, "runtime": "sparse"})
    ctx = SimpleNamespace(log=lines.append, params=params)
    metrics: dict[str, float] = {}
    _sparse_runtime(ctx, model, metrics, {})  # type: ignore[arg-type]
    assert metrics["sparseLayers"] == 1.0
    assert any("attn.out_proj: its owner, a MultiheadAttention" in line for line in lines)


def test_sparse_runtime_chains_sparse_layers_feature_major(
    digits_data: Dataset, tmp_path: Path
) -> None:
    """An MLP's two hidden layers both go sparse: the first hands its output on to the second
    feature-major (no transposes between them), the second gives the dense output layer the
    contiguous one it expects. Same function as the dense pruned model."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10),
    )  # fmt: skip
    params = {"sparsity": 0.9, "scope": "layer", "fineTuneEpochs": 0}
    dense = run(params, exported(copy.deepcopy(mlp)), digits_data, tmp_path).module
    result = run({**params, "runtime": "sparse"}, exported(mlp), digits_data, tmp_path)
    if result.details["runtime"] != "sparse":
        pytest.skip("kompaktor_kernels is not importable")
    assert result.metrics["sparseLayers"] == 2.0
    assert result.details["featureMajorOutputs"] == ["1"]
    x = torch.as_tensor(digits_data.x["test"][0][:32])
    with torch.no_grad():
        torch.testing.assert_close(result.module(x), dense(x), rtol=1e-4, atol=1e-4)

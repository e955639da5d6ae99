"""Accuracy-aware int8 (quantize's `exclude` and `fallback: auto`) on a real digits MLP built so
that full int8 collapses: one hidden unit of `classifier.0` has its incoming weights and bias
scaled up 1000x and its outgoing weights down 1000x. The float function is the same, but the
activation between classifier.0 and classifier.2 now has a 1000x range, so its one per-tensor
int8 scale leaves the other units no resolution. Keeping those two layers float recovers it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from compress_quantize_support import onnx_accuracy
from prune_distill_support import accuracy, context, digits, exported
from torch import fx, nn

from kompaktor.data import Dataset
from kompaktor.errors import StageError
from kompaktor.quant import fallback
from kompaktor.quant.fakequant import fake_quantize, layer_names
from kompaktor.stages.base import PlanContext, StageResult
from kompaktor.stages.quantize import QuantizeParams, QuantizeStage

MAX_DROP = 0.02
LAYERS = ["hidden.0", "classifier.0", "classifier.2"]


class OutlierMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.hidden(x.flatten(1)))
        return out


@pytest.fixture(scope="module")
def data() -> Dataset:
    return digits()


@pytest.fixture(scope="module")
def outlier_state(data: Dataset) -> dict[str, torch.Tensor]:
    from kompaktor.training import fit

    torch.manual_seed(0)
    model = fit(OutlierMLP(), data, epochs=8, lr=1e-2, batch_size=32, seed=0)
    first, second = model.classifier[0], model.classifier[2]
    with torch.no_grad():  # the same function in float, a 1000x outlier activation
        unit = int(first.weight.norm(dim=1).argmax())
        first.weight[unit] *= 1000
        first.bias[unit] *= 1000
        second.weight[:, unit] /= 1000
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def outlier_mlp(outlier_state: dict[str, torch.Tensor]) -> fx.GraphModule:
    model = OutlierMLP()
    model.load_state_dict(outlier_state)
    return exported(model)


def run(
    params: dict[str, Any],
    model: nn.Module,
    data: Dataset,
    tmp_path: Path,
    max_drop: float | None = MAX_DROP,
) -> StageResult:
    ctx = context(QuantizeParams.model_validate(params), model, data, tmp_path)
    ctx.max_drop = max_drop
    return QuantizeStage().run(ctx)


def drop(model: nn.Module, result: StageResult, data: Dataset, split: str) -> float:
    assert result.path is not None
    return accuracy(model, data, split) - onnx_accuracy(result.path, data, split)


def float_layers(path: Path) -> set[str]:
    """Layers whose weight is still a float initializer in the quantized file."""
    graph = onnx.load(str(path)).graph
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    return {name for name in LAYERS if f"{name}.weight" in floats}


def test_the_scenario_full_int8_loses_more_than_max_drop(
    outlier_mlp: fx.GraphModule, data: Dataset, tmp_path: Path
) -> None:
    """fallback none (the default) quantizes every layer, as before: far outside maxDrop."""
    result = run({"mode": "static", "calibrationSamples": 128}, outlier_mlp, data, tmp_path)
    assert drop(outlier_mlp, result, data, "val") > 0.5
    assert drop(outlier_mlp, result, data, "test") > 0.5  # the gate would fail it
    assert result.metrics["layersFloat"] == 0 and result.metrics["layersInt8"] == 3
    assert "fallback" not in result.details


def test_auto_keeps_the_outlier_layers_float_and_meets_max_drop(
    outlier_mlp: fx.GraphModule, data: Dataset, tmp_path: Path
) -> None:
    result = run(
        {"mode": "static", "calibrationSamples": 128, "fallback": "auto"},
        outlier_mlp,
        data,
        tmp_path,
    )
    assert result.path is not None
    assert drop(outlier_mlp, result, data, "val") <= MAX_DROP
    assert drop(outlier_mlp, result, data, "test") <= MAX_DROP
    report = result.details["fallback"]
    assert report["method"] == "measured"
    assert sorted(report["excluded"]) == ["classifier.0", "classifier.2"]
    assert result.details["floatLayers"] == report["excluded"]
    assert float_layers(result.path) == {"classifier.0", "classifier.2"}
    # measured: hidden.0 alone in int8 costs nothing, either outlier layer alone collapses it
    sensitivity = report["sensitivity"]
    assert set(sensitivity) == set(LAYERS)
    assert (
        sensitivity["hidden.0"]
        < 0.05
        < min(sensitivity["classifier.0"], sensitivity["classifier.2"])
    )
    steps = report["steps"]
    assert steps[0]["excluded"] == [] and len(steps[-1]["excluded"]) == 2
    assert steps[-1]["metric"] == pytest.approx(onnx_accuracy(result.path, data, "val"))
    assert result.metrics["layersFloat"] == 2 and result.metrics["layersInt8"] == 1
    assert result.path.stat().st_size < (tmp_path / "float.onnx").stat().st_size


def test_auto_works_for_dynamic_int8(
    outlier_mlp: fx.GraphModule, data: Dataset, tmp_path: Path
) -> None:
    """Dynamic quantization splits each Gemm into <node>_MatMul and <node>_Add before it
    excludes by name; the fallback must still reach those nodes."""
    none = run({"mode": "dynamic"}, outlier_mlp, data, tmp_path / "none")
    assert drop(outlier_mlp, none, data, "val") > MAX_DROP
    result = run({"mode": "dynamic", "fallback": "auto"}, outlier_mlp, data, tmp_path / "auto")
    assert drop(outlier_mlp, result, data, "val") <= MAX_DROP
    # dynamic int8 quantizes only layer inputs: classifier.2's alone carries the outlier
    assert result.details["fallback"]["excluded"] == ["classifier.2"]
    assert result.metrics["layersFloat"] == 1


def test_the_proxy_ranks_the_layers_of_a_large_model(
    outlier_mlp: fx.GraphModule, data: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above MEASURED_LAYERS layers one float pass ranks them (noise against signal per
    channel), and it still finds the outlier layers."""
    monkeypatch.setattr(fallback, "MEASURED_LAYERS", 2)
    result = run(
        {"mode": "static", "calibrationSamples": 128, "fallback": "auto"},
        outlier_mlp,
        data,
        tmp_path,
    )
    report = result.details["fallback"]
    assert report["method"] == "proxy"
    assert sorted(report["excluded"]) == ["classifier.0", "classifier.2"]
    assert drop(outlier_mlp, result, data, "val") <= MAX_DROP


def test_exclude_keeps_the_named_layers_float(
    outlier_mlp: fx.GraphModule, data: Dataset, tmp_path: Path
) -> None:
    """Layer names are the torch module paths, globbed."""
    result = run(
        {"mode": "static", "calibrationSamples": 128, "exclude": ["classifier.*"]},
        outlier_mlp,
        data,
        tmp_path,
    )
    assert result.path is not None
    assert float_layers(result.path) == {"classifier.0", "classifier.2"}
    assert drop(outlier_mlp, result, data, "val") <= MAX_DROP
    assert result.details["floatLayers"] == ["classifier.0", "classifier.2"]


def test_an_exclude_pattern_that_matches_nothing_lists_the_layers(
    outlier_mlp: fx.GraphModule, data: Dataset, tmp_path: Path
) -> None:
    with pytest.raises(StageError) as error:
        run({"mode": "static", "exclude": ["hidden.*", "clasifier.0"]}, outlier_mlp, data, tmp_path)
    message = str(error.value)
    assert message.startswith("quantize: params.exclude: 'clasifier.0' matches no layer")
    assert "hidden.0, classifier.0, classifier.2" in message


def test_auto_without_a_max_drop_quantizes_as_none(
    outlier_mlp: fx.GraphModule, data: Dataset, tmp_path: Path
) -> None:
    params = {"mode": "static", "calibrationSamples": 128, "fallback": "auto"}
    result = run(params, outlier_mlp, data, tmp_path, max_drop=None)
    assert "fallback" not in result.details
    assert result.metrics["layersFloat"] == 0
    assert drop(outlier_mlp, result, data, "val") > 0.5


def test_the_cap_stops_the_search_with_the_best_model_named(
    outlier_mlp: fx.GraphModule, data: Dataset, tmp_path: Path
) -> None:
    params = {
        "mode": "static",
        "calibrationSamples": 128,
        "fallback": "auto",
        "maxFallbackLayers": 1,
    }
    with pytest.raises(StageError) as error:
        run(params, outlier_mlp, data, tmp_path)
    message = str(error.value)
    assert message.startswith("quantize: params.fallback: auto: no model tried keeps accuracy")
    assert "; params.maxFallbackLayers (1) stopped the search at 1 layers float" in message
    assert f"within maxDrop {MAX_DROP:g} of the input model; the best was 0.1" in message


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
@pytest.mark.parametrize(
    ("given", "field"), [({"exclude": ["fc*"]}, "exclude"), ({"fallback": "auto"}, "fallback")]
)
def test_float_modes_refuse_a_layer_choice(mode: str, given: dict[str, Any], field: str) -> None:
    params = QuantizeParams.model_validate({"mode": mode, **given})
    plan = PlanContext("q", "pt2", (), "classification")
    for refuse in (
        lambda: QuantizeStage().preflight(params),
        lambda: QuantizeStage().check(params, plan),
    ):
        with pytest.raises(
            ValueError, match=rf"^params\.{field}: .* mode {mode} quantizes no layer"
        ):
            refuse()


def test_qat_leaves_excluded_layers_without_fake_quantization(
    outlier_mlp: fx.GraphModule,
) -> None:
    assert layer_names(outlier_mlp) == LAYERS
    assert fake_quantize(outlier_mlp, {"classifier.0", "classifier.2"}) == 1
    fake = [n for n in outlier_mlp.graph.nodes if str(n.target).startswith("_fake_quant_")]
    assert len(fake) == 1
    (layer,) = fake[0].users
    assert layer.args[1].target == "hidden.0.weight"
    parametrized = [name for name, _ in outlier_mlp.named_parameters() if "original" in name]
    assert parametrized == ["hidden.0.parametrizations.weight.original"]


def test_qat_honours_exclude_in_the_final_calibration(
    outlier_state: dict[str, torch.Tensor], data: Dataset, tmp_path: Path
) -> None:
    model = OutlierMLP()
    model.load_state_dict(outlier_state)
    params = {"mode": "qat", "qatEpochs": 1, "calibrationSamples": 128, "exclude": ["classifier.*"]}
    result = run(params, exported(model), data, tmp_path)
    assert result.path is not None
    assert float_layers(result.path) == {"classifier.0", "classifier.2"}
    assert result.metrics["layersInt8"] == 1

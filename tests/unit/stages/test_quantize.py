# ruff: noqa: F811  (fixtures are imported from the shared support modules)
"""The quantize stage on real small models: int8 ONNX about 4x smaller at the same accuracy,
fp16 half the size, bf16 half the size in PyTorch, ONNX inputs, QAT, and a calibration shape
error raised before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from compress_quantize_support import (  # noqa: F401  (fixtures)
    cancer_data,
    cancer_mlp,
    cancer_mlp_state,
    mlp,
    onnx_accuracy,
    weight_bytes,
)
from prune_distill_support import (  # noqa: F401  (fixtures)
    accuracy,
    context,
    digits,
    digits_cnn,
    digits_cnn_state,
    digits_data,
    train,
)
from torch import fx, nn

from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.data import Dataset
from kompaktor.errors import JobSpecError, StageError
from kompaktor.models import LoadedModel, load_model
from kompaktor.models.predict import predictor_for
from kompaktor.stages.base import PlanContext, StageResult
from kompaktor.stages.quantize import QuantizeParams, QuantizeStage
from kompaktor.stages.validate import parse_params, validate_job


def run(params: dict[str, Any], model: nn.Module, data: Dataset, tmp_path: Path) -> StageResult:
    ctx = context(QuantizeParams.model_validate(params), model, data, tmp_path)
    return QuantizeStage().run(ctx)


def int8_initializers(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)


@pytest.mark.parametrize("given", ["fp16", "static", "dynamic"])
def test_an_onnx_model_quantized_already_is_refused_by_name(
    cancer_mlp: fx.GraphModule, cancer_data: Dataset, tmp_path: Path, given: str
) -> None:
    """Validation cannot see inside spec.model.uri: a quantized ONNX model given there failed
    inside ONNX Runtime ("single static assignment form") or came out unchanged."""
    first = run({"mode": given}, cancer_mlp, cancer_data, tmp_path / "given")
    assert first.path is not None
    ctx = context(QuantizeParams(mode="static"), cancer_mlp, cancer_data, tmp_path / "again")
    ctx.model = LoadedModel(format="onnx", path=first.path, module=None)
    with pytest.raises(StageError, match=r"is quantized already \((ops|float16).*float32 model"):
        QuantizeStage().run(ctx)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_static_int8_is_four_times_smaller_at_the_same_accuracy(
    method: str, digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    before = accuracy(digits_cnn, digits_data)
    result = run({"mode": "static", "calibrationMethod": method}, digits_cnn, digits_data, tmp_path)
    assert result.output_format == "onnx" and result.path is not None
    fp32 = tmp_path / "float.onnx"
    assert weight_bytes(result.path) <= 0.3 * weight_bytes(fp32)
    # the file also carries the QDQ graph (~10 KB here), which a 40k-weight model notices
    assert result.path.stat().st_size <= 0.35 * fp32.stat().st_size
    assert int8_initializers(result.path) >= 4  # every conv/linear weight
    assert onnx_accuracy(result.path, digits_data) >= before - 0.01
    assert result.metrics["sizeBytesAfter"] == result.path.stat().st_size
    assert result.details["calibrationMethod"] == method
    # Beside the fp32 ONNX it came from, in the same runtime (speed is for bench/, not here).
    figures = result.metrics
    assert figures["latencyMs"] > 0 and figures["latencyMsFloat"] > 0
    assert figures["speedupOverFloat"] == pytest.approx(
        figures["latencyMsFloat"] / figures["latencyMs"]
    )


def test_dynamic_int8_on_an_mlp(
    cancer_mlp: fx.GraphModule, cancer_data: Dataset, tmp_path: Path
) -> None:
    before = accuracy(cancer_mlp, cancer_data)
    result = run({"mode": "dynamic"}, cancer_mlp, cancer_data, tmp_path)
    assert result.path is not None
    assert weight_bytes(result.path) <= 0.3 * weight_bytes(tmp_path / "float.onnx")
    assert onnx_accuracy(result.path, cancer_data) >= before - 0.02


def test_fp16_halves_the_size(
    cancer_mlp: fx.GraphModule, cancer_data: Dataset, tmp_path: Path
) -> None:
    before = accuracy(cancer_mlp, cancer_data)
    result = run({"mode": "fp16"}, cancer_mlp, cancer_data, tmp_path)
    assert result.path is not None
    assert weight_bytes(result.path) <= 0.5 * weight_bytes(tmp_path / "float.onnx")
    assert result.path.stat().st_size <= 0.6 * (tmp_path / "float.onnx").stat().st_size
    assert onnx_accuracy(result.path, cancer_data) >= before - 0.01


def test_bf16_halves_the_file_and_keeps_float32_inputs_and_outputs(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    before = accuracy(digits_cnn, digits_data)
    result = run({"mode": "bf16"}, digits_cnn, digits_data, tmp_path)
    assert result.output_format == "pt2" and result.path == tmp_path / "model.pt2"
    assert result.path.stat().st_size <= 0.6 * (tmp_path / "float.pt2").stat().st_size
    assert result.metrics["sizeBytesAfter"] == result.path.stat().st_size
    loaded = load_model(result.path).module
    assert loaded is not None
    weights = [t for t in loaded.state_dict().values() if t.is_floating_point()]
    assert weights and all(t.dtype == torch.bfloat16 for t in weights)
    x = torch.as_tensor(digits_data.x["test"][0])  # type: ignore[index]
    with torch.no_grad():
        logits, exact = loaded(x), digits_cnn(x)
    assert logits.dtype == torch.float32  # drops in where the fp32 model ran
    assert 0 < float((logits - exact).abs().max()) <= 0.05 * float(exact.abs().max())
    assert accuracy(loaded, digits_data) >= before - 0.01
    assert isinstance(result.details["nativeBf16"], bool)


def test_bf16_needs_a_torch_export_model() -> None:
    params = QuantizeParams(mode="bf16")
    for fmt in ("onnx", "torchscript"):
        with pytest.raises(ValueError, match=f"params.mode: bf16 .* needs a pt2 model .got {fmt}"):
            QuantizeStage().check(params, PlanContext("quantize", fmt, (), "classification"))
    assert QuantizeStage().output_format("pt2", params) == "pt2"
    assert QuantizeStage().output_format("pt2", QuantizeParams(mode="fp16")) == "onnx"


class DigitsRNN(nn.Module):
    """Digits rows as 8 tokens of 8 features; the GRU or LSTM makes its own zero initial
    state (`aten.zeros(..., dtype=torch.float32)` in the exported graph)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.rnn = (nn.GRU if kind == "gru" else nn.LSTM)(8, 32, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        logits: torch.Tensor = self.head(out[:, -1])
        return logits


@pytest.fixture(scope="module")
def digits_seq(digits_data: Dataset) -> Dataset:
    x = {split: (arrays[0][:, 0],) for split, arrays in digits_data.x.items()}
    return Dataset("digits_seq", "classification", x, dict(digits_data.y), 10)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["gru", "lstm"])
def digits_rnn_state(request: pytest.FixtureRequest, digits_seq: Dataset) -> tuple[str, Any]:
    torch.manual_seed(0)
    model = train(DigitsRNN(request.param), digits_seq, epochs=6)
    return request.param, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def digits_rnn(digits_rnn_state: tuple[str, Any]) -> fx.GraphModule:
    kind, state = digits_rnn_state
    model = DigitsRNN(kind)
    model.load_state_dict(state)
    program = torch.export.export(
        model.eval(), (torch.zeros(4, 8, 8),), dynamic_shapes=({0: torch.export.Dim.AUTO},)
    )
    gm = program.module()
    for name in ("train", "eval"):  # as the loader does
        gm.__dict__.pop(name, None)
    return gm  # type: ignore[return-value]


def test_bf16_runs_a_recurrent_model_within_bound_of_float32(
    digits_rnn: fx.GraphModule, digits_seq: Dataset, tmp_path: Path
) -> None:
    """The RNN's initial hidden state was made in float32 and met bf16 weights in aten.gru /
    aten.lstm: the file was written, then evaluating it crashed the stage."""
    before = accuracy(digits_rnn, digits_seq)
    assert before >= 0.8
    result = run({"mode": "bf16"}, digits_rnn, digits_seq, tmp_path)
    assert result.path is not None
    loaded = load_model(result.path)
    assert loaded.module is not None
    weights = [t for t in loaded.module.state_dict().values() if t.is_floating_point()]
    assert weights and all(t.dtype == torch.bfloat16 for t in weights)
    x_test = digits_seq.x["test"][0]  # type: ignore[index]
    logits = predictor_for(loaded)(x_test)  # as the runner evaluates the output
    with torch.no_grad():
        exact = digits_rnn(torch.as_tensor(x_test)).numpy()
    assert logits.dtype == np.float32
    assert float(np.abs(logits - exact).max()) <= 0.05 * float(np.abs(exact).max())
    after = float((logits.argmax(1) == digits_seq.y["test"]).mean())  # type: ignore[index]
    assert after >= before - 0.01


def test_a_bf16_model_that_cannot_run_is_a_stage_error_naming_the_op(
    digits_rnn: fx.GraphModule,
    digits_seq: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tried on a sample batch before it is saved: a conversion that leaves a float32 tensor
    fails in the stage, by name, instead of crashing the runner's evaluation with a traceback."""
    monkeypatch.setattr("kompaktor.quant.bfloat16._made_in_bfloat16", lambda gm: None)
    with pytest.raises(StageError) as caught:
        run({"mode": "bf16"}, digits_rnn, digits_seq, tmp_path)
    recurrent = (torch.ops.aten.gru.input, torch.ops.aten.lstm.input)
    rnn = next(n for n in digits_rnn.graph.nodes if n.target in recurrent)
    message = str(caught.value)
    assert message.startswith("quantize: params.mode: bf16: the bf16 model fails on 8 rows")
    assert "of dataset digits_seq (train split)" in message
    assert f"at op {rnn.name} ({rnn.target}): RuntimeError: " in message
    assert message.endswith("this model cannot be quantized this way: choose another params.mode")
    assert not (tmp_path / "model.pt2").exists()


def test_an_int8_model_onnx_runtime_cannot_run_is_a_stage_error_naming_the_op(
    cancer_mlp: fx.GraphModule,
    cancer_data: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every mode's output is run once on a few rows; a broken file is removed."""
    from onnx import TensorProto, helper, numpy_helper

    def broken(source: Path, target: Path) -> None:
        graph = helper.make_graph(
            [helper.make_node("Reshape", ["input", "shape"], ["output"], name="squeeze_me")],
            "broken",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 30])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array([7, 7], dtype=np.int64), "shape")],
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), target)

    monkeypatch.setattr("kompaktor.stages.quantize._fp16", broken)
    with pytest.raises(StageError) as caught:
        run({"mode": "fp16"}, cancer_mlp, cancer_data, tmp_path)
    message = str(caught.value)
    assert message.startswith("quantize: params.mode: fp16: the fp16 model fails on 8 rows")
    assert "at op Reshape node 'squeeze_me': " in message
    assert not (tmp_path / "model.onnx").exists()


def validate_stages(*stages: dict[str, Any]) -> None:
    spec = {"model": {"uri": "model.pt2"}, "dataset": {"uri": "sklearn:digits"}}
    validate_job(OptimizationJobSpec.model_validate(spec | {"stages": list(stages)}))


def quantize(name: str, mode: str) -> dict[str, Any]:
    return {"name": name, "type": "quantize", "params": {"mode": mode}}


#: What validation lets each quantize mode take, by spec.model.uri: pt2 takes every mode.
REFUSED = {
    ("model.pt", "qat"): "qat inserts fake quantization into a torch.export graph and needs a "
    "pt2 model (got torchscript); export the model with torch.export as .pt2, or use static "
    "(no fine-tuning) for this model",
    ("model.onnx", "qat"): "qat inserts fake quantization into a torch.export graph and needs a "
    "pt2 model (got onnx); export the model with torch.export as .pt2, or use static "
    "(no fine-tuning) for this model",
    ("model.pt", "bf16"): "bf16 rewrites a torch.export graph and needs a pt2 model (got "
    "torchscript); use fp16 for a half-precision ONNX model",
    ("model.onnx", "bf16"): "bf16 rewrites a torch.export graph and needs a pt2 model (got "
    "onnx); use fp16 for a half-precision ONNX model",
}


@pytest.mark.parametrize("uri", ["model.pt2", "model.pt", "model.onnx"])
@pytest.mark.parametrize("mode", ["dynamic", "static", "qat", "fp16", "bf16"])
def test_validation_refuses_what_the_run_would_refuse(uri: str, mode: str) -> None:
    """qat on a TorchScript model passed validation and then failed at run time ("a
    TorchScript module cannot be rewritten"): validation must refuse it, by stage and field,
    before any work. The modes it lets through run (`test_a_torchscript_model_quantizes`)."""
    spec = {"model": {"uri": uri}, "dataset": {"uri": "sklearn:digits"}}
    job = OptimizationJobSpec.model_validate(spec | {"stages": [quantize("q", mode)]})
    refused = REFUSED.get((uri, mode))
    if refused is None:
        validate_job(job)
        return
    with pytest.raises(JobSpecError) as caught:
        validate_job(job)
    assert str(caught.value) == f"stage 'q' (spec.stages[0], quantize): params.mode: {refused}"


def test_qat_on_a_torchscript_model_is_refused_after_stages_that_keep_it_torchscript() -> None:
    """train and prune give a TorchScript model back as TorchScript: still no qat."""
    spec = {"model": {"uri": "s3://models/model.pt"}, "dataset": {"uri": "sklearn:digits"}}
    train = {"name": "t", "type": "train", "params": {"epochs": 1}}
    job = OptimizationJobSpec.model_validate(spec | {"stages": [train, quantize("q", "qat")]})
    with pytest.raises(JobSpecError, match=r"stage 'q' \(spec.stages\[1\], quantize\): "):
        validate_job(job)


@pytest.mark.parametrize("mode", ["dynamic", "static", "fp16"])
def test_a_torchscript_model_quantizes(
    mode: str, cancer_mlp_state: dict[str, torch.Tensor], cancer_data: Dataset, tmp_path: Path
) -> None:
    """The modes validation lets through for a .pt model do run on one."""
    module = mlp()
    module.load_state_dict(cancer_mlp_state)
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    loaded = load_model(path)
    assert loaded.format == "torchscript"
    ctx = context(QuantizeParams(mode=mode), module, cancer_data, tmp_path)  # type: ignore[arg-type]
    ctx.model = loaded
    result = QuantizeStage().run(ctx)
    assert result.path is not None and result.output_format == "onnx"
    before = accuracy(module.eval(), cancer_data)
    assert onnx_accuracy(result.path, cancer_data) >= before - 0.02


@pytest.mark.parametrize(
    ("first", "second", "precision"),
    [
        *[
            (first, second, "int8")
            for first in ("static", "dynamic", "qat")
            for second in ("static", "dynamic", "fp16")
        ],
        *[("fp16", second, "fp16") for second in ("static", "dynamic", "fp16")],
        *[("bf16", second, "bf16") for second in ("static", "dynamic", "qat", "fp16", "bf16")],
    ],
)
def test_a_quantized_model_is_not_quantized_again(first: str, second: str, precision: str) -> None:
    """Run, these failed inside ONNX Runtime (a graph not in SSA form, tensor(bfloat16) Conv
    inputs, weights that are no initializers) or quantized nothing more."""
    with pytest.raises(JobSpecError) as caught:
        validate_stages(quantize("q", first), quantize("q2", second))
    assert str(caught.value) == (
        f"stage 'q2' (spec.stages[1], quantize): params.mode: {second} needs a float32 model, "
        f"but stage 'q' already quantized it to {precision}; quantize a model once "
        "(keep one quantize stage)"
    )


def test_a_bf16_model_stays_quantized_through_later_stages() -> None:
    """train, prune, … take a bf16 model and give one back: it still cannot be quantized."""
    train = {"name": "t", "type": "train", "params": {"epochs": 1}}
    validate_stages(quantize("q", "bf16"), train, {"name": "b", "type": "benchmark"})
    with pytest.raises(
        JobSpecError,
        match=r"stage 'q2' \(spec.stages\[2\], quantize\): .*but stage 'q' already quantized it",
    ):
        validate_stages(quantize("q", "bf16"), train, quantize("q2", "dynamic"))
    validate_stages(
        {"name": "p", "type": "prune", "params": {"sparsity": 0.5}}, quantize("q", "static")
    )


def test_an_hpo_over_quantize_counts_as_quantizing() -> None:
    tune = {
        "name": "tune",
        "type": "hpo",
        "params": {
            "target": "quantize",
            "trials": 2,
            "space": {"mode": {"choices": ["static", "dynamic"]}},
        },
    }
    with pytest.raises(
        JobSpecError, match=r"stage 'q' \(spec.stages\[1\], quantize\): params.mode: .*'tune'"
    ):
        validate_stages(tune, quantize("q", "fp16"))
    with pytest.raises(JobSpecError, match=r"params.target \(quantize\): params.mode: .*stage 'q'"):
        validate_stages(quantize("q", "fp16"), tune)


def test_an_onnx_model_quantizes(
    cancer_mlp: fx.GraphModule, cancer_data: Dataset, tmp_path: Path
) -> None:
    source = tmp_path / "given"
    source.mkdir()
    first = run({"mode": "fp16"}, cancer_mlp, cancer_data, source)  # any way to get an ONNX file
    fp32 = source / "float.onnx"
    ctx = context(QuantizeParams(mode="static"), cancer_mlp, cancer_data, tmp_path)
    ctx.model = LoadedModel(format="onnx", path=fp32, module=None)
    result = QuantizeStage().run(ctx)
    assert first.path is not None and result.path is not None
    assert int8_initializers(result.path) >= 3  # the three weights (and zero points)
    assert onnx_accuracy(result.path, cancer_data) >= onnx_accuracy(fp32, cancer_data) - 0.02


@pytest.mark.slow
def test_qat_gives_an_int8_model_within_bound(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    before = accuracy(digits_cnn, digits_data)
    result = run({"mode": "qat", "qatEpochs": 1, "lr": 1e-4}, digits_cnn, digits_data, tmp_path)
    assert result.path is not None
    assert int8_initializers(result.path) >= 4
    assert onnx_accuracy(result.path, digits_data) >= before - 0.01


def test_calibration_data_of_the_wrong_shape_is_refused_first(
    digits_cnn: fx.GraphModule, cancer_data: Dataset, tmp_path: Path
) -> None:
    with pytest.raises(StageError) as error:
        run({"mode": "static"}, digits_cnn, cancer_data, tmp_path)
    message = str(error.value)
    assert "params.calibrationSamples" in message and "breast_cancer" in message
    assert "(341, 30)" in message and ", 1, 8, 8)" in message
    assert not (tmp_path / "model.onnx").exists()


def test_unknown_mode_reads_well() -> None:
    with pytest.raises(JobSpecError) as error:
        parse_params("quantize", {"mode": "int4"}, "stages[3] (quantize)")
    assert str(error.value) == (
        "stages[3] (quantize): params.mode: must be one of dynamic, static, qat, fp16, bf16 "
        "(got 'int4')"
    )

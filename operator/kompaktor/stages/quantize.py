"""quantize: int8 (dynamic, static-calibrated, quantization-aware) or fp16, as an ONNX model;
bf16 as a torch.export program.

The output is ONNX because that is where int8 runs fast on CPUs: ONNX Runtime's quantization
tools write QDQ (or QOperator) graphs its CPU kernels execute in int8. Torch inputs are exported
to ONNX first; QAT fine-tunes with fake quantization in PyTorch before that export, then
calibrates like `static`, so every int8 mode ends in the same kind of file. ONNX Runtime has no
bfloat16 CPU kernels, so bf16 stays in PyTorch (oneDNN; `kompaktor.quant.bfloat16`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from kompaktor.errors import StageError
from kompaktor.models import ModelFormat
from kompaktor.stages.base import (
    PlanContext,
    Precision,
    Stage,
    StageContext,
    StageParams,
    StageResult,
)

if TYPE_CHECKING:
    from kompaktor.quant.trial import TrialError

IntType = Literal["int8", "uint8"]


class QuantizeParams(StageParams):
    mode: Literal["dynamic", "static", "qat", "fp16", "bf16"] = Field(
        "static",
        description="dynamic: int8 weights, activations quantized at run time (no data); "
        "static: int8 weights and activations calibrated on training data; qat: fake-quant "
        "fine-tuning first, then static (needs a .pt2 input); fp16: half-precision weights "
        "(ONNX); bf16: bfloat16 weights and compute behind float32 inputs and outputs (a .pt2; "
        "needs a .pt2 input).",
    )
    per_channel: bool = Field(True, description="One int8 scale per output channel of weights.")
    calibration_samples: int = Field(
        256, gt=0, description="Training rows used to calibrate activation ranges (static, qat)."
    )
    calibration_method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="How activation ranges are chosen from the calibration data."
    )
    format: Literal["QDQ", "QOperator"] = Field(
        "QDQ",
        description="QDQ: quantize/dequantize pairs around float ops (portable); "
        "QOperator: dedicated int8 operators.",
    )
    activation_type: IntType = Field("uint8", description="Integer type of activations.")
    weight_type: IntType = Field("int8", description="Integer type of weights.")
    qat_epochs: int = Field(2, ge=1, description="qat: epochs of fake-quant fine-tuning.")
    lr: float = Field(1e-4, gt=0, description="qat: fine-tuning learning rate.")
    batch_size: int = Field(64, ge=1, description="qat: fine-tuning batch size.")


class QuantizeStage(Stage[QuantizeParams]):
    Params: ClassVar[type[StageParams]] = QuantizeParams
    type: ClassVar[str] = "quantize"
    accepts: ClassVar[frozenset[ModelFormat]] = frozenset({"pt2", "torchscript", "onnx"})
    produces: ClassVar[ModelFormat | None] = "onnx"

    def output_format(self, input_format: ModelFormat, params: QuantizeParams) -> ModelFormat:
        return "pt2" if params.mode == "bf16" else "onnx"

    def output_precision(self, input_precision: Precision, params: QuantizeParams) -> Precision:
        return "bf16" if params.mode == "bf16" else "fp16" if params.mode == "fp16" else "int8"

    def check(self, params: QuantizeParams, plan: PlanContext) -> None:
        if plan.input_precision != "float32":
            # Every such chain was tried: ONNX Runtime's quantizers and the fp16 converter fail
            # on quantized graphs (or on bf16 tensors) or leave them as they were.
            by = f"stage {plan.quantized_by!r}" if plan.quantized_by else "an earlier stage"
            raise ValueError(
                f"params.mode: {params.mode} needs a float32 model, but {by} already "
                f"quantized it to {plan.input_precision}; quantize a model once (keep one "
                "quantize stage)"
            )
        if params.mode == "bf16" and plan.input_format != "pt2":
            raise ValueError(
                "params.mode: bf16 rewrites a torch.export graph and needs a pt2 model (got "
                f"{plan.input_format}); use fp16 for a half-precision ONNX model"
            )
        if params.mode == "qat" and plan.input_format != "pt2":
            # Fake quantization rewrites the torch.export graph; a TorchScript module cannot be
            # re-traced into one (kompaktor.surgery.as_graph_module refuses it at run time).
            raise ValueError(
                "params.mode: qat inserts fake quantization into a torch.export graph and needs "
                f"a pt2 model (got {plan.input_format}); export the model with torch.export "
                "as .pt2, or use static (no fine-tuning) for this model"
            )

    def run(self, ctx: StageContext[QuantizeParams]) -> StageResult:
        p = ctx.params
        source, target, details = _bf16(ctx) if p.mode == "bf16" else _to_onnx(ctx)
        before, after = source.stat().st_size, target.stat().st_size
        ctx.log(f"quantize: {p.mode}: {before} -> {after} bytes")
        metrics = {
            "sizeBytesBefore": float(before),
            "sizeBytesAfter": float(after),
            "compressionRatio": before / max(after, 1),
        }
        if p.mode != "bf16":
            metrics |= _runtime_and_quantization(ctx, source, target)
        return StageResult(
            path=target,
            output_format=self.output_format(ctx.model.format, p),
            metrics=metrics,
            details=details,
        )


_Written = tuple[Path, Path, dict[str, Any]]  # the fp32 source, the quantized file, details


def _runtime_and_quantization(
    ctx: StageContext[QuantizeParams], source: Path, target: Path
) -> dict[str, float]:
    """The quantized model's latency beside the fp32 ONNX it was made from, in the same runtime
    (ONNX Runtime): how much of a speed-up over a torch input is quantization's, and how much
    the runtime's (`latencyMsFloat`, `speedupOverFloat`)."""
    from kompaktor.models import LoadedModel
    from kompaktor.stages.runner import batch1_latency_ms

    quantized = batch1_latency_ms(LoadedModel("onnx", target, None), ctx.dataset)
    floating = batch1_latency_ms(LoadedModel("onnx", source, None), ctx.dataset)
    return {
        "latencyMs": quantized,
        "latencyMsFloat": floating,
        "speedupOverFloat": floating / max(quantized, 1e-9),
    }


def _to_onnx(ctx: StageContext[QuantizeParams]) -> _Written:
    p = ctx.params
    source = _float_onnx(ctx)
    target = ctx.work_dir / "model.onnx"
    details: dict[str, Any] = {"mode": p.mode}
    if p.mode == "fp16":
        _fp16(source, target)
    elif p.mode == "dynamic":
        _dynamic(source, target, p)
        details |= {"perChannel": p.per_channel, "weightType": p.weight_type}
    else:
        _static(ctx, source, target)
        details |= {
            "perChannel": p.per_channel,
            "format": p.format,
            "calibrationMethod": p.calibration_method,
            "calibrationSamples": min(p.calibration_samples, len(ctx.dataset.targets("train"))),
            "activationType": p.activation_type,
            "weightType": p.weight_type,
        }
    _try_onnx(ctx, source, target)
    return source, target, details


def _bf16(ctx: StageContext[QuantizeParams]) -> _Written:
    from torch import fx

    from kompaktor.models import save_torch
    from kompaktor.quant.bfloat16 import native_bf16, to_bfloat16

    module, example = _torch_source(ctx)
    if not isinstance(module, fx.GraphModule):
        raise StageError("quantize: params.mode: bf16 needs a torch.export (pt2) model")
    converted = to_bfloat16(module)
    _try_torch(ctx, module, converted)
    source = save_torch(module, example, ctx.work_dir / "float.pt2")  # the same graph in fp32
    target = save_torch(converted, example, ctx.work_dir / "model.pt2")
    native = native_bf16()
    if not native:
        ctx.log("quantize: bf16: this CPU has no native bfloat16 (AVX512_BF16/AMX): slower here")
    return source, target, {"mode": "bf16", "nativeBf16": native}


def _try_torch(ctx: StageContext[QuantizeParams], source: Any, converted: Any) -> None:
    """StageError naming the failing op when the converted model cannot run a sample batch."""
    from kompaktor.quant import torch_inputs
    from kompaktor.quant.trial import try_torch

    _trial(ctx, torch_inputs(source), lambda batch: try_torch(converted, batch))


def _try_onnx(ctx: StageContext[QuantizeParams], source: Path, target: Path) -> None:
    """StageError naming the failing op when ONNX Runtime cannot run the quantized model on a
    sample batch; the file is removed, so nothing unrunnable is handed on."""
    from kompaktor.quant import onnx_inputs
    from kompaktor.quant.trial import try_onnx

    _trial(
        ctx,
        onnx_inputs(source),
        lambda batch: try_onnx(target, batch),
        lambda: target.unlink(missing_ok=True),
    )


def _trial(
    ctx: StageContext[QuantizeParams],
    declared: Sequence[tuple[str, list[int | str]]] | None,
    run: Callable[[list[np.ndarray]], None],
    discard: Callable[[], None] = lambda: None,
) -> None:
    """Run the new model on a few training rows shaped as it declares (`trial_batch`)."""
    from kompaktor.quant.trial import TrialError, trial_batch

    batch = trial_batch(ctx.dataset.inputs("train"), declared)
    if batch is None:
        return
    try:
        run(batch)
    except TrialError as error:
        discard()
        raise StageError(_trial_failed(ctx, error, len(batch[0]))) from None


def _trial_failed(ctx: StageContext[QuantizeParams], error: TrialError, rows: int) -> str:
    mode = ctx.params.mode
    at = f" at op {error.op}" if error.op else ""
    return (
        f"quantize: params.mode: {mode}: the {mode} model fails on {rows} rows of dataset "
        f"{ctx.dataset.name} (train split){at}: {error.message}; this model cannot be "
        "quantized this way: choose another params.mode"
    )


def _torch_source(ctx: StageContext[QuantizeParams]) -> tuple[Any, tuple[Any, ...]]:
    """The input module with computed weights stored, checked against the dataset, and an
    example batch to export it with."""
    from kompaktor.quant import torch_inputs
    from kompaktor.surgery.batches import sample

    module = _materialized(ctx, ctx.model.require_module("quantize"))
    _check_shapes(ctx, torch_inputs(module))
    return module, sample(ctx.dataset)


#: ONNX ops only a quantized (or float16) graph holds: quantizing it again fails inside ONNX
#: Runtime ("Graph must be in single static assignment form") or changes nothing.
_QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat",
})  # fmt: skip


def _refuse_quantized(path: Path) -> None:
    """An ONNX job model that is quantized already: validation sees only its file name, so the
    stage looks inside it before ONNX Runtime fails on it in its own words."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = sorted({node.op_type for node in graph.node} & _QUANTIZED_OPS)
    halves = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    if found or halves:
        what = f"ops {', '.join(found)}" if found else "float16 weights"
        raise StageError(
            f"quantize: the input model {path.name} is quantized already ({what}); quantize "
            "needs a float32 model: give the float model as spec.model.uri"
        )


def _float_onnx(ctx: StageContext[QuantizeParams]) -> Path:
    """The fp32 ONNX model to quantize: the input itself, or the torch model exported (after
    fake-quant fine-tuning for qat)."""
    from kompaktor.models import save_onnx

    if ctx.model.format == "onnx":
        if ctx.params.mode == "qat":
            raise StageError("quantize: params.mode: qat needs a PyTorch model (got onnx)")
        _refuse_quantized(ctx.model.path)
        return ctx.model.path
    module, example = _torch_source(ctx)
    if ctx.params.mode == "qat":
        module = _qat(ctx, module, example)
    path = ctx.work_dir / "float.onnx"
    save_onnx(module, example, path)
    return path


def _materialized(ctx: StageContext[QuantizeParams], module: Any) -> Any:
    """A copy whose computed weights (a weight-shared model's codebook gathers) are stored
    floats again: the int8 quantizers only quantize weights that are constants, and bf16 casts
    stored weights."""
    from kompaktor.compression.materialize import materialized_copy

    copied, folded = materialized_copy(module)
    if folded:
        ctx.log(f"quantize: stored {len(folded)} computed weights as floats ({', '.join(folded)})")
    return copied


def _qat(ctx: StageContext[QuantizeParams], module: Any, example: tuple[Any, ...]) -> Any:
    from kompaktor.quant import fake_quantize, strip_fake_quant
    from kompaktor.surgery import as_graph_module
    from kompaktor.training import fit

    p = ctx.params
    try:
        gm = as_graph_module(copy.deepcopy(module), example)
    except TypeError as error:
        raise StageError(f"quantize: params.mode: qat: {error}") from None
    layers = fake_quantize(gm)
    ctx.log(f"quantize: qat: fake-quantizing {layers} layers for {p.qat_epochs} epochs")
    trained = fit(
        gm,
        ctx.dataset,
        epochs=p.qat_epochs,
        lr=p.lr,
        batch_size=p.batch_size,
        seed=ctx.seed,
        log=ctx.log,
    )
    if trained is not gm:
        gm.load_state_dict(trained.state_dict())
    strip_fake_quant(gm)
    return gm.eval()


def _static(ctx: StageContext[QuantizeParams], source: Path, target: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    from kompaktor.quant import CalibrationReader, onnx_inputs
    from kompaktor.timing_lock import working

    p = ctx.params
    arrays = [np.asarray(x) for x in ctx.dataset.inputs("train")]
    inputs = onnx_inputs(source)
    _check_shapes(ctx, inputs)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    prepared = _pre_process(source, ctx.work_dir / "prepared.onnx")
    with working() as checkpoint:
        quantize_static(
            str(prepared),
            str(target),
            CalibrationReader(inputs, arrays, p.calibration_samples, checkpoint=checkpoint),
            quant_format=QuantFormat.QDQ if p.format == "QDQ" else QuantFormat.QOperator,
            per_channel=p.per_channel,
            activation_type=_int_type(p.activation_type),
            weight_type=_int_type(p.weight_type),
            calibrate_method=methods[p.calibration_method],
            extra_options={"ActivationSymmetric": p.activation_type == "int8"},
        )


def _check_shapes(
    ctx: StageContext[QuantizeParams], inputs: list[tuple[str, list[int | str]]] | None
) -> None:
    """StageError naming both shapes when the dataset cannot feed the model (None: unknown)."""
    from kompaktor.quant import check_calibration_shapes

    if inputs is None:
        return
    field = "params.calibrationSamples " if ctx.params.mode in ("static", "qat") else ""
    where = f"quantize: {field}(train split of dataset {ctx.dataset.name})"
    try:
        check_calibration_shapes(inputs, ctx.dataset.inputs("train"), where)
    except ValueError as error:
        raise StageError(str(error)) from None


def _dynamic(source: Path, target: Path, p: QuantizeParams) -> None:
    from onnxruntime.quantization import quantize_dynamic

    prepared = _pre_process(source, target.with_name("prepared.onnx"))
    quantize_dynamic(
        str(prepared), str(target), per_channel=p.per_channel, weight_type=_int_type(p.weight_type)
    )


def _fp16(source: Path, target: Path) -> None:
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxconverter_common.float16 import (  # type: ignore[import-not-found,no-redef]
                convert_float_to_float16,
            )
        except ImportError:
            raise StageError(
                "quantize: params.mode: fp16 needs onnxruntime.transformers or "
                "onnxconverter-common, and neither is installed"
            ) from None
    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    _sort_topologically(model.graph)
    onnx.save(model, str(target))


def _sort_topologically(graph: Any) -> None:
    """The converter appends its input casts after their consumers; ONNX requires order."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in known for name in n.input)]
        if not ready:  # a cycle or a dangling input: leave the rest as they were
            ordered += pending
            break
        for node in ready:
            ordered.append(node)
            known.update(node.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def _pre_process(source: Path, target: Path) -> Path:
    """ONNX Runtime's recommended shape inference and graph cleanup before quantizing; the
    model is quantized as it is when that step cannot handle it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(target))
    except Exception:
        return source
    return target


def _int_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8

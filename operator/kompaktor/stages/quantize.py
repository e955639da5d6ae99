"""quantize: int8 (dynamic, static-calibrated, quantization-aware) or fp16, as an ONNX model;
bf16 as a torch.export program.

The output is ONNX because that is where int8 runs fast on CPUs: ONNX Runtime's quantization
tools write QDQ (or QOperator) graphs its CPU kernels execute in int8. Torch inputs are exported
to ONNX first; QAT fine-tunes with fake quantization in PyTorch before that export, then
calibrates like `static`, so every int8 mode ends in the same kind of file. ONNX Runtime has no
bfloat16 CPU kernels, so bf16 stays in PyTorch (oneDNN; `kompaktor.quant.bfloat16`).

int8 can keep layers in float: those `exclude` names (`kompaktor.quant.layers`), and with
`fallback: auto` the most sensitive ones until the job's maxDrop holds on validation rows
(`kompaktor.quant.fallback`), so a model int8 hurts too much still gets mostly int8.
"""

from __future__ import annotations

import copy
import shutil
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
    from kompaktor.data import Split
    from kompaktor.quant.fallback import Fallback, Judge
    from kompaktor.quant.layers import Layer
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
    exclude: list[str] = Field(
        default_factory=list,
        description="int8 modes: layers kept in float, as glob patterns on layer names (the "
        "torch module path, e.g. classifier.0, for torch models; the weight's name without "
        ".weight, or the ONNX node name, for ONNX models). A pattern matching no layer is an "
        "error that lists the layer names.",
    )
    fallback: Literal["none", "auto"] = Field(
        "none",
        description="int8 modes: auto keeps the layers int8 hurts most in float, one at a time, "
        "until the metric on validation rows is within the job's objective.maxDrop; none "
        "quantizes every layer not in exclude.",
    )
    max_fallback_layers: int = Field(
        8, ge=1, description="fallback auto: at most this many layers beyond exclude in float."
    )


class QuantizeStage(Stage[QuantizeParams]):
    Params: ClassVar[type[StageParams]] = QuantizeParams
    type: ClassVar[str] = "quantize"
    accepts: ClassVar[frozenset[ModelFormat]] = frozenset({"pt2", "torchscript", "onnx"})
    produces: ClassVar[ModelFormat | None] = "onnx"

    def output_format(self, input_format: ModelFormat, params: QuantizeParams) -> ModelFormat:
        return "pt2" if params.mode == "bf16" else "onnx"

    def output_precision(self, input_precision: Precision, params: QuantizeParams) -> Precision:
        return "bf16" if params.mode == "bf16" else "fp16" if params.mode == "fp16" else "int8"

    def preflight(self, params: QuantizeParams) -> None:
        _refuse_layer_choice(params)

    def chooses_by_max_drop(self, params: QuantizeParams) -> bool:
        return params.fallback == "auto"

    def check(self, params: QuantizeParams, plan: PlanContext) -> None:
        _refuse_layer_choice(params)
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
        if "floatLayers" in details:
            floating = float(len(details["floatLayers"]))
            metrics |= {"layersFloat": floating, "layersInt8": details["layers"] - floating}
        return StageResult(
            path=target,
            output_format=self.output_format(ctx.model.format, p),
            metrics=metrics,
            details=details,
        )


_Written = tuple[Path, Path, dict[str, Any]]  # the fp32 source, the quantized file, details
_INT8_MODES = ("dynamic", "static", "qat")


def _refuse_layer_choice(params: QuantizeParams) -> None:
    """Layers kept in float only mean something when the rest become int8."""
    if params.mode in _INT8_MODES:
        return
    chosen = "exclude" if params.exclude else "fallback" if params.fallback != "none" else None
    if chosen is not None:
        raise ValueError(
            f"params.{chosen}: keeps layers in float among int8 ones, but mode {params.mode} "
            "quantizes no layer to int8; remove params.exclude and params.fallback, or use "
            "mode static, dynamic or qat"
        )


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
        details |= _int8(ctx, source, target)
        details |= {"perChannel": p.per_channel, "weightType": p.weight_type}
    else:
        details |= _int8(ctx, source, target)
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
    layers = fake_quantize(gm, _qat_float_layers(ctx, gm))
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


def _int8(ctx: StageContext[QuantizeParams], source: Path, target: Path) -> dict[str, Any]:
    """Quantize `source` to int8 at `target`, the layers params.exclude names (and, with
    fallback auto, the most sensitive ones) left float; the layer facts for details."""
    from kompaktor.quant import onnx_inputs
    from kompaktor.quant.layers import onnx_layers

    if ctx.params.mode != "dynamic":
        _check_shapes(ctx, onnx_inputs(source))
    prepared = _pre_process(source, ctx.work_dir / "prepared.onnx")
    layers = onnx_layers(prepared)
    fixed = _excluded(ctx, layers)
    write = _writer(ctx, prepared)
    details: dict[str, Any] = {"layers": len(layers)}
    if ctx.params.fallback == "auto" and ctx.max_drop is None:
        ctx.log("quantize: params.fallback: auto: this run has no maxDrop; quantizing as none")
    if ctx.params.fallback == "none" or ctx.max_drop is None:
        write(fixed, target)
        floating = [layer.name for layer in fixed]
    else:
        outcome = _fall_back(ctx, layers, fixed, prepared, write)
        shutil.copyfile(outcome.chosen.path, target)
        shutil.rmtree(outcome.chosen.path.parent)  # every model tried
        floating = list(outcome.chosen.excluded)
        details["fallback"] = outcome.details()
    if floating:
        ctx.log(f"quantize: kept {len(floating)} of {len(layers)} layers float: "
                f"{', '.join(floating)}")  # fmt: skip
    return details | {"floatLayers": floating}


def _excluded(ctx: StageContext[QuantizeParams], layers: Sequence[Layer]) -> list[Layer]:
    """The layers params.exclude names; StageError listing the layer names for a pattern that
    names none."""
    from kompaktor.quant.layers import matching

    try:
        return matching(layers, ctx.params.exclude, "quantize: params.exclude")
    except ValueError as error:
        raise StageError(str(error)) from None


_Write = Callable[[Sequence["Layer"], Path], None]


def _writer(ctx: StageContext[QuantizeParams], prepared: Path) -> _Write:
    """Writes `prepared` quantized as params say, the given layers float."""

    def write(excluded: Sequence[Layer], target: Path) -> None:
        nodes = [name for layer in excluded for name in layer.nodes()]
        if ctx.params.mode == "dynamic":
            _dynamic(prepared, target, ctx.params, nodes)
        else:
            _static(ctx, prepared, target, nodes)

    return write


def _fall_back(
    ctx: StageContext[QuantizeParams],
    layers: Sequence[Layer],
    fixed: Sequence[Layer],
    prepared: Path,
    write: _Write,
) -> Fallback:
    """The fallback search on validation rows; StageError when no model it tried is within
    maxDrop."""
    from kompaktor.quant.fallback import search
    from kompaktor.quant.sensitivity import noise_to_signal

    assert ctx.max_drop is not None
    judge, rows = _judge(ctx, ctx.max_drop)
    folder = ctx.work_dir / "fallback"
    folder.mkdir(exist_ok=True)
    written: dict[frozenset[str], Path] = {}

    def quantize(excluded: Sequence[Layer]) -> Path:
        key = frozenset(layer.node for layer in excluded)
        if key not in written:
            written[key] = folder / f"{len(written)}.onnx"
            write(excluded, written[key])
        return written[key]

    calibration = _calibration_rows(ctx)
    outcome = search(
        layers,
        fixed,
        quantize,
        judge,
        ctx.params.max_fallback_layers,
        lambda some: noise_to_signal(prepared, some, calibration, ctx.params.per_channel),
        ctx.log,
    )
    if not outcome.within:
        raise StageError(_no_fallback(ctx, outcome, len(layers), len(fixed), rows))
    chosen = outcome.chosen
    ctx.log(f"quantize: fallback: {ctx.metric} {chosen.metric:.4f} on {rows} rows is within "
            f"maxDrop {ctx.max_drop:g} with {len(chosen.excluded)} of {len(layers)} layers float, "
            "the most sensitive ones")  # fmt: skip
    return outcome


def _judge(ctx: StageContext[QuantizeParams], max_drop: float) -> tuple[Judge, str]:
    """Scores on validation rows (train rows without a val split; never test rows, which the
    gate judges) against the job's input model on the same rows, in the metric's direction."""
    from kompaktor.evaluate import AccuracyBound, has_rows, metric
    from kompaktor.models import LoadedModel, predictor_for
    from kompaktor.quant.fallback import Judge

    rows: Split = "val" if has_rows(ctx.dataset, "val") else "train"
    reference = predictor_for(ctx.reference)
    against = reference if ctx.metric == "fidelity" else None
    baseline = metric(ctx.metric, reference, ctx.dataset, rows, reference=against)
    bound = AccuracyBound(ctx.metric, baseline, max_drop)

    def score(path: Path) -> float:
        model = predictor_for(LoadedModel("onnx", path, None))
        return metric(ctx.metric, model, ctx.dataset, rows, reference=against)

    return Judge(score, bound.drop, max_drop), rows


def _calibration_rows(ctx: StageContext[QuantizeParams]) -> list[np.ndarray]:
    """The training rows static quantization calibrates on (the proxy's float pass)."""
    samples = ctx.params.calibration_samples
    return [np.asarray(x)[:samples] for x in ctx.dataset.inputs("train")]


def _no_fallback(
    ctx: StageContext[QuantizeParams], outcome: Fallback, layers: int, fixed: int, rows: str
) -> str:
    best, tried = outcome.best, len(outcome.chosen.excluded)
    why = (
        f"params.maxFallbackLayers ({ctx.params.max_fallback_layers}) stopped the search at "
        f"{tried - fixed} layers float beyond params.exclude: raise it, "
        if tried < layers
        else f"int8 cannot meet maxDrop for this model, even with all {layers} layers float: "
    )
    return (
        f"quantize: params.fallback: auto: no model tried keeps {ctx.metric} on {rows} rows "
        f"within maxDrop {ctx.max_drop:g} of the input model; the best was {best.metric:.4f} "
        f"({best.drop:.4f} worse) with {len(best.excluded)} of {layers} layers float "
        f"({', '.join(best.excluded) or 'none'}); {why}allow a larger "
        "objective.maxDrop, or use another params.mode (fp16 keeps accuracy)"
    )


def _qat_float_layers(ctx: StageContext[QuantizeParams], gm: Any) -> set[str]:
    """The layers params.exclude names, by module path: no fake quantization trains them (the
    ONNX calibration afterwards keeps them float by the same names)."""
    from kompaktor.quant.fakequant import layer_names
    from kompaktor.quant.layers import Layer

    layers = [Layer(name, name) for name in layer_names(gm)]
    return {layer.name for layer in _excluded(ctx, layers)}


def _static(
    ctx: StageContext[QuantizeParams], prepared: Path, target: Path, nodes: list[str]
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    from kompaktor.quant import CalibrationReader, onnx_inputs
    from kompaktor.timing_lock import working

    p = ctx.params
    arrays = [np.asarray(x) for x in ctx.dataset.inputs("train")]
    inputs = onnx_inputs(prepared)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
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
            nodes_to_exclude=nodes,
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


def _dynamic(prepared: Path, target: Path, p: QuantizeParams, nodes: list[str]) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(
        str(prepared),
        str(target),
        per_channel=p.per_channel,
        weight_type=_int_type(p.weight_type),
        nodes_to_exclude=nodes,
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

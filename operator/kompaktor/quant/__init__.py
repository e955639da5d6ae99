"""Quantization helpers for the quantize stage: ONNX Runtime calibration and fake-quant QAT."""

from kompaktor.quant.calibration import (
    CalibrationReader,
    check_calibration_shapes,
    onnx_inputs,
    torch_inputs,
)
from kompaktor.quant.fakequant import fake_quantize, strip_fake_quant

__all__ = [
    "CalibrationReader",
    "check_calibration_shapes",
    "fake_quantize",
    "onnx_inputs",
    "strip_fake_quant",
    "torch_inputs",
]

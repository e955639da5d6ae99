"""Type stub for the compiled module (kernels/csrc/module.cpp)."""

from typing import Any

def version() -> int: ...
def best_isa() -> int: ...
def active_isa() -> int: ...
def has_vbmi() -> bool: ...
def set_vbmi(on: bool) -> bool: ...
def set_isa(isa: int) -> bool: ...

# Plans take `built`: the derived layouts whose pointers follow (kLayout* bits, _sliced.SLICED
# etc.), every bit set where the layer never gets more (the plan then never asks for any).

class _Plan:
    """Both plan classes' call (a stub-only base: each is its own class at run time)."""

    def __call__(
        self,
        x: int,
        batch: int,
        y: int,
        nthreads: int,
        x_feature_major: bool,
        y_feature_major: bool,
    ) -> int:
        """0 once computed; else the derived layouts (kLayout* bits) the batch needs and the
        plan lacks, with nothing computed."""

class F32Plan(_Plan):
    """One fp32 layer's weight pointers (spmm_f32_plan), called per batch."""

class I8Plan(_Plan):
    """One int8 layer's weight pointers (spmm_i8_plan), called per batch."""

def spmm_f32_plan(
    in_features: int,
    out_features: int,
    row_ptr: int,
    col: int,
    col16: bool,
    values: int,
    bias: int,
    built: int,
    sliced_counts: int,
    sliced_block_off: int,
    sliced_idx: int,
    sliced_w: int,
    panel_group_start: int,
    panel_step_off: int,
    panel_rows: int,
    panel_off: int,
    panel_w: int,
    wide_panel_group_start: int,
    wide_panel_step_off: int,
    wide_panel_rows: int,
    wide_panel_off: int,
    wide_panel_w: int,
) -> F32Plan: ...
def spmm_i8_plan(
    in_features: int,
    out_features: int,
    row_ptr: int,
    col: int,
    col16: bool,
    values: int,
    scales: int,
    rowsum: int,
    bias: int,
    built: int,
    sliced_counts: int,
    sliced_block_off: int,
    sliced_idx: int,
    sliced_w: int,
) -> I8Plan: ...
def sliced_layout(
    row_ptr: int,
    col: int,
    col16: bool,
    values: int,
    f32: bool,
    out_features: int,
    in_features: int,
    counts: int,
    block_off: int,
    idx: int,
    w: int,
) -> int: ...
def panel_layout(
    row_ptr: int,
    col: int,
    col16: bool,
    values: int,
    out_features: int,
    in_features: int,
    cols: int,
    group_start: int,
    step_off: int,
    rows: int,
    off: int,
    w: int,
) -> int: ...
def kd_loss(
    student: Any,
    teacher: Any,
    labels: Any,
    temperature: float,
    alpha: float,
    ignore_index: int,
    grad: Any | None,
    nthreads: int,
) -> float: ...
def kmeans1d_step(
    values: Any,
    centroids: Any,
    indices: Any | None,
    sums: Any | None,
    counts: Any | None,
    nthreads: int,
) -> None: ...

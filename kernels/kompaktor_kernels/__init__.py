"""Compiled CPU kernels shared by the Kompaktor stages (see DESIGN.md §5).

torch is imported before the extension on purpose: both link libgomp.so.1, and loading torch's
copy first makes the loader reuse it, so torch and these kernels share one OpenMP thread pool.
"""

import torch  # noqa: F401  (must precede _native; see above)

from kompaktor_kernels import _native, reference
from kompaktor_kernels._dispatch import (
    ENV_VAR,
    ISAS,
    active_isa,
    available_isas,
    int8_path,
    set_isa,
    use_isa,
)
from kompaktor_kernels._ops import EAGER_CPU_KERNELS
from kompaktor_kernels._swap import densify, load_sparse_state_dict, sparsify, weight_sparsity
from kompaktor_kernels.kd_loss import kd_loss
from kompaktor_kernels.kmeans import kmeans1d_assign, kmeans1d_step
from kompaktor_kernels.sparse_linear import SparseLinear

__all__ = [
    "EAGER_CPU_KERNELS",
    "ENV_VAR",
    "ISAS",
    "SparseLinear",
    "_native",
    "active_isa",
    "available_isas",
    "densify",
    "int8_path",
    "kd_loss",
    "kmeans1d_assign",
    "kmeans1d_step",
    "load_sparse_state_dict",
    "reference",
    "set_isa",
    "sparsify",
    "use_isa",
    "weight_sparsity",
]

"""Model-level swaps between nn.Linear and SparseLinear: `sparsify` (pruned layers, in place),
`load_sparse_state_dict` (a sparsified model's checkpoint into its dense architecture), both
keeping dense the layers a SparseLinear cannot stand in for, and `densify`, the way back."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from kompaktor_kernels._csr import check_weight_dtype
from kompaktor_kernels.sparse_linear import SparseLinear


def weight_sparsity(linear: nn.Linear) -> float:
    """Fraction of exactly-zero weights."""
    n = linear.weight.numel()
    return 1.0 - int(torch.count_nonzero(linear.weight.detach())) / n if n else 0.0


# Modules that read their nn.Linear children's weights instead of calling them: a
# SparseLinear there has no `weight`. MultiheadAttention hands out_proj's to its functional
# form; TransformerEncoderLayer's fused inference path (and TransformerEncoder's check of it)
# reads linear1's and linear2's.
_READS_CHILD_WEIGHTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer)


def _why_dense(owner: nn.Module | None, layer: nn.Linear) -> str | None:
    """Why a SparseLinear cannot stand in for this layer, or None when it can."""
    if isinstance(owner, _READS_CHILD_WEIGHTS):
        return f"its owner, a {type(owner).__name__}, reads its weight instead of calling it"
    cls = type(layer)
    if parametrize.is_parametrized(layer):  # a generated subclass; `weight` is the computed one
        cls = cls.__bases__[0]
    if cls is not nn.Linear:
        return f"it is a {type(layer).__name__}, whose forward may differ from nn.Linear's"
    return None


# Forward pre-hooks that compute the layer's weight from other parameters (torch.nn.utils'
# pruning masks, old-style weight and spectral norms): the CSR holds the weight they computed,
# and on a SparseLinear they would look for parameters it does not have.
_WEIGHT_HOOKS = (prune.BasePruningMethod, WeightNorm, SpectralNorm)


_Layer = TypeVar("_Layer", nn.Linear, SparseLinear)
_Replacement = Callable[[str, nn.Module | None, _Layer], nn.Module | None]


def _swap_layers(model: nn.Module, kind: type[_Layer], replace: _Replacement[_Layer]) -> nn.Module:
    """Put `replace(path, owner, layer)`, where it is not None, in place of each layer of this
    kind (a bare one is returned replaced), with the layer's hooks (bar those computing its
    weight) and training mode, as torch.ao's module swaps keep them. A layer registered at
    several paths is offered once, at its first, and its replacement stays shared."""

    def swapped(path: str, owner: nn.Module | None, layer: _Layer) -> nn.Module | None:
        new = replace(path, owner, layer)
        if new is not None:
            new.train(layer.training)
            new._forward_hooks.update(layer._forward_hooks)
            new._forward_pre_hooks.update(
                (k, hook)
                for k, hook in layer._forward_pre_hooks.items()
                if not isinstance(hook, _WEIGHT_HOOKS)
            )
        return new

    if isinstance(model, kind):
        return swapped("", None, model) or model
    done: dict[int, nn.Module | None] = {}
    for owner_path, owner in list(model.named_modules()):
        for name, child in list(owner._modules.items()):  # named_children() skips repeats
            if not isinstance(child, kind):
                continue
            if id(child) not in done:
                done[id(child)] = swapped(f"{owner_path}.{name}".lstrip("."), owner, child)
            new = done[id(child)]
            if new is not None:
                setattr(owner, name, new)
    return model


def sparsify(
    model: nn.Module, dtype: torch.dtype = torch.float32, min_sparsity: float = 0.5
) -> nn.Module:
    """Swap, in place, every nn.Linear whose weight sparsity is >= min_sparsity for a
    SparseLinear, and return the model (a bare nn.Linear is returned replaced).

    Layers whose owner reads their weight rather than calling them (nn.MultiheadAttention,
    nn.TransformerEncoderLayer) and subclasses of nn.Linear stay dense, with a warning naming
    them: swapping those would break the model or change what it computes.

    The default favours speed: at 50 % a fp32 SparseLinear already runs faster than the dense
    layer but, with the layouts its batches build, holds more bytes than it (kernels/README.md,
    "Memory: layouts built on first need"); pass 0.8 or more, or int8, where memory matters too."""
    check_weight_dtype("dtype", dtype)
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must lie in [0, 1], got {min_sparsity}")
    kept: list[str] = []

    def replace(path: str, owner: nn.Module | None, layer: nn.Linear) -> nn.Module | None:
        if weight_sparsity(layer) < min_sparsity:
            return None
        why = _why_dense(owner, layer)
        if why is not None:
            kept.append(f"{path or 'the model'}: {why}")
            return None
        try:
            return SparseLinear.from_dense(layer, dtype)
        except ValueError as e:
            raise ValueError(f"{path or 'the model'}: {e}") from e

    model = _swap_layers(model, nn.Linear, replace)
    if kept:
        warnings.warn(
            f"sparsify kept {len(kept)} sparse layer(s) dense: {'; '.join(kept)}", stacklevel=2
        )
    return model


def load_sparse_state_dict(
    model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True
) -> nn.Module:
    """Load a sparsified model's checkpoint into the dense architecture it came from: each
    nn.Linear the checkpoint holds in CSR becomes a SparseLinear of the checkpoint's dtype,
    then `load_state_dict` runs. Returns the model (a bare nn.Linear is returned replaced)."""

    def replace(path: str, owner: nn.Module | None, layer: nn.Linear) -> nn.Module | None:
        prefix = f"{path}." if path else ""
        values = state_dict.get(prefix + "values")
        if not isinstance(values, torch.Tensor) or prefix + "row_ptr" not in state_dict:
            return None
        why = _why_dense(owner, layer)
        if why is not None:
            raise ValueError(f"{path or 'the model'}: the checkpoint holds it sparse, but {why}")
        check_weight_dtype(f"{prefix}values", values.dtype)
        # The load gives the buffers the checkpoint's shapes and index dtype.
        return SparseLinear.empty(
            layer.in_features, layer.out_features, layer.bias is not None, values.dtype
        )

    model = _swap_layers(model, nn.Linear, replace)
    model.load_state_dict(state_dict, strict=strict)
    return model


def densify(model: nn.Module) -> nn.Module:
    """Swap, in place, every SparseLinear for the nn.Linear it computes (int8: its dequantised
    weights) and return the model (a bare SparseLinear is returned replaced): the inverse of
    `sparsify`, for what needs dense weights, such as training or an ONNX export."""
    return _swap_layers(model, SparseLinear, lambda path, owner, layer: layer.to_linear())


__all__ = ["densify", "load_sparse_state_dict", "sparsify", "weight_sparsity"]

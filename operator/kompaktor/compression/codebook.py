"""Store a shared-weight layer compactly: a k-entry codebook and one small integer per weight.

`encode` swaps each clustered weight of a GraphModule for a `CodebookWeight` submodule at the
same path (`fc1.weight` → `fc1.weight.codebook`, `fc1.weight.indices`) that gathers the weight
in forward. torch.export then saves the codebook (k floats) and the packed indices instead of
the float weight, and the saved graph decodes them on each call. The decoded weight equals the
clustered float weight exactly.

Indices take the fewest of 1, 2, 4 or 8 bits that count the layer's clusters (16 clusters: two
indices per byte), so a byte always holds whole indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import fx, nn

from kompaktor.compression.sharing import Shared


def index_bits(clusters: int) -> int:
    """Bits stored per index: the fewest of 1, 2, 4, 8 that count `clusters` values, so
    indices pack whole into bytes (8 // bits per byte)."""
    if not 1 <= clusters <= 256:
        raise ValueError(f"a codebook holds 1 to 256 values (got {clusters})")
    needed = max(1, math.ceil(math.log2(clusters)))
    return next(bits for bits in (1, 2, 4, 8) if bits >= needed)


def _shifts(bits: int) -> torch.Tensor:
    """Right shifts that bring each index of a byte down, first index in the high bits."""
    return torch.arange(8 - bits, -1, -bits, dtype=torch.uint8)


def pack(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Flat uint8 storage of `indices` (each < 2**bits), 8 // bits per byte, first index in
    the high bits; the last byte is padded with zeros."""
    flat = indices.detach().flatten().to(torch.uint8)
    per = 8 // bits
    if flat.numel() % per:
        flat = torch.cat([flat, flat.new_zeros(per - flat.numel() % per)])
    if per == 1:
        return flat.clone()
    shifted = flat.reshape(-1, per) << _shifts(bits)
    packed = shifted[:, 0]
    for column in range(1, per):
        packed = packed | shifted[:, column]
    return packed


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first `count` indices stored by `pack`, as int64."""
    if bits == 8:
        return packed.to(torch.int64)
    flat: torch.Tensor = ((packed.unsqueeze(1) >> _shifts(bits)) & (2**bits - 1)).reshape(-1)
    return flat[:count].to(torch.int64)


def byte_table(bits: int, clusters: int) -> torch.Tensor:
    """(256, 8 // bits) uint8: the indices each possible byte holds, in order, capped at the
    codebook's last entry (a cap only bytes that never occur, or padding, ever reach)."""
    values = torch.arange(256, dtype=torch.uint8).unsqueeze(1) >> _shifts(bits)
    table: torch.Tensor = (values & (2**bits - 1)).clamp(max=clusters - 1)
    return table


#: Scalar types as wide as one byte's decoded values, by bytes.
_WIDE = {2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}


class CodebookWeight(nn.Module):
    """A weight stored as codebook + packed indices; `forward()` returns the full weight.

    Decoding is two gathers (`index_select`, much faster on CPU than advanced indexing): the
    codebook values of all 256 possible bytes, then one row of those per stored byte — read as
    one wide scalar where a row fits one (two fp32 values as an int64), which is ~4x faster
    than gathering rows.
    """

    indices: torch.Tensor
    table: torch.Tensor | None

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor) -> None:
        super().__init__()
        self.bits = index_bits(len(codebook))
        self.shape = tuple(indices.shape)
        self.count = indices.numel()
        self.codebook = nn.Parameter(codebook.detach().clone())
        self.register_buffer("indices", pack(indices, self.bits))
        table = byte_table(self.bits, len(codebook)) if self.bits < 8 else None
        self.register_buffer("table", table, persistent=False)

    def forward(self) -> torch.Tensor:
        indices = self.indices.to(torch.int32)
        if self.table is None:
            flat = torch.index_select(self.codebook, 0, indices)
        else:
            table = torch.index_select(self.codebook, 0, self.table.reshape(-1).to(torch.int32))
            per_byte = self.table.shape[1]
            wide = _WIDE.get(per_byte * self.codebook.element_size())
            if wide is not None:  # one byte's values as one scalar: a fast 1-D gather
                flat = torch.index_select(table.view(wide), 0, indices).view(table.dtype)
            else:
                flat = torch.index_select(table.reshape(256, per_byte), 0, indices).reshape(-1)
            if flat.numel() != self.count:
                flat = flat[: self.count]
        return flat.reshape(self.shape)

    @property
    def stored_bytes(self) -> int:
        """What the encoding holds: the codebook plus the packed indices."""
        codebook = self.codebook.numel() * self.codebook.element_size()
        return codebook + self.indices.numel()

    def extra_repr(self) -> str:
        return f"clusters={len(self.codebook)}, shape={self.shape}, bits={self.bits}"


def encode(gm: fx.GraphModule, shared: Sequence[Shared]) -> dict[str, CodebookWeight]:
    """Replace each shared weight of `gm` (a parameter read by `get_attr`) by a CodebookWeight
    called in its place; returns the new modules by weight path. In place."""
    encoded: dict[str, CodebookWeight] = {}
    for item in shared:
        path = _weight_path(gm, item.layer)
        owner_path, _, leaf = path.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        weight = owner._parameters.get(leaf)
        if weight is None:
            raise ValueError(f"{path} is not a parameter of the model")
        module = CodebookWeight(item.codebook.to(weight.dtype), item.indices)
        del owner._parameters[leaf]
        owner.add_module(leaf, module)
        for node in list(gm.graph.nodes):
            if node.op == "get_attr" and node.target == path:
                with gm.graph.inserting_before(node):
                    call = gm.graph.call_module(path, ())
                node.replace_all_uses_with(call)
                gm.graph.erase_node(node)
        encoded[path] = module
    gm.recompile()
    return encoded


def _weight_path(module: nn.Module, layer: str) -> str:
    """The parameter a `Shared` layer name stands for (`fc1` → `fc1.weight`; lowrank's
    `fc1.weight_low` is already a parameter path)."""
    names = dict(module.named_parameters())
    return f"{layer}.weight" if f"{layer}.weight" in names else layer

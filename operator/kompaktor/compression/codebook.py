"""Store a shared-weight layer compactly: a k-entry codebook and one small integer per weight.

`encode` swaps each clustered weight of a GraphModule for a `CodebookWeight` submodule at the
same path (`fc1.weight` → `fc1.weight.codebook`, `fc1.weight.indices`) that gathers the weight
in forward. torch.export then saves the codebook (k floats) and the packed indices instead of
the float weight, and the saved graph decodes them on each call. The decoded weight equals the
clustered float weight exactly.

Indices take the fewest of 1, 2, 4 or 8 bits that count the layer's clusters (16 clusters: two
indices per byte), so a byte always holds whole indices.

The decoding graph costs the file too (≈10 KB a layer at 4 bits): `worth_encoding` says whether a
layer's encoding, graph included, is smaller than its float weight; a small layer is not.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

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


#: Codebook dtypes whose values read two at a time as one complex scalar, a view that (unlike
#: a view as a wider integer) passes gradients on.
_PAIRED = frozenset({torch.float32, torch.float64})


class CodebookWeight(nn.Module):
    """A weight stored as codebook + packed indices; `forward()` returns the full weight.

    Decoding gathers the values of all 256 possible bytes from the codebook, then those of
    each stored byte, two at a time as one complex scalar: a 1-D `index_select`, ~3x faster on
    CPU than gathering rows or single values. Every step is differentiable, so the codebooks
    of a loaded model train like any parameter (a later train or distill stage fine-tunes the
    shared values, as Deep Compression's trained quantization does) while the indices, buffers,
    stay fixed. The saved graph is a few nodes per layer, each a kilobyte or so of the .pt2.
    """

    indices: torch.Tensor
    table: torch.Tensor | None
    offsets: torch.Tensor | None

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor) -> None:
        super().__init__()
        self.bits = index_bits(len(codebook))
        self.shape = tuple(indices.shape)
        self.count = indices.numel()
        self.codebook = nn.Parameter(codebook.detach().clone())
        self.register_buffer("indices", pack(indices, self.bits))
        pairs = 4 // self.bits  # value pairs per byte: 0 for 8-bit indices, which need no table
        table = byte_table(self.bits, len(codebook)).reshape(-1, 2).int() if pairs else None
        self.register_buffer("table", table, persistent=False)  # (256 · pairs, 2)
        offsets = torch.arange(pairs, dtype=torch.int32) if pairs > 1 else None
        self.register_buffer("offsets", offsets, persistent=False)

    def forward(self) -> torch.Tensor:
        packed = self.indices.to(torch.int32)
        if self.table is None:
            flat = torch.index_select(self.codebook, 0, packed)
        elif self.codebook.dtype in _PAIRED:
            flat = self._gather_pairs(self.table, packed)
        else:  # no complex view of this dtype: unpack the indices, then gather the values
            unpacked = torch.index_select(self.table.view(256, -1), 0, packed)
            flat = torch.index_select(self.codebook, 0, unpacked.reshape(-1))
        if flat.numel() != self.count:
            flat = flat.reshape(-1)[: self.count]
        return flat.reshape(self.shape)

    def _gather_pairs(self, table: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """Each stored byte's values as (pairs, 2): the complex pairs of all 256 possible bytes
        gathered by byte; a byte holding more than two values takes consecutive pairs."""
        pairs = torch.view_as_complex(self.codebook[table])
        if self.offsets is not None:
            packed = (packed.unsqueeze(1) * len(self.offsets) + self.offsets).reshape(-1)
        return torch.view_as_real(torch.index_select(pairs, 0, packed))

    @property
    def stored_bytes(self) -> int:
        """What the encoding holds: the codebook plus the packed indices."""
        return encoded_bytes(len(self.codebook), self.count, self.codebook.dtype)

    def extra_repr(self) -> str:
        return f"clusters={len(self.codebook)}, shape={self.shape}, bits={self.bits}"


def encoded_bytes(clusters: int, count: int, dtype: torch.dtype) -> int:
    """Bytes of a `count`-weight layer's encoding: its codebook and its packed indices."""
    return clusters * dtype.itemsize + -(-count * index_bits(clusters) // 8)


def worth_encoding(item: Shared) -> bool:
    """Whether a shared layer saves smaller encoded than as its float weight (which holds the
    same k values), counting the decoding graph the encoding adds to the file."""
    clusters, count, dtype = len(item.codebook), item.indices.numel(), item.codebook.dtype
    saved = count * dtype.itemsize - encoded_bytes(clusters, count, dtype)
    return saved > decoding_overhead(index_bits(clusters), dtype)


@functools.cache
def decoding_overhead(bits: int, dtype: torch.dtype) -> int:
    """Bytes a saved .pt2 holds per encoded layer besides its codebook and indices: the decoding
    nodes, their metadata and the byte table. Measured (once a process) by saving a one-layer
    model both ways, since it depends on torch's serialization."""
    from kompaktor.models.io import save_torch

    side, clusters = 16, 2**bits
    example = (torch.zeros(2, side, dtype=dtype),)
    model = nn.Sequential(nn.Linear(side, side, bias=False)).to(dtype)
    dynamic = ({0: torch.export.Dim.AUTO},)
    gm = torch.export.export(model, example, dynamic_shapes=dynamic).module()
    indices = torch.arange(side * side).remainder(clusters).reshape(side, side)
    codebook = torch.linspace(-1, 1, clusters, dtype=dtype)
    with tempfile.TemporaryDirectory() as folder:
        dense = save_torch(gm, example, Path(folder) / "dense.pt2").stat().st_size
        encode(gm, [Shared("0", codebook, indices)])
        encoded = save_torch(gm, example, Path(folder) / "encoded.pt2").stat().st_size
    tensors = encoded_bytes(clusters, side * side, dtype) - side * side * dtype.itemsize
    return encoded - dense - tensors


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

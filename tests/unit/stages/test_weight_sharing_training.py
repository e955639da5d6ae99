# ruff: noqa: F811  (fixtures are imported from the shared support module)
"""A saved weight-shared model trains as Deep Compression's trained quantization does: a later
stage's gradients reach each layer's codebook through the saved decoding, the indices stay as
they are, so every encoded layer keeps at most its k values, and the file stays encoded. And
layers too small for a codebook to pay stay floats, so sharing never grows the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prune_distill_support import (  # noqa: F401  (fixtures)
    context,
    digits_cnn,
    digits_cnn_state,
    digits_data,
)
from torch import fx, nn

from kompaktor.api.run import RunRecord
from kompaktor.compression.codebook import CodebookWeight, decoding_overhead, worth_encoding
from kompaktor.compression.materialize import materialized_copy
from kompaktor.compression.sharing import Shared
from kompaktor.data import Dataset
from kompaktor.models import load_model, save_torch
from kompaktor.stages.compress import CompressParams, CompressStage
from kompaktor.stages.outputs import LOG_FILE
from kompaktor.stages.runner import StageRequest, example_inputs, run_stage


def stage(
    kind: str, model: Path, out: Path, params: dict[str, object], reference: Path
) -> RunRecord:
    request = StageRequest(type=kind, input=str(model), dataset="sklearn:digits", output=str(out),
                           params=params, reference=str(reference))  # fmt: skip
    return run_stage(request)


def loaded(path: Path) -> nn.Module:
    module = load_model(path).module
    assert module is not None
    return module


def codebooks(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if n.endswith("codebook")}


def indices(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in module.named_buffers() if n.endswith("indices")}


def distinct_weights(module: nn.Module) -> dict[str, int]:
    """How many values each encoded weight decodes to."""
    decoded, folded = materialized_copy(module)
    return {path: len(torch.unique(decoded.get_parameter(path))) for path in folded}


def sharing(clusters: int = 16) -> dict[str, object]:
    return {"method": "weightsharing", "clusters": clusters, "fineTuneEpochs": 0}


def test_a_loaded_shared_models_codebooks_train_and_its_indices_stay(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    params = CompressParams.model_validate(sharing())
    result = CompressStage().run(context(params, digits_cnn, digits_data, tmp_path))
    x = torch.as_tensor(digits_data.x["train"][0][:64])  # type: ignore[index]
    y = torch.as_tensor(digits_data.y["train"][:64])  # type: ignore[index]
    module = loaded(save_torch(result.module, (x[:8],), tmp_path / "shared.pt2"))
    books, fixed, counts = codebooks(module), indices(module), distinct_weights(module)
    assert sorted(books) == ["conv2.weight.codebook", "fc1.weight.codebook"]  # a conv, a linear
    assert sorted(counts) == ["conv2.weight", "fc1.weight"]
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    nn.functional.cross_entropy(module(x), y).backward()
    optimizer.step()
    for name, before in books.items():
        assert not torch.equal(module.get_parameter(name), before), f"{name} did not train"
    for name, before in fixed.items():
        assert torch.equal(module.get_buffer(name), before), name
    after = distinct_weights(module)
    assert all(after[path] <= counts[path] <= 16 for path in counts), (counts, after)


def test_distill_after_compress_fine_tunes_the_shared_values(
    digits_cnn_pt2: Path, tmp_path: Path
) -> None:
    stage("compress", digits_cnn_pt2, tmp_path / "compress", sharing(), digits_cnn_pt2)
    compressed = tmp_path / "compress" / "model.pt2"
    params = {"epochs": 2, "lr": 1e-3}
    distilled = stage("distill", compressed, tmp_path / "distill", params, digits_cnn_pt2)
    output = tmp_path / "distill" / "model.pt2"
    before, after = loaded(compressed), loaded(output)
    assert sorted(codebooks(before)) == ["fc1.weight.codebook"]  # 4096 of the 4488 weights
    assert after.get_parameter("fc1.weight.codebook").numel() == 16  # still encoded
    assert output.stat().st_size <= 1.01 * compressed.stat().st_size
    for name, book in codebooks(before).items():
        assert not torch.equal(after.get_parameter(name), book), f"{name} did not train"
    for name, fixed in indices(before).items():
        assert torch.equal(after.get_buffer(name), fixed), name
    assert distinct_weights(after) == {"fc1.weight": 16}
    m = distilled.metrics
    assert m["metric"] >= m["inputMetric"] - 0.01  # the shared model, before distilling
    assert m["metric"] >= m["referenceMetric"] - 0.02  # the float model it was shared from


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("clusters", [2, 4, 16, 200])
def test_each_codebook_entry_gets_its_members_summed_gradient(
    clusters: int, dtype: torch.dtype
) -> None:
    generator = torch.Generator().manual_seed(clusters)
    members = torch.randint(0, clusters, (7, 13), generator=generator)  # 91: a padded last byte
    codebook = torch.randn(clusters, generator=generator).to(dtype)
    layer = CodebookWeight(codebook, members)
    upstream = torch.randn(7, 13, generator=generator).to(dtype)
    weight = layer()
    assert torch.equal(weight, codebook[members])
    weight.backward(upstream)
    expected = torch.zeros(clusters, dtype=torch.float64).index_add_(
        0, members.flatten(), upstream.double().flatten()
    )
    assert layer.codebook.grad is not None
    torch.testing.assert_close(layer.codebook.grad.double(), expected, rtol=2e-2, atol=2e-2)


def test_a_layer_is_encoded_only_where_that_saves_room() -> None:
    overhead = decoding_overhead(4, torch.float32)
    assert 1_000 < overhead < 40_000  # a few graph nodes with their metadata, and the table

    def layer(count: int) -> Shared:
        return Shared("fc", torch.linspace(-1, 1, 16), torch.arange(count) % 16)

    # float 4n bytes against a 64-byte codebook, n/2 bytes of indices and the graph
    smallest = (overhead + 64) * 2 // 7 + 1
    assert worth_encoding(layer(smallest + 8))
    assert not worth_encoding(layer(smallest - 8))


def test_sharing_a_model_of_small_layers_stores_them_dense_and_says_so(
    digits_cnn_small_pt2: Path, digits: Dataset, tmp_path: Path
) -> None:
    """Encoded, the width-2 CNN's 1362 weights made a larger .pt2 than its input, and only the
    runner's generic warning said so."""
    model = tmp_path / "small.pt2"  # saved as the runner saves, with the same example rows
    save_torch(loaded(digits_cnn_small_pt2), example_inputs(digits), model)
    out = tmp_path / "compress"
    record = stage("compress", model, out, sharing(4), model)
    assert record.details["storedDense"] == ["conv", "fc1", "fc2"]
    assert record.details["indexBits"] == {}
    assert record.metrics["layersStoredDense"] == 3.0
    # the same tensors; re-exporting nests torch's module names a level deeper (+64 bytes)
    assert record.metrics["sizeBytes"] <= record.metrics["sizeBytesInput"] + 1024
    assert "warning: the model will not get smaller" in (out / LOG_FILE).read_text()
    module = loaded(out / "model.pt2")
    for name in ("conv.weight", "fc1.weight", "fc2.weight"):
        assert len(torch.unique(module.get_parameter(name))) <= 4, name


def test_only_the_layers_worth_encoding_are_encoded_and_the_file_shrinks(
    digits_cnn_pt2: Path, tmp_path: Path
) -> None:
    out = tmp_path / "compress"
    record = stage("compress", digits_cnn_pt2, out, sharing(), digits_cnn_pt2)
    assert record.details["indexBits"] == {"fc1": 4}
    assert record.details["storedDense"] == ["conv", "fc2"]
    assert record.metrics["sizeBytes"] < record.metrics["sizeBytesInput"]
    assert "2 small layer(s) (conv, fc2) stored as floats" in (out / LOG_FILE).read_text()

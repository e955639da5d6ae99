# ruff: noqa: F811  (fixtures are imported from the shared support module)
"""Weight sharing stores what it promises: a codebook and packed indices that decode to exactly
the clustered float weights, a .pt2 a fraction of the float file's size, and a model the later
stages (quantize, benchmark) take as it is."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
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
from kompaktor.compression.codebook import CodebookWeight, index_bits, pack, unpack
from kompaktor.compression.materialize import materialize
from kompaktor.compression.sharing import sharable_weights, share_weights
from kompaktor.data import Dataset
from kompaktor.models import load_model, predictor_for, save_torch
from kompaktor.models.predict import TorchPredictor
from kompaktor.stages.compress import CompressParams, CompressStage
from kompaktor.stages.runner import StageRequest, run_stage
from kompaktor.training import fit


@pytest.mark.parametrize(
    ("clusters", "bits"), [(2, 1), (3, 2), (4, 2), (5, 4), (13, 4), (16, 4), (17, 8), (256, 8)]
)
def test_indices_pack_whole_into_bytes_and_unpack_exactly(clusters: int, bits: int) -> None:
    assert index_bits(clusters) == bits
    for count in (1, 7, 8, 9, 1001):
        indices = torch.randint(0, clusters, (count,), generator=torch.Generator().manual_seed(0))
        packed = pack(indices, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == -(-count * bits // 8)
        assert torch.equal(unpack(packed, bits, count), indices)
        codebook = torch.linspace(-1, 1, clusters)
        decoded = CodebookWeight(codebook, indices.reshape(count, 1))()
        assert torch.equal(decoded, codebook[indices].reshape(count, 1))


def test_the_saved_encoding_computes_what_the_clustered_float_weights_compute(
    digits_cnn: fx.GraphModule, digits_data: Dataset, tmp_path: Path
) -> None:
    clustered = copy.deepcopy(digits_cnn)  # the float model with each layer snapped to 16 values
    share_weights(sharable_weights(clustered), 16)
    params = CompressParams(method="weightsharing", clusters=16, fine_tune_epochs=0)
    result = CompressStage().run(context(params, digits_cnn, digits_data, tmp_path))
    x = torch.as_tensor(digits_data.x["test"][0])  # type: ignore[index]
    saved = save_torch(result.module, (x[:8],), tmp_path / "shared.pt2")
    loaded = load_model(saved).module
    assert loaded is not None
    floats = sorted(n for n, p in loaded.named_parameters() if p.dim() >= 2)
    assert floats == ["conv1.weight", "fc2.weight"]  # too small to encode
    assert result.details["storedDense"] == ["conv1", "fc2"]
    with torch.no_grad():
        expected = clustered(x)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
        # materialized again (what quantize does before its ONNX export): the same weights
        paths = materialize(loaded)
        assert sorted(paths) == ["conv2.weight", "fc1.weight"]
        for path in [*paths, *floats]:
            assert torch.equal(loaded.get_parameter(path), clustered.get_parameter(path)), path
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, CodebookWeight) for m in loaded.modules())


def digits_mlp() -> nn.Module:
    """Wide enough that the weights, not the graph, make up most of the file."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )  # fmt: skip


@pytest.fixture(scope="module")
def mlp_pt2(tmp_path_factory: pytest.TempPathFactory, digits: Dataset) -> Path:
    torch.manual_seed(0)
    model = fit(digits_mlp(), digits, epochs=4, lr=1e-3, batch_size=32, seed=0)
    x = torch.as_tensor(digits.x["test"][0][:8])  # type: ignore[index]
    return save_torch(model, (x,), tmp_path_factory.mktemp("sharing") / "mlp.pt2")


def stage(
    kind: str, model: Path, out: Path, params: dict[str, object], reference: Path | None = None
) -> RunRecord:
    request = StageRequest(type=kind, input=str(model), dataset="sklearn:digits", output=str(out),
                           params=params, reference=str(reference or model))  # fmt: skip
    return run_stage(request)


def test_shared_model_file_is_small_and_feeds_quantize_and_benchmark(
    mlp_pt2: Path, digits: Dataset, tmp_path: Path
) -> None:
    shared = stage(
        "compress", mlp_pt2, tmp_path / "compress",
        {"method": "weightsharing", "clusters": 16, "fineTuneEpochs": 1},
    )  # fmt: skip
    m, shared_file = shared.metrics, tmp_path / "compress" / "model.pt2"
    ratio = shared_file.stat().st_size / mlp_pt2.stat().st_size
    assert ratio <= 0.3, f"the shared .pt2 is {ratio:.3f} of the float file"
    assert m["sizeBytes"] == shared_file.stat().st_size
    assert m["metric"] >= m["inputMetric"] - 0.02
    assert shared.details["clusters"] == {"1": 16, "3": 16, "5": 16}
    assert shared.details["indexBits"] | {"5": 4} == {"1": 4, "3": 4, "5": 4}  # 5: 2560 weights

    # The file keeps the packed indices; a predictor (benchmark, evaluation) decodes them once.
    loaded, plain = load_model(shared_file), load_model(mlp_pt2)
    assert loaded.module is not None and plain.module is not None
    predictor = predictor_for(loaded)
    assert isinstance(predictor, TorchPredictor)
    assert any(b.dtype == torch.uint8 for b in loaded.module.buffers())
    assert not any(b.dtype == torch.uint8 for b in predictor.module.buffers())
    x = digits.x["test"][0][:8]  # type: ignore[index]
    np.testing.assert_allclose(predictor(x), TorchPredictor(loaded.module)(x), rtol=1e-5, atol=1e-6)
    unshared = predictor_for(plain)
    assert isinstance(unshared, TorchPredictor) and unshared.module is plain.module  # no copy

    quantized = stage("quantize", shared_file, tmp_path / "quantize", {"mode": "dynamic"})
    onnx_model = onnx.load(str(tmp_path / "quantize" / "model.onnx"))
    int8 = [t for t in onnx_model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= 3  # every linear layer's weight was stored, hence quantized
    assert quantized.metrics["metric"] >= m["inputMetric"] - 0.03

    quick = {"batchSizes": [1], "iterations": 5, "warmup": 1}
    for name, model in [("pt2", shared_file), ("onnx", tmp_path / "quantize" / "model.onnx")]:
        bench = stage("benchmark", model, tmp_path / f"bench-{name}", quick, reference=mlp_pt2)
        assert bench.metrics["latencyMs"] > 0, name
        assert bench.metrics["sizeRatio"] == pytest.approx(
            model.stat().st_size / mlp_pt2.stat().st_size
        )
    assert bench.metrics["metric"] >= m["inputMetric"] - 0.03


@pytest.mark.parametrize("k", [2, 16, 256])
def test_the_compiled_kmeans_step_clusters_exactly_like_pytorch(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("kompaktor_kernels")
    import kompaktor.compression.sharing as sharing

    weights = torch.randn(384, 257, generator=torch.Generator().manual_seed(k))
    compiled = sharing.cluster_1d(weights, k)
    monkeypatch.setattr(sharing, "optional_kernel", lambda name: None)
    eager = sharing.cluster_1d(weights, k)
    assert torch.equal(compiled[1], eager[1])
    torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=1e-7)

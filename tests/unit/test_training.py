"""The shared training loop: it learns, repeats exactly for a seed, and regularizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kompaktor.data import Dataset, load_dataset
from kompaktor.models.io import export_program
from kompaktor.training import as_tensors, fit, l1_norm, predict_logits, set_training


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return load_dataset("sklearn:breast_cancer")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


def accuracy(module: nn.Module, data: Dataset) -> float:
    logits = predict_logits(module, data.inputs("test"))
    labels = torch.as_tensor(data.targets("test"))
    return float((logits.argmax(1) == labels).float().mean())


def test_fit_learns_and_returns_eval_mode(cancer: Dataset) -> None:
    model = mlp()
    before = accuracy(model, cancer)
    losses: list[float] = []
    out = fit(model, cancer, epochs=5, lr=1e-2, batch_size=32, seed=0,
              on_epoch=lambda epoch, loss: losses.append(loss))  # fmt: skip
    assert out is model
    assert not any(m.training for m in model.modules())
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert accuracy(model, cancer) > max(before, 0.9)


def test_fit_is_deterministic_for_a_seed(cancer: Dataset) -> None:
    def weights(seed: int) -> list[torch.Tensor]:
        model = fit(mlp(), cancer, epochs=2, lr=1e-2, batch_size=16, seed=seed)
        return [p.detach().clone() for p in model.parameters()]

    first, again, other = weights(7), weights(7), weights(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_l1_shrinks_weights(cancer: Dataset, optimizer: str) -> None:
    def norm(l1: float) -> float:
        model = fit(mlp(), cancer, epochs=3, lr=1e-2, batch_size=32, seed=0,
                    optimizer=optimizer, l1=l1, momentum=0.9)  # type: ignore[arg-type]  # fmt: skip
        return float(l1_norm([p.detach() for p in model.parameters()]))

    assert norm(1e-2) < 0.8 * norm(0.0)


def test_weight_decay_shrinks_weights(cancer: Dataset) -> None:
    def norm(decay: float) -> float:
        model = fit(mlp(), cancer, epochs=3, lr=1e-2, batch_size=32, seed=0,
                    optimizer="adamw", weight_decay=decay)  # fmt: skip
        return float(sum(p.detach().pow(2).sum() for p in model.parameters()))

    assert norm(5.0) < norm(0.0)


def test_exported_module_trains_despite_refusing_train_mode(cancer: Dataset) -> None:
    example = as_tensors([x[:4] for x in cancer.inputs("test")])
    graph = export_program(mlp().eval(), example).module()
    with pytest.raises(NotImplementedError):
        graph.train()
    set_training(graph, True)  # does not raise
    before = accuracy(graph, cancer)
    fit(graph, cancer, epochs=5, lr=1e-2, batch_size=32, seed=0)
    assert accuracy(graph, cancer) > max(before, 0.9)


def test_custom_loss_fn_is_used(cancer: Dataset) -> None:
    calls: list[int] = []

    def loss_fn(module: nn.Module, x: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        calls.append(len(y))
        out: torch.Tensor = module(*x)
        return out.pow(2).mean()  # drive outputs to zero

    model = fit(mlp(), cancer, epochs=2, lr=1e-2, batch_size=64, seed=0, loss_fn=loss_fn)
    assert sum(calls) == 2 * len(cancer.targets("train"))
    assert predict_logits(model, cancer.inputs("test")).abs().mean() < 0.1


def test_predict_logits_matches_module_in_batches(cancer: Dataset) -> None:
    model = mlp().eval()
    x = cancer.inputs("test")
    with torch.no_grad():
        expected = model(*as_tensors(x))
    got = predict_logits(model, x, batch_size=7)
    assert got.shape == (len(x[0]), 2)
    assert torch.allclose(got, expected, atol=1e-6)


def test_fit_rejects_nonsense(cancer: Dataset) -> None:
    with pytest.raises(ValueError, match="epochs"):
        fit(mlp(), cancer, epochs=0, lr=1e-2, batch_size=32, seed=0)

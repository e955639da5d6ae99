"""Unstructured masks: exact counts, global vs per-layer ranking, zeros held through training."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kompaktor.surgery import hold_masks, masks_for_sparsity, prunable_weights, sparsity_of
from kompaktor.surgery.masks import excluded_weights


def test_mask_counts_are_exact_in_both_scopes() -> None:
    scores = {"a": torch.arange(100.0).view(10, 10), "b": torch.arange(50.0).view(5, 10) + 1000}
    global_masks = masks_for_sparsity(scores, 0.6, "global")
    assert int((~global_masks["a"]).sum()) == 90 and int((~global_masks["b"]).sum()) == 0
    layer_masks = masks_for_sparsity(scores, 0.6, "layer")
    assert int((~layer_masks["a"]).sum()) == 60 and int((~layer_masks["b"]).sum()) == 30


def test_held_zeros_stay_zero_through_adam_and_weight_decay() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    weights = prunable_weights(model)
    assert set(weights) == {"0"}  # the output layer "2" is kept by default
    masks = {"0": torch.rand(6, 6) > 0.5}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    with hold_masks(weights, masks):
        for _ in range(5):
            optimizer.zero_grad()
            model(torch.randn(8, 6)).pow(2).sum().backward()
            optimizer.step()
            assert bool((weights["0"][~masks["0"]] == 0).all())
    assert sparsity_of(weights) == int((~masks["0"]).sum()) / 36


class HeadFirst(nn.Module):
    """The classifier is declared before the body, so it is not the last matrix registered."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 10)
        self.body = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(self.body(x.flatten(1))), -1)


def test_torchscript_keeps_the_layer_that_produces_the_output(tmp_path: Path) -> None:
    """TorchScript kept "the last matrix registered" (body.2) and pruned the classifier."""
    x = torch.randn(2, 64)
    for name, scripted in (
        ("script", torch.jit.script(HeadFirst())),
        ("trace", torch.jit.trace(HeadFirst(), (x,))),
    ):
        path = tmp_path / f"{name}.pt"
        torch.jit.save(scripted, str(path))  # type: ignore[no-untyped-call]
        loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
        assert sorted(prunable_weights(loaded)) == ["body.0", "body.2"], name
        assert sorted(prunable_weights(loaded, keep_output=False)) == ["body.0", "body.2", "head"]


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.skipme = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(torch.relu(self.skipme(out[:, -1])))  # type: ignore[no-any-return]


def test_what_is_not_pruned_is_named_with_its_reason() -> None:
    """A GRU's prune failed with "check params.skip" although no skip was set."""
    gm = torch.export.export(Recurrent(), (torch.randn(2, 8, 8),)).module()
    excluded = excluded_weights(gm, skip=("skip*",))
    assert excluded == {
        "output": ["head"],
        "skip": ["skipme"],
        "other": ["rnn.weight_hh_l0", "rnn.weight_ih_l0"],
    }
    assert list(prunable_weights(gm, skip=("skip*",))) == []

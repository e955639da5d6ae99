from __future__ import annotations

import pytest
import torch

import kompaktor_kernels as kk
from kompaktor_kernels.reference import kd_loss_reference

SHAPES = [(1, 1), (1, 7), (5, 16), (33, 1001), (64, 4099)]


def _inputs(rows: int, vocab: int, scale: float = 3.0) -> tuple[torch.Tensor, ...]:
    s = torch.randn(rows, vocab) * scale
    t = torch.randn(rows, vocab) * scale
    labels = torch.randint(0, vocab, (rows,))
    return s, t, labels


@pytest.mark.parametrize(("rows", "vocab"), SHAPES)
@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (2.5, 0.9), (4.0, 0.0), (0.7, 1.0)])
def test_value_and_grad_match_reference(
    isa: str, rows: int, vocab: int, temperature: float, alpha: float
) -> None:
    s, t, labels = _inputs(rows, vocab)
    s1 = s.clone().requires_grad_()
    s2 = s.clone().requires_grad_()
    got = kk.kd_loss(s1, t, labels, temperature, alpha)
    ref = kd_loss_reference(s2, t, labels, temperature, alpha)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    got.backward()
    ref.backward()
    assert s1.grad is not None and s2.grad is not None
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)


def test_upstream_gradient_is_applied(isa: str) -> None:
    s, t, labels = _inputs(6, 50)
    s1 = s.clone().requires_grad_()
    s2 = s.clone().requires_grad_()
    (kk.kd_loss(s1, t, labels, 2.0, 0.3) * 3.5).backward()
    (kd_loss_reference(s2, t, labels, 2.0, 0.3) * 3.5).backward()
    assert s1.grad is not None and s2.grad is not None
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)


def test_extreme_logits_stay_finite(isa: str) -> None:
    s, t, labels = _inputs(4, 300, scale=200.0)
    s1 = s.clone().requires_grad_()
    loss = kk.kd_loss(s1, t, labels, 1.0, 0.5)
    ref = kd_loss_reference(s.clone(), t, labels, 1.0, 0.5)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-3)
    loss.backward()
    assert s1.grad is not None and torch.isfinite(s1.grad).all()


def test_no_grad_and_teacher_constant() -> None:
    s, t, labels = _inputs(3, 20)
    with torch.no_grad():
        plain = kk.kd_loss(s, t, labels, 2.0, 0.5)
    assert not plain.requires_grad
    teacher = t.clone().requires_grad_()
    student = s.clone().requires_grad_()
    kk.kd_loss(student, teacher, labels, 2.0, 0.5).backward()
    assert teacher.grad is None and student.grad is not None
    # A teacher that requires grad, with a constant student: nothing to differentiate here,
    # and the rest of the graph still backpropagates.
    weight = torch.tensor(1.0, requires_grad=True)
    loss = kk.kd_loss(s, t.clone().requires_grad_(), labels, 2.0, 0.5)
    assert not loss.requires_grad
    (loss + weight * 2).backward()
    assert weight.grad == 2


@pytest.mark.parametrize("mask", [torch.finfo(torch.float32).min, float("-inf")])
def test_masked_teacher_logits_weigh_nothing(isa: str, mask: float) -> None:
    """Masked vocabulary entries (Hugging Face masks with float32's min, or -inf) have teacher
    probability 0 and add nothing to the KL term. exp clamped at -87 once gave them ≈1e-38,
    times a log-ratio of ≈-1e38: a term of ≈-1 each, and a negative loss."""
    s, t, labels = _inputs(5, 70)  # masked columns in the vector body and the scalar tail
    masked = [3, 20, 69]
    t[:, masked] = mask
    s1 = s.clone().requires_grad_()
    loss = kk.kd_loss(s1, t, labels, 2.0, 0.5)
    # float64 has the range to take float32's min to an exact zero probability.
    t64 = t.double().clamp(min=torch.finfo(torch.float32).min)
    s2 = s.double().requires_grad_()
    ref = kd_loss_reference(s2, t64, labels, 2.0, 0.5)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    loss.backward()
    ref.backward()
    assert s1.grad is not None and s2.grad is not None
    torch.testing.assert_close(s1.grad.double(), s2.grad, rtol=1e-4, atol=1e-7)


def test_thread_count_does_not_change_result() -> None:
    s, t, labels = _inputs(17, 333)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kk.kd_loss(s, t, labels, 2.0, 0.5)
        torch.set_num_threads(max(2, before))
        many = kk.kd_loss(s, t, labels, 2.0, 0.5)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one, many, rtol=1e-6, atol=1e-6)


def test_traceable_by_compile_and_export() -> None:
    class Loss(torch.nn.Module):
        def forward(self, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return kk.kd_loss(s, t, y, 2.0, 0.5)

    s, t, labels = _inputs(4, 10)
    ep = torch.export.export(Loss(), (s, t, labels))
    torch.testing.assert_close(ep.module()(s, t, labels), kk.kd_loss(s, t, labels, 2.0, 0.5))
    compiled = torch.compile(Loss(), backend="eager", fullgraph=True)
    s1 = s.clone().requires_grad_()
    compiled(s1, t, labels).backward()
    s2 = s.clone().requires_grad_()
    kd_loss_reference(s2, t, labels, 2.0, 0.5).backward()
    assert s1.grad is not None and s2.grad is not None
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"s": torch.randn(2, 3, dtype=torch.float64)}, TypeError, "float64"),
        ({"t": torch.randn(2, 4)}, ValueError, r"\(2, 4\)"),
        ({"s": torch.randn(3, 2).t()}, ValueError, "contiguous"),
        ({"labels": torch.tensor([0, 3])}, ValueError, r"labels must lie in \[0, 3\)"),
        ({"labels": torch.tensor([0, 1], dtype=torch.int32)}, TypeError, "int32"),
        ({"labels": torch.tensor([0])}, ValueError, r"labels must have shape \(2,\)"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": 1e-39}, ValueError, "float32"),  # 1/T overflows float32
        ({"temperature": 1e39}, ValueError, "float32"),
        ({"alpha": 1.5}, ValueError, "alpha"),
        ({"s": torch.randn(3), "t": torch.randn(3)}, ValueError, r"\[rows, vocab\]"),
        ({"s": torch.randn(2, 1, 3), "t": torch.randn(2, 1, 3)}, ValueError, r"\(2, 1\)"),
        ({"labels": torch.tensor([-1, 2])}, ValueError, r"or equal ignore_index \(-100\)"),
        (
            {"s": torch.empty(0, 3), "t": torch.empty(0, 3), "labels": torch.empty(0).long()},
            ValueError,
            "non-empty",
        ),
    ],
)
def test_bad_input(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    args: dict[str, object] = {
        "s": torch.randn(2, 3),
        "t": torch.randn(2, 3),
        "labels": torch.tensor([0, 2]),
        "temperature": 1.0,
        "alpha": 0.5,
    }
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        kk.kd_loss(args["s"], args["t"], args["labels"], args["temperature"], args["alpha"])  # type: ignore[arg-type]


@pytest.mark.parametrize(("rows", "vocab"), [(1, 7), (33, 1001), (64, 4099)])
@pytest.mark.parametrize("ignore_index", [-100, 0])
def test_ignored_rows_count_for_nothing(isa: str, rows: int, vocab: int, ignore_index: int) -> None:
    """Padding rows (label ignore_index, as in F.cross_entropy) leave both terms and the mean;
    a valid class id may serve as ignore_index too."""
    s, t, labels = _inputs(rows, vocab)
    labels[::3] = ignore_index
    s1 = s.clone().requires_grad_()
    s2 = s.clone().requires_grad_()
    got = kk.kd_loss(s1, t, labels, 2.0, 0.4, ignore_index=ignore_index)
    ref = kd_loss_reference(s2, t, labels, 2.0, 0.4, ignore_index=ignore_index)
    kept = labels != ignore_index
    if kept.any():
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        unpadded = kk.kd_loss(s[kept], t[kept], labels[kept], 2.0, 0.4)
        torch.testing.assert_close(got, unpadded, rtol=1e-6, atol=1e-6)
    else:  # rows == 1: its one row is ignored
        assert got.isnan() and ref.isnan()
    got.backward()
    ref.backward()
    assert s1.grad is not None and s2.grad is not None
    assert not s1.grad[~kept].any()
    torch.testing.assert_close(s1.grad, s2.grad.nan_to_num(0.0), rtol=1e-4, atol=1e-7)


def test_sequence_logits_with_padding(isa: str) -> None:
    """[batch, sequence, vocab] logits with [batch, sequence] labels, padded with -100."""
    s, t, labels = _inputs(4 * 9, 257)
    s, t, labels = s.view(4, 9, 257), t.view(4, 9, 257), labels.view(4, 9)
    labels[:, 6:] = -100
    s1 = s.clone().requires_grad_()
    s2 = s.clone().requires_grad_()
    got = kk.kd_loss(s1, t, labels, 2.0, 0.5)
    ref = kd_loss_reference(s2, t, labels, 2.0, 0.5)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    got.backward()
    ref.backward()
    assert s1.grad is not None and s2.grad is not None and s1.grad.shape == s.shape
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)
    assert not s1.grad[:, 6:].any()


def test_second_backward_is_a_clear_error() -> None:
    s, t, labels = _inputs(3, 8)
    s1 = s.clone().requires_grad_()
    loss = kk.kd_loss(s1, t, labels, 2.0, 0.5)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward"):
        loss.backward()


def test_double_backward_is_a_clear_error() -> None:
    """The stored gradient has no graph back to the logits: a second derivative (a gradient
    penalty, a Hessian-vector product) would come out 0, so create_graph=True is refused."""
    s, t, labels = _inputs(3, 8)
    s1 = s.clone().requires_grad_()
    loss = kk.kd_loss(s1, t, labels, 2.0, 0.5)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, s1, create_graph=True)


def test_gradient_is_adopted_not_copied() -> None:
    s, t, labels = _inputs(8, 64)
    s1 = s.clone().requires_grad_()
    loss = kk.kd_loss(s1, t, labels, 2.0, 0.5)
    loss.backward()
    assert s1.grad is not None
    import gc
    import weakref

    ref = weakref.ref(loss.grad_fn) if loss.grad_fn is not None else None
    del loss
    gc.collect()
    assert ref is None or ref() is None  # no reference cycle keeps the graph alive

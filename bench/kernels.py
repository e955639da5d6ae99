"""Side-by-side benchmark of the compiled kernels against the best existing PyTorch and ONNX
Runtime paths.

Everything runs in one process with one thread count (torch.get_num_threads(), which the
kernels also use). Ratios > 1 mean the kernel is faster. `--quick` cuts repeats for CI."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

import kompaktor_kernels as kk
from kompaktor_kernels.reference import kd_loss_reference, kmeans1d_step_reference

# The issue brief's nominal int8 peak, the yardstick only where torch has no CPU int8 matmul to
# measure. The yardsticks are measured: what a large sgemm (measured_dense_peak) and a large
# int8 matmul (measured_int8_peak) reach on the machine and thread count at hand; both brief
# figures (32 GFLOP/s, 120 GOP/s per core) are well below what this Zen 4 VM reaches.
PEAK_I8_PER_CORE = 120.0  # GOP/s (VNNI)


# Wall clock by default. --cpu-time switches to the calling thread's CPU time, which other
# tenants of a shared VM cannot inflate; it is only meaningful with --threads 1.
CLOCK: Callable[[], float] = time.perf_counter


def timeit(fn: Callable[[], object], repeat: int, min_time: float) -> float:
    """Best (minimum) seconds per call over `repeat` batches each lasting at least `min_time`.

    The minimum, not the median: on a shared 2-core VM other tenants only ever add time."""
    fn()
    n = 1
    while True:
        t0 = CLOCK()
        for _ in range(n):
            fn()
        dt = CLOCK() - t0
        if dt >= min_time:
            break
        n *= 2
    samples = []
    for _ in range(repeat):
        t0 = CLOCK()
        for _ in range(n):
            fn()
        samples.append((CLOCK() - t0) / n)
    return min(samples)


def measured_dense_peak(quick: bool) -> float:
    """GFLOP/s of a large fp32 matmul through torch (oneDNN/MKL): the practical dense ceiling."""
    n = 512 if quick else 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = timeit(partial(torch.mm, a, b), 3, 0.05)
    return 2.0 * n**3 / t / 1e9


#: The issue's weight shapes (out × in): a BERT-base feed-forward block's two layers.
SHAPES = ((768, 3072), (3072, 768))


T = TypeVar("T")


def narrowed(value: T | None, grid: tuple[T, ...]) -> tuple[T, ...]:
    """A grid's values, or only the one the command line names (`--shape`, `--sparsity`,
    `--batch`)."""
    return (value,) if value is not None else grid


def round_robin(paths: list[Callable[[], object]], quick: bool) -> list[float]:
    """Best seconds per call of each path, the paths timed in turns (`rounds` times), so a
    burst of load from other tenants hits them alike instead of one path's whole measurement."""
    rounds, repeat, min_time = (1, 3, 0.02) if quick else (3, 3, 0.05)
    best = [float("inf")] * len(paths)
    for _ in range(rounds):
        for i, fn in enumerate(paths):
            best[i] = min(best[i], timeit(fn, repeat, min_time))
    return best


def table_header(*columns: str) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")


def measured_int8_peak(quick: bool) -> tuple[float, str]:
    """GOP/s of a large int8 matmul through torch (`torch._int_mm`: oneDNN's u8·s8 GEMM, VNNI
    where the CPU has it), and what it is; the nominal per-core figure where torch has none."""
    n = 512 if quick else 1024
    a = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    try:
        t = timeit(partial(torch._int_mm, a, a), 3, 0.05)
    except RuntimeError:
        return PEAK_I8_PER_CORE * torch.get_num_threads(), "nominal VNNI, per core"
    return 2.0 * n**3 / t / 1e9, "measured int8 matmul"


def pruned_linear(out_f: int, in_f: int, sparsity: float) -> torch.nn.Linear:
    lin = torch.nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) >= sparsity)
    return lin


@dataclass(frozen=True)
class Target:
    """One of the issue's targets for sparse linear at 90 %: a ratio column and its bound."""

    what: str
    column: str
    bound: float
    max_batch: int | None = None


#: The sparse table's ratio columns (kernel speed-ups), which the targets name.
RATIO_COLUMNS = (
    "fp32 vs dense", "fp32 vs CSR", "fp32 vs CSR, yᵀ out", "fp32 vs CSR, xᵀ given", "int8 vs dense",
)  # fmt: skip

TARGETS = (
    Target("fp32 ≥2× dense, batch ≤16", "fp32 vs dense", 2.0, 16),
    Target("fp32 ≥3× torch CSR, like for like (xᵀ in, yᵀ out)", "fp32 vs CSR, xᵀ given", 3.0),
    Target("fp32 ≥3× torch CSR, drop-in both returning yᵀ", "fp32 vs CSR, yᵀ out", 3.0),
    Target("fp32 ≥3× torch CSR, drop-in kernel returning contiguous y", "fp32 vs CSR", 3.0),
    Target("int8 ≥3× dense fp32", "int8 vs dense", 3.0),
)


#: A sparse table cell for report_targets: weight name, batch, ratios by column.
Cell = tuple[str, int, dict[str, float]]


def report_targets(cells: list[Cell]) -> None:
    """Each target against the 90 % cells it covers: how many meet it, and the lowest ratio,
    so a run says at a glance what it shows. The ratios are judged unrounded, and printed to
    three decimals (a table cell of 3.00× may be 2.998)."""
    print("\nTargets at 90 % sparsity:")
    for target in TARGETS:
        covered = [
            (ratios[target.column], name, batch)
            for name, batch, ratios in cells
            if target.max_batch is None or batch <= target.max_batch
        ]
        if not covered:
            continue
        meeting = sum(ratio >= target.bound for ratio, _, _ in covered)
        verdict = "met" if meeting == len(covered) else "MISSED"
        low, name, batch = min(covered)
        print(
            f"- {target.what}: {verdict}, {meeting} of {len(covered)} cells, lowest {low:.3f}× "
            f"({name}, batch {batch})"
        )


def bench_sparse(
    quick: bool,
    sgemm: float,
    int8_peak: tuple[float, str],
    shape: tuple[int, int] | None = None,
    sparsity: float | None = None,
    batch: int | None = None,
) -> None:
    """Effective GFLOP/s count 2 flops per stored non-zero and batch row; % peak is against the
    measured dense sgemm (fp32) and int8 matmul (int8) on the same threads.

    The paths of a row are timed round-robin (`round_robin`).

    torch CSR starts from the same x as the other paths, as a drop-in for nn.Linear must:
    `addmm(b, W_csr, x.t())`, its fastest form (F.linear with a CSR weight is 6-7x slower); its
    result is y transposed, a non-contiguous [B, out] view that is left as it is, where the
    kernels return contiguous y. "xᵀ given" hands CSR a contiguous x.t() made outside the timing
    (the table's baseline until the ninth session), so that it skips the transposition the
    others do inside theirs: the activations arrive feature-major, as the previous CSR layer of
    a chain leaves them. The kernel's "xᵀ given" column takes the same bytes (x.t() of that
    contiguous x.t(): a feature-major x) and returns the layout CSR returns (y.t() contiguous),
    so "fp32 vs CSR, xᵀ given" compares both paths on the same memory in and out. "yᵀ out"
    does the same for the drop-in form: the kernel takes the row-major x and returns y.t()
    contiguous as CSR does (`feature_major_out=True`, what a layer whose output feeds only
    layers that take either layout does in a pipeline).

    shape, sparsity and batch, where given, narrow the grid to them (e.g. one cell, re-run to
    see how much it moves between processes). The 90 % cells end with `report_targets`."""
    threads = torch.get_num_threads()
    int8 = kk.int8_path()
    print(
        f"\n## Sparse linear (threads={threads}, isa={kk.active_isa()}, int8 {int8}), times in µs"
    )
    peak8, what8 = int8_peak
    print(
        f"fp32 % peak: of the measured dense sgemm ({sgemm:.1f} GFLOP/s); int8 % peak: of "
        f"{peak8:.0f} GOP/s ({what8})"
    )
    times = (  # the paths, in the order they are timed
        "dense F.linear", "torch CSR", "torch CSR, xᵀ given", "kk fp32", "kk fp32, yᵀ out",
        "kk fp32, xᵀ given", "kk int8",
    )  # fmt: skip
    table_header(
        "weight (out×in)", "sparsity", "batch", *times, *RATIO_COLUMNS,
        "fp32 GFLOP/s (% peak)", "int8 GOP/s (% peak)",
    )  # fmt: skip
    shapes = narrowed(shape, SHAPES)
    sparsities = narrowed(sparsity, (0.9,) if quick else (0.5, 0.8, 0.9, 0.95))
    batches = narrowed(batch, (1, 8, 32) if quick else (1, 8, 16, 32))
    at_90: list[Cell] = []
    with torch.inference_mode():
        for out_f, in_f in shapes:
            for sp in sparsities:
                lin = pruned_linear(out_f, in_f, sp)
                w, b = lin.weight.detach().contiguous(), lin.bias.detach()
                with warnings.catch_warnings():  # "sparse CSR support is in beta"
                    warnings.simplefilter("ignore", UserWarning)
                    w_csr = w.to_sparse_csr()
                s32 = kk.SparseLinear.from_dense(lin)
                s32_yt = kk.SparseLinear.from_dense(lin)
                s32_yt.feature_major_out = True
                s8 = kk.SparseLinear.from_dense(lin, torch.int8)
                nnz = s32.nnz
                for bsz in batches:
                    x = torch.randn(bsz, in_f)
                    xt = x.t().contiguous()
                    paths: list[Callable[[], object]] = [
                        partial(F.linear, x, w, b),
                        partial(torch.addmm, b[:, None], w_csr, x.t()),
                        partial(torch.addmm, b[:, None], w_csr, xt),
                        partial(s32, x),
                        partial(s32_yt, x),
                        partial(s32, xt.t()),
                        partial(s8, x),
                    ]
                    timed = round_robin(paths, quick)
                    t_dense, t_csr, t_csr_xt, t32, t32_yt, t32_xt, t8 = timed
                    speed_ups = (t_dense / t32, t_csr / t32, t_csr / t32_yt, t_csr_xt / t32_xt)
                    ratios = dict(zip(RATIO_COLUMNS, (*speed_ups, t_dense / t8), strict=True))
                    name = f"{out_f}×{in_f}"
                    if sp == 0.9:
                        at_90.append((name, bsz, ratios))
                    flops = 2.0 * nnz * bsz
                    g32, g8 = flops / t32 / 1e9, flops / t8 / 1e9
                    cells = (
                        name, f"{sp:.0%}", bsz,
                        *(f"{t * 1e6:.1f}" for t in timed),
                        *(f"{ratios[c]:.2f}×" for c in RATIO_COLUMNS),
                        f"{g32:.1f} ({g32 / sgemm:.0%})", f"{g8:.1f} ({g8 / peak8:.0%})",
                    )  # fmt: skip
                    print("| " + " | ".join(map(str, cells)) + " |")
    report_targets(at_90)


def _sparse_block(up: torch.nn.Linear, down: torch.nn.Linear, chained: bool) -> torch.nn.Sequential:
    """The block on SparseLinear layers; chained, the first hands the second its output
    feature-major and the second returns contiguous y."""
    first, second = kk.SparseLinear.from_dense(up), kk.SparseLinear.from_dense(down)
    if chained:
        first.feature_major_out, second.feature_major_out = True, False
    return torch.nn.Sequential(first, torch.nn.GELU(), second)


def _csr_block(
    w_up: torch.Tensor, b_up: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor,
    x: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """The feed-forward block on torch CSR: addmm on xᵀ, GELU, addmm, y as the transposed view."""
    return torch.addmm(b_down, w_down, F.gelu(torch.addmm(b_up, w_up, x.t()))).t()


def bench_chain(quick: bool, sparsity: float | None = None, batch: int | None = None) -> None:
    """A feed-forward block of the table's two shapes, 768 → 3072 → GELU → 768, both layers
    pruned alike: what chaining two sparse layers feature-major saves (`feature_major_out`,
    which prune sets between sparse layers) against each layer taking and returning row-major
    activations as nn.Linear does. torch CSR runs its natural chain (`_csr_block`)."""
    print(f"\n## Sparse feed-forward block 768→3072→GELU→768 (threads={torch.get_num_threads()})")
    table_header(
        *("sparsity", "batch", "dense", "torch CSR", "kk row-major", "kk chained"),
        *("chained vs row-major", "chained vs CSR", "chained vs dense"),
    )
    sparsities = narrowed(sparsity, (0.9,) if quick else (0.8, 0.9, 0.95))
    batches = narrowed(batch, (8, 32) if quick else (1, 8, 16, 32))
    with torch.inference_mode():
        for sp in sparsities:
            up, down = pruned_linear(3072, 768, sp), pruned_linear(768, 3072, sp)
            dense = torch.nn.Sequential(up, torch.nn.GELU(), down)
            rows, chained = _sparse_block(up, down, False), _sparse_block(up, down, True)
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                w_up, w_down = (m.weight.detach().to_sparse_csr() for m in (up, down))
            csr = partial(
                _csr_block, w_up, up.bias.detach()[:, None], w_down, down.bias.detach()[:, None]
            )
            for bsz in batches:
                x = torch.randn(bsz, 768)
                for net in (rows, chained):
                    torch.testing.assert_close(net(x), dense(x), rtol=1e-4, atol=1e-4)
                paths = [partial(m, x) for m in (dense, rows, chained)]
                t_dense, t_rows, t_chained, t_csr = round_robin([*paths, partial(csr, x)], quick)
                print(
                    f"| {sp:.0%} | {bsz} | {t_dense * 1e6:.1f} | {t_csr * 1e6:.1f} "
                    f"| {t_rows * 1e6:.1f} | {t_chained * 1e6:.1f} | {t_rows / t_chained:.2f}× "
                    f"| {t_csr / t_chained:.2f}× | {t_dense / t_chained:.2f}× |"
                )


def _ort_session(path: Path) -> Any:
    """An ONNX Runtime CPU session as the benchmark stage makes it (this benchmark's threads,
    workers not spinning, which would steal the core from the paths timed next)."""
    from kompaktor.models.predict import OnnxPredictor

    return OnnxPredictor(str(path), torch.get_num_threads()).session


def dense_runtimes(lin: torch.nn.Linear, folder: Path) -> tuple[Any, Any, Any]:
    """The other runtimes' dense forms of `lin`: ONNX Runtime fp32 (MLAS sgemm), ONNX Runtime
    dynamic int8 (per-channel int8 weights, MatMulInteger) and torch's dynamic int8 Linear
    (fbgemm), each the fastest way its runtime offers to run a linear layer on a CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from kompaktor.models import save_onnx

    fp32 = save_onnx(
        torch.nn.Sequential(lin), (torch.zeros(2, lin.in_features),), folder / "f.onnx"
    )
    int8 = folder / "i8.onnx"
    logging.disable(logging.WARNING)  # its advice to pre-process, on a one-layer graph
    try:
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(logging.NOTSET)
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice
        warnings.simplefilter("ignore")
        fbgemm = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8
        )
    return _ort_session(fp32), _ort_session(int8), fbgemm


def bench_runtimes(
    quick: bool,
    shape: tuple[int, int] | None = None,
    sparsity: float | None = None,
    batch: int | None = None,
) -> None:
    """Sparse linear against dense layers in the other runtimes a pruned model could ship in
    (DESIGN.md §5: the best PyTorch / ONNX Runtime path): each called from Python on the same
    x, paths round-robin as in bench_sparse. "best dense" is the faster of the dense columns of
    the kernel's dtype."""
    print(
        f"\n## Sparse linear against dense runtimes (threads={torch.get_num_threads()}, "
        f"isa={kk.active_isa()}), times in µs"
    )
    table_header(
        *("weight (out×in)", "sparsity", "batch", "dense F.linear", "ORT fp32", "kk fp32"),
        *("torch dynamic int8 (fbgemm)", "ORT dynamic int8", "kk int8"),
        *("fp32 vs best dense fp32", "int8 vs best dense int8"),
    )
    shapes = narrowed(shape, SHAPES)
    sparsities = narrowed(sparsity, (0.9,) if quick else (0.8, 0.9, 0.95))
    batches = narrowed(batch, (1, 8, 32))
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        for out_f, in_f in shapes:
            for sp in sparsities:
                lin = pruned_linear(out_f, in_f, sp).eval()
                with torch.inference_mode(False):
                    ort32, ort8, fbgemm = dense_runtimes(lin, Path(folder))
                w, b = lin.weight.detach(), lin.bias.detach()
                s32 = kk.SparseLinear.from_dense(lin)
                s8 = kk.SparseLinear.from_dense(lin, torch.int8)
                for bsz in batches:
                    x = torch.randn(bsz, in_f)
                    feed = {ort32.get_inputs()[0].name: x.numpy()}
                    paths: list[Callable[[], object]] = [
                        partial(F.linear, x, w, b),
                        partial(ort32.run, None, feed),
                        partial(s32, x),
                        partial(fbgemm, x),
                        partial(ort8.run, None, feed),
                        partial(s8, x),
                    ]
                    best = round_robin(paths, quick)
                    t_dense, t_ort32, t32, t_fbgemm, t_ort8, t8 = best
                    cells = " | ".join(f"{t * 1e6:.1f}" for t in best)
                    print(
                        f"| {out_f}×{in_f} | {sp:.0%} | {bsz} | {cells} "
                        f"| {min(t_dense, t_ort32) / t32:.2f}× "
                        f"| {min(t_fbgemm, t_ort8) / t8:.2f}× |"
                    )


class PeakRSS:
    """Peak resident-set growth during a block, sampled by a thread (tracemalloc does not see
    torch's allocations); the baseline is taken after the inputs already exist."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.base = self.rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(0.0005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss() - self.base)


def bench_kd(quick: bool) -> None:
    rows, vocab = (1024, 32000) if quick else (4096, 32000)
    repeat = 2 if quick else 3
    print(f"\n## Fused KD loss, forward+backward, rows={rows} vocab={vocab}")
    s = torch.randn(rows, vocab) * 3
    t = torch.randn(rows, vocab) * 3
    labels = torch.randint(0, vocab, (rows,))

    def run(fn: Callable[..., torch.Tensor]) -> None:
        x = s.detach().requires_grad_()
        torch.autograd.backward(fn(x, t, labels, 2.0, 0.5))
        del x

    results = {}
    for name, fn in (("eager", kd_loss_reference), ("fused", kk.kd_loss)):
        times = []
        peak = 0
        for _ in range(repeat):
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                run(fn)
                times.append(time.perf_counter() - t0)
            peak = max(peak, mem.peak)
        results[name] = (min(times), peak)
    te, me = results["eager"]
    tf, mf = results["fused"]
    elems = rows * vocab
    print("| path | time (ms) | peak extra RSS (MiB) | GB/s of logits touched |")
    print("|---|---|---|---|")
    for name, (tt, mm) in results.items():
        print(f"| {name} | {tt * 1e3:.1f} | {mm / 2**20:.0f} | {3 * 4 * elems / tt / 1e9:.1f} |")
    print(
        f"speed-up {te / tf:.2f}× (target ≥1.5×), peak memory ratio {mf / max(me, 1):.2f} "
        "(target ≤0.5)"
    )


def bench_kmeans(quick: bool) -> None:
    """One Lloyd step of 1-D k-means (weight sharing) on a 768×3072 weight."""
    repeat, min_time = (3, 0.05) if quick else (5, 0.2)
    w = torch.randn(768, 3072)
    flat = w.flatten().double()  # what kompaktor.compression.sharing.cluster_1d iterates on
    print(f"\n## 1-D k-means step, {w.numel()} weights, times in ms")
    print("| k | eager bucketize+index_add+bincount | kk step | speed-up | kk assign only |")
    print("|---|---|---|---|---|")
    for k in (16, 256):
        c = torch.quantile(flat[:100_000], torch.linspace(0, 1, k, dtype=torch.float64))
        t_ref = timeit(partial(kmeans1d_step_reference, flat, c), repeat, min_time)
        t_kk = timeit(partial(kk.kmeans1d_step, flat, c), repeat, min_time)
        t_as = timeit(partial(kk.kmeans1d_assign, flat, c), repeat, min_time)
        print(
            f"| {k} | {t_ref * 1e3:.1f} | {t_kk * 1e3:.1f} | {t_ref / t_kk:.1f}× "
            f"| {t_as * 1e3:.1f} |"
        )


def layer_bytes(layer: kk.SparseLinear) -> int:
    """The layer's buffers (CSR, bias, int8 scales) and the derived layouts its plan has built."""
    derived = layer._plan.derived.parts if layer._plan is not None else ()
    return sum(t.nbytes for t in (*layer.buffers(), *derived) if t is not None)


def bench_memory(
    quick: bool, shape: tuple[int, int] | None = None, sparsity: float | None = None
) -> None:
    """Bytes per weight of a sparse layer after serving some batch sizes: the derived layouts
    are built the first time a batch needs each, so a layer holds what its batches used."""
    served = ((1,), (8,), (32,), (1, 8, 32))
    print("\n## Sparse linear memory, bytes per weight (buffers + derived layouts built)")
    table_header(
        *("weight (out×in)", "sparsity", "dtype", "dense fp32", "stored", "served at batch 1"),
        *("8", "32", "1, 8 and 32"),
    )
    shapes = narrowed(shape, SHAPES)
    sparsities = narrowed(sparsity, (0.9,) if quick else (0.5, 0.8, 0.9, 0.99))
    with torch.no_grad():
        for out_f, in_f in shapes:
            for sp in sparsities:
                lin = pruned_linear(out_f, in_f, sp)
                n = out_f * in_f
                dense = sum(t.nbytes for t in lin.parameters()) / n
                for dtype in (torch.float32, torch.int8):
                    cells = []
                    for batches in served:
                        layer = kk.SparseLinear.from_dense(lin, dtype)
                        stored = layer_bytes(layer) / n  # the buffers alone, as saved
                        for b in batches:
                            layer(torch.randn(b, in_f))
                        cells.append(f"{layer_bytes(layer) / n:.2f}")
                    print(
                        f"| {out_f}×{in_f} | {sp:.0%} | {str(dtype).removeprefix('torch.')} "
                        f"| {dense:.2f} | {stored:.2f} | {' | '.join(cells)} |"
                    )


def _shape(text: str) -> tuple[int, int]:
    out_f, _, in_f = text.lower().partition("x")
    return int(out_f), int(in_f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument(
        "--only",
        choices=("sparse", "chain", "runtimes", "memory", "kd", "kmeans"),
        help="run one benchmark",
    )
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (kernels follow it); default: torch's"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time sparse and k-means kernels by thread CPU time (robust on a busy VM; "
        "implies --threads 1)",
    )
    parser.add_argument(
        "--shape",
        type=_shape,
        help="sparse linear, runtimes and memory: only this weight shape, OUTxIN (e.g. 3072x768)",
    )
    parser.add_argument(
        "--sparsity",
        type=float,
        help="sparse linear, chain, runtimes and memory: only this sparsity",
    )
    parser.add_argument(
        "--batch", type=int, help="sparse linear, chain and runtimes: only this batch size"
    )
    parser.add_argument(
        "--no-vbmi",
        action="store_true",
        help="run the avx512 path without AVX512_VBMI, as on CPUs that lack it (Cascade Lake)",
    )
    args = parser.parse_args()
    if args.no_vbmi:
        kk._native.set_vbmi(False)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"paths {kk.available_isas()}, active {kk.active_isa()}, VBMI {kk._native.has_vbmi()}, "
        f"load average {load:.2f}"
    )
    if load > 0.5:
        print("warning: the machine is busy; fork-join timings on 2 cores will be noisy")
    sgemm = measured_dense_peak(args.quick)
    print(f"measured dense sgemm: {sgemm:.1f} GFLOP/s")
    if args.only in (None, "sparse"):
        int8_peak = measured_int8_peak(args.quick)
        print(f"int8 matmul: {int8_peak[0]:.1f} GOP/s ({int8_peak[1]})")
        bench_sparse(args.quick, sgemm, int8_peak, args.shape, args.sparsity, args.batch)
    if args.only in (None, "chain"):
        bench_chain(args.quick, args.sparsity, args.batch)
    if args.only in (None, "runtimes"):
        bench_runtimes(args.quick, args.shape, args.sparsity, args.batch)
    if args.only in (None, "memory"):
        bench_memory(args.quick, args.shape, args.sparsity)
    if args.only in (None, "kmeans"):
        bench_kmeans(args.quick)
    if args.only in (None, "kd"):
        bench_kd(args.quick)


if __name__ == "__main__":
    main()

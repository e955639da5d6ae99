"""Every technique on the same model, measured side by side in one process.

    .venv/bin/python bench/techniques.py [--model cnn|mlp] [--quick] [--only TEXT] [--batch N]

Trains the digits CNN (as `kompaktor init digits` does) or a wide digits MLP, whose time is in
its linear layers (where the sparse runtime pays), runs each technique through the real stage
runner, then times each output against the input model on one thread, alternating blocks so
drift on a shared machine hits both alike. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kompaktor.data import load_dataset
from kompaktor.evaluate import make_batch, metric, model_size_bytes, parameter_count
from kompaktor.models import load_model, predictor_for, save_torch
from kompaktor.stages.runner import StageRequest, run_stage
from kompaktor.zoo import DIGITS_URI, train_digits_cnn, train_digits_mlp

MODELS: dict[str, tuple[str, Callable[..., torch.nn.Module]]] = {
    "cnn": ("digits CNN", train_digits_cnn),
    "mlp": ("digits MLP 64→2048→2048→10", train_digits_mlp),
}

TECHNIQUES: list[tuple[str, str, dict[str, Any]]] = [
    ("train (fine-tune 1 epoch)", "train", {"epochs": 1, "lr": 5e-4}),
    ("prune magnitude 80%", "prune", {"method": "magnitude", "sparsity": 0.8, "fineTuneEpochs": 1}),
    ("prune taylor 80%", "prune", {"method": "taylor", "sparsity": 0.8, "fineTuneEpochs": 1}),
    (
        "prune magnitude 90% sparse runtime",
        "prune",
        {"method": "magnitude", "sparsity": 0.9, "fineTuneEpochs": 1, "runtime": "sparse"},
    ),
    (
        "prune magnitude 90% sparse int8 runtime",
        "prune",
        {
            "method": "magnitude",
            "sparsity": 0.9,
            "fineTuneEpochs": 1,
            "runtime": "sparse",
            "sparseDtype": "int8",
        },
    ),
    (
        "prune structured 50%",
        "prune",
        {"method": "structured", "sparsity": 0.5, "fineTuneEpochs": 2},
    ),
    ("distill width 0.5", "distill", {"student": {"widthMultiplier": 0.5}, "epochs": 3}),
    (
        "compress low-rank 90% energy",
        "compress",
        {"method": "lowrank", "energy": 0.9, "fineTuneEpochs": 1},
    ),
    ("compress weight sharing k=16", "compress", {"method": "weightsharing", "clusters": 16}),
    ("quantize dynamic int8", "quantize", {"mode": "dynamic"}),
    (
        "quantize static int8 (QDQ)",
        "quantize",
        {"mode": "static", "perChannel": True, "calibrationSamples": 256},
    ),
    ("quantize fp16", "quantize", {"mode": "fp16"}),
    ("quantize bf16 (torch.export)", "quantize", {"mode": "bf16"}),
    ("quantize QAT int8", "quantize", {"mode": "qat", "qatEpochs": 1}),
]


def p50_ms(call: Callable[[], object], blocks: int, per_block: int) -> list[float]:
    """Per-call times of `per_block` calls, `blocks` times (the caller interleaves blocks)."""
    times = []
    for _ in range(per_block):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def side_by_side(
    a: Callable[[], object], b: Callable[[], object], blocks: int, per_block: int
) -> tuple[float, float]:
    ta: list[float] = []
    tb: list[float] = []
    for block in range(blocks):
        first, second = (a, b) if block % 2 == 0 else (b, a)
        t1 = p50_ms(first, blocks, per_block)
        t2 = p50_ms(second, blocks, per_block)
        (ta, tb)[0 if first is a else 1].extend(t1)
        (ta, tb)[1 if first is a else 0].extend(t2)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn", help="default cnn")
    parser.add_argument("--quick", action="store_true", help="fewer timing iterations")
    parser.add_argument(
        "--only", metavar="TEXT", help="only the techniques whose label contains TEXT"
    )
    parser.add_argument("--batch", type=int, default=1, help="rows per timed call (default 1)")
    args = parser.parse_args()
    if args.only and not any(args.only in label for label, _, _ in TECHNIQUES):
        raise SystemExit(f"no technique matches --only {args.only!r}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="kompaktor-bench-") as work:
        measure(args, Path(work))


def measure(args: argparse.Namespace, work: Path) -> None:
    """Train the model, run each technique in `work`, print the table."""
    blocks, per_block = (4, 50) if args.quick else (10, 100)
    data = load_dataset(DIGITS_URI)
    data.save_npz(work / "digits.npz")
    title, train = MODELS[args.model]
    model = train(0, dataset=data)
    example = (torch.from_numpy(data.inputs("train")[0][:2]),)
    input_path = save_torch(model, example, work / "input.pt2")
    base = load_model(input_path)
    base_predict = predictor_for(base, threads=1)
    base_metric = metric("accuracy", base_predict, data)
    sample = make_batch(data.inputs("test"), args.batch)
    # technique, metric, its change, parameters, bytes, p50 ms and the input's p50 ms in the
    # same interleaved blocks (None for the input's own row): the speed-up is their ratio
    rows: list[tuple[str, float, float, int, int, tuple[float, float] | None]] = [
        (
            "input model (fp32, torch.export)",
            base_metric,
            0.0,
            parameter_count(base),
            model_size_bytes(base),
            None,
        )
    ]
    for index, (label, stage_type, params) in enumerate(TECHNIQUES):
        if args.only and args.only not in label:
            continue
        record = run_stage(
            StageRequest(
                type=stage_type,
                input=str(input_path),
                dataset=str(work / "digits.npz"),
                output=str(work / f"run{index}"),
                params=params,
            )
        )
        out = load_model(Path(record.output.uri.removeprefix("file://")))
        predict = predictor_for(out, threads=1)
        value = metric("accuracy", predict, data)
        mine, theirs = side_by_side(
            partial(predict, *sample), partial(base_predict, *sample), blocks, per_block
        )
        rows.append(
            (
                label,
                value,
                value - base_metric,
                parameter_count(out),
                model_size_bytes(out),
                (mine, theirs),
            )
        )
    inputs = [pair[1] for *_, pair in rows if pair is not None]
    print(
        f"{title}, batch {args.batch}, 1 thread, {torch.__version__}; input p50 "
        f"{min(inputs, default=math.nan):.3f}–{max(inputs, default=math.nan):.3f} ms across "
        "the pairs (each row is timed in interleaved blocks against the input, and its speed-up "
        "is against the input's p50 in those same blocks)\n"
    )
    print(
        "| technique | accuracy | Δ vs input | params | size (KiB) | p50 ms | input p50 ms "
        "(same blocks) | speedup |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, value, delta, params_, size, pair in rows:
        timing = (
            "| – | – | 1.00x"
            if pair is None
            else (f"| {pair[0]:.3f} | {pair[1]:.3f} | {pair[1] / pair[0]:.2f}x")
        )
        print(
            f"| {label} | {value:.4f} | {delta:+.4f} | {params_:,} | {size / 1024:.1f} {timing} |"
        )
    np.seterr(all="ignore")


if __name__ == "__main__":
    main()

"""Regenerate examples/: small trained models and the jobs that use them (deterministic).

.venv/bin/python scripts/make_examples.py
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
import yaml

from kompaktor.data import load_dataset
from kompaktor.models import save_onnx, save_torch
from kompaktor.quickstart import digits_job, init_digits, job_document
from kompaktor.zoo import train_tabular_mlp

ROOT = Path(__file__).resolve().parents[1] / "examples"


def job(name: str, model: str, dataset: str, stages: list[dict[str, object]]) -> str:
    return yaml.safe_dump(
        job_document(name, model, dataset, stages, max_drop=0.02), sort_keys=False
    )


CLUSTER_HEADER = """\
# The digits pipeline for a cluster: inputs and artifacts in S3, GPU for the training stages,
# the benchmark on both the CPU and the ARM pool. YOUR-BUCKET is a placeholder: replace it with
# a bucket the cluster's S3 keys can read and write. Upload the inputs first:
#   BUCKET=...   # your bucket
#   aws s3 cp examples/digits-pipeline/model.pt2 s3://$BUCKET/digits-pipeline/
#   aws s3 cp examples/digits-pipeline/digits.npz s3://$BUCKET/digits-pipeline/
# then: sed "s/YOUR-BUCKET/$BUCKET/" examples/digits-pipeline/cluster.yaml | kubectl apply -f -
"""
GPU_STAGES = ("tune", "prune", "distill")


def write_cluster_job(directory: Path, bucket: str = "YOUR-BUCKET") -> None:
    """`cluster.yaml` beside `job.yaml`: the same job, with S3 URIs and pools; the bucket is a
    placeholder users replace, so nothing is written to a bucket that is not theirs."""
    document = copy.deepcopy(digits_job(full=True, name="digits-pipeline"))  # shared stages
    spec = document["spec"]
    root = f"s3://{bucket}/{directory.name}"
    for field in ("model", "dataset"):
        spec[field]["uri"] = f"{root}/{spec[field]['uri']}"
    spec["artifacts"] = {"uri": f"{root}/runs"}
    for stage in spec["stages"]:
        if stage["name"] in GPU_STAGES:
            stage["pool"] = "gpu"
        elif stage["type"] == "benchmark":
            stage["pools"] = ["cpu", "arm"]
    text = yaml.safe_dump(document, sort_keys=False)
    (directory / "cluster.yaml").write_text(CLUSTER_HEADER + text)


def main() -> None:
    digits = ROOT / "digits-pipeline"
    shutil.rmtree(digits, ignore_errors=True)
    init_digits(digits, full=True)
    write_cluster_job(digits)

    cancer = load_dataset("sklearn:breast_cancer")
    mlp = train_tabular_mlp(cancer, seed=0)
    example = (torch.from_numpy(cancer.inputs("train")[0][:2]),)
    tabular = ROOT / "breast-cancer-mlp"
    tabular.mkdir(parents=True, exist_ok=True)
    save_torch(mlp, example, tabular / "model.pt2")
    (tabular / "job.yaml").write_text(
        job(
            "breast-cancer-mlp",
            "model.pt2",
            "sklearn:breast_cancer",
            [
                {
                    "name": "prune",
                    "type": "prune",
                    "params": {
                        "method": "magnitude",
                        "scope": "global",
                        "sparsity": 0.7,
                        "fineTuneEpochs": 5,
                    },
                },
                {"name": "quantize", "type": "quantize", "params": {"mode": "dynamic"}},
                {"name": "bench", "type": "benchmark", "params": {"batchSizes": [1, 32]}},
            ],
        )
    )

    onnx_dir = ROOT / "onnx-quantize"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    save_onnx(mlp, example, onnx_dir / "model.onnx")
    (onnx_dir / "job.yaml").write_text(
        job(
            "onnx-quantize",
            "model.onnx",
            "sklearn:breast_cancer",
            [
                {
                    "name": "quantize",
                    "type": "quantize",
                    "params": {"mode": "static", "perChannel": True, "calibrationSamples": 128},
                },
                {"name": "bench", "type": "benchmark", "params": {"batchSizes": [1, 32]}},
            ],
        )
    )


if __name__ == "__main__":
    main()

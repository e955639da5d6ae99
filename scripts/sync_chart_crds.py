"""Sync the Helm chart's CRDs: `python scripts/sync_chart_crds.py [--check]`.

`charts/kompaktor/crds/` holds exactly: a byte-for-byte copy of every CRD in `crds/` (generated
from the API types by `kompaktor crd`), and kopf's peering CRDs (defined here), which the chart's
peering object needs. `--check` changes nothing and exits 1 when the chart is stale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "crds"
TARGET = ROOT / "charts" / "kompaktor" / "crds"

KOPF_PEERING_FILE = "kopf.dev_peerings.yaml"
_PEERING_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.kopf.dev
spec:
  scope: {scope}
  group: kopf.dev
  names:
    kind: {kind}
    plural: {plural}
    singular: {singular}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        description: Where kopf operator replicas announce themselves (status holds the peers).
        properties:
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"""
KOPF_PEERING_CRDS = (
    "# kopf's peering CRDs (https://kopf.readthedocs.io/en/stable/peering/).\n"
    "# Written by scripts/sync_chart_crds.py. Do not edit.\n"
    + _PEERING_CRD.format(
        plural="clusterkopfpeerings",
        singular="clusterkopfpeering",
        kind="ClusterKopfPeering",
        scope="Cluster",
    )
    + "---\n"
    + _PEERING_CRD.format(
        plural="kopfpeerings", singular="kopfpeering", kind="KopfPeering", scope="Namespaced"
    )
)


def expected(source: Path = SOURCE) -> dict[str, str]:
    """File name → content that the chart's crds/ folder must hold."""
    files = {path.name: path.read_text() for path in sorted(source.glob("*.yaml"))}
    files[KOPF_PEERING_FILE] = KOPF_PEERING_CRDS
    return files


def differences(
    source: Path = SOURCE, target: Path = TARGET, want: Mapping[str, str] | None = None
) -> list[str]:
    """What is stale in `target`, one line each; empty when it is in sync. `want` is
    `expected(source)`, for a caller that has it already."""
    want = expected(source) if want is None else want
    have = {path.name: path for path in sorted(target.glob("*.yaml"))} if target.is_dir() else {}
    problems = [f"{target / name}: missing" for name in want if name not in have]
    problems += [f"{path}: not in {source}" for name, path in have.items() if name not in want]
    problems += [
        f"{have[name]}: differs from its source"
        for name, text in want.items()
        if name in have and have[name].read_text() != text
    ]
    return problems


def sync(source: Path = SOURCE, target: Path = TARGET) -> list[str]:
    """Make `target` match; returns the paths written or removed."""
    want = expected(source)
    changed = differences(source, target, want)
    target.mkdir(parents=True, exist_ok=True)
    for path in target.glob("*.yaml"):
        if path.name not in want:
            path.unlink()
    for name, text in want.items():
        path = target / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report, change nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run: python scripts/sync_chart_crds.py", file=sys.stderr)
        return 1 if problems else 0
    for line in sync():
        print(f"fixed: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

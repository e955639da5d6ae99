"""The CRD is generated from the API models; the committed YAML must match them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kompaktor.api.crd import CRD_PATH, openapi_schema, render_crd, render_crd_yaml

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def test_committed_crd_is_up_to_date() -> None:
    committed = (ROOT / CRD_PATH).read_text()
    assert committed == render_crd_yaml(), (
        "crds/ is stale: run `kompaktor crd -o crds/kompaktor.io_optimizationjobs.yaml`"
    )


def test_crd_shape() -> None:
    crd = render_crd()
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["oj"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Stage", "Speedup", "Size", "Metric", "Cost", "Energy", "Age"]


def _walk(node: Any, path: str = "") -> list[str]:
    """Structural-schema violations: refs, anyOf, properties beside additionalProperties."""
    problems = []
    if isinstance(node, dict):
        for bad in ("$ref", "anyOf", "oneOf", "allOf", "$defs"):
            if bad in node:
                problems.append(f"{path}: {bad}")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties with additionalProperties")
        if "properties" in node and node.get("type") != "object":
            problems.append(f"{path}: properties without type object")
        for key, value in node.items():
            problems += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            problems += _walk(value, f"{path}[{index}]")
    return problems


def test_schema_is_structural_and_documented() -> None:
    schema = openapi_schema()
    assert _walk(schema) == []
    spec = schema["properties"]["spec"]
    assert spec["properties"]["objective"]["properties"]["maxDrop"]["description"]
    params = spec["properties"]["stages"]["items"]["properties"]["params"]
    assert params["x-kubernetes-preserve-unknown-fields"] is True


def _as_json_schema(node: Any) -> Any:
    """OpenAPI v3 `nullable` as JSON Schema, so jsonschema can check documents against it."""
    if isinstance(node, list):
        return [_as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    for bound in ("minimum", "maximum"):
        if out.pop(f"exclusive{bound.capitalize()}", False) is True:
            out[f"exclusive{bound.capitalize()}"] = out.pop(bound)
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_validate_against_the_crd(path: Path) -> None:
    schema = _as_json_schema(openapi_schema())
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == "OptimizationJob":
            jsonschema.validate(document, schema)


def test_the_schema_rejects_a_bad_document() -> None:
    schema = _as_json_schema(openapi_schema())
    bad = {
        "spec": {
            "model": {"uri": "m.pt2"},
            "dataset": {"uri": "d.npz"},
            "stages": [{"name": "Bad Name", "type": "train"}],
        }
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)

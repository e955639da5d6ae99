"""Generate the OptimizationJob CRD from the pydantic models (the single source of truth).

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 schema: no
$ref, no anyOf-with-null (use nullable), boolean exclusive bounds, and explicit
`x-kubernetes-preserve-unknown-fields` where a field is free-form (stage params).
"""

from __future__ import annotations

from typing import Any

import yaml

from kompaktor.api.spec import GROUP, KIND, PLURAL, VERSION, OptimizationJobSpec
from kompaktor.api.status import OptimizationJobStatus

CRD_PATH = "crds/kompaktor.io_optimizationjobs.yaml"

_DROP = {"title", "default", "$defs"}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
    {
        "name": "Speedup",
        "type": "number",
        "jsonPath": ".status.result.speedup",
        "description": "Batch-1 speedup of the final model over the input model",
    },
    {
        "name": "Size",
        "type": "number",
        "jsonPath": ".status.result.sizeRatio",
        "description": "Final model size as a fraction of the input model",
    },
    {"name": "Metric", "type": "number", "jsonPath": ".status.result.metric"},
    {
        "name": "Cost",
        "type": "number",
        "jsonPath": ".status.costUSD",
        "description": "USD spent so far",
    },
    {
        "name": "Energy",
        "type": "number",
        "jsonPath": ".status.energyJoules",
        "description": "Joules spent so far",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

SPEC_VALIDATIONS = [
    {
        "rule": "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
        "message": "stage names must be unique",
    },
]
STAGE_VALIDATIONS = [
    {"rule": "!(has(self.pool) && has(self.pools))", "message": "set either pool or pools"},
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline refs and rewrite JSON Schema idioms into their Kubernetes forms."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            return _structural({**options[0], **rest, "nullable": True}, defs)
        return {**_structural(rest, defs), "x-kubernetes-preserve-unknown-fields": True}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound], out[key] = value, True
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _structural(value, defs)
    if "properties" in out:
        out.pop("additionalProperties", None)  # structural schemas allow one or the other
    if out.get("type") == "object" and "properties" not in out:
        extra = out.get("additionalProperties")
        if extra in (None, True, {}):
            out.pop("additionalProperties", None)
            out["x-kubernetes-preserve-unknown-fields"] = True
    if (
        "type" not in out
        and "x-kubernetes-preserve-unknown-fields" not in out
        and not out.get("enum")
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out.pop("nullable", None)
    return out


def _schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    result: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return result


def openapi_schema() -> dict[str, Any]:
    """The structural schema of a whole OptimizationJob object."""
    spec = _schema(OptimizationJobSpec)
    spec["x-kubernetes-validations"] = SPEC_VALIDATIONS
    spec["properties"]["stages"]["items"]["x-kubernetes-validations"] = STAGE_VALIDATIONS
    status = _schema(OptimizationJobStatus)
    return {
        "type": "object",
        "description": "A pipeline that makes a trained model smaller and faster inside an "
        "accuracy bound, with benchmarks, cost and energy as proof.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def render_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "annotations": {"kompaktor.io/generated-by": "kompaktor crd (from kompaktor.api)"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["oj"],
                "categories": ["all", "kompaktor", "ml"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    header = (
        "# Generated by `kompaktor crd -o crds/kompaktor.io_optimizationjobs.yaml`. Do not edit.\n"
    )
    return header + yaml.safe_dump(render_crd(), sort_keys=False, width=100)

"""`argocd.healthCheck` renders Argo CD's health check of OptimizationJobs as a ConfigMap whose
entry argocd-cm takes as it is (the script's own tests: tests/unit/plan/test_argocd_health.py)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_chart import (  # noqa: F401  (helm is a fixture)
    CHART,
    K8S_VERSIONS,
    NAMESPACE,
    RELEASE,
    _values_file,
    find,
    helm,
    helm_run,
    kubernetes_validate,
    one,
    template,
)

KEY = "resource.customizations.health.kompaktor.io_OptimizationJob"
ON = {"argocd": {"healthCheck": True}}


def test_the_configmap_carries_the_script_under_the_key_argocd_cm_reads(
    helm: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    config_map = one(template(helm, tmp_path, ON), "ConfigMap", f"{RELEASE}-argocd-health")
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["data"] == {KEY: (CHART / "files" / "argocd-health.lua").read_text()}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(config_map, version, strict=True)


def test_it_is_off_by_default(helm: Path, tmp_path: Path) -> None:  # noqa: F811
    assert find(template(helm, tmp_path, {}), "ConfigMap", f"{RELEASE}-argocd-health") == []


def test_lint_is_clean_and_the_notes_say_how_to_merge_it(helm: Path, tmp_path: Path) -> None:  # noqa: F811
    values = str(_values_file(tmp_path, ON))
    lint = helm_run(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                    "--values", values)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
    notes = helm_run(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE,
                     "--values", values, "--dry-run=client")  # fmt: skip
    assert notes.returncode == 0, notes.stderr
    assert "kubectl -n argocd patch configmap argocd-cm --type merge -p" in notes.stdout
    data = f"get configmap {RELEASE}-argocd-health -o jsonpath='{{.data}}'"
    assert f"$(kubectl -n {NAMESPACE} {data})" in notes.stdout

"""The chart names the webhook configurations after the release (it was `kompaktor.io` for
every release, so two releases in one cluster overwrote each other's)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_chart import helm, operator_config, template  # noqa: F401  (fixture)


def configuration_name(binary: Path, folder: Path, release: str, **admission: str) -> str | None:
    values = {"admission": {"enabled": True, "certManager": True, **admission}}
    done = template(binary, folder, values, "--set", f"fullnameOverride={release}")
    return operator_config(done).admission.configuration_name


def test_each_release_has_its_own_webhook_configuration(helm: Path, tmp_path: Path) -> None:  # noqa: F811
    first = configuration_name(helm, tmp_path, "kompaktor-a")
    second = configuration_name(helm, tmp_path, "kompaktor-b")
    assert (first, second) == ("kompaktor-a.kompaktor.io", "kompaktor-b.kompaktor.io")


def test_the_name_can_be_set(helm: Path, tmp_path: Path) -> None:  # noqa: F811
    named = configuration_name(helm, tmp_path, "k", configurationName="ml.example.com")
    assert named == "ml.example.com"

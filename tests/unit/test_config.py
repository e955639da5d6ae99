"""The operator's configuration: pools, defaults, and each replica's peering priority."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kompaktor.api.spec import OptimizationJobSpec
from kompaktor.config import PRIORITY_ENV, OperatorConfig, PeeringConfig, check_pools, load_config
from kompaktor.errors import KompaktorError


def spec_on(*pools: str | None) -> OptimizationJobSpec:
    stages = [{"name": f"s{i}", "type": "prune", "params": {"sparsity": 0.5}} for i in range(3)]
    for stage, pool in zip(stages, pools, strict=False):
        if pool is not None:
            stage["pool"] = pool
    return OptimizationJobSpec.model_validate(
        {"model": {"uri": "m.pt2"}, "dataset": {"uri": "sklearn:digits"}, "stages": stages}
    )


def test_a_file_loads_with_pool_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "pools": [{"name": "cpu", "pricePerHourUSD": 0.5}, {"name": "gpu", "watts": 300}],
        "artifactsUri": "s3://runs",
    }))  # fmt: skip
    config = load_config(str(path))
    assert config.default_pool_name == "cpu"
    assert config.prices == {"cpu": 0.5, "gpu": 0.0}
    assert config.artifacts_for(spec_on(), "team-a", "job") == "s3://runs/team-a/job"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"pools": []}, "at least one pool"),
        ({"pools": [{"name": "cpu"}, {"name": "cpu"}]}, "duplicate pool names"),
        ({"pools": [{"name": "cpu"}], "defaultPool": "gpu"}, "defaultPool 'gpu'"),
    ],
)
def test_inconsistent_pools_are_refused(document: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperatorConfig.model_validate(document)


def test_a_stage_on_an_unknown_pool_names_the_known_ones() -> None:
    config = OperatorConfig.model_validate({"pools": [{"name": "cpu"}, {"name": "arm"}]})
    check_pools(spec_on("cpu", "arm"), config)
    with pytest.raises(KompaktorError, match=r"unknown pool 'tpu'.*known pools: cpu, arm"):
        check_pools(spec_on("cpu", "tpu"), config)


def test_replicas_sharing_one_config_get_their_own_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    peering = PeeringConfig(priority=7)
    monkeypatch.delenv(PRIORITY_ENV, raising=False)
    assert peering.replica_priority() == 7
    monkeypatch.setenv(PRIORITY_ENV, "42")
    assert peering.replica_priority() == 42
    monkeypatch.setenv(PRIORITY_ENV, "auto")
    drawn = {peering.replica_priority() for _ in range(20)}
    assert len(drawn) > 1 and all(value > 0 for value in drawn)  # equal peers would all freeze
    monkeypatch.setenv(PRIORITY_ENV, "high")
    with pytest.raises(KompaktorError, match=f"{PRIORITY_ENV}: expected an integer or 'auto'"):
        peering.replica_priority()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pools:\n  cpu: {}\npools:\n  gpu: {}\n", "line 3: duplicate key 'pools'"),
        ("pools: [unclosed\n", "while parsing"),
    ],
)
def test_a_broken_configuration_file_is_one_clear_error(
    tmp_path: Path, text: str, message: str
) -> None:
    """A repeated key silently kept the last one, and bad YAML raised PyYAML's own exception."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(KompaktorError, match=f"operator configuration {path}: .*{message}"):
        load_config(path)

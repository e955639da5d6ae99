"""Times in status: UTC instants written to the second, as Kubernetes writes them."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def seconds_since(since: str | None, now: datetime) -> float:
    """Seconds from `since` to `now`, never negative; 0 when `since` is None (it never was)."""
    return 0.0 if since is None else max((now - parse_iso(since)).total_seconds(), 0.0)

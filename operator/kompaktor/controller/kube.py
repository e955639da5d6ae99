"""A small async client for the few API calls the controller makes itself.

kopf watches; the per-job loop reads and writes directly (status patches, Job creation and
deletion, listing children) with the same credentials kopf logged in with.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

from kompaktor.api.spec import GROUP, PLURAL, VERSION

MERGE = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def cr_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def all_crs_path() -> str:
    """Every OptimizationJob in the cluster (needs cluster-wide list permission)."""
    return f"/apis/{GROUP}/{VERSION}/{PLURAL}"


def jobs_path(namespace: str, name: str = "") -> str:
    base = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    return f"{base}/{name}" if name else base


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


class Kube:
    """JSON over HTTP against the API server named by a kopf ConnectionInfo."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            auth = info.as_aiohttp_basic_auth()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
            headers={**info.as_http_headers(), "User-Agent": "kompaktor-operator"},
            auth=auth,
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def close(self) -> None:
        await self.session.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self.session.request(
            method, self.server + path, json=body, params=params, headers=headers
        ) as response:
            if response.status >= 400:
                raise ApiError(response.status, (await response.text())[:500])
            data: dict[str, Any] = await response.json(content_type=None)
            return data

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list(self, path: str, selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector is not None else None
        data = await self._call("GET", path, params=params)
        return list(data.get("items") or [])

    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        """True when created, False when it already existed (adopted)."""
        try:
            await self._call("POST", path, body=body)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def patch_status(self, path: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", f"{path}/status", body={"status": status},
                                content_type=MERGE)  # fmt: skip

    async def delete(self, path: str) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            await self._call("DELETE", path, body=body)
        except ApiError as error:
            if error.status != 404:
                raise


def event_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/events"

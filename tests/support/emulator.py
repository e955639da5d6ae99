"""A Kubernetes API emulator good enough for kopf, kubectl and our controller.

kmock's `KubernetesEmulator` stores objects over real HTTP but lacks what a controller relies
on (TESTING.md lists it): resource versions, uids, generations, 201 on create, generateName,
label selectors, list kinds, the status subresource, watches that resume from a version,
finalizer-aware deletion and owner-reference garbage collection. This subclass serves every
object request itself and keeps kmock's object history (`emulator.objects[...]`) for
assertions; discovery stays kmock's.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, k8s_dicts, references, rendering

Obj = dict[str, Any]
ResKey = tuple[references.resource, str | None, str]

CRD_PATH = "crds/kompaktor.io_optimizationjobs.yaml"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


# ------------------------------------------------------------------------------ selectors

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?(?P<key>[^\s!=,()]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)|\s+(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?\s*$"
)


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def label_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector syntax: =, ==, !=, in, notin, key, !key."""
    for part in _split_selector(selector):
        match = _REQUIREMENT.match(part)
        if match is None:
            raise _error(400, "BadRequest", f"unable to parse requirement: {part!r}")
        key, value = match["key"], labels.get(match["key"])
        if match["neg"]:
            ok = value is None
        elif match["op"] in ("=", "=="):
            ok = value == match["value"]
        elif match["op"] == "!=":
            ok = value != match["value"]
        elif match["setop"]:
            options = {v.strip() for v in match["set"].split(",")}
            ok = (value in options) if match["setop"] == "in" else (value not in options)
        else:
            ok = key in labels
        if not ok:
            return False
    return True


def field_matches(selector: str, obj: Obj) -> bool:
    """Only the fields clients use against us: metadata.name and metadata.namespace."""
    for part in _split_selector(selector):
        path, _, value = part.partition("=")
        negate = path.endswith("!")
        path = path.rstrip("!=")
        actual: Any = obj
        for piece in path.split("."):
            actual = actual.get(piece) if isinstance(actual, Mapping) else None
        if (str(actual) == value.lstrip("=")) == negate:
            return False
    return True


def json_path(obj: Obj, path: str) -> Any:
    """The dotted subset of JSONPath that printer columns use."""
    value: Any = obj
    for piece in path.strip(".").split("."):
        value = value.get(piece) if isinstance(value, Mapping) else None
    return value


# ------------------------------------------------------------------------------ patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge, null deletes, everything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


# ------------------------------------------------------------------------------ emulator


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """Stateful API semantics on top of kmock; `garbage_collect` follows ownerReferences."""

    garbage_collect: bool = True
    _rv: int = attrs.field(default=0, init=False)
    _log: list[tuple[int, references.resource, Obj]] = attrs.field(factory=list, init=False)
    _log_rvs: list[int] = attrs.field(factory=list, init=False)
    _tick: asyncio.Event | None = attrs.field(default=None, init=False)
    _columns: dict[references.resource, list[Obj]] = attrs.field(factory=dict, init=False)
    writes: list[tuple[str, str, str]] = attrs.field(factory=list, init=False)
    """(bearer token, method, path) of every write, so a test can tell who acted."""

    # ----------------------------------------------------------------- setup

    def install_defaults(self) -> None:
        """Built-in resources, the default namespace, and kopf's peering resources."""
        self.resources.load_bundled()
        for name in ("default", "kube-system"):
            self.put_object(
                kmock.resource("", "v1", "namespaces"),
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )
        self.resources["kopf.dev/v1/kopfpeerings"] = kmock.ResourceInfo(
            kind="KopfPeering", singular="kopfpeering", namespaced=True,
            verbs={"get", "list", "watch", "patch", "create"},
        )  # fmt: skip
        self.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
            kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False,
            verbs={"get", "list", "watch", "patch", "create"},
        )  # fmt: skip

    def install_crd(self, crd: Mapping[str, Any]) -> references.resource:
        """Register a CustomResourceDefinition for discovery, status and printer columns."""
        spec = crd["spec"]
        version = next(v for v in spec["versions"] if v.get("served", True))
        resource = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
        self.resources[resource] = kmock.ResourceInfo(
            kind=spec["names"]["kind"],
            singular=spec["names"].get("singular"),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            shortnames=set(spec["names"].get("shortNames", [])),
            categories=set(spec["names"].get("categories", [])),
            subresources=set(version.get("subresources", {})),
        )
        self._columns[resource] = list(version.get("additionalPrinterColumns", []))
        return resource

    def put_object(self, resource: references.resource, body: Obj) -> Obj:
        """Create an object directly (no HTTP), e.g. fixtures; returns the stored object."""
        meta = body.get("metadata", {})
        return self._create(resource, meta.get("namespace"), copy.deepcopy(body))

    def create(self, resource: references.resource | str, body: Obj) -> Obj:
        """What a POST does, for in-process actors (the test kubelet)."""
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        return self._create(res, body.get("metadata", {}).get("namespace"), copy.deepcopy(body))

    def patch_object(
        self,
        resource: references.resource | str,
        namespace: str | None,
        name: str,
        patch: Obj,
        subresource: str | None = None,
    ) -> Obj | None:
        """A merge patch as the API applies it; None when the object is gone."""
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        try:
            return self._update(res, namespace, name, patch, "", subresource, replace=False)
        except kmock.KubernetesError as error:
            if error.status == 404:
                return None
            raise

    def remove(self, resource: references.resource | str, namespace: str | None, name: str) -> None:
        """What a DELETE does (finalizers respected, owned objects collected)."""
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        self._delete(res, namespace, name)

    async def changed(self, timeout: float) -> None:
        """Wait until any object changes (or `timeout` passes)."""
        if self._tick is None:
            self._tick = asyncio.Event()
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # races with the event, and the waiting task then never stops.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._tick.wait()

    # ----------------------------------------------------------------- assertions

    def creations(self, resource: references.resource | str) -> dict[str, int]:
        """How many times each object name of a resource was created (history transitions)."""
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        counts: dict[str, int] = {}
        for (r, _, name), obj in self.objects.items():
            if r != res:
                continue
            previous: Any = None
            for version in obj.history:
                if version is not None and previous is None:
                    counts[name] = counts.get(name, 0) + 1
                previous = version
        return counts

    def live(self, resource: references.resource | str, namespace: str | None = None) -> list[Obj]:
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        return [
            obj.raw
            for (r, ns, _), obj in list(self.objects.items())
            if r == res and not obj.deleted and (namespace is None or ns == namespace)
        ]

    def get_live(
        self, resource: references.resource | str, namespace: str | None, name: str
    ) -> Obj | None:
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        key = (res, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        raw: Obj = self.objects[key].raw
        return raw

    # ----------------------------------------------------------------- HTTP

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is not None and resource.plural is None and request.namespace:
            # kmock parses /api/v1/namespaces/NAME as a namespace with no resource.
            resource = kmock.resource("", "v1", "namespaces")
            request = attrs.evolve(
                request, resource=resource, name=request.namespace, namespace=None
            )
        if resource is None or resource.plural is None or request.method is None:
            return await apps.RawHandler._handle(self, request)
        if resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        namespace = request.namespace
        method = str(request.method.value).upper()
        if method != "GET":
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            self.writes.append((token, method, request.url.path))
        if request.params.get("watch") in ("true", "1"):
            return await self._watch(request, resource)
        name = request.name
        if method == "GET":
            if name is None:
                return self._respond(self._list(request, resource))
            return self._respond(self._fetch(resource, namespace, name))
        if method == "POST":
            body = request.data if isinstance(request.data, dict) else {}
            async with self._lock:
                created = self._create(resource, namespace, copy.deepcopy(body))
            return self._respond(created, status=201)
        if method in ("PATCH", "PUT") and name is not None:
            content_type = request.headers.get("Content-Type", "")
            async with self._lock:
                updated = self._update(
                    resource, namespace, name, request.data, content_type,
                    request.subresource, replace=method == "PUT",
                )  # fmt: skip
            return self._respond(updated)
        if method == "DELETE" and name is not None:
            async with self._lock:
                deleted = self._delete(resource, namespace, name)
            return self._respond(deleted)
        raise _error(405, "MethodNotAllowed", f"{method} {request.url.path} is not supported")

    def _respond(self, payload: Obj, status: int = 200) -> aiohttp.web.StreamResponse:
        return aiohttp.web.json_response(payload, status=status)

    # ----------------------------------------------------------------- storage

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, resource: references.resource, kind: str, obj: Obj) -> None:
        rv = int(obj.get("metadata", {}).get("resourceVersion", self._rv))
        self._log.append((rv, resource, {"type": kind, "object": copy.deepcopy(obj)}))
        self._log_rvs.append(rv)
        if self._tick is not None:
            tick, self._tick = self._tick, asyncio.Event()
            tick.set()

    def _key(self, resource: references.resource, namespace: str | None, name: str) -> ResKey:
        namespaced = self.resources[resource].namespaced
        return (resource, namespace if namespaced is not False else None, name)

    def _current(self, resource: references.resource, namespace: str | None, name: str) -> Obj:
        key = self._key(resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            raise _error(404, "NotFound", f'{resource.plural} "{name}" not found')
        raw: Obj = self.objects[key].raw
        return raw

    def _fetch(self, resource: references.resource, namespace: str | None, name: str) -> Obj:
        return copy.deepcopy(self._current(resource, namespace, name))

    def _store(self, key: ResKey, obj: Obj) -> None:
        if key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj

    def _create(self, resource: references.resource, namespace: str | None, body: Obj) -> Obj:
        info = self.resources[resource]
        meta = body.setdefault("metadata", {})
        if info.namespaced is not False:
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
        else:
            namespace = None
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise _error(422, "Invalid", "metadata.name: Required value")
        key = self._key(resource, namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            raise _error(409, "AlreadyExists", f'{resource.plural} "{name}" already exists')
        if info.kind and "kind" not in body:
            body["kind"] = info.kind
        if "apiVersion" not in body:
            group = resource.group
            body["apiVersion"] = f"{group}/{resource.version}" if group else resource.version
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=now_iso(),
            resourceVersion=self._next_rv(),
            generation=1,
        )
        meta.pop("deletionTimestamp", None)
        if "status" in info.subresources:
            body.pop("status", None)
        self._store(key, body)
        self._emit(resource, "ADDED", body)
        return copy.deepcopy(body)

    def _update(
        self,
        resource: references.resource,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str,
        subresource: str | None,
        *,
        replace: bool,
    ) -> Obj:
        old = self._current(resource, namespace, name)
        if replace:
            new = copy.deepcopy(patch)
            expected = patch.get("metadata", {}).get("resourceVersion")
        elif "json-patch" in content_type:
            try:
                new = jsonpatch.apply_patch(copy.deepcopy(old), patch)
            except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchTestFailed) as error:
                raise _error(409, "Conflict", f"patch did not apply: {error}") from None
            expected = None
        else:  # merge and strategic-merge patches: merge semantics are enough for us
            expected = (patch or {}).get("metadata", {}).get("resourceVersion")
            new = merge_patch(old, patch or {})
        if expected and expected != old["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified; please apply your "
                         "changes to the latest version and try again")  # fmt: skip
        has_status = "status" in self.resources[resource].subresources
        if subresource == "status":
            new = dict(old, status=new.get("status"))
            if new["status"] is None:
                new.pop("status")
        elif has_status:
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in old:
                new["status"] = old["status"]
        meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp"):
            if fixed in old["metadata"]:
                meta[fixed] = old["metadata"][fixed]
        meta["generation"] = old["metadata"].get("generation", 1) + (
            _spec_part(new) != _spec_part(old) and subresource != "status"
        )
        if new == old:
            return copy.deepcopy(old)
        meta["resourceVersion"] = self._next_rv()
        key = self._key(resource, namespace, name)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key, resource, new)
        else:
            self._store(key, new)
            self._emit(resource, "MODIFIED", new)
        return copy.deepcopy(new)

    def _delete(self, resource: references.resource, namespace: str | None, name: str) -> Obj:
        old = self._current(resource, namespace, name)
        key = self._key(resource, namespace, name)
        if old["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(old)
        if old["metadata"].get("finalizers"):
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now_iso()
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._store(key, new)
            self._emit(resource, "MODIFIED", new)
            return copy.deepcopy(new)
        self._remove(key, resource, old)
        return copy.deepcopy(old)

    def _remove(self, key: ResKey, resource: references.resource, last: Obj) -> None:
        final = copy.deepcopy(last)
        final["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[key].delete()
        self._emit(resource, "DELETED", final)
        if self.garbage_collect:
            self._collect(final["metadata"]["uid"])

    def _collect(self, owner_uid: str) -> None:
        """Background propagation: delete every object that this owner owned."""
        for (res, ns, name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            refs = obj.raw.get("metadata", {}).get("ownerReferences", [])
            if any(ref.get("uid") == owner_uid for ref in refs):
                self._delete(res, ns, name)

    # ----------------------------------------------------------------- list & watch

    def _selected(self, request: rendering.Request, resource: references.resource) -> list[Obj]:
        labels = request.params.get("labelSelector", "")
        fields = request.params.get("fieldSelector", "")
        found = []
        for (res, ns, _), obj in self.objects.items():
            if res != resource or obj.deleted:
                continue
            if request.namespace is not None and ns != request.namespace:
                continue
            raw = obj.raw
            if labels and not label_matches(labels, raw.get("metadata", {}).get("labels") or {}):
                continue
            if fields and not field_matches(fields, raw):
                continue
            found.append(copy.deepcopy(raw))
        return found

    def _list(self, request: rendering.Request, resource: references.resource) -> Obj:
        info = self.resources[resource]
        items = self._selected(request, resource)
        group_version = f"{resource.group}/{resource.version}" if resource.group else "v1"
        accept = request.headers.get("Accept", "")
        if "as=Table" in accept:
            return self._table(resource, items)
        return {
            "apiVersion": group_version,
            "kind": f"{info.kind or 'Object'}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def _table(self, resource: references.resource, items: list[Obj]) -> Obj:
        """Server-side printing (what `kubectl get` asks for), with the CRD's columns."""
        columns = [{"name": "Name", "type": "string", "format": "name"}]
        columns += [
            {"name": c["name"], "type": c.get("type", "string"), "format": "",
             "description": c.get("description", ""), "priority": c.get("priority", 0)}
            for c in self._columns.get(resource, [])
        ]  # fmt: skip
        rows = []
        for item in items:
            cells: list[Any] = [item["metadata"]["name"]]
            for column in self._columns.get(resource, []):
                cells.append(json_path(item, column["jsonPath"]))
            partial = {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                       "metadata": item["metadata"]}  # fmt: skip
            rows.append({"cells": cells, "object": partial})
        return {
            "apiVersion": "meta.k8s.io/v1",
            "kind": "Table",
            "metadata": {"resourceVersion": str(self._rv)},
            "columnDefinitions": columns,
            "rows": rows,
        }

    async def _watch(
        self, request: rendering.Request, resource: references.resource
    ) -> aiohttp.web.StreamResponse:
        raw_request = request._raw_request
        assert raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request)
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        try:
            async with asyncio.timeout(timeout):
                async for event in self._events(request, resource):
                    await response.write(json.dumps(event).encode() + b"\n")
        except (TimeoutError, ConnectionResetError):
            pass
        return response

    async def _events(
        self, request: rendering.Request, resource: references.resource
    ) -> AsyncIterator[Obj]:
        since = request.params.get("resourceVersion", "")
        if since.isdigit() and since != "0":
            position = bisect.bisect_right(self._log_rvs, int(since))
        else:
            position = len(self._log)
            for obj in self._selected(request, resource):
                yield {"type": "ADDED", "object": obj}
        labels = request.params.get("labelSelector", "")
        fields = request.params.get("fieldSelector", "")
        while True:
            if self._tick is None:
                self._tick = asyncio.Event()
            tick = self._tick
            while position < len(self._log):
                _, res, event = self._log[position]
                position += 1
                obj = event["object"]
                meta = obj.get("metadata", {})
                if res != resource:
                    continue
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if labels and not label_matches(labels, meta.get("labels") or {}):
                    continue
                if fields and not field_matches(fields, obj):
                    continue
                yield event
            await tick.wait()


def ensure_namespaces(emulator: ClusterEmulator, names: Iterable[str]) -> None:
    for name in names:
        if emulator.get_live("v1/namespaces", None, name) is None:
            emulator.put_object(
                kmock.resource("", "v1", "namespaces"),
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )


__all__ = ["CRD_PATH", "ClusterEmulator", "ensure_namespaces", "k8s_dicts", "label_matches"]

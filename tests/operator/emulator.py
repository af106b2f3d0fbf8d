"""A stateful Kubernetes API emulator for the operator's tests: kmock 0.8's
KubernetesEmulator with the gaps that matter to a controller closed.

kmock 0.8 keeps objects as plain JSON and merges patches; this subclass adds
what an API server does and Kopf relies on:
- metadata.uid / resourceVersion (one global counter) / generation (bumped on
  spec changes only) / creationTimestamp; `generateName`; kind/apiVersion on
  lists; 409 AlreadyExists on a second create;
- the status subresource: `/status` patches change only `status`, main-object
  patches never change it; create ignores a given status;
- merge-patch (RFC 7386) with `metadata.resourceVersion` as a precondition
  (409 Conflict), JSON-patch with 422 (not 500) on a failed `test` op;
- no-op patches change nothing (no new resourceVersion, no watch event);
- watch streams subscribe to the event bus *before* listing, so that no event
  between the initial listing and the subscription is lost;
- label selectors (equality and existence) on lists and watches;
- owner-reference garbage collection (background) on delete, and of orphans;
- CRDs installed from the generated YAML: discovery (kind, short names,
  categories; subresources listed without them, unlike kmock, so that `pj` is
  not ambiguous), structural defaulting, and server-side Tables with the CRD's
  printer columns, so that `kubectl get pj` shows them;
- `/api/v1/namespaces[/NAME]` parsed as the Namespace resource (kmock 0.8
  reads it as a namespace prefix and fails on the bare collection);
- requests served directly: kmock's reaction matching re-filters every request
  ever received for each new one (quadratic; nothing here uses reactions);
- `fail(plural, action, times, status, subresource)`: injected API trouble.

It runs in its own thread with its own event loop (`EmulatorThread`).
"""
from __future__ import annotations

import asyncio
import copy
import datetime
import json
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Optional

import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import enums, parsing, rendering
from kmock._internal.k8s import KubernetesError

_parse_path = parsing.parse_path


def _parse_path_with_namespaces(path: str) -> parsing.ParsedPath:
    """kmock 0.8 reads `/api/v1/namespaces[/NAME[/status]]` as a namespace prefix
    (and fails on the bare collection): parse Namespaces as the resource they are."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (len(parts) <= 4 or parts[4:] in (["status"], ["finalize"])):
        name = parts[3] if len(parts) > 3 else None
        return parsing.ParsedPath("", "v1", "namespaces", None, name, parts[4] if len(parts) > 4 else None)
    return _parse_path(path)


parsing.parse_path = _parse_path_with_namespaces  # rendering.Request._parse looks it up on the module

BUILTIN_RESOURCES = [
    # (resource, kind, namespaced, subresources)
    ("v1/namespaces", "Namespace", False, ("status",)),
    ("v1/pods", "Pod", True, ("status",)),
    ("v1/events", "Event", True, ()),
    ("v1/serviceaccounts", "ServiceAccount", True, ()),
    ("v1/configmaps", "ConfigMap", True, ()),
    ("v1/secrets", "Secret", True, ()),
    ("batch/v1/jobs", "Job", True, ("status",)),
    ("events.k8s.io/v1/events", "Event", True, ()),
    ("rbac.authorization.k8s.io/v1/roles", "Role", True, ()),
    ("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", True, ()),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False, ("status",)),
]
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
CRD_RESOURCE = "apiextensions.k8s.io/v1/customresourcedefinitions"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _status_error(code: int, reason: str, message: str) -> KubernetesError:
    return KubernetesError(status=code, reason=reason, message=message, details={})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def apply_defaults(obj: Any, schema: dict[str, Any]) -> None:
    """Structural defaulting as the API server does it: a missing property with
    a `default` gets it, then the object's own properties are defaulted."""
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                apply_defaults(obj[name], sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])


def json_path(obj: Any, path: str) -> Any:
    """The simple JSONPaths that printer columns use: `.a.b.c`."""
    for part in filter(None, path.split(".")):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def human_age(timestamp: Optional[str]) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((_now() - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


class StatefulEmulator(kmock.KubernetesEmulator):
    """See the module docstring."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = 0
        self._info: dict[kmock.resource, dict[str, Any]] = {}
        self._columns: dict[kmock.resource, list[dict[str, Any]]] = {}
        self._schemas: dict[kmock.resource, dict[str, Any]] = {}
        self._faults: dict[tuple[Optional[str], str, Optional[str]], list[int]] = {}
        for resource, kind, namespaced, subresources in BUILTIN_RESOURCES:
            self.declare(resource, kind, namespaced=namespaced, subresources=subresources)

    # ------------------------------------------------------------ declarations

    def declare(self, resource: str, kind: str, *, namespaced: bool = True, subresources=(), shortnames=(),
                categories=(), singular: Optional[str] = None) -> None:
        key = kmock.resource(resource)
        self.resources[resource] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, verbs=VERBS, subresources=set(subresources),
            shortnames=set(shortnames), categories=set(categories), singular=singular or kind.lower(),
        )
        api_version = f"{key.group}/{key.version}" if key.group else key.version
        self._info[key] = {"kind": kind, "apiVersion": api_version, "subresources": set(subresources),
                           "namespaced": namespaced}

    def fail(self, plural: str, action: enums.action, times: int, status: int = 500,
             subresource: Optional[str] = None) -> None:
        """Answer the next `times` such requests with `status` (API trouble, for tests)."""
        self._faults[(plural, str(action), subresource)] = [times, status]

    def install_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CRD's resource (each served version) and store the CRD object itself."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            resource = f"{spec['group']}/{version['name']}/{names['plural']}"
            self.declare(resource, names["kind"], namespaced=spec.get("scope") == "Namespaced",
                         subresources=tuple(version.get("subresources") or {}),
                         shortnames=names.get("shortNames", ()), categories=names.get("categories", ()),
                         singular=names.get("singular"))
            self._columns[kmock.resource(resource)] = version.get("additionalPrinterColumns") or []
            self._schemas[kmock.resource(resource)] = version["schema"]["openAPIV3Schema"]
        stored = copy.deepcopy(crd)
        stored["metadata"].update(self._new_metadata())
        self.objects[kmock.resource(CRD_RESOURCE), None, crd["metadata"]["name"]] = stored

    def install_crd_file(self, path: Path) -> None:
        self.install_crd(yaml.safe_load(Path(path).read_text()))

    # ------------------------------------------------------------ state changes

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _new_metadata(self) -> dict[str, Any]:
        return {"uid": str(uuid.uuid4()), "resourceVersion": self._next_rv(), "generation": 1,
                "creationTimestamp": _now().strftime("%Y-%m-%dT%H:%M:%SZ")}

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Serve the request directly. (kmock's reaction matching re-filters every
        request ever received for each new one: quadratic, and nothing here
        uses reactions.)"""
        action = request.action
        fault = self._faults.get((getattr(request.resource, "plural", None), str(action), request.subresource))
        if fault and fault[0] > 0:
            fault[0] -= 1
            raise _status_error(fault[1], "InternalError", "injected fault")
        if request.resource is None or request.resource.plural is None:
            return aiohttp.web.json_response(await self._discovery(request))
        if action == enums.action.WATCH:
            return await self._stream(request)
        if action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE):
            async with self._lock:
                if action == enums.action.CREATE:
                    body = await self._create(request)
                elif action == enums.action.UPDATE:
                    body = await self._update(request)
                else:
                    body = await self._delete(request)
            return aiohttp.web.json_response(body)
        if action == enums.action.LIST:
            return aiohttp.web.json_response(await self._serve_list(request))
        if action == enums.action.FETCH:
            return aiohttp.web.json_response(await self._serve_fetch(request))
        raise _status_error(405, "MethodNotAllowed", f"{request.method} is not supported here")

    async def _discovery(self, request: rendering.Request) -> Any:
        path = request.url.path.rstrip("/")
        parts = path.strip("/").split("/") if path else []
        if path == "/version":
            return await self._serve_server_version(request)
        if path == "":
            return await self._serve_root(request)
        if path == "/api":
            return await self._serve_api(request)
        if path == "/apis":
            return await self._serve_apis(request)
        if parts[0] == "apis" and len(parts) == 2:
            return await self._serve_group(request)
        if (parts[0] == "apis" and len(parts) == 3) or parts == ["api", "v1"]:
            return await self._serve_version(request)
        raise kmock.KubernetesEndpointNotFoundError()

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        """APIResourceList; subresources without short names or categories (kmock
        copies them, which makes `kubectl get pj` ambiguous)."""
        wanted = request.resource
        entries = []
        for key, info in sorted(self._info.items(), key=lambda item: item[0].plural):
            if (key.group, key.version) != (wanted.group, wanted.version):
                continue
            declared = self.resources[key]
            entries.append({"name": key.plural, "singularName": declared.singular or "", "kind": info["kind"],
                            "namespaced": info["namespaced"], "verbs": VERBS,
                            "shortNames": sorted(declared.shortnames), "categories": sorted(declared.categories)})
            for sub in sorted(info["subresources"]):
                entries.append({"name": f"{key.plural}/{sub}", "singularName": "", "kind": info["kind"],
                                "namespaced": info["namespaced"], "verbs": ["get", "patch", "update"]})
        if not entries:
            raise kmock.KubernetesResourceNotFoundError()
        group_version = f"{wanted.group}/{wanted.version}" if wanted.group else wanted.version
        return {"apiVersion": "v1", "kind": "APIResourceList", "groupVersion": group_version, "resources": entries}

    async def _stream(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        try:
            async for event in self._watch_events(request):
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    async def _create(self, request: rendering.Request) -> dict[str, Any]:
        info = self._info.get(request.resource, {})
        data = request.data if isinstance(request.data, dict) else {}
        meta = data.setdefault("metadata", {})
        namespace = request.namespace or meta.get("namespace")
        if namespace:
            meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise _status_error(422, "Invalid", "metadata.name: Required value")
        key = (request.resource, namespace, meta["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise _status_error(409, "AlreadyExists", f"{request.resource.plural} \"{meta['name']}\" already exists")
        meta.update(self._new_metadata())
        if "kind" in info:
            data.setdefault("kind", info["kind"])
            data.setdefault("apiVersion", info["apiVersion"])
        if "status" in info.get("subresources", ()):
            data.pop("status", None)
        if request.resource in self._schemas:
            apply_defaults(data, self._schemas[request.resource])
        if key in self.objects:
            self.objects[key].history.append(data)
        else:
            self.objects[key] = data
        await self._buses[request.resource].put({"type": "ADDED", "object": copy.deepcopy(data)})
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        if owners and not self._live_uids() & owners:  # the garbage collector removes orphans
            await self._remove(request.resource, self.objects[key])
        return copy.deepcopy(data)

    def _live_uids(self) -> set[str]:
        return {obj.raw["metadata"].get("uid") for obj in self.objects.values() if not obj.deleted}

    def _existing(self, request: rendering.Request) -> kmock.Object:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise _status_error(404, "NotFound", f"{request.resource.plural} \"{request.name}\" not found")
        return self.objects[key]

    async def _update(self, request: rendering.Request) -> dict[str, Any]:
        obj = self._existing(request)
        old = copy.deepcopy(obj.raw)
        patch = request.data
        if isinstance(patch, list):
            try:
                new = jsonpatch.apply_patch(copy.deepcopy(old), patch)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as err:
                raise _status_error(422, "Invalid", f"the JSON patch could not be applied: {err}") from None
        elif isinstance(patch, dict):
            wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted_rv is not None and wanted_rv != old["metadata"].get("resourceVersion"):
                raise _status_error(409, "Conflict", "the object has been modified; please apply your changes "
                                                     "to the latest version and try again")
            new = merge_patch(old, patch)
        else:
            raise _status_error(400, "BadRequest", "the patch must be a JSON object or a JSON-patch list")
        info = self._info.get(request.resource, {})
        if request.subresource == "status":
            new = {**old, "status": new.get("status")} if new.get("status") is not None else \
                {k: v for k, v in old.items() if k != "status"}
        elif "status" in info.get("subresources", ()):
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in old:
                new["status"] = old["status"]
        if request.resource in self._schemas:
            apply_defaults(new, self._schemas[request.resource])
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "resourceVersion"):
            if field in old["metadata"]:
                new.setdefault("metadata", {})[field] = old["metadata"][field]
        if new == old:
            return old  # a no-op: no new version, no event
        body_keys = set(old) | set(new)
        if any(old.get(k) != new.get(k) for k in body_keys - {"metadata", "status", "apiVersion", "kind"}):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        obj.history.append(new)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(request.resource, obj)
        else:
            await self._buses[request.resource].put({"type": "MODIFIED", "object": copy.deepcopy(new)})
        return copy.deepcopy(new)

    async def _delete(self, request: rendering.Request) -> dict[str, Any]:
        obj = self._existing(request)
        meta = obj.raw["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                new = copy.deepcopy(obj.raw)
                new["metadata"]["deletionTimestamp"] = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
                new["metadata"]["resourceVersion"] = self._next_rv()
                obj.history.append(new)
                await self._buses[request.resource].put({"type": "MODIFIED", "object": copy.deepcopy(new)})
            return copy.deepcopy(obj.raw)
        last = copy.deepcopy(obj.raw)
        await self._remove(request.resource, obj)
        return last

    async def _remove(self, resource: kmock.resource, obj: kmock.Object) -> None:
        """Delete an object, then (background cascading) every object it owns."""
        last = copy.deepcopy(obj.raw)
        obj.delete()
        await self._buses[resource].put({"type": "DELETED", "object": last})
        uid = last["metadata"].get("uid")
        for (child_resource, _, _), child in list(self.objects.items()):
            if child.deleted:
                continue
            refs = child.raw.get("metadata", {}).get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                await self._remove(child_resource, child)

    # ------------------------------------------------------------ reads

    def _visible(self, request: rendering.Request) -> list[dict[str, Any]]:
        selector = request.params.get("labelSelector", "")
        found = []
        for (resource, namespace, name), obj in self.objects.items():
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            if request.name is not None and name != request.name:
                continue
            raw = obj.raw
            if selector and not selector_matches(selector, raw.get("metadata", {}).get("labels") or {}):
                continue
            found.append(copy.deepcopy(raw))
        return found

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.resource not in self._info and request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._visible(request)
            rv = str(self._rv)
        if "as=Table" in request.headers.get("Accept", ""):
            return self._table(request.resource, items, rv)
        info = self._info.get(request.resource, {})
        return {"kind": f"{info.get('kind', 'Object')}List", "apiVersion": info.get("apiVersion", "v1"),
                "metadata": {"resourceVersion": rv}, "items": items}

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        async with self._lock:
            items = self._visible(request)
        if not items:
            raise _status_error(404, "NotFound", f"{request.resource.plural} \"{request.name}\" not found")
        if "as=Table" in request.headers.get("Accept", ""):
            return self._table(request.resource, items, str(self._rv))
        return items[0]

    async def _watch_events(self, request: rendering.Request) -> AsyncIterator[dict[str, Any]]:
        bus = self._buses[request.resource]
        async with self._lock:  # subscribe first, then list: nothing falls in between
            marker = await bus.mark()
            initial = self._visible(request)
        try:
            for obj in initial:
                yield {"type": "ADDED", "object": obj}
            selector = request.params.get("labelSelector", "")
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                if selector and not selector_matches(selector, meta.get("labels") or {}):
                    continue
                yield event
        finally:
            await bus.unmark(marker)

    def _table(self, resource: kmock.resource, items: list[dict[str, Any]], rv: str) -> dict[str, Any]:
        columns = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
        extra = self._columns.get(resource)
        if extra is None:
            extra = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        columns += [{"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                     "description": c.get("description", ""), "priority": c.get("priority", 0)} for c in extra]
        rows = []
        for item in items:
            cells: list[Any] = [item["metadata"]["name"]]
            for column in extra:
                value = json_path(item, column["jsonPath"])
                cells.append(human_age(value) if column.get("type") == "date" else value)
            partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]}
            rows.append({"cells": cells, "object": partial})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
                "columnDefinitions": columns, "rows": rows}


class EmulatorThread:
    """The emulator served on 127.0.0.1 from its own thread and event loop;
    optionally also over TLS (a pod reaches the API server over https)."""

    def __init__(self, crd_paths: list[Path] = (), ssl_context: Any = None):
        self.crd_paths = list(crd_paths)
        self.ssl_context = ssl_context
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self.emulator: Optional[StatefulEmulator] = None
        self.url = ""
        self.tls_port: Optional[int] = None
        self._stopping: Optional[asyncio.Event] = None

    def start(self) -> "EmulatorThread":
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the API emulator did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        from aiohttp.test_utils import RawTestServer

        self._stopping = asyncio.Event()
        async with StatefulEmulator() as emulator, kmock.Server(emulator) as server:
            for path in self.crd_paths:
                emulator.install_crd_file(path)
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            tls = None
            if self.ssl_context is not None:
                tls = RawTestServer(emulator, host="127.0.0.1")
                await tls.start_server(ssl=self.ssl_context)
                self.tls_port = tls.port
            self.ready.set()
            await self._stopping.wait()
            if tls is not None:
                await tls.close()

    def call(self, fn, *args):
        """Run a plain function in the emulator's loop (for direct state access)."""
        async def wrapper():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(30)

    def requests(self) -> list[rendering.Request]:
        return self.call(lambda: list(self.emulator._requests))

    def stop(self) -> None:
        if self._stopping is not None:
            self.loop.call_soon_threadsafe(self._stopping.set)
        self.thread.join(30)

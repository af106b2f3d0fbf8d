"""A thin, dict-in dict-out Kubernetes client over the official library's
transport (auth, TLS, in-cluster/kubeconfig loading), without its model
classes: the controller builds plain manifests and reads plain JSON.

Only handlers (prunejobs.py) and main.py use it.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import kubernetes
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

MERGE_PATCH = "application/merge-patch+json"
PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Job": "jobs",
    "Pod": "pods",
    "PruneJob": "prunejobs",
    "Namespace": "namespaces",
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: str = ""):
        self.status, self.reason, self.body = status, reason, body
        super().__init__(f"{status} {reason}: {body[:300]}")


def load_configuration(kubeconfig: Optional[str] = None) -> Configuration:
    """In-cluster ServiceAccount when running in a pod, else kubeconfig."""
    configuration = Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return configuration


def collection_path(api_version: str, plural: str, namespace: Optional[str]) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def object_path(api_version: str, plural: str, namespace: Optional[str], name: str, subresource: str = "") -> str:
    path = f"{collection_path(api_version, plural, namespace)}/{name}"
    return f"{path}/{subresource}" if subresource else path


class Kube:
    def __init__(self, configuration: Configuration):
        self.configuration = configuration
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 32)
        self.client = ApiClient(configuration)

    def request(self, method: str, path: str, body: Any = None, query: Optional[dict[str, str]] = None,
                content_type: str = "application/json") -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            method, url, headers, payload, _ = self.client.param_serialize(
                method, path, query_params=list((query or {}).items()), header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )
            response = self.client.call_api(method, url, header_params=headers, body=payload, _request_timeout=30)
        except ApiException as err:  # transport trouble (status 0) and retry-after responses
            raise ApiError(err.status or 0, str(err.reason or "")) from None
        data = response.read()
        if not 200 <= response.status < 300:
            raise ApiError(response.status, str(response.reason or ""), (data or b"").decode(errors="replace"))
        return json.loads(data or b"{}")

    def get(self, path: str, query: Optional[dict[str, str]] = None) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str) -> Optional[dict[str, Any]]:
        try:
            return self.get(path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create; False when it already exists (409: done before)."""
        meta = manifest["metadata"]
        plural = PLURALS.get(manifest["kind"]) or manifest["kind"].lower() + "s"
        path = collection_path(manifest["apiVersion"], plural, meta.get("namespace"))
        try:
            self.request("POST", path, body=manifest)
        except ApiError as err:
            if err.status == 409:
                return False
            raise
        return True

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    def close(self) -> None:
        self.client.close()


def connection_info(configuration: Configuration) -> dict[str, Any]:
    """kopf.ConnectionInfo keyword arguments for the same endpoint and identity."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return dict(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )

"""The worker's status reporter in a pod: patches `status.progress` (throttled)
and `status.results` of its own PruneJob through the scoped ServiceAccount
(its Role allows only get/patch on prunejobs/status for this one object).

Sending happens on a background thread: the pipeline only hands over the
latest state and never waits for the API server. If the server is
unreachable, the newest progress and the results stay pending and are sent
when it answers again; `close()` waits a bounded time for that. Nothing here
raises into the pipeline: trouble is logged.

In-cluster configuration: KUBERNETES_SERVICE_HOST/PORT and the ServiceAccount
directory (token, ca.crt), /var/run/secrets/kubernetes.io/serviceaccount or
$PRUNE_JOB_SERVICEACCOUNT_DIR.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from prune_job.spec import GROUP, PLURAL, VERSION, DenseBaseline, Progress, Results

log = logging.getLogger(__name__)

DEFAULT_SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MERGE_PATCH = "application/merge-patch+json"

Sender = Callable[[dict[str, Any]], None]  # sends one status merge patch; raises on failure


def status_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"


def progress_document(progress: Progress) -> dict[str, Any]:
    """status.progress as sent: every field (None removes a stale key in a merge
    patch) plus `blocks` ("done/total") for `kubectl get pj`."""
    document = progress.model_dump(by_alias=True, mode="json")
    if progress.blocks_total:
        document["blocks"] = f"{progress.blocks_done}/{progress.blocks_total}"
    return document


def results_document(results: Results) -> dict[str, Any]:
    return results.model_dump(by_alias=True, mode="json", exclude_none=True)


def in_cluster_sender(namespace: str, name: str, environ: Mapping[str, str] = os.environ,
                      timeout: tuple[float, float] = (3.0, 10.0)) -> Sender:
    """A Sender over the official client's transport with the pod's identity."""
    from kubernetes.client import ApiClient, Configuration
    from kubernetes.config.incluster_config import InClusterConfigLoader

    directory = Path(environ.get("PRUNE_JOB_SERVICEACCOUNT_DIR") or DEFAULT_SERVICEACCOUNT_DIR)
    configuration = Configuration()
    InClusterConfigLoader(
        token_filename=str(directory / "token"), cert_filename=str(directory / "ca.crt"), environ=environ
    ).load_and_set(configuration)
    client = ApiClient(configuration)
    path = status_path(namespace, name)

    def send(patch: dict[str, Any]) -> None:
        headers = {"Accept": "application/json", "Content-Type": MERGE_PATCH}
        method, url, headers, body, _ = client.param_serialize(
            "PATCH", path, header_params=headers, body=patch, auth_settings=["BearerToken"]
        )
        response = client.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)
        data = response.read()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{response.status} {response.reason}: {(data or b'')[:300]!r}")

    return send


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


class KubernetesReporter:
    """StatusReporter for a pod. `progress` is sent at most every
    `min_interval` seconds (the newest state wins), `results` at once."""

    def __init__(self, name: str, namespace: str, *, min_interval: float = 5.0, close_timeout: float = 30.0,
                 retry_interval: Optional[float] = None, sender: Optional[Sender] = None,
                 environ: Mapping[str, str] = os.environ, clock: Callable[[], float] = time.monotonic):
        self.name, self.namespace = name, namespace
        self.min_interval = min_interval
        self.retry_interval = min_interval if retry_interval is None else retry_interval
        self.close_timeout = close_timeout
        self.clock = clock
        self.sent = 0  # patches delivered
        self.failures = 0  # failed attempts
        self._pending: dict[str, Any] = {}
        self._urgent = False
        self._closing = False
        self._outage = False
        self._next_send = 0.0
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        try:
            self._send = sender or in_cluster_sender(namespace, name, environ)
        except Exception as err:  # not in a pod, no ServiceAccount: keep pruning, say so
            log.warning(f"status reporting to Kubernetes is off ({err}); the status is printed at the end instead")
            self._send = None
            return
        self._thread = threading.Thread(target=self._run, name="prunejob-status", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ StatusReporter

    def progress(self, progress: Progress) -> None:
        self._queue({"progress": progress_document(progress)}, urgent=False)

    def results(self, results: Results) -> None:
        self._queue({"results": results_document(results)}, urgent=True)

    def dense_baseline(self, baseline: DenseBaseline) -> None:
        self._queue({"denseBaseline": baseline.model_dump(by_alias=True, mode="json", exclude_none=True)}, urgent=True)

    def close(self) -> None:
        if self._thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(self.close_timeout)
        with self._cond:
            if self._pending:
                log.warning(f"status of PruneJob {self.namespace}/{self.name} not delivered after "
                            f"{self.close_timeout:g}s ({self.failures} failed attempts): {sorted(self._pending)}")
            self._closing = True
            self._pending = {}
            self._cond.notify_all()

    # ------------------------------------------------------------ sending

    def _queue(self, status: dict[str, Any], urgent: bool) -> None:
        if self._thread is None:
            return
        try:
            with self._cond:
                _merge(self._pending, status)
                self._urgent = self._urgent or urgent
                self._cond.notify_all()
        except Exception as err:  # never into the pipeline
            log.warning(f"could not queue a status update: {err}")

    def _take(self) -> Optional[dict[str, Any]]:
        """The patch to send now, or None after waiting (under the lock)."""
        if not self._pending:
            if not self._closing:
                self._cond.wait()
            return None
        wait = self._next_send - self.clock()
        if wait > 0 and not self._urgent and not self._closing:
            self._cond.wait(wait)
            return None
        patch, self._pending, self._urgent = self._pending, {}, False
        return patch

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closing and not self._pending:
                    return
                patch = self._take()
            if patch is None:
                continue
            self._attempt(patch)

    def _attempt(self, patch: dict[str, Any]) -> None:
        try:
            self._send({"status": patch})
        except Exception as err:
            with self._cond:
                self.failures += 1
                self._outage = True
                newer, self._pending = self._pending, patch
                _merge(self._pending, newer)  # newer state wins over what failed
                self._urgent = self._urgent or bool({"results", "denseBaseline"} & set(patch))
                retry = min(self.retry_interval, 1.0) if self._closing else self.retry_interval
                self._next_send = self.clock() + retry
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning(f"cannot reach the API server to report status ({err}); "
                                f"pruning goes on and the status will be sent when it answers")
                self._cond.wait(retry)  # back off (close() wakes us)
            return
        with self._cond:
            if self._outage:
                log.warning(f"the API server answers again; status sent after {self.failures} failed attempts")
                self._outage = False
            self.sent += 1
            self._next_send = self.clock() + self.min_interval

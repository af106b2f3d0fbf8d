"""What the operator tests share (imported by name, never through `conftest`,
which other test folders' conftest modules shadow): polling, the operator in a
thread, a client configuration, a pod's identity."""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from kubernetes.client import Configuration

from emulator import EmulatorThread
from prune_operator import main as operator_main
from prune_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "prunejob.yaml"


def wait_for(probe: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll until probe() returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}; last value: {value!r}")


def configuration(url: str) -> Configuration:
    config = Configuration()
    config.host = url
    return config


class OperatorThread:
    """The operator (main.run) in its own thread with its own event loop."""

    def __init__(self, url: str, config: Optional[OperatorConfig] = None, namespaces=()):
        self.url = url
        self.config = config or OperatorConfig(job_image="example.test/prune-job:test")
        self.namespaces = namespaces
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(operator_main.run(configuration(self.url), self.config, namespaces=self.namespaces,
                                          stop_flag=self.stop_flag, ready_flag=self.ready_flag))
        except BaseException as err:  # surfaced by stop()
            self.error = err

    def start(self) -> "OperatorThread":
        self.thread.start()
        wait_for(lambda: self.ready_flag.is_set() or self.error, timeout=30, what="the operator to start")
        if self.error:
            raise self.error
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the operator did not stop"
        if self.error and not isinstance(self.error, (asyncio.CancelledError,)):
            raise self.error


def pod_identity(directory: Path, server: EmulatorThread, cert: Path, token: str) -> dict[str, str]:
    """What a pod has: the ServiceAccount directory (token, ca.crt) and the service's address."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(cert.read_bytes())
    (directory / "namespace").write_text("default")
    return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.tls_port),
            "PRUNE_JOB_SERVICEACCOUNT_DIR": str(directory)}


TEST_AGENT = "operator-tests"  # the User-Agent of a test's own client, to tell its requests from the operator's
VERBS = {"FETCH": "get", "LIST": "list", "WATCH": "watch", "CREATE": "create", "DELETE": "delete"}


def operator_permissions(api_server: EmulatorThread) -> set[tuple[str, str, str, str]]:
    """(group, resource[/subresource], verb, "") of every request the operator made."""
    used = set()
    for request in api_server.requests():
        if request.resource is None or not request.resource.plural or request.headers.get("User-Agent") == TEST_AGENT:
            continue
        if request.action is None:
            continue
        verb = VERBS.get(request.action.value) or ("update" if request.method.value == "PUT" else "patch")
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        used.add((request.resource.group or "", resource, verb, ""))
    return used


def kubeconfig(url: str, directory: Path, namespace: str) -> Path:
    """A kubeconfig for /usr/bin/kubectl against the emulator at `url`."""
    import yaml

    config = directory / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "tester"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}],
    }))
    return config

"""Fixtures for the operator's tests: the API emulator (one per module, in its
own thread), a namespace per test, and Kopf running the real operator in its
own thread and event loop, pointed at the emulator."""
from __future__ import annotations

import asyncio
import hashlib
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from kubernetes.client import Configuration

sys.path.insert(0, str(Path(__file__).parent))

from emulator import EmulatorThread  # noqa: E402
from prune_operator import main as operator_main  # noqa: E402
from prune_operator.config import OperatorConfig  # noqa: E402
from prune_operator.kube import Kube  # noqa: E402

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


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (what a pod's ca.crt would verify)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_api_server(tls_files):
    """The emulator, also served over https (as a pod reaches the API server)."""
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = EmulatorThread(sorted((ROOT / "crds").glob("*.yaml")), ssl_context=context).start()
    yield server
    server.stop()


def pod_identity(directory: Path, server: EmulatorThread, cert: Path, token: str) -> dict[str, str]:
    """What a pod has: the ServiceAccount directory (token, ca.crt) and the service's address."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(cert.read_bytes())
    (directory / "namespace").write_text("default")
    return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.tls_port),
            "PRUNE_JOB_SERVICEACCOUNT_DIR": str(directory)}


@pytest.fixture(scope="module")
def api_server():
    server = EmulatorThread(sorted((ROOT / "crds").glob("*.yaml"))).start()
    yield server
    server.stop()


@pytest.fixture
def kube(api_server) -> Kube:
    client = Kube(configuration(api_server.url))
    yield client
    client.close()


@pytest.fixture
def namespace(request, kube) -> str:
    name = "t-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


@pytest.fixture
def operator(api_server, namespace):
    running = OperatorThread(api_server.url, namespaces=[namespace]).start()
    yield running
    running.stop()

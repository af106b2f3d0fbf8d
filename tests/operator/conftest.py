"""Fixtures for the operator's tests: the API emulator (one per module, in its
own thread), a namespace per test, and Kopf running the real operator in its
own thread and event loop, pointed at the emulator."""
from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from emulator import EmulatorThread  # noqa: E402
from operator_harness import ROOT, OperatorThread, configuration  # noqa: E402
from prune_operator.kube import Kube  # noqa: E402


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

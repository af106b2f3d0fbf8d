"""A real S3 server for the storage tests: `nanio` on 127.0.0.1 with credentials, once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # also when imported as `storage.conftest` from other folders
from nanio_server import ACCESS_KEY, SECRET_KEY, NanioServer  # noqa: E402,F401  (re-exported)


@pytest.fixture(scope="session")
def nanio_server(tmp_path_factory):
    server = NanioServer(tmp_path_factory.mktemp("nanio-data")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(nanio_server, monkeypatch):
    """AWS_* pointing at the session's server; returns the server."""
    for k, v in nanio_server.env().items():
        monkeypatch.setenv(k, v)
    return nanio_server


@pytest.fixture
def bucket(s3_env) -> str:
    return s3_env.make_bucket()

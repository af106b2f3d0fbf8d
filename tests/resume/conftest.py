import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "storage"))
from nanio_server import NanioServer  # noqa: E402


@pytest.fixture
def s3(tmp_path_factory):
    """A real S3 server of this test's own (so that the test may stop and restart it), with one bucket."""
    server = NanioServer(tmp_path_factory.mktemp("nanio")).start()
    server.bucket = server.make_bucket()
    yield server
    server.stop()

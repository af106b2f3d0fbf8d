"""`nanio` (a real S3 server) on 127.0.0.1 with credentials: started by tests/storage/conftest.py and the benchmark."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ACCESS_KEY = "prunetestaccess"
SECRET_KEY = "prune-test-secret-Zq81xV"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NanioServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **override: str) -> dict[str, str]:
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
               "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}
        env.update(override)
        return env

    def start(self) -> "NanioServer":
        nanio = Path(sys.executable).with_name("nanio")
        env = dict(os.environ, NANIO_ACCESS_KEY=ACCESS_KEY, NANIO_SECRET_KEY=SECRET_KEY)
        self.proc = subprocess.Popen(
            [str(nanio), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--log-level", "warning", "--no-access-log"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nanio exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nanio did not start listening within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # abrupt, like a server that goes away
            self.proc.wait(10)
        self.proc = None

    def make_bucket(self, name: Optional[str] = None) -> str:
        from minio import Minio

        name = name or f"b-{uuid.uuid4().hex[:12]}"
        Minio(f"127.0.0.1:{self.port}", ACCESS_KEY, SECRET_KEY, secure=False).make_bucket(name)
        return name

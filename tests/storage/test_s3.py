"""Storage against a real S3 server (nanio): round trips, resume, caching, and clear errors."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from minio import Minio

from nanio_server import ACCESS_KEY, SECRET_KEY, NanioServer
from prune_job import storage
from prune_job.spec import Pattern

sys.path.insert(0, str(Path(__file__).parents[1] / "checkpoint"))
from ckpt_helpers import write_model  # noqa: E402

REPO = Path(__file__).parents[2]


def objects(server: NanioServer, bucket: str, prefix: str = "") -> dict[str, int]:
    client = Minio(f"127.0.0.1:{server.port}", ACCESS_KEY, SECRET_KEY, secure=False)
    return {o.object_name: o.size for o in client.list_objects(bucket, prefix=prefix, recursive=True)}


def test_roundtrip_through_s3_in_a_fresh_process(tiny_model_factory, bucket, s3_env, tmp_path):
    """Unstructured and 2:4, compressed, uploaded while written; loaded from s3:// in another process."""
    src = tiny_model_factory("llama")
    cases = {}
    for label, pattern in [("unstructured", None), ("2-4", Pattern(2, 4))]:
        write_model(src, tmp_path / label / "dense", "dense", pattern, prune=True, dtype=torch.bfloat16)
        uri = f"s3://{bucket}/{label}/"
        uploader = storage.Uploader(uri, tmp_path / label / "out", storage.S3Store(part_size=5 << 20))
        summary, _ = write_model(src, tmp_path / label / "out", "compressed", pattern, prune=True,
                                 dtype=torch.bfloat16, max_shard_bytes=40_000, on_file_written=uploader)
        uploader.close()
        stored = objects(s3_env, bucket, f"{label}/")
        assert set(stored) == {f"{label}/{f.name}" for f in summary.files} | {f"{label}/manifest.json"}
        assert {t.action for t in uploader.transfers} == {"sent", "copied"}  # shards copied to their final names
        cases[uri] = str(tmp_path / label / "dense")

    code = textwrap.dedent(f"""
        import torch, prune_job
        from transformers import AutoModelForCausalLM
        for uri, dense in {cases!r}.items():
            model = prune_job.load_pretrained(uri, cache_dir={str(tmp_path / 'cache')!r})
            ref = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.bfloat16)
            a, b = model.state_dict(), ref.state_dict()
            assert a.keys() == b.keys()
            bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
            assert not bad, bad
            print("EQUAL", uri, len(a))
    """)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **s3_env.env()}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("EQUAL") == 2


def test_interrupted_upload_resumes_sending_only_what_is_missing(tmp_path):
    server = NanioServer(tmp_path / "data").start()
    try:
        env = server.env()
        bucket = server.make_bucket("ckpt")
        torch.manual_seed(0)
        state = {f"layer{i}.weight": torch.randn(1024, 2048) for i in range(4)}  # 4 x 8 MiB, one 32 MiB shard
        cfg = storage.S3Config.from_env(env)

        def run(out: Path, prefix: str, on_bytes=None) -> storage.Uploader:
            store = storage.S3Store(cfg, part_size=5 << 20, workers=2, retries=2, backoff=0.05)
            up = storage.Uploader(f"s3://{bucket}/{prefix}", out, store, on_bytes=on_bytes)
            write_model(tmp_path, out, "dense", state=state, on_file_written=up)
            return up

        (tmp_path / "config.json").write_text("{}")
        sent = []

        def kill_after_three_parts(n: int) -> None:
            if n == 5 << 20:  # a full part of the shard (config.json goes up too)
                sent.append(n)
            if len(sent) == 3:
                server.stop()

        first = run(tmp_path / "run1", "model/", kill_after_three_parts)
        with pytest.raises(storage.UploadError) as err:
            first.close()
        assert str(tmp_path / "run1") in str(err.value) and "rerunning sends only what is missing" in str(err.value)
        assert (tmp_path / "run1" / "manifest.json").is_file()  # nothing computed is lost

        server.start()
        second = run(tmp_path / "run2", "model/")
        second.close()
        total = sum(p.stat().st_size for p in (tmp_path / "run2").iterdir())
        assert 0 < second.bytes_sent <= total - 3 * (5 << 20)
        assert "resumed" in {t.action for t in second.transfers}

        clean = run(tmp_path / "run3", "clean/")
        clean.close()
        resumed, reference = objects(server, bucket, "model/"), objects(server, bucket, "clean/")
        assert {k.removeprefix("model/") for k in resumed} == {k.removeprefix("clean/") for k in reference}
        store = storage.S3Store(cfg)
        for key in resumed:
            if not key.endswith("manifest.json"):  # its creation time differs
                assert store.head(bucket, key)[:2] == store.head(bucket, "clean/" + key.removeprefix("model/"))[:2]
        got = storage.fetch_model(f"s3://{bucket}/model/", tmp_path / "cache", store)  # sha256-checked download
        assert (got / "model-00001-of-00001.safetensors").read_bytes() == \
            (tmp_path / "run3" / "model-00001-of-00001.safetensors").read_bytes()
    finally:
        server.stop()


def test_rerun_of_a_finished_upload_sends_nothing(tiny_model_factory, bucket, tmp_path):
    src = tiny_model_factory("llama")
    write_model(src, tmp_path / "out", "dense")
    first = storage.upload_folder(tmp_path / "out", f"s3://{bucket}/m")
    again = storage.upload_folder(tmp_path / "out", f"s3://{bucket}/m")
    assert first.bytes_sent > 0 and again.bytes_sent == 0
    assert {t.action for t in again.transfers} == {"skipped"}


def test_fetch_model_plain_folder_and_cache(tiny_model_factory, bucket, tmp_path):
    src = tiny_model_factory("llama")
    storage.upload_folder(src, f"s3://{bucket}/base")  # a Hugging Face folder with no manifest
    got = storage.fetch_model(f"s3://{bucket}/base/", tmp_path / "cache")
    for f in src.iterdir():
        assert (got / f.name).read_bytes() == f.read_bytes()
    stamp = (got / "model.safetensors").stat().st_mtime_ns
    storage.fetch_model(f"s3://{bucket}/base", tmp_path / "cache")
    assert (got / "model.safetensors").stat().st_mtime_ns == stamp  # not fetched again


def test_fetch_data_and_missing_objects(bucket, tmp_path):
    (tmp_path / "cal.txt").write_text("hello world\n")
    storage.upload_folder(tmp_path, f"s3://{bucket}/data")
    assert storage.fetch_data(f"s3://{bucket}/data/cal.txt", tmp_path / "c").read_text() == "hello world\n"
    with pytest.raises(storage.ObjectNotFound, match=f"s3://{bucket}/data/nope.txt: no such object"):
        storage.fetch_data(f"s3://{bucket}/data/nope.txt", tmp_path / "c")
    with pytest.raises(storage.ObjectNotFound, match="no objects under this prefix"):
        storage.fetch_model(f"s3://{bucket}/nothing/", tmp_path / "c")


def test_corrupt_object_is_refused_naming_it(tiny_model_factory, s3_env, bucket, tmp_path):
    write_model(tiny_model_factory("llama"), tmp_path / "out", "compressed", prune=True)
    storage.upload_folder(tmp_path / "out", f"s3://{bucket}/c")
    client = Minio(f"127.0.0.1:{s3_env.port}", ACCESS_KEY, SECRET_KEY, secure=False)
    import io

    data = bytearray((tmp_path / "out" / "config.json").read_bytes())
    data[5] ^= 1
    client.put_object(bucket, "c/config.json", io.BytesIO(bytes(data)), len(data))
    with pytest.raises(storage.IntegrityError, match=f"s3://{bucket}/c/config.json: sha256"):
        storage.fetch_model(f"s3://{bucket}/c", tmp_path / "cache")


def _secrets_absent(*texts: str) -> None:
    for text in texts:
        assert SECRET_KEY not in text and ACCESS_KEY not in text


@pytest.mark.parametrize("case,kind,message", [
    ("credentials", storage.AccessDenied, "access denied"),
    ("bucket", storage.BucketNotFound, "bucket 'no-such-bucket' does not exist"),
    ("endpoint", storage.EndpointUnreachable, "cannot reach http://127.0.0.1:1 (connection refused)"),
])
def test_clear_errors_without_secrets(nanio_server, tmp_path, capsys, caplog, case, kind, message):
    env = nanio_server.env()
    bucket = nanio_server.make_bucket()
    if case == "credentials":
        env["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY[::-1]
    if case == "bucket":
        bucket = "no-such-bucket"
    if case == "endpoint":
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:1"
    store = storage.S3Store(storage.S3Config.from_env(env), retries=1, backoff=0.01)
    with pytest.raises(kind) as err:
        storage.Uploader(f"s3://{bucket}/out/", tmp_path, store)
    assert message in str(err.value)
    out = capsys.readouterr()
    _secrets_absent(str(err.value), repr(err.value), caplog.text, out.out, out.err, repr(store.config))

    code = (f"from prune_job import storage; storage.fetch_data('s3://{bucket}/x.txt', {str(tmp_path)!r}, "
            "storage.S3Store(retries=1, backoff=0.01))")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and message in proc.stderr
    _secrets_absent(proc.stdout, proc.stderr)


def test_endpoint_from_environment():
    cfg = storage.S3Config.from_env({"AWS_ENDPOINT_URL": "https://minio.example:9000", "AWS_REGION": "eu-west-1"})
    assert (cfg.endpoint, cfg.secure, cfg.region) == ("minio.example:9000", True, "eu-west-1")
    assert storage.S3Config.from_env({}).endpoint == "s3.amazonaws.com"
    with pytest.raises(storage.StorageError, match="AWS_ENDPOINT_URL"):
        storage.S3Config.from_env({"AWS_ENDPOINT_URL": "ftp://x/y"})
    assert storage.parse_s3_uri("s3://b/p/q/") == ("b", "p/q")


def test_resumed_upload_started_for_another_version_records_our_sha256(s3_env, bucket, tmp_path):
    """Parts are reused only when their MD5 matches; the sha256 recorded must still be this file's."""
    store = storage.S3Store(part_size=5 << 20, workers=2)
    data = os.urandom(12 << 20)
    old_version = data[: 10 << 20] + os.urandom(2 << 20)  # same first two parts, different tail
    headers = {"Content-Type": "application/octet-stream", storage.SHA_META: "0" * 64}
    upload_id = store.client._create_multipart_upload(bucket, "f.bin", headers)
    store.client._upload_part(bucket, "f.bin", old_version[: 5 << 20], None, upload_id, 1)
    (tmp_path / "f.bin").write_bytes(data)
    transfer = storage.S3Store(part_size=5 << 20).upload(tmp_path / "f.bin", bucket, "f.bin")
    size, sha, _ = store.head(bucket, "f.bin")
    assert size == len(data) and sha == hashlib.sha256(data).hexdigest()
    assert transfer.action == "sent"
    got = store.download(bucket, "f.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data and got.size == len(data)

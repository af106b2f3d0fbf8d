"""The worker's KubernetesReporter: throttled progress, results at once, catch-up
after an outage, never raising into the pipeline; and for real, over TLS with a
pod's in-cluster identity against the emulator."""
from __future__ import annotations

import threading
import time

import pytest

from operator_harness import pod_identity, wait_for
from kubeutil import create_prunejob, prunejob, requests_with_token, status_of
from prune_job.status.kubernetes import KubernetesReporter, progress_document
from prune_job.spec import DenseBaseline, Progress, Results


class FlakySender:
    """Records patches; fails while `down` is set."""

    def __init__(self):
        self.patches: list[dict] = []
        self.down = threading.Event()
        self.attempts = 0

    def __call__(self, patch):
        self.attempts += 1
        if self.down.is_set():
            raise ConnectionError("connection refused")
        self.patches.append(patch)


def progress(done, total=30, stage="pruning"):
    return Progress(stage=stage, blocks_done=done, blocks_total=total, eta_seconds=float(total - done))


def test_progress_is_throttled_and_the_newest_state_wins():
    sender = FlakySender()
    reporter = KubernetesReporter("pj", "ns", min_interval=0.3, sender=sender)
    started = time.monotonic()
    for done in range(1, 31):
        reporter.progress(progress(done))
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    reporter.close()
    assert len(sender.patches) <= elapsed / 0.3 + 2, len(sender.patches)
    last = sender.patches[-1]["status"]["progress"]
    assert last["blocksDone"] == 30 and last["blocks"] == "30/30"


def test_results_are_sent_at_once_and_close_flushes():
    sender = FlakySender()
    reporter = KubernetesReporter("pj", "ns", min_interval=60, sender=sender)
    reporter.progress(progress(1))
    reporter.progress(progress(2))  # throttled: waits up to a minute...
    reporter.results(Results(sparsity=0.5))  # ...but results go at once, with the newest progress
    wait_for(lambda: any("results" in p["status"] for p in sender.patches), timeout=5, what="results sent")
    reporter.close()
    sent = {}
    for patch in sender.patches:
        sent.update(patch["status"])
    assert sent["results"]["sparsity"] == 0.5 and sent["progress"]["blocksDone"] == 2


def test_a_measured_dense_baseline_is_sent_at_once():
    sender = FlakySender()
    reporter = KubernetesReporter("pj", "ns", min_interval=60, sender=sender)
    reporter.progress(progress(1))
    reporter.dense_baseline(DenseBaseline(perplexity=21.5, nll=3.07, source="PruneJob pj"))  # a sweep waits on it
    wait_for(lambda: any("denseBaseline" in p["status"] for p in sender.patches), timeout=5, what="baseline sent")
    reporter.close()
    sent = next(p["status"]["denseBaseline"] for p in sender.patches if "denseBaseline" in p["status"])
    assert sent == {"perplexity": 21.5, "nll": 3.07, "source": "PruneJob pj"}


def test_an_unreachable_api_server_never_stops_the_pipeline_and_is_caught_up():
    sender = FlakySender()
    sender.down.set()
    reporter = KubernetesReporter("pj", "ns", min_interval=0.05, retry_interval=0.05, sender=sender)
    started = time.monotonic()
    for done in range(1, 21):
        reporter.progress(progress(done))  # returns at once although every send fails
    assert time.monotonic() - started < 0.5
    wait_for(lambda: sender.attempts >= 3, timeout=5, what="retries")
    reporter.results(Results(sparsity=0.5))
    sender.down.clear()  # the API server is back
    wait_for(lambda: sender.patches, timeout=5, what="catch-up")
    reporter.close()
    sent = {}
    for patch in sender.patches:
        sent.update(patch["status"])
    assert sent["progress"]["blocksDone"] == 20 and sent["results"]["sparsity"] == 0.5
    assert reporter.failures >= 3


def test_close_gives_up_after_its_timeout_without_raising():
    sender = FlakySender()
    sender.down.set()
    reporter = KubernetesReporter("pj", "ns", min_interval=0.05, close_timeout=0.5, sender=sender)
    reporter.results(Results(sparsity=0.5))
    started = time.monotonic()
    reporter.close()
    assert time.monotonic() - started < 3
    reporter.progress(progress(1))  # after close: ignored, no error


def test_no_serviceaccount_means_a_warning_not_an_error(tmp_path, caplog):
    reporter = KubernetesReporter("pj", "ns", environ={"PRUNE_JOB_SERVICEACCOUNT_DIR": str(tmp_path)})
    reporter.progress(progress(1))
    reporter.results(Results())
    reporter.close()
    assert "status reporting to Kubernetes is off" in caplog.text


def test_progress_document_removes_stale_eta():
    assert progress_document(Progress(stage="done", blocks_done=3, blocks_total=3))["etaSeconds"] is None


def test_in_cluster_over_tls_with_the_pod_identity(tls_api_server, tls_files, tmp_path, kube_tls):
    kube, namespace = kube_tls
    create_prunejob(kube, prunejob("reported", namespace))
    env = pod_identity(tmp_path / "sa", tls_api_server, tls_files[0], token="pod-token-123")
    reporter = KubernetesReporter("reported", namespace, min_interval=0.05, environ=env)
    reporter.progress(progress(7))
    reporter.results(Results(sparsity=0.5))
    reporter.close()
    status = status_of(kube, namespace, "reported")
    assert status["progress"]["blocks"] == "7/30" and status["results"]["sparsity"] == 0.5
    sent = requests_with_token(tls_api_server.requests(), "pod-token-123")
    assert sent and all(r.method == "PATCH" and r.url.path.endswith("/prunejobs/reported/status") for r in sent)


@pytest.fixture
def kube_tls(tls_api_server):
    from operator_harness import configuration
    from prune_operator.kube import Kube

    client = Kube(configuration(tls_api_server.url))
    namespace = "reporter"
    client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    yield client, namespace
    client.close()

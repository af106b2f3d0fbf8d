"""One reconcile of a PruneJob against a recording stand-in for the API: the spec is parsed once."""
from __future__ import annotations

import logging
import threading

import kopf
import pytest

from prune_job import spec as api
from prune_operator import resync
from prune_operator.config import OperatorConfig
from prune_operator.kube import ApiError
from prune_operator.prunejob import handlers

SPEC = {"model": {"uri": "builtin:smollm2-135m"}, "output": {"uri": "s3://b/p/"}, "resources": {"memory": "16Gi"}}
LOG = logging.getLogger("test")


class RecordingKube:
    """The PruneJob exists, nothing else does yet; every create succeeds; writes are recorded."""

    def __init__(self, spec):
        self.prunejob = {"apiVersion": api.API_VERSION, "kind": api.KIND, "spec": spec,
                         "metadata": {"name": "pj", "namespace": "ns", "uid": "u1", "generation": 1,
                                      "resourceVersion": "7"}}
        self.created, self.patched, self.posted = [], [], []

    def get_or_none(self, path):
        return self.prunejob if path.endswith("/prunejobs/pj") else None

    def get(self, path, query=None):
        return {"items": []}

    def create(self, manifest):
        self.created.append(manifest["kind"])
        return True

    def merge_patch(self, path, patch):
        self.patched.append((path, patch))
        return {}

    def request(self, method, path, body=None, **_):
        self.posted.append(body)
        return {}


@pytest.fixture
def parses(monkeypatch):
    calls = []
    real = api.parse_spec

    def counting(raw):
        calls.append(raw)
        return real(raw)

    monkeypatch.setattr(api, "parse_spec", counting)
    return calls


def test_a_reconcile_parses_the_spec_once(parses):
    kube = RecordingKube(SPEC)
    handlers.reconcile(kube, OperatorConfig(), "ns", "pj", LOG)
    assert len(parses) == 1
    assert kube.created == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]
    [(path, patch)] = kube.patched
    assert path.endswith("/prunejobs/pj/status") and patch["metadata"] == {"resourceVersion": "7"}
    assert patch["status"]["phase"] == "Pending"
    assert [(e["involvedObject"]["kind"], e["reason"]) for e in kube.posted] == [("PruneJob", "Accepted")]


def test_an_invalid_spec_is_parsed_once_and_refused_permanently(parses):
    kube = RecordingKube(dict(SPEC, pruning={"pattern": "4:2"}))
    with pytest.raises(kopf.PermanentError, match="spec.pruning.pattern"):
        handlers.reconcile(kube, OperatorConfig(), "ns", "pj", LOG)
    assert len(parses) == 1 and kube.created == []
    assert kube.patched[0][1]["status"]["phase"] == "Failed"


def test_a_resync_round_outlives_one_objects_trouble_and_stops_when_asked():
    synced = []

    def sync(memo, namespace, name, logger):
        synced.append(name)
        if name == "a":
            raise ApiError(503, "unavailable")

    every = resync.Resync(name="test-resync", index="i", interval=lambda config: 1.0, due=list, sync=sync)
    every.sync_all([("ns", "a"), ("ns", "b")], None, LOG, threading.Event())
    assert synced == ["a", "b"]
    stopped = threading.Event()
    stopped.set()
    every.sync_all([("ns", "c")], None, LOG, stopped)
    assert synced == ["a", "b"]

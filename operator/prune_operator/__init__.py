"""prune_operator: the Kopf controller that runs each PruneJob as a Kubernetes Job
and each PruneSchedule as a CronJob of PruneJobs.

Layout: main (runs Kopf), kube (the API client), config, metrics, rbac (every
permission, one list), crdgen and chartfiles (generated CRDs and chart files),
conditions (times, conditions and Events, as both controllers write them),
resync (the periodic resync of both); one package per controller, prunejob/
(handlers, status, builders) and schedule/ (handlers, plan), whose handlers
are thin over pure modules.
"""
from __future__ import annotations

__version__ = "0.1.0"

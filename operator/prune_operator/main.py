"""`prune-operator`: run the controller.

    prune-operator [--namespace NS ...] [--metrics-port 9090] [--liveness http://0.0.0.0:8080/healthz]

One active replica: the Deployment runs one pod with the Recreate strategy and
the operator runs standalone (no Kopf peering), so two operators never act on
the same PruneJob. With `--peering NAME` several replicas may run and Kopf's
peering (the KopfPeering CRDs must be installed) keeps one active.

Each controller (prunejob/, schedule/, sweep/) has `register(registry)` in its
handlers module; a new one is added to CONTROLLERS.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any, Collection, Optional

import kopf
from kubernetes.client import Configuration

from prune_job import spec as api
from prune_operator.config import OperatorConfig
from prune_operator.kube import Kube, connection_info, load_configuration
from prune_operator.prunejob import handlers as prunejob_handlers
from prune_operator.schedule import handlers as schedule_handlers
from prune_operator.sweep import handlers as sweep_handlers

CONTROLLERS = (prunejob_handlers, schedule_handlers, sweep_handlers)


def build_registry(configuration: Configuration) -> kopf.OperatorRegistry:
    """Every handler of the operator: login, then each controller's."""
    registry = kopf.OperatorRegistry()

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(**connection_info(configuration))

    kopf.on.login(id="login", registry=registry)(login)
    for controller in CONTROLLERS:
        controller.register(registry)
    return registry


def build_settings(peering: Optional[str] = None) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Kopf's own bookkeeping goes to annotations under our group, never into status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # Events for transitions come from conditions.post_events; Kopf posts only trouble.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 16
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    if peering:
        settings.peering.name = peering
        settings.peering.mandatory = True
    return settings


def build_memo(configuration: Configuration, config: OperatorConfig) -> kopf.Memo:
    return kopf.Memo(config=config, kube=Kube(configuration))


async def run(
    configuration: Configuration,
    config: OperatorConfig,
    *,
    namespaces: Collection[str] = (),
    peering: Optional[str] = None,
    liveness: Optional[str] = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    """Run the operator until `stop_flag` is set (or forever)."""
    memo = build_memo(configuration, config)
    try:
        await kopf.operator(
            registry=build_registry(configuration),
            settings=build_settings(peering),
            memo=memo,
            standalone=peering is None,
            peering_name=peering,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        memo.kube.close()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="prune-operator", description="Runs PruneJobs as Kubernetes Jobs.")
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="watch only this namespace (repeatable; glob patterns allowed); default: all")
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: off)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness probe URL to serve")
    parser.add_argument("--peering", default=None, help="Kopf peering name, for several replicas (one active)")
    parser.add_argument("--kubeconfig", default=None, help="outside a cluster: the kubeconfig to use")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    configuration = load_configuration(args.kubeconfig)
    asyncio.run(run(configuration, OperatorConfig.from_env(), namespaces=args.namespace, peering=args.peering,
                    liveness=args.liveness or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

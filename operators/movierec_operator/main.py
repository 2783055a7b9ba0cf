"""`movierec-operator`: run the IndexBuild operator (Kopf) with its liveness endpoint on :8080/healthz."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from movierec.settings import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="movierec-operator",
        description="Watch IndexBuild resources (movierec.io/v1alpha1) and run each generation as an index build "
                    "Job: `movierec index build` into the index volume; the result (version, recall@10, seconds) "
                    "lands in the IndexBuild's status. Reads the cluster from the pod's service account, else "
                    "$KUBECONFIG. Environment: OPERATOR_IMAGE, OPERATOR_MODEL_CLAIM, OPERATOR_INDEX_CLAIM, "
                    "OPERATOR_NAMESPACE, OPERATOR_PENDING_SECONDS, OPERATOR_HEALTH_PORT, QDRANT_HOST.",
    )
    parser.add_argument("--namespace", "-n", default=settings.operator_namespace,
                        help="watch this namespace only (default: OPERATOR_NAMESPACE, else every namespace)")
    parser.add_argument("--health-port", type=int, default=settings.operator_health_port,
                        help="port of the liveness endpoint /healthz (default: %(default)s)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import kubernetes

    from movierec_operator import handlers  # registers the handlers

    try:
        handlers.load_kube_config()  # fail here, in one line, rather than in Kopf's retry loop
    except (kubernetes.config.ConfigException, OSError) as exc:
        sys.stderr.write(f"error: no cluster to watch: not in a pod, and no usable kubeconfig ({exc})\n")
        raise SystemExit(2) from None
    kopf.run(
        standalone=True,  # one replica (Recreate): no peering resources needed
        clusterwide=args.namespace is None,
        namespaces=[args.namespace] if args.namespace else (),
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
    )


if __name__ == "__main__":
    main()

"""`guardrail serve --backend ray`: run the sidecar as a Ray Serve application.

Joins the Ray cluster at `--ray-address`, or starts a local Ray instance, then serves the same
HTTP API on `--host/--port` through Ray Serve's proxy until interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from guardrail.server.settings import Settings

log = logging.getLogger("guardrail.server")


def serve_on_ray(args: argparse.Namespace, settings: Settings) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        log.error("the ray backend needs Ray Serve: pip install 'guardrail[ray]'")
        return 2
    from guardrail.server.ray_app import APP_NAME, build_app

    gpus = args.replica_gpus
    if gpus is None:
        gpus = 1.0 if settings.device.startswith("cuda") else 0.0
    if args.ray_address:
        ray.init(address=args.ray_address)
    else:  # a local instance sized for the replicas asked for, plus the ingress
        cpus = max(os.cpu_count() or 1, int(args.replica_cpus * args.replicas + 1))
        ray.init(num_cpus=cpus, include_dashboard=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    app = build_app(settings, replicas=args.replicas, min_replicas=args.min_replicas,
                    max_replicas=args.max_replicas, replica_cpus=args.replica_cpus, replica_gpus=gpus)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    log.info("serving %d replica(s) on http://%s:%d", args.replicas, settings.host, settings.port)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
        if not args.ray_address:
            serve.shutdown()
            ray.shutdown()
    return 0

"""`python -m inference`: run the inference service (configured by CHATLOG_* env).

Default: start a local Ray, deploy the Serve app (replicas from settings) and wait.
`--no-ray`: run one ReplicaWorker in this process (development, the crash tests, which
SIGKILL it, and a model served apart from the Serve app); `--model` picks which of the
served models (default: the first); with CHATLOG_METRICS_PORT its metrics are served on
that port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from inference.settings import InferenceSettings

log = logging.getLogger("inference")


async def _run_worker(settings: InferenceSettings) -> None:
    from inference.bootstrap import build_engine
    from inference.worker import ReplicaWorker

    engine = await asyncio.to_thread(build_engine, settings)
    worker = ReplicaWorker(settings, engine)
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=worker.metrics.registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    log.info("worker %s started", worker.replica_id)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait([runner, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
    await worker.stop()
    if runner.done() and not runner.cancelled() and runner.exception():
        raise runner.exception()  # type: ignore[misc]


def _run_serve(settings: InferenceSettings, port: int) -> None:
    import ray
    from ray import serve

    from inference.deployment import build_app

    if settings.ray_address:  # an existing cluster: its nodes have their own object stores
        ray.init(address=settings.ray_address, log_to_driver=True)
    else:
        ray.init(
            include_dashboard=False,
            log_to_driver=True,
            object_store_memory=settings.ray_object_store_bytes,  # README's memory budget
        )
    # ray.init installed a SIGTERM handler that raises SystemExit; SIGINT raises
    # KeyboardInterrupt: whenever either comes, the app is shut down, then Ray.
    try:
        # One HTTP proxy, on the head: by default Serve runs one on every node with a
        # replica, and two nodes of one machine would both bind this port.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(), name="inference", route_prefix=settings.serve_route, blocking=False)
        log.info(
            "inference app deployed: %s",
            ", ".join(f"{s.model_id} x{s.replicas} ({s.engine})" for s in settings.served()),
        )
        while True:
            signal.pause()
    except (SystemExit, KeyboardInterrupt):
        log.info("stopping the inference app")
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        log.info("ray stopped")
        # Ray's native handlers abort during interpreter teardown after a SIGTERM
        # (exit 134, seen with ray 2.60): everything is shut down, so leave now.
        logging.shutdown()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__)
    parser.add_argument("--no-ray", action="store_true", help="one worker in this process")
    parser.add_argument("--http-port", type=int, help="Serve HTTP port (CHATLOG_SERVE_HTTP_PORT)")
    parser.add_argument("--model", help="--no-ray: the served model to run (default: the first)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = InferenceSettings()
    if args.no_ray:
        asyncio.run(_run_worker(settings.for_model(args.model or settings.model_id)))
    else:
        _run_serve(settings, args.http_port or settings.serve_http_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

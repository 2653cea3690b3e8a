"""``cic-fast serve``: run a collaborative-inference server for one model.

`cic_fast.cli` calls :func:`add_serve_parser` on its subparsers; the handler returns
the exit code.  The server prints ``listening on HOST:PORT`` (flushed) once it
accepts connections and serves until SIGINT or SIGTERM; then it drains (refuses new
connections and requests, finishes the requests in flight within ``--drain-s``)
and exits 0.

``--backend http`` serves the HTTP form of the protocol (docs/protocol.md) with the
standard library and prints ``listening on http://HOST:PORT/PATH``; ``--backend
ray`` runs the tails on Ray Serve replicas (docs/scaleout.md) and prints the same
once every replica is ready.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from cic_fast.cli.common import add_model_args, example_inputs, load_model_args, trace_model

__all__ = ["add_serve_parser"]


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve MODEL|--model MODEL [--weights FILE] [--input-shape S] [--host H] ...``."""
    p = subparsers.add_parser(
        "serve",
        help="serve the tail of any split of a model to devices (see docs/protocol.md)",
        description="Load MODEL (and --weights), trace it at --input-shape and serve the "
        "tails of its partitions over TCP. Prints 'listening on HOST:PORT' when ready.",
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    p.add_argument(
        "--max-clients", type=int, default=64, help="authenticated clients at once (default 64)"
    )
    p.add_argument("--cache-size", type=int, default=16, help="tails kept built (default 16)")
    p.add_argument(
        "--max-frame-mb", type=float, default=64.0, help="largest frame accepted, MiB (default 64)"
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=30.0,
        help="close a connection idle this long; also the deadline of a whole request frame "
        "(default 30)",
    )
    p.add_argument(
        "--handshake-timeout-s",
        type=float,
        default=5.0,
        help="deadline of a new connection's handshake (default 5)",
    )
    p.add_argument(
        "--workers", type=int, help="requests computed at once (default: the usable cores)"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads per worker (default: cores // workers, at least 1)",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        help="requests that may wait for a worker before BUSY answers (default 16 x workers; "
        "ray: Ray's max_queued_requests, default 16 x replicas, -1 for no bound)",
    )
    p.add_argument(
        "--max-wait-s",
        type=float,
        default=0.5,
        help="answer BUSY at once when a request would wait longer than this for a worker "
        "(judged from the recent compute times; default 0.5)",
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=10.0,
        help="on SIGTERM or SIGINT, time requests in flight get to finish (default 10)",
    )
    p.add_argument(
        "--backend",
        choices=("tcp", "http", "ray"),
        default="tcp",
        help="tcp: the session protocol (default); http: the HTTP form, standard library; "
        "ray: the HTTP form on Ray Serve replicas (pip install 'cic_fast[ray]')",
    )
    p.add_argument(
        "--path",
        default=None,
        help="HTTP path of the requests (default /infer for http, /cic for ray)",
    )
    ray = p.add_argument_group("ray backend")
    ray.add_argument("--replicas", type=int, default=1, help="replicas (default 1)")
    ray.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="most requests per batch; requests of one partition run as one tail call "
        "(default 8; 1: no batching)",
    )
    ray.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="longest wait for a batch to fill (default 5)",
    )
    ray.add_argument(
        "--max-ongoing",
        type=int,
        help="requests a replica holds at once, the rest wait at Ray's proxy "
        "(Ray's max_ongoing_requests; default max(2 x max-batch, 8))",
    )
    ray.add_argument(
        "--ray-address",
        help="join this Ray cluster ('auto', 'ray://...'); default: start a local one",
    )
    ray.add_argument(
        "--ray-cpus",
        type=int,
        help="CPUs of the local cluster (default: the usable cores)",
    )
    ray.add_argument(
        "--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)"
    )
    p.set_defaults(func=_run_serve)
    return p


def _serve_until_stopped(banner: str, url: str, close: Callable[[], None]) -> int:
    """Print the banner and ``listening on URL``, wait for SIGTERM or SIGINT, close.

    The handlers are installed here, after the backend started (``ray.init``
    installs a SIGTERM handler of its own).
    """
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(banner, file=sys.stderr)
    print(f"listening on {url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        close()
    return 0


def _run_ray(args: argparse.Namespace, max_bytes: int) -> int:
    from cic_fast.cli.common import parse_shape

    try:
        from cic_fast.runtime import ray_serve
    except ImportError as e:
        raise ValueError(str(e)) from None
    shapes = tuple(parse_shape(s) for s in args.input_shape) if args.input_shape else None
    source = ray_serve.ModelSource(
        args.model, args.weights, shapes, input_dtype=args.input_dtype, seed=args.seed
    )
    options = ray_serve.ServeOptions(
        replicas=args.replicas,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        replica_cpus=args.replica_cpus,
        threads=args.threads or 1,
        cache_size=args.cache_size,
        max_frame_bytes=max_bytes,
        max_queued=args.queue_size,
        max_ongoing=args.max_ongoing,
    )
    url = ray_serve.deploy(
        source,
        options,
        host=args.host,
        port=args.port,
        route_prefix=args.path or "/cic",
        ray_address=args.ray_address,
        num_cpus=args.ray_cpus,
    )
    return _serve_until_stopped(
        f"{args.model}: {options.replicas} replicas, batches of <= {options.max_batch} "
        f"(wait <= {options.batch_wait_ms} ms)",
        url,
        lambda: ray_serve.shutdown(stop_ray=args.ray_address is None),
    )


def _run_serve(args: argparse.Namespace) -> int:
    from cic_fast.runtime.server import Server
    from cic_fast.runtime.wire import Limits

    max_bytes = int(args.max_frame_mb * (1 << 20))
    if max_bytes < 1:
        raise ValueError("--max-frame-mb must be positive")
    if not args.drain_s >= 0:
        raise ValueError("--drain-s must be >= 0")
    if args.backend == "ray":
        return _run_ray(args, max_bytes)
    model = load_model_args(args)
    inputs = example_inputs(args)
    graph = trace_model(model, inputs)
    server = Server(
        model,
        inputs,
        host=args.host,
        port=args.port,
        limits=Limits(max_frame_bytes=max_bytes, max_tensor_bytes=max_bytes),
        cache_size=args.cache_size,
        max_clients=args.max_clients,
        timeout_s=args.timeout_s,
        graph=graph,
        workers=args.workers,
        threads=args.threads,
        queue_size=args.queue_size,
        max_wait_s=args.max_wait_s,
        handshake_timeout_s=args.handshake_timeout_s,
    )
    if args.backend == "http":
        return _serve_http(args, server)
    server.start()

    def _stop(signum: int, frame: Any) -> None:
        server.stop()  # serve_forever then drains and returns

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    host, port = server.address
    print(
        f"{args.model}: {graph.n_nodes} nodes, fingerprint {server.fingerprint[:16]}, "
        f"{server.workers} workers x {server.threads} torch threads",
        file=sys.stderr,
    )
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever(drain_s=args.drain_s)
    return 0


def _serve_http(args: argparse.Namespace, server: Any) -> int:
    """The HTTP form on the standard library's server, until SIGTERM or SIGINT."""
    from cic_fast.runtime.http import HttpServer

    httpd = HttpServer(
        server, args.host, args.port, path=args.path or "/infer", max_connections=args.max_clients
    ).start()
    return _serve_until_stopped(
        f"{args.model}: fingerprint {server.fingerprint[:16]}, {server.workers} workers x "
        f"{server.threads} torch threads",
        httpd.url,
        httpd.close,
    )

"""``cic-fast serve``: run a collaborative-inference server for one model.

`cic_fast.cli` calls :func:`add_serve_parser` on its subparsers; the handler returns
the exit code.  The server prints ``listening on HOST:PORT`` (flushed) once it
accepts connections and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from cic_fast.cli.common import add_model_args, example_inputs, trace_model

__all__ = ["add_serve_parser"]


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve MODEL [--weights FILE] [--input-shape S] [--host H] [--port P]``."""
    p = subparsers.add_parser(
        "serve",
        help="serve the tail of any split of a model to devices (see docs/protocol.md)",
        description="Load MODEL (and --weights), trace it at --input-shape and serve the "
        "tails of its partitions over TCP. Prints 'listening on HOST:PORT' when ready.",
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    p.add_argument("--max-clients", type=int, default=64, help="concurrent clients (default 64)")
    p.add_argument("--cache-size", type=int, default=16, help="tails kept built (default 16)")
    p.add_argument(
        "--max-frame-mb", type=float, default=64.0, help="largest frame accepted, MiB (default 64)"
    )
    p.add_argument(
        "--timeout-s", type=float, default=30.0, help="per-connection socket timeout (default 30)"
    )
    p.add_argument("--threads", type=int, help="torch threads")
    p.set_defaults(func=_run_serve)
    return p


def _run_serve(args: argparse.Namespace) -> int:
    import torch

    from cic_fast.frontend.models import load_model
    from cic_fast.runtime.server import Server
    from cic_fast.runtime.wire import Limits

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, weights=args.weights)
    inputs = example_inputs(args)
    graph = trace_model(model, inputs)
    max_bytes = int(args.max_frame_mb * (1 << 20))
    if max_bytes < 1:
        raise ValueError("--max-frame-mb must be positive")
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
    ).start()

    def _stop(signum: int, frame: Any) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    host, port = server.address
    print(
        f"{args.model}: {graph.n_nodes} nodes, fingerprint {server.fingerprint[:16]}",
        file=sys.stderr,
    )
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.close()
    return 0

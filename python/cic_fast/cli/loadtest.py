"""``cic-fast loadtest``: simulated devices that load a server with precomputed requests.

The model is loaded and traced here once (as ``cic-fast serve`` does, so the
fingerprints agree), the head of ``--partition`` is run once on the example input,
and every simulated device then sends that same request (the boundary tensors) again
and again, each waiting for its answer before it sends the next (a closed loop): the
load is the server's alone, no device computes anything. A device answered BUSY
backs off as a Client does (``--retry-s``): its requests meanwhile would run on the
device, so the server is not hit by a loop of refusals. One event loop drives all
devices. The first answer is checked against the model's output computed here.

Bounded in time (``--duration-s``) and in requests (``--max-requests``); a progress
line goes to stderr once a second; the report (requests/s, p50/p95/p99 latency,
errors by code) goes to stdout, and with ``--json FILE`` into a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cic_fast.cli.common import add_model_args, example_inputs, load_model_args, trace_model

__all__ = ["add_loadtest_parser", "run_load"]

# The longest HTTP head the load generator reads.
_MAX_HEAD = 16384
# The Client's default retry_max_s: the longest back-off.
_RETRY_MAX_S = 60.0


def add_loadtest_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``loadtest MODEL --address A --devices N --duration-s D [--partition P]``."""
    p = subparsers.add_parser(
        "loadtest",
        help="load a server with simulated devices; report requests/s and latency percentiles",
        description="Simulated devices send the precomputed request of one partition of "
        "MODEL to a server (TCP or HTTP), each waiting for its answer before the next; "
        "reports requests/s and p50/p95/p99 latency.",
    )
    add_model_args(p)
    p.add_argument(
        "--address",
        required=True,
        help="the server: HOST:PORT (cic-fast serve) or http://HOST:PORT/PATH "
        "(--backend http or ray)",
    )
    p.add_argument("--devices", type=int, default=16, help="simulated devices (default 16)")
    p.add_argument("--duration-s", type=float, default=10.0, help="how long to load (default 10)")
    p.add_argument(
        "--max-requests",
        type=int,
        default=1_000_000,
        help="stop after this many answers (default 1000000)",
    )
    p.add_argument(
        "--partition",
        default="server",
        help="'server': everything but the inputs runs on the server (default); or a "
        "layer-graph node name: the device runs it and everything it depends on",
    )
    p.add_argument(
        "--timeout-s", type=float, default=10.0, help="deadline of one request (default 10)"
    )
    p.add_argument(
        "--retry-s",
        type=float,
        default=1.0,
        help="after a BUSY answer or a failure a device leaves the server alone for this "
        "long, doubling with each failure in a row, with jitter, as cic_fast.Client does "
        "(its requests meanwhile run on the device; default 1, the Client's retry_s; "
        "0: resend at once)",
    )
    p.add_argument("--json", dest="json_path", metavar="FILE", help="also write the report here")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_run_loadtest)
    return p


@dataclass
class _Load:
    """What the devices share: the request, the bounds and the results."""

    endpoint: tuple[str, int]
    http: Any  # HttpTarget or None
    hello: bytes
    request: bytes
    end: float
    max_requests: int
    timeout_s: float
    retry_s: float = 1.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_answer: bytes | None = None
    done: bool = False


class _ProxyPage(Exception):
    """A proxy's own error page (not a frame): its error code, and whether the
    connection can carry the next request (the page was read whole)."""

    def __init__(self, code: int, *, keep: bool) -> None:
        super().__init__(code)
        self.code = code
        self.keep = keep


async def _answer(reader: asyncio.StreamReader, load: _Load) -> tuple[int, bytes]:
    """One answer: (frame type, payload); over HTTP the frame is the body."""
    from cic_fast.runtime import http as H
    from cic_fast.runtime import wire as W

    if load.http is not None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEAD:
            raise ValueError("HTTP head too long")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        n = int(headers.get("content-length", "-1"))
        if n < W.HEADER.size or headers.get("content-type", "") != H.CONTENT_TYPE:
            body = await reader.readexactly(max(n, 0)) if 0 <= n <= 4096 else b""
            status = lines[0].split(" ")[1] if " " in lines[0] else "?"
            if status.isdigit() and int(status) >= 500:  # a proxy's page (503: BUSY)
                raise _ProxyPage(H.page_error_code(int(status)), keep=0 <= n <= 4096)
            raise ValueError(f"HTTP {status} {body[:60]!r}")
        body = await reader.readexactly(n)
        kind, length = W.parse_header(body[: W.HEADER.size], W.Limits())
        if length != n - W.HEADER.size:
            raise ValueError("HTTP body is not one frame")
        return int(kind), body[W.HEADER.size :]
    head = await reader.readexactly(W.HEADER.size)
    kind, length = W.parse_header(head, W.Limits())
    return int(kind), await reader.readexactly(length)


async def _connect(load: _Load) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    from cic_fast.runtime import messages as M
    from cic_fast.runtime import wire as W

    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(*load.endpoint, limit=1 << 20), load.timeout_s
    )
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if load.http is None:  # the session's handshake
        writer.write(load.hello)
        kind, payload = await asyncio.wait_for(_answer(reader, load), load.timeout_s)
        if kind != W.MsgType.HELLO_OK:
            code = M.decode_error(payload, W.Limits()).code if kind == W.MsgType.ERROR else kind
            writer.close()
            raise ValueError(f"handshake refused ({code})")
    return reader, writer


async def _device(load: _Load) -> None:
    """One simulated device: request, answer, request, ... until the bounds."""
    from cic_fast.runtime import messages as M
    from cic_fast.runtime import wire as W
    from cic_fast.runtime.client import backoff_s

    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    rng = random.Random()
    failures = 0
    while not load.done and time.monotonic() < load.end:
        if failures:
            # the Client's back-off: without it a BUSY server is hit again at once,
            # and on a small machine the refusals alone take the cores
            wait = backoff_s(failures, load.retry_s, _RETRY_MAX_S, rng)
            await asyncio.sleep(max(0.0, min(wait, load.end - time.monotonic())))
            if time.monotonic() >= load.end:
                break
        failed = True
        try:
            if writer is None:
                reader, writer = await _connect(load)
            assert reader is not None
            t = time.perf_counter()
            writer.write(load.request)
            kind, payload = await asyncio.wait_for(_answer(reader, load), load.timeout_s)
            took = time.perf_counter() - t
            if kind == W.MsgType.RESULT:
                failed = False
                if load.first_answer is None:
                    load.first_answer = payload
                if time.monotonic() <= load.end and not load.done:
                    load.latencies.append(took)
                    if len(load.latencies) >= load.max_requests:
                        load.done = True
            elif kind == W.MsgType.ERROR:
                code = M.decode_error(payload, W.Limits()).code
                load.errors[W.ErrorCode(code).name if code in set(W.ErrorCode) else str(code)] += 1
            else:
                load.errors[f"frame {kind}"] += 1
        except _ProxyPage as e:
            load.errors[W.ErrorCode(e.code).name] += 1
            if not e.keep and writer is not None:
                writer.close()
                writer = reader = None
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
            load.errors[type(e).__name__ if not isinstance(e, ValueError) else str(e)[:40]] += 1
            if writer is not None:
                writer.close()
            writer = reader = None
            if not load.retry_s > 0:
                await asyncio.sleep(0.05)  # then reconnect (bounded by the end)
        failures = failures + 1 if failed and load.retry_s > 0 else 0
    if writer is not None:
        writer.close()


async def _progress(load: _Load, start: float, duration_s: float, quiet: bool) -> None:
    while not load.done and time.monotonic() < load.end:
        await asyncio.sleep(1.0)
        if quiet:
            continue
        t = time.monotonic() - start
        n = len(load.latencies)
        print(
            f"\r  {min(t, duration_s):6.1f}/{duration_s:g} s  {n} answers  "
            f"{n / max(t, 1e-9):7.1f}/s  errors {sum(load.errors.values())}  ",
            end="",
            file=sys.stderr,
            flush=True,
        )
    if not quiet:
        print(file=sys.stderr)


async def _run(load: _Load, devices: int, duration_s: float, quiet: bool) -> float:
    start = time.monotonic()
    load.end = start + duration_s
    tasks = [asyncio.create_task(_device(load)) for _ in range(devices)]
    progress = asyncio.create_task(_progress(load, start, duration_s, quiet))
    await asyncio.gather(*tasks)
    elapsed = min(time.monotonic(), load.end) - start
    progress.cancel()
    return elapsed


def run_load(
    address: str,
    graph: Any,
    inputs: tuple[Any, ...],
    *,
    devices: int,
    duration_s: float,
    partition: str = "server",
    max_requests: int = 1_000_000,
    timeout_s: float = 10.0,
    retry_s: float = 1.0,
    quiet: bool = True,
) -> dict[str, Any]:
    """Load the server at ``address`` with ``devices`` closed-loop devices; the report.

    A device answered BUSY (or failing) backs off as a `Client` does
    (`backoff_s` with ``retry_s``; 0: it resends at once); a real device would
    compute those requests itself, so they are counted in ``errors``, not in
    ``requests``.

    Returns
    -------
    dict
        ``address``, ``devices``, ``duration_s``, ``partition``, ``requests``
        (answers in time), ``rps``, ``p50_ms``, ``p95_ms``, ``p99_ms``,
        ``mean_ms``, ``errors`` (count by kind), ``checked`` (the first answer
        equals the model's output computed here).
    """
    import torch

    from cic_fast.frontend.cutting import build_parts
    from cic_fast.runtime import http as H
    from cic_fast.runtime import messages as M
    from cic_fast.runtime import wire as W
    from cic_fast.runtime.fingerprint import traced_fingerprint

    if devices < 1 or not duration_s > 0 or max_requests < 1 or not timeout_s > 0:
        raise ValueError("--devices, --duration-s, --max-requests and --timeout-s must be > 0")
    if not retry_s >= 0:
        raise ValueError(f"--retry-s must be >= 0, got {retry_s}")
    on = _partition(graph, partition)
    head, _, _ = build_parts(graph, on)
    prog = graph.program
    with torch.inference_mode():
        sent = head(*inputs)
        expected = prog.module(*inputs)
    parts, n = M.encode_request(7, on, dict(head.codec.flatten(sent)))
    frame = W.frame_header(W.MsgType.INFER, n) + b"".join(bytes(p) for p in parts)
    fp = M.encode_hello(traced_fingerprint(graph))
    hello = W.frame_header(W.MsgType.HELLO, len(fp)) + fp
    if address.startswith("http://"):
        endpoint, target = H.parse_address(address)
        assert target is not None
        request = target.request_head(len(hello) + len(frame)) + hello + frame
    else:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"--address {address!r}: expected HOST:PORT or http://HOST:PORT/PATH")
        endpoint, target = (host.strip("[]"), int(port)), None
        request = frame
    load = _Load(endpoint, target, hello, request, 0.0, max_requests, timeout_s, retry_s)
    elapsed = asyncio.run(_run(load, devices, duration_s, quiet))
    checked = False
    if load.first_answer is not None:
        from torch.utils import _pytree

        _, _, outs = M.decode_result(load.first_answer, W.Limits())
        want, _ = _pytree.tree_flatten(expected)
        checked = len(outs) == len(want) and all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(outs, want, strict=True)
        )
    lat = np.asarray(load.latencies) * 1e3
    pct = np.percentile(lat, [50, 95, 99]) if lat.size else np.full(3, np.nan)
    return {
        "address": address,
        "devices": devices,
        "duration_s": round(elapsed, 3),
        "partition": partition,
        "request_bytes": len(request),
        "requests": int(lat.size),
        "rps": lat.size / elapsed if elapsed > 0 else 0.0,
        "p50_ms": float(pct[0]),
        "p95_ms": float(pct[1]),
        "p99_ms": float(pct[2]),
        "mean_ms": float(lat.mean()) if lat.size else float("nan"),
        "errors": dict(load.errors),
        "checked": checked,
    }


def _partition(graph: Any, partition: str) -> np.ndarray:
    """The device set of ``--partition``: the inputs, or a node and its ancestors."""
    on = np.zeros(graph.n_nodes, dtype=bool)
    on[graph.inputs] = True
    if partition == "server":
        return on
    if partition not in graph.names:
        raise ValueError(f"--partition {partition!r}: no such node (try 'server')")
    pred = graph.predecessors()
    stack = [graph.names.index(partition)]
    while stack:
        v = stack.pop()
        if not on[v]:
            on[v] = True
            stack.extend(pred[v])
    if on.all():
        raise ValueError(f"--partition {partition!r} leaves nothing for the server")
    return on


def _run_loadtest(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    model = load_model_args(args)
    inputs = example_inputs(args)
    graph = trace_model(model, inputs)
    report = run_load(
        args.address,
        graph,
        inputs,
        devices=args.devices,
        duration_s=args.duration_s,
        partition=args.partition,
        max_requests=args.max_requests,
        timeout_s=args.timeout_s,
        retry_s=args.retry_s,
        quiet=args.quiet,
    )
    r = report
    print(
        f"{args.model} -> {r['address']}: {r['devices']} devices, {r['duration_s']:.1f} s, "
        f"partition {r['partition']} ({r['request_bytes']} B/request)"
    )
    print(
        f"  {r['requests']} answers, {r['rps']:.1f} requests/s, latency p50 {r['p50_ms']:.1f} ms"
        f", p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
    )
    print(f"  errors: {r['errors'] or 'none'}; first answer equals the model's: {r['checked']}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if r["requests"] and r["checked"] else 1

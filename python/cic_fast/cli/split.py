"""``cic-fast split``: the best device/server split of a model at one bandwidth."""

from __future__ import annotations

import argparse
from typing import Any

from cic_fast.cli.common import (
    add_model_args,
    add_profile_args,
    add_rtt_arg,
    device_only_s,
    example_inputs,
    load_model_args,
    load_profiles,
    parse_bandwidth,
    rtt_seconds,
    trace_model,
)

__all__ = ["add_split_parser"]


def add_split_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``split MODEL --device D.json --server S.json --bandwidth 10Mbit``."""
    p = subparsers.add_parser(
        "split",
        help="find the best device/server split of a model and show it",
        description="Partition MODEL at one bandwidth from two profiles and print where the "
        "cut falls, what is sent and the predicted latency parts.",
    )
    add_model_args(p)
    add_profile_args(p, device_required=True)
    p.add_argument("--bandwidth", required=True, help="link bandwidth, e.g. 10Mbit, 1.5Gbit/s")
    add_rtt_arg(p)
    p.add_argument(
        "--check",
        action="store_true",
        help="run head and tail on the example input and check them against the model",
    )
    p.set_defaults(func=_run_split)
    return p


def _run_split(args: argparse.Namespace) -> int:
    import torch

    from cic_fast.core.graph import Graph
    from cic_fast.frontend.splitting import split
    from cic_fast.frontend.tracing import tensor_bytes

    bandwidth = parse_bandwidth(args.bandwidth)
    model = load_model_args(args)
    inputs = example_inputs(args)
    graph = trace_model(model, inputs)
    dev, srv = load_profiles(args, graph)
    s = split(
        model,
        inputs,
        bandwidth_bps=bandwidth,
        device_profile=dev,
        server_profile=srv,
        rtt_s=rtt_seconds(args),
        graph=graph,
    )
    print(f"{args.model}: {graph.n_nodes} nodes")
    print(s.summary())
    all_dev = device_only_s(Graph(graph.edges, dev.seconds, srv.seconds, graph.out_bytes))
    print(f"device only would take {all_dev * 1e3:.3f} ms (predicted)")
    if args.check:
        with torch.no_grad():
            sent = s.head(*inputs)
            got = s.tail(sent)
            want = model(*inputs)
        try:
            torch.testing.assert_close(got, want)
        except AssertionError as e:
            raise ValueError(f"check failed: tail(head(x)) differs from model(x): {e}") from None
        nbytes = tensor_bytes(list(sent.values())) if s.partition.offloads else 0
        if nbytes != s.bytes_sent:
            raise ValueError(
                f"check failed: head returned {nbytes} bytes, partition says {s.bytes_sent}"
            )
        print(f"check: tail(head(x)) == model(x), head returned {nbytes} bytes: ok")
    return 0

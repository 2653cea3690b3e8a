"""The ``cic-fast`` command line: one module per command, shared options in `common`.

``cic-fast demo`` partitions a built-in DNN-shaped graph across a sweep of
bandwidths; ``profile``, ``split``, ``plan``, ``serve``, ``evaluate`` and
``loadtest`` work on
PyTorch models (torch is imported only when one of them runs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cic_fast.cli.common import resolve_model
from cic_fast.cli.demo import add_demo_parser
from cic_fast.cli.evaluate import add_evaluate_parser
from cic_fast.cli.loadtest import add_loadtest_parser
from cic_fast.cli.plan import add_plan_parser
from cic_fast.cli.profile import add_profile_parser
from cic_fast.cli.serve import add_serve_parser
from cic_fast.cli.split import add_split_parser

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``cic-fast``."""
    parser = argparse.ArgumentParser(
        prog="cic-fast", description="Split DNN inference between an edge device and a server."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(sub)
    add_profile_parser(sub)
    add_split_parser(sub)
    add_plan_parser(sub)
    add_serve_parser(sub)
    add_evaluate_parser(sub)
    add_loadtest_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cic-fast``; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = resolve_model(args)
    if problem is not None:
        parser.error(problem)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"cic-fast: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

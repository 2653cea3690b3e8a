"""`cic-fast demo`: the README's main job."""

from __future__ import annotations

import pytest

from cic_fast.cli import main


def test_demo_table(capsys: pytest.CaptureFixture[str]) -> None:
    rates = ["0.13", "1.1", "18.88", "100"]
    assert main(["demo", "--layers", "200", "--bandwidth-mbit", *rates]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.split() and line.split()[0] in rates]
    assert len(rows) == len(rates)
    # the optimum is never slower than the better of device-only and server-only
    for row in rows:
        speedup = float(row.split()[7].rstrip("x"))
        assert speedup >= 1.0 - 1e-12


def test_demo_bad_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--layers", "200", "--bandwidth-mbit", "0"]) == 2
    assert "bandwidth_bps" in capsys.readouterr().err

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


def test_demo_prices_the_baselines_with_the_cost_model(capsys: pytest.CaptureFixture[str]) -> None:
    # The device-only and server-only columns are the cost model's prices of the
    # baselines' placements (the numpy formula here, the C++ one in the CLI).
    import numpy as np

    from cic_fast.core import baselines, cost
    from cic_fast.core.synthetic import dnn_graph

    rates = ["0.5", "5.85", "100"]
    assert main(["demo", "--layers", "150", "--rtt-ms", "4", "--bandwidth-mbit", *rates]) == 0
    out = capsys.readouterr().out.splitlines()
    g = dnn_graph(150, kind="mixed", seed=0, device_slowdown=10.0, server_speedup=50.0)
    n = len(g.device_s)
    costs = (g.edges, g.device_s, g.server_s, g.out_bytes)
    rows = {cells[0]: cells for cells in map(str.split, out) if cells[:1] in ([r] for r in rates)}
    for mbit, cells in rows.items():
        bw = float(mbit) * 1e6
        dev = cost.price(*costs, baselines.device_only(n), bw, 0.004)
        srv = cost.price(*costs, baselines.server_only(g.edges, n), bw, 0.004)
        # Mbit/s, on device, sent (value unit), latency, device-only, server-only, speedup
        assert float(cells[5]) == pytest.approx(1e3 * dev.latency_s, abs=0.006)
        assert float(cells[6]) == pytest.approx(1e3 * srv.latency_s, abs=0.006)
        assert srv.rtt_s == 0.004 and dev.rtt_s == 0.0 and srv.bytes_sent == g.out_bytes[0]
        best = min(dev.latency_s, srv.latency_s) / (float(cells[4]) / 1e3)
        assert float(cells[7].rstrip("x")) == pytest.approx(best, abs=0.006)
    assert len(rows) == len(rates)
    assert f"device-only {1e3 * float(np.sum(g.device_s)):.1f} ms" in out[0]

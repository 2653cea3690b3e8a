"""Bad input raises ValueError/TypeError naming the problem; odd-but-valid input works.

Every case runs through both entry points: `cic_fast.min_cut(...)` and
`cic_fast.Graph(...)` followed by `.min_cut(...)` (and `.evaluate(...)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cic_fast
from oracles import brute_force, is_valid_partition, latency_of

EDGES = [(0, 1), (1, 2), (0, 2)]
DEV = [0.0, 1.0, 2.0]
SRV = [0.0, 0.1, 0.2]
SIZE = [600.0, 300.0, 10.0]
BW = 1e6

Call = Callable[..., cic_fast.Partition]


def via_function(
    edges: Any, dev: Any, srv: Any, size: Any, bw: Any = BW, rtt: Any = 0.0
) -> cic_fast.Partition:
    return cic_fast.min_cut(edges, dev, srv, size, bw, rtt_s=rtt)


def via_graph(
    edges: Any, dev: Any, srv: Any, size: Any, bw: Any = BW, rtt: Any = 0.0
) -> cic_fast.Partition:
    return cic_fast.Graph(edges, dev, srv, size).min_cut(bw, rtt_s=rtt)


def via_evaluate(
    edges: Any, dev: Any, srv: Any, size: Any, bw: Any = BW, rtt: Any = 0.0
) -> cic_fast.Partition:
    n = len(np.atleast_1d(np.asarray(dev)))
    return cic_fast.Graph(edges, dev, srv, size).evaluate(np.ones(n, dtype=bool), bw, rtt_s=rtt)


ENTRY_POINTS = pytest.mark.parametrize(
    "solve", [via_function, via_graph, via_evaluate], ids=["min_cut", "Graph", "evaluate"]
)


# --- graph structure -------------------------------------------------------------------


@ENTRY_POINTS
@pytest.mark.parametrize(
    ("edges", "keyword"),
    [
        ([(0, 1), (1, 2), (2, 0)], "cycle"),
        ([(0, 1), (1, 1)], "cycle"),
        ([(0, 0)], "cycle"),
        ([(0, 1), (1, 2), (2, 1)], "cycle"),
        ([(0, 3)], "out of range"),
        ([(0, 1), (1, 1000)], "out of range"),
        ([(-1, 1)], "out of range"),
        ([(0, 1), (2, -3)], "out of range"),
        ([(0, 1, 2)], "shape"),
        (np.zeros((2, 3), dtype=np.int64), "shape"),
        (np.array([0, 1], dtype=np.int64), "shape"),
        (np.zeros((2, 2, 2), dtype=np.int64), "shape"),
        (np.zeros((0, 3), dtype=np.int64), "shape"),
    ],
)
def test_bad_edges(solve: Call, edges: Any, keyword: str) -> None:
    with pytest.raises(ValueError, match=keyword):
        solve(edges, DEV, SRV, SIZE)


@ENTRY_POINTS
@pytest.mark.parametrize(
    "edges",
    [
        np.array([[0.0, 1.0]]),
        [(0.0, 1.0), (1.0, 2.0)],
        np.array([[0, 1]], dtype=np.float32),
        [(0.5, 1)],
        np.array([["0", "1"]]),
    ],
)
def test_non_integer_edges(solve: Call, edges: Any) -> None:
    with pytest.raises(TypeError, match="integer"):
        solve(edges, DEV, SRV, SIZE)


def test_out_of_range_index_is_not_wrapped() -> None:
    # A uint64 above int64 range must not wrap around to a small valid index.
    edges = np.array([[0, 2**64 - 1]], dtype=np.uint64)
    with pytest.raises(ValueError, match="out of range"):
        via_function(edges, DEV, SRV, SIZE)


# --- cost arrays -----------------------------------------------------------------------


def _replace(which: int, value: Any) -> list[Any]:
    arrays: list[Any] = [list(DEV), list(SRV), list(SIZE)]
    arrays[which] = value
    return arrays


WHICH = pytest.mark.parametrize("which", [0, 1, 2], ids=["device_s", "server_s", "out_bytes"])


@ENTRY_POINTS
@pytest.mark.parametrize("which", [1, 2], ids=["server_s", "out_bytes"])
@pytest.mark.parametrize("length", [0, 2, 4])
def test_wrong_length(solve: Call, which: int, length: int) -> None:
    with pytest.raises(ValueError, match="length"):
        solve(EDGES, *_replace(which, [1.0] * length))


@ENTRY_POINTS
def test_device_s_shorter_than_edges_say(solve: Call) -> None:
    # n comes from device_s; the other arrays agree with it, so the edges are out of range.
    with pytest.raises(ValueError, match=r"out of range|length"):
        solve(EDGES, [0.0, 1.0], [0.0, 0.1], [1.0, 1.0])


@ENTRY_POINTS
@WHICH
@pytest.mark.parametrize(
    "value", [np.ones((3, 1)), np.ones((1, 3)), np.ones((3, 3)), np.float64(1.0)], ids=str
)
def test_not_1d(solve: Call, which: int, value: Any) -> None:
    with pytest.raises(ValueError, match="1-D"):
        solve(EDGES, *_replace(which, value))


@ENTRY_POINTS
@WHICH
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [0, 2])
def test_not_finite(solve: Call, which: int, bad: float, where: int) -> None:
    column = list((DEV, SRV, SIZE)[which])
    column[where] = bad
    arrays = _replace(which, column)
    with pytest.raises(ValueError, match="finite"):
        solve(EDGES, *arrays)


@ENTRY_POINTS
@WHICH
@pytest.mark.parametrize("bad", [-1.0, -1e-300, -5])
def test_negative(solve: Call, which: int, bad: float) -> None:
    column = list((DEV, SRV, SIZE)[which])
    column[1] = bad
    arrays = _replace(which, column)
    with pytest.raises(ValueError, match="negative"):
        solve(EDGES, *arrays)


@ENTRY_POINTS
@pytest.mark.parametrize("edges", [[], np.empty((0, 2), dtype=np.int64)])
def test_no_nodes(solve: Call, edges: Any) -> None:
    with pytest.raises(ValueError, match="no nodes"):
        solve(edges, [], [], [])


# --- bandwidth and rtt -----------------------------------------------------------------


@ENTRY_POINTS
@pytest.mark.parametrize("bw", [0.0, -0.0, -1.0, -1e9, math.nan, math.inf, -math.inf, 0])
def test_bad_bandwidth(solve: Call, bw: float) -> None:
    with pytest.raises(ValueError, match="bandwidth_bps"):
        solve(EDGES, DEV, SRV, SIZE, bw)


@ENTRY_POINTS
@pytest.mark.parametrize("rtt", [-1.0, -1e-9, math.nan, math.inf, -math.inf])
def test_bad_rtt(solve: Call, rtt: float) -> None:
    with pytest.raises(ValueError, match="rtt_s"):
        solve(EDGES, DEV, SRV, SIZE, BW, rtt)


@ENTRY_POINTS
@pytest.mark.parametrize("value", ["1e6", None, b"1", [1e6], 1e6 + 1j])
def test_bandwidth_not_a_number(solve: Call, value: Any) -> None:
    with pytest.raises(TypeError):
        solve(EDGES, DEV, SRV, SIZE, value)


@ENTRY_POINTS
@pytest.mark.parametrize("value", ["0", None, 1j])
def test_rtt_not_a_number(solve: Call, value: Any) -> None:
    with pytest.raises(TypeError):
        solve(EDGES, DEV, SRV, SIZE, BW, value)


@ENTRY_POINTS
@pytest.mark.parametrize("bw", [np.float32(1e6), np.int64(10**6), 10**6, np.float64(1e6)])
def test_numpy_and_int_bandwidth_accepted(solve: Call, bw: Any) -> None:
    part = solve(EDGES, DEV, SRV, SIZE, bw, np.float32(0.0))
    assert part.bandwidth_bps == pytest.approx(1e6)


# --- overflow ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dev", "srv"),
    [
        ([1.7e308, 1.7e308, 1.7e308], SRV),  # the sum of device times is not finite
        ([0.0, 1e308, 1e308], SRV),
        (DEV, [0.0, 1.7e308, 1.7e308]),  # the sum of server times is not finite
    ],
)
def test_overflow(dev: list[float], srv: list[float]) -> None:
    with pytest.raises(ValueError, match="overflow"):
        via_function(EDGES, dev, srv, SIZE, BW)
    with pytest.raises(ValueError, match="overflow"):
        cic_fast.Graph(EDGES, dev, srv, SIZE).min_cut(BW)


@pytest.mark.parametrize(
    ("dev", "size", "bw"),
    [
        (DEV, [1e308, 1e308, 1e308], 1.0),  # 8 * bytes / bandwidth is not finite
        (DEV, [1e6, 1e6, 1e6], 1e-305),
        ([1e300, 1e300, 1e300], [1e300, 1e300, 1e300], 1e-10),
    ],
)
def test_infinite_transfer(dev: list[float], size: list[float], bw: float) -> None:
    """Every upload takes forever: refuse with "overflow", or keep everything on the device."""
    try:
        part = via_function(EDGES, dev, SRV, size, bw)
    except ValueError as err:
        assert "overflow" in str(err)
        return
    assert part.on_device.all()
    assert part.latency_s == pytest.approx(sum(dev))
    assert part.transfer_s == 0.0 and part.bytes_sent == 0


@pytest.mark.parametrize("scale", [1e12, 1e100, 1e300])
def test_huge_but_summable_costs(scale: float) -> None:
    """Either refuse with "overflow" or answer correctly: never a wrong answer."""
    dev = [0.0, 3.0 * scale, 2.0 * scale, 1.0]
    srv = [0.0, 1.0 * scale, 1.0 * scale, 1.0 * scale]
    size = [8.0, 1.0, 1.0, 1.0]
    edges = [(0, 1), (1, 2), (2, 3)]
    bw = 8.0 / scale  # one byte costs `scale` seconds
    try:
        part = via_function(edges, dev, srv, size, bw)
    except ValueError as err:
        assert "overflow" in str(err)
        return
    best, _ = brute_force(edges, dev, srv, size, bw)
    assert part.latency_s == pytest.approx(best, rel=1e-9)


# --- evaluate() with a bad partition ---------------------------------------------------


@pytest.mark.parametrize("length", [0, 2, 4])
def test_evaluate_wrong_length(length: int) -> None:
    graph = cic_fast.Graph(EDGES, DEV, SRV, SIZE)
    with pytest.raises(ValueError, match="length"):
        graph.evaluate(np.ones(length, dtype=bool), BW)


@pytest.mark.parametrize(
    "on_device",
    [
        [False, False, False],  # the input on the server
        [False, True, True],
    ],
)
def test_evaluate_input_on_server(on_device: list[bool]) -> None:
    graph = cic_fast.Graph(EDGES, DEV, SRV, SIZE)
    with pytest.raises(ValueError, match="input"):
        graph.evaluate(np.array(on_device), BW)


def test_evaluate_second_input_on_server() -> None:
    graph = cic_fast.Graph([(0, 2), (1, 2)], [1.0] * 3, [1.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="input"):
        graph.evaluate(np.array([True, False, False]), BW)


@pytest.mark.parametrize(
    ("edges", "on_device"),
    [
        (EDGES, [True, False, True]),  # 2 reads 1, which is on the server
        ([(0, 1), (1, 2)], [True, False, True]),
        ([(0, 1), (0, 2), (1, 2)], [True, False, True]),
    ],
)
def test_evaluate_not_closed(edges: list[tuple[int, int]], on_device: list[bool]) -> None:
    graph = cic_fast.Graph(edges, DEV, SRV, SIZE)
    with pytest.raises(ValueError, match="closed"):
        graph.evaluate(np.array(on_device), BW)


@pytest.mark.parametrize("bw", [0.0, -1.0, math.nan, math.inf])
def test_evaluate_bad_bandwidth(bw: float) -> None:
    graph = cic_fast.Graph(EDGES, DEV, SRV, SIZE)
    with pytest.raises(ValueError, match="bandwidth_bps"):
        graph.evaluate(np.ones(3, dtype=bool), bw)


@pytest.mark.parametrize("rtt", [-1.0, math.nan, math.inf])
def test_evaluate_bad_rtt(rtt: float) -> None:
    graph = cic_fast.Graph(EDGES, DEV, SRV, SIZE)
    with pytest.raises(ValueError, match="rtt_s"):
        graph.evaluate(np.ones(3, dtype=bool), BW, rtt_s=rtt)


# --- valid edge cases must not raise ---------------------------------------------------


@pytest.mark.parametrize(
    ("edges", "dev", "srv", "size"),
    [
        ([], [1.0], [0.5], [10]),  # single node, empty edge list
        (np.empty((0, 2), dtype=np.int32), [1.0], [0.5], [10]),
        ([], [1.0, 2.0, 3.0], [0.1, 0.1, 0.1], [1, 2, 3]),  # several inputs, no edges
        ([(0, 2), (1, 2)], [0.0, 0.0, 1.0], [0.0, 0.0, 0.1], [5, 5, 1]),  # two inputs
        ([(0, 1), (1, 2)], [0.0] * 3, [0.0] * 3, [0] * 3),  # all costs zero
        ([(0, 1), (0, 1), (1, 2), (0, 1)], DEV, SRV, SIZE),  # duplicate edges
        (np.array(EDGES, dtype=np.int32), np.array(DEV, dtype=np.float32), SRV, SIZE),
        (np.array(EDGES, dtype=np.uint8), DEV, SRV, np.array(SIZE, dtype=np.int64)),
        (EDGES, [0, 1, 2], [0, 0, 0], [600, 300, 10]),  # integer costs
    ],
)
@pytest.mark.parametrize("rtt", [0.0, 0.05])
def test_valid_edge_cases(edges: Any, dev: Any, srv: Any, size: Any, rtt: float) -> None:
    for solve in (via_function, via_graph):
        part = solve(edges, dev, srv, size, BW, rtt)
        best, _ = brute_force(edges, dev, srv, size, BW, rtt)
        assert part.latency_s == pytest.approx(best, rel=1e-9, abs=1e-15)
        assert is_valid_partition(part.on_device, np.asarray(edges).reshape(-1, 2))
    graph = cic_fast.Graph(edges, dev, srv, size)
    part = graph.evaluate(np.ones(len(dev), dtype=bool), BW, rtt_s=rtt)
    assert part.latency_s == pytest.approx(float(np.sum(np.asarray(dev, dtype=np.float64))))
    assert part.rtt_s == 0.0


def test_inputs_are_copied() -> None:
    """Mutating the caller's arrays after Graph() must not change the prepared graph."""
    edges = np.array(EDGES, dtype=np.int64)
    dev, srv, size = np.array(DEV), np.array(SRV), np.array(SIZE)
    graph = cic_fast.Graph(edges, dev, srv, size)
    before = graph.min_cut(BW)
    dev *= 100.0
    edges[:] = 0
    after = graph.min_cut(BW)
    assert after.latency_s == before.latency_s
    np.testing.assert_array_equal(after.on_device, before.on_device)


# --- fuzz: junk never crashes, and whatever is accepted is answered right ----------------

_DTYPES = st.sampled_from(
    [
        np.bool_,
        np.int8,
        np.uint8,
        np.int32,
        np.int64,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex128,
        np.dtype("U3"),
        np.dtype("O"),
    ]
)


@st.composite
def junk_arrays(draw: st.DrawFn, ndim_max: int = 3, side_max: int = 6) -> Any:
    dtype = np.dtype(draw(_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=ndim_max, min_side=0, max_side=side_max))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        elements = st.one_of(
            st.integers(max(info.min, -2), min(info.max, side_max)),
            st.integers(int(info.min), int(info.max)),
        )
    elif dtype.kind == "f":
        elements = st.one_of(
            st.floats(0, 10, width=dtype.itemsize * 8), st.floats(width=dtype.itemsize * 8)
        )
    elif dtype.kind == "c":
        elements = st.complex_numbers(max_magnitude=10)
    elif dtype.kind == "U":
        elements = st.text(alphabet="01ab .-", max_size=3)
    elif dtype.kind == "O":
        elements = st.one_of(st.none(), st.integers(0, 5), st.floats(0, 5), st.text(max_size=2))
    else:
        elements = st.booleans()
    arr = draw(hnp.arrays(dtype, shape, elements=elements))
    # Sometimes a plain Python list, the way users pass small inputs.
    return arr.tolist() if draw(st.booleans()) and arr.dtype.kind != "O" else arr


@st.composite
def fuzz_inputs(draw: st.DrawFn) -> tuple[Any, ...]:
    n = draw(st.integers(0, 6))
    # Mostly well-formed pieces, so that valid calls are common enough to be checked too.
    good_edges = st.lists(
        st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, max(n - 1, 0))), max_size=8
    ).map(lambda es: np.array([e for e in es if e[0] < e[1]], dtype=np.int64).reshape(-1, 2))
    good_costs = hnp.arrays(np.float64, n, elements=st.floats(0, 10))
    edges = draw(st.one_of(good_edges, good_edges, good_edges, junk_arrays(ndim_max=3)))
    costs = [
        draw(st.one_of(good_costs, good_costs, good_costs, junk_arrays(ndim_max=2)))
        for _ in range(3)
    ]
    junk_scalar = st.one_of(
        st.floats(),
        st.integers(-5, 10**9),
        st.none(),
        st.text(max_size=3),
        st.just(np.float32(1e6)),
    )
    bandwidth = draw(st.one_of(st.floats(1e3, 1e9), st.floats(1e3, 1e9), junk_scalar))
    rtt = draw(st.one_of(st.just(0.0), st.floats(0, 1), junk_scalar))
    return (edges, *costs, bandwidth, rtt)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(fuzz_inputs())
def test_fuzz_junk(inputs: tuple[Any, ...]) -> None:
    edges, dev, srv, size, bw, rtt = inputs
    results = []
    for solve in (via_function, via_graph):
        try:
            results.append(solve(edges, dev, srv, size, bw, rtt))
        except (ValueError, TypeError):
            continue
    if not results:
        return
    # Accepted: the inputs must have meant a valid problem, answered optimally.
    raw = np.asarray(edges)
    # An empty array of any dtype (even complex) is a fine "no edges".
    e = raw.astype(np.int64).reshape(-1, 2) if raw.size else np.empty((0, 2), dtype=np.int64)
    d, s, b = (np.asarray(x, dtype=np.float64) for x in (dev, srv, size))
    bwf, rttf = float(bw), float(rtt)
    best, _ = brute_force(e, d, s, b, bwf, rttf)
    for part in results:
        assert is_valid_partition(part.on_device, e)
        ref = latency_of(part.on_device, e, d, s, b, bwf, rttf)
        assert part.latency_s == pytest.approx(ref.latency_s, rel=1e-9, abs=1e-12)
        assert part.latency_s == pytest.approx(best, rel=1e-9, abs=1e-12)

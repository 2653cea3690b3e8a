"""cic_fast._core: threads sharing one Graph, PartitionBase, and the C decide callable.

Torch-free. No timing is asserted: the thread test checks that concurrent
solves on one Graph (each on its own pooled workspace, the GIL released)
give exactly the sequential answers; the speed-up is measured by
``benches/thread_scaling.py``.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import pickle
import threading
from typing import Any

import numpy as np
import pytest

from cic_fast import _core
from cic_fast.core.cost import Partition as CorePartition
from cic_fast.core.planner import Planner
from cic_fast.core.synthetic import dnn_graph
from threads import run_threads

FIELDS = (
    "on_device",
    "latency_s",
    "device_s",
    "transfer_s",
    "server_s",
    "rtt_s",
    "bytes_sent",
    "sent",
    "bandwidth_bps",
)


def as_real(value: Any, name: str) -> float:
    """The converter the decide callables use for a non-float argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


class Partition(_core.PartitionBase):
    """A Python subclass as the package defines one: no new fields, extra API."""

    __slots__ = ()

    @property
    def offloads(self) -> bool:
        return not bool(self.on_device.all())

    def __repr__(self) -> str:
        return f"Partition(latency_s={self.latency_s:.6g}, bandwidth_bps={self.bandwidth_bps:.6g})"


class NotAPartition:
    """A plain class: decide_fn must refuse it."""


def core_graph(kind: str, n: int, seed: int = 0) -> _core.Graph:
    d = dnn_graph(n, kind=kind, seed=seed)
    return _core.Graph(
        np.asarray(d.edges, dtype=np.int64),
        np.asarray(d.device_s, dtype=np.float64),
        np.asarray(d.server_s, dtype=np.float64),
        np.asarray(d.out_bytes, dtype=np.float64),
    )


def pieces_of(plan: _core.Plan) -> list[tuple[Any, Any, float, float, float, int]]:
    out = []
    for k in range(plan.n_partitions):
        on, sent, dev, srv, rtt, nbytes = plan.partition(k)
        on.setflags(write=False)
        sent.setflags(write=False)
        out.append((on, sent, float(dev), float(srv), float(rtt), int(nbytes)))
    return out


def same_packed(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return (
        np.array_equal(a[0], b[0])
        and np.array_equal(a[1], b[1])
        and all(x == y for x, y in zip(a[2:], b[2:], strict=True))
    )


# -- threads ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "n"), [("densenet", 300), ("mixed", 400), ("resnet", 200)])
def test_two_threads_on_one_graph_match_sequential(kind: str, n: int) -> None:
    g = core_graph(kind, n)
    bws = np.logspace(3, 11, 160)
    rtts = [0.0, 0.004]
    expected = {(bw, rtt): g.min_cut(bw, rtt) for bw in bws for rtt in rtts}
    results: list[dict[tuple[float, float], tuple[Any, ...]]] = [{}, {}]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            start.wait()
            # The two threads walk the bandwidths in opposite orders, so their
            # workspaces hold different states at every step.
            order = bws if i == 0 else bws[::-1]
            for _ in range(2):
                for bw in order:
                    for rtt in rtts:
                        results[i][(bw, rtt)] = g.min_cut(bw, rtt)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        assert r.keys() == expected.keys()
        for key, packed in r.items():
            assert same_packed(packed, expected[key]), key


def test_min_cut_as_builds_the_partition_in_c() -> None:
    g = core_graph("mixed", 400)
    for bw in np.logspace(3, 11, 40):
        for rtt in (0.0, 0.003):
            p = g.min_cut_as(Partition, float(bw), rtt)
            t = g.min_cut(float(bw), rtt)
            assert type(p) is Partition
            assert np.array_equal(p.on_device, t[0]) and np.array_equal(p.sent, t[1])
            assert (p.latency_s, p.device_s, p.transfer_s, p.server_s, p.rtt_s) == t[2:7]
            assert type(p.bytes_sent) is float and p.bytes_sent == t[7]  # exact, not truncated
            assert p.bandwidth_bps == bw
    with pytest.raises(TypeError, match="PartitionBase"):
        g.min_cut_as(NotAPartition, 1e6)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="bandwidth_bps"):
        g.min_cut_as(Partition, -1.0)
    results: list[Any] = [None, None]

    def work(i: int) -> None:
        results[i] = [g.min_cut_as(Partition, float(bw)).latency_s for bw in np.logspace(4, 9, 50)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1] == [g.min_cut(float(bw))[2] for bw in np.logspace(4, 9, 50)]


def test_more_threads_than_the_pool_and_plans_in_parallel() -> None:
    g = core_graph("mixed", 200, seed=3)
    bws = np.logspace(4, 10, 25)
    expected = [g.min_cut(bw) for bw in bws]
    plan_expected = _core.Plan(g, 0.0).breakpoints_bps
    errors: list[str] = []

    def work(i: int) -> None:
        for _ in range(3):
            for bw, want in zip(bws, expected, strict=True):
                if not same_packed(g.min_cut(bw), want):
                    errors.append(f"thread {i}: min_cut({bw}) differs")
            if i % 4 == 0 and not np.array_equal(_core.Plan(g, 0.0).breakpoints_bps, plan_expected):
                errors.append(f"thread {i}: plan differs")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_bad_input_from_threads_still_raises() -> None:
    g = core_graph("chain", 64)
    with pytest.raises(ValueError, match="bandwidth_bps"):
        g.min_cut(0.0)
    with pytest.raises(ValueError, match="rtt_s"):
        g.min_cut(1e6, -1.0)
    assert g.min_cut(1e6)[2] > 0.0  # the pooled workspace is still usable


# -- PartitionBase ----------------------------------------------------------------------


def make_partition(cls: type[_core.PartitionBase] = Partition) -> _core.PartitionBase:
    on = np.array([True, True, False])
    sent = np.array([1], dtype=np.int64)
    return cls(
        on_device=on,
        latency_s=0.5,
        device_s=0.1,
        transfer_s=0.3,
        server_s=0.1,
        rtt_s=0.0,
        bytes_sent=1000,
        sent=sent,
        bandwidth_bps=1e6,
    )


def test_partition_base_construction() -> None:
    p = make_partition()
    assert isinstance(p, _core.PartitionBase)
    assert type(p) is Partition
    assert p.latency_s == 0.5 and p.bytes_sent == 1000 and p.bandwidth_bps == 1e6
    assert p.on_device.tolist() == [True, True, False]
    assert p.offloads
    assert repr(p) == "Partition(latency_s=0.5, bandwidth_bps=1e+06)"
    # Positional arguments in field order, too.
    q = _core.PartitionBase(*range(9))
    assert [getattr(q, f) for f in FIELDS] == list(range(9))
    with pytest.raises(TypeError):
        _core.PartitionBase(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _core.PartitionBase(*range(9), nine=9)  # type: ignore[call-arg]


def test_partition_base_is_immutable() -> None:
    p = make_partition()
    for f in FIELDS:
        with pytest.raises(AttributeError):
            setattr(p, f, 1.0)
        with pytest.raises(AttributeError):
            delattr(p, f)
    with pytest.raises(AttributeError):
        p.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(p, "__dict__")


def test_partition_base_pickles_as_the_subclass() -> None:
    p = make_partition()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        q = pickle.loads(pickle.dumps(p, protocol=protocol))
        assert type(q) is Partition
        for f in FIELDS:
            a, b = getattr(p, f), getattr(q, f)
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
    c = copy.copy(p)
    assert type(c) is Partition and c.on_device is p.on_device
    base = pickle.loads(pickle.dumps(make_partition(_core.PartitionBase)))
    assert type(base) is _core.PartitionBase


# -- the decide callable ----------------------------------------------------------------


@pytest.fixture(scope="module")
def decide_pair() -> tuple[Any, None, _core.Plan]:
    g = core_graph("densenet", 300)
    plan, _ = _core.Plan.compressed(g, 0.0)
    new = plan.decide_fn(Partition, pieces_of(plan), as_real)
    return new, None, plan


def test_decide_keyword_and_signature(decide_pair: tuple[Any, Any, _core.Plan]) -> None:
    new, _, plan = decide_pair
    assert str(inspect.signature(new)) == "(bandwidth_bps)"
    a = new(18.88e6)
    b = new(bandwidth_bps=18.88e6)
    assert type(a) is Partition and type(b) is Partition
    assert a.latency_s == b.latency_s and a.on_device is b.on_device
    assert a.bandwidth_bps == 18.88e6
    assert new(math.inf).transfer_s == 0.0
    assert new(10**7).bandwidth_bps == 1e7  # an int goes through as_real
    assert type(new(np.float32(1e7)).bandwidth_bps) is float
    k = plan.segment(18.88e6)
    assert a.on_device.tolist() == plan.partition(k)[0].tolist()


@pytest.mark.parametrize("bad", ["10e6", None, b"1", [1.0], True, np.bool_(True), 1j])
def test_decide_rejects_non_numbers(decide_pair: tuple[Any, Any, _core.Plan], bad: Any) -> None:
    new, _, _ = decide_pair
    with pytest.raises(TypeError):
        new(bad)
    with pytest.raises(TypeError):
        new(bandwidth_bps=bad)


@pytest.mark.parametrize("bad", [0.0, -0.0, -1.0, 0, -1, math.nan, -math.inf, np.float64("nan")])
def test_decide_rejects_bad_bandwidths(decide_pair: tuple[Any, Any, _core.Plan], bad: Any) -> None:
    new, _, _ = decide_pair
    with pytest.raises(ValueError, match="bandwidth_bps must be > 0"):
        new(bad)


def test_decide_rejects_bad_calls(decide_pair: tuple[Any, Any, _core.Plan]) -> None:
    new, _, _ = decide_pair
    with pytest.raises(TypeError):
        new()
    with pytest.raises(TypeError):
        new(1e6, 2e6)
    with pytest.raises(TypeError):
        new(1e6, bandwidth_bps=1e6)
    with pytest.raises(TypeError, match="unexpected keyword"):
        new(bw=1e6)


def test_decide_fn_checks_its_arguments(decide_pair: tuple[Any, Any, _core.Plan]) -> None:
    _, _, plan = decide_pair
    pieces = pieces_of(plan)
    with pytest.raises(TypeError, match="PartitionBase"):
        plan.decide_fn(NotAPartition, pieces, as_real)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="PartitionBase"):
        plan.decide_fn(int, pieces, as_real)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="pieces"):
        plan.decide_fn(Partition, pieces[:-1], as_real)
    with pytest.raises(ValueError, match="piece"):
        plan.decide_fn(Partition, [p[:5] for p in pieces], as_real)  # type: ignore[misc]
    base = plan.decide_fn(_core.PartitionBase, pieces, as_real)
    assert type(base(1e6)) is _core.PartitionBase


@pytest.mark.parametrize(
    ("kind", "n", "seed", "rtt"),
    [
        ("densenet", 700, 0, 0.0),
        ("mixed", 400, 0, 0.0),
        ("resnet", 300, 2, 0.01),
        ("inception", 250, 1, 0.002),
    ],
)
def test_c_decide_equals_the_python_reference(kind: str, n: int, seed: int, rtt: float) -> None:
    # Planner.decide (the method) is the reference implementation of the cost model
    # in Python; every planner instance decides through the C callable instead.
    d = dnn_graph(n, kind=kind, seed=seed)
    planner = Planner(d.edges, d.device_s, d.server_s, d.out_bytes, rtt_s=rtt)
    assert planner.decide is not Planner.decide.__get__(planner)
    assert str(inspect.signature(planner.decide)) == "(bandwidth_bps)"
    rng = np.random.default_rng(seed)
    bws = [*(10.0 ** rng.uniform(2.0, 12.0, 300)), *planner.breakpoints_bps, math.inf, 5e-324]
    for bw in bws:
        a, b = planner.decide(float(bw)), Planner.decide(planner, float(bw))
        assert type(a) is type(b) is CorePartition
        for f in FIELDS:
            x, y = getattr(a, f), getattr(b, f)
            if isinstance(x, np.ndarray):
                assert x is y, (bw, f)
            else:
                assert type(x) is type(y) and x == y, (bw, f, x, y)


def test_one_planner_shared_by_threads() -> None:
    # Planner.decide reads an immutable plan: threads get the sequential answers.
    d = dnn_graph(400, kind="mixed", seed=0)
    planner = Planner(d.edges, d.device_s, d.server_s, d.out_bytes, rtt_s=0.002)
    bws = [float(b) for b in np.logspace(3, 11, 400)]
    expected = [(planner.decide(b).latency_s, planner.decide(b).on_device) for b in bws]
    blob = planner.to_bytes()

    def work(i: int) -> None:
        for _ in range(20):
            for b, (lat, on) in zip(bws[i::4], expected[i::4], strict=True):
                p = planner.decide(bandwidth_bps=b)
                assert p.latency_s == lat and p.on_device is on
            assert planner.to_bytes() == blob

    run_threads(work, 4)

"""Prior-work baselines for the stream (throughput) objective.

`dads_heavy_load` is DSH, the heavy-workload partitioner of DADS: C. Hu, W. Bao,
D. Wang, F. Liu, "Dynamic Adaptive DNN Surgery for Inference Acceleration on the
Edge", IEEE INFOCOM 2019, pp. 1423-1431, doi:10.1109/INFOCOM.2019.8737614.
It minimises the pipeline period max(device, transfer, server) of DESIGN.md
("Streams") approximately, by a grid search over weights of the light-load min cut.
Every partition is priced by `cic_fast.core.cost.price`, the same cost model as the
library's own planners.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from cic_fast.core.cost import Partition, price
from cic_fast.core.graph import min_cut

__all__ = ["dads_heavy_load"]


def _period(p: Partition) -> float:
    """The pipeline period of a priced partition: its slowest stage."""
    return max(p.device_s, p.transfer_s, p.server_s)


def _steps(low: float, high: float, delta: float) -> Iterator[float]:
    """``for x <- low; x <= high; x <- x + delta`` without accumulating rounding."""
    count = math.floor((high - low) / delta * (1 + 1e-12) + 1e-9)
    for i in range(count + 1):
        yield low + i * delta


def _grid_points(alpha_u: float, gamma_u: float, delta: float) -> int:
    return (math.floor(alpha_u / delta) + 1) * (math.floor(gamma_u / delta) + 1)


def dads_heavy_load(
    edges: Any,
    device_s: Any,
    server_s: Any,
    out_bytes: Any,
    bandwidth_bps: float,
    *,
    epsilon_s: float | None = None,
    k: int = 4,
    max_first_grid: int | None = 4096,
    max_rounds: int = 64,
) -> Partition:
    """DSH, the DADS heavy-workload partitioner (Hu et al., INFOCOM 2019, Alg. 2).

    The paper (Sec. III-C, "The Heavy Workload Partitioning Algorithms", problem
    ECDI-H) minimises the max stage time max{Te, Tt, Tc}, proves it NP-hard, and
    gives DSH: re-weight the light-load min-cut network G' (eq. 5) with edge costs
    alpha * t^e_i (device), beta * t^t_i (transfer) and gamma * t^c_i (server),
    fix beta = 1 and grid-search alpha, gamma, keeping the cut whose *unweighted*
    max stage time is smallest. Algorithm 2 as printed:

    1. ``Ft <- compute-net(Dt, B)`` (t^t_i = 8 * out_bytes_i / B here);
    2. ``Tmax <- +inf; T'max <- 0; delta <- 1``;
    3. ``alpha_l <- 0; gamma_l <- 0; alpha_u <- sum(Fe) / min(Ft);
       gamma_u <- sum(Fc) / min(Ft)``;
    5. ``while |T'max - Tmax| >= eps``: ``T'max <- Tmax``;
       ``[alpha, gamma, V, Tmax] <- Search(S, delta, Tmax)``;
       ``S <- [alpha - delta, gamma - delta, alpha + delta, gamma + delta]``;
       ``delta <- delta / K``;
    11. ``Search``: for alpha from alpha_l to alpha_u step delta, for gamma from
        gamma_l to gamma_u step delta: run DSL (the min cut) on
        (alpha * Fe, gamma * Fc, Dt, B); if its max stage time <= the best so far,
        keep alpha, gamma and it (lines 17-18: the result never gets worse).

    Theorem 1 (ratio 3): the first Search, at delta = 1, runs DSL at alpha =
    gamma = 1, the latency-optimal cut, whose latency T* is at most the latency of
    the period-optimal partition, which is at most 3 * its period t*; the slowest
    stage of the DSL cut is at most T*, and DSH never returns worse than it.

    Where this implementation has to choose (the paper leaves these open):

    - ``min(Ft)`` is taken over the positive transfer times (a zero-byte output
      would divide by zero); if there are none, over the positive device and
      server times; if every cost is 0, the DSL cut is returned.
    - Search bounds are clamped at 0 (the paper requires alpha, gamma >= 0, but
      line 8 can step below 0 when the best alpha or gamma is 0).
    - Algorithm 2 line 15 takes Te, Tt, Tc from DSL on the *weighted* costs;
      the text (and the theorem) mean the real stage times, which are used here.
      Line 19 returns the last cut's V; the text says "the vertex cut with the
      best-found performance", which is what is returned here.
    - The paper fixes neither eps nor K. ``k`` defaults to 4; ``epsilon_s``
      defaults to 1e-6 of the first round's best period.
    - ``max_first_grid``: the first grid has about (alpha_u + 1)(gamma_u + 1)
      points (one min cut each), which for real models (alpha_u = sum of device
      times over the smallest transfer time) runs to millions. Past this many
      points the first round's delta is enlarged until the grid fits, and the DSL
      point alpha = gamma = 1 is evaluated first in any case (DADS Algorithm 3
      runs DSL before DSH too), so Theorem 1's bound still holds. ``None`` keeps
      delta = 1 exactly as printed.
    - ``max_rounds`` bounds the refinement loop (the paper's loop ends once an
      improvement is below eps; this is a safety net).
    - The min cut is `cic_fast.min_cut`: DADS's network with the two fixes in
      DESIGN.md (closure edges, inputs pinned to the device), so every cut is a
      valid partition; the paper's G' lacks both. Ties between equal cuts are
      broken by the library's min cut, which the paper does not specify.

    Parameters
    ----------
    edges : array_like of int, shape (E, 2)
        ``(u, v)`` pairs; nodes with no in-edge are inputs, pinned to the device.
    device_s, server_s, out_bytes : array_like of float, shape (n,)
        Per-layer device seconds, server seconds and output bytes.
    bandwidth_bps : float
        Link bandwidth in bits per second.
    epsilon_s : float, optional
        The paper's eps: stop once a refinement round improves the period by less.
    k : int
        The paper's K: each round divides the step delta by K (K >= 2).
    max_first_grid : int or None
        Most min cuts in the first round (see above); None for the paper's delta = 1.
    max_rounds : int
        Most refinement rounds after the first.

    Returns
    -------
    Partition
        The best cut found, priced with `cic_fast.core.cost.price` at
        ``bandwidth_bps`` (rtt 0); its period is
        ``max(p.device_s, p.transfer_s, p.server_s)``, at most 3 times the optimum.

    Raises
    ------
    ValueError
        Bad graph or costs (from `cic_fast.min_cut`), ``k < 2``, ``max_first_grid < 1``
        or ``epsilon_s <= 0``.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if max_first_grid is not None and max_first_grid < 1:
        raise ValueError(f"max_first_grid must be at least 1, got {max_first_grid}")
    if epsilon_s is not None and not epsilon_s > 0:
        raise ValueError(f"epsilon_s must be positive, got {epsilon_s}")
    # DSL at alpha = gamma = 1 first: it validates the input, and it is Theorem 1's point.
    dsl = min_cut(edges, device_s, server_s, out_bytes, bandwidth_bps)
    e: npt.NDArray[np.int64] = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    dev: npt.NDArray[np.float64] = np.asarray(device_s, dtype=np.float64)
    srv: npt.NDArray[np.float64] = np.asarray(server_s, dtype=np.float64)
    ob: npt.NDArray[np.float64] = np.asarray(out_bytes, dtype=np.float64)

    def dsl_at(alpha: float, gamma: float) -> Partition:
        cut = min_cut(e, alpha * dev, gamma * srv, ob, bandwidth_bps)
        return price(e, dev, srv, ob, cut.on_device, bandwidth_bps)

    best = price(e, dev, srv, ob, dsl.on_device, bandwidth_bps)
    best_alpha, best_gamma = 1.0, 1.0

    transfer = 8.0 * ob / bandwidth_bps
    positive = transfer[transfer > 0]
    if positive.size == 0:
        times = np.concatenate([dev, srv])
        positive = times[times > 0]
        if positive.size == 0:
            return best
    unit = float(positive.min())
    alpha_l, gamma_l = 0.0, 0.0
    alpha_u, gamma_u = math.fsum(dev.tolist()) / unit, math.fsum(srv.tolist()) / unit
    delta = 1.0
    if max_first_grid is not None:
        while _grid_points(alpha_u, gamma_u, delta) > max_first_grid:
            delta *= 1.25

    def search(
        alpha_l: float, gamma_l: float, alpha_u: float, gamma_u: float, delta: float
    ) -> None:
        nonlocal best, best_alpha, best_gamma
        for alpha in _steps(alpha_l, alpha_u, delta):
            for gamma in _steps(gamma_l, gamma_u, delta):
                p = dsl_at(alpha, gamma)
                if _period(p) <= _period(best):  # Algorithm 2, lines 17-18
                    best, best_alpha, best_gamma = p, alpha, gamma

    search(alpha_l, gamma_l, alpha_u, gamma_u, delta)
    eps = epsilon_s if epsilon_s is not None else 1e-6 * _period(best)
    for _ in range(max_rounds):
        if eps <= 0:  # the first round found a zero period: nothing to improve
            break
        before = _period(best)
        alpha_l, alpha_u = max(0.0, best_alpha - delta), best_alpha + delta
        gamma_l, gamma_u = max(0.0, best_gamma - delta), best_gamma + delta
        delta /= k
        search(alpha_l, gamma_l, alpha_u, gamma_u, delta)
        if abs(before - _period(best)) < eps:
            break
    return best

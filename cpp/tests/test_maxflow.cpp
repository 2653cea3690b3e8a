#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cic/maxflow.hpp"
#include "test_util.hpp"

using cic::PushRelabel;
using Cap = PushRelabel::Cap;

namespace {

// Capacity of the cut whose source side is the nodes flagged in `side` plus
// the implicit source (which feeds `excess`), saturated at 2^62 (infinite).
Cap CutValue(const std::vector<int>& tail, const std::vector<int>& head,
             const std::vector<Cap>& fwd, const std::vector<Cap>& bwd,
             const std::vector<Cap>& excess, const std::vector<bool>& source_side) {
  Cap c = 0;
  auto add = [&c](Cap x) {
    c = (x >= PushRelabel::kInfinity - c) ? PushRelabel::kInfinity : c + x;
  };
  for (size_t i = 0; i < tail.size(); ++i) {
    if (source_side[tail[i]] && !source_side[head[i]]) add(fwd[i]);
    if (source_side[head[i]] && !source_side[tail[i]]) add(bwd[i]);
  }
  for (size_t v = 0; v < excess.size(); ++v) {
    if (!source_side[v]) add(excess[v]);
  }
  return c;
}

}  // namespace

TEST_CASE("maxflow: hand-drawn network, flow value and both sides") {
  // s feeds a (5) and b (4); a->b 3, a->t 2, b->t 6. Max flow 8: a sends 2 to
  // t and 3 to b, b sends 6 of its 7 to t. Min cut value 8 = {a->t, b->t}.
  // Node ids: a=0, b=1, t=2.
  PushRelabel f;
  f.Reset(3, 2);
  const int ab = f.AddPair(0, 1), at = f.AddPair(0, 2), bt = f.AddPair(1, 2);
  f.Finalize();
  f.SetPair(ab, 3, 0);
  f.SetPair(at, 2, 0);
  f.SetPair(bt, 6, 0);
  f.ClearExcess();
  f.SetExcess(0, 5);
  f.SetExcess(1, 4);
  CHECK(f.Solve() == 8);
  CHECK(f.OnSourceSide(0));
  CHECK(f.OnSourceSide(1));
  CHECK(!f.OnSourceSide(2));
  // Raise b->t: now the bottleneck is a->t + the source arcs into b.
  f.SetPair(ab, 3, 0);
  f.SetPair(at, 2, 0);
  f.SetPair(bt, 100, 0);
  f.ClearExcess();
  f.SetExcess(0, 5);
  f.SetExcess(1, 4);
  CHECK(f.Solve() == 9);  // everything reaches t
  CHECK(!f.OnSourceSide(1));
}

TEST_CASE("maxflow: infinite arcs never cut; reuse across solves") {
  // a -inf-> b -> t (7), a holds 10: flow 7, a and b on the source side.
  PushRelabel f;
  f.Reset(3, 2);
  const int ab = f.AddPair(0, 1), bt = f.AddPair(1, 2);
  f.Finalize();
  for (int round = 0; round < 3; ++round) {
    f.SetPair(ab, PushRelabel::kInfinity, 0);
    f.SetPair(bt, 7 + round, 0);
    f.ClearExcess();
    f.SetExcess(0, 10);
    CHECK(f.Solve() == 7 + round);
    CHECK(f.OnSourceSide(0));
    CHECK(f.OnSourceSide(1));
  }
}

TEST_CASE("maxflow: random networks against brute-force cut enumeration") {
  cic_test::Rng rng(42);
  for (int trial = 0; trial < 400; ++trial) {
    const int n = 2 + rng.Below(9);  // last node is the sink
    PushRelabel f;
    f.Reset(n, n - 1);
    std::vector<int> tail, head;
    std::vector<Cap> fwd, bwd, excess(n, 0);
    for (int u = 0; u < n; ++u) {
      for (int v = 0; v < n; ++v) {
        if (u != v && rng.Uniform() < 0.3) {
          tail.push_back(u);
          head.push_back(v);
          fwd.push_back(rng.Below(4) == 0 ? PushRelabel::kInfinity : rng.Below(20));
          bwd.push_back(rng.Below(3) == 0 ? rng.Below(20) : 0);
          f.AddPair(u, v);
        }
      }
    }
    f.Finalize();
    for (int v = 0; v < n - 1; ++v) excess[v] = rng.Below(2) ? rng.Below(30) : 0;
    for (size_t i = 0; i < tail.size(); ++i) f.SetPair(static_cast<int>(i), fwd[i], bwd[i]);
    f.ClearExcess();
    for (int v = 0; v < n - 1; ++v) f.SetExcess(v, excess[v]);
    const Cap flow = f.Solve();
    Cap best = std::numeric_limits<Cap>::max();
    std::vector<bool> side(n);
    for (uint32_t mask = 0; mask < (1u << (n - 1)); ++mask) {
      for (int v = 0; v < n - 1; ++v) side[v] = (mask >> v) & 1u;
      side[n - 1] = false;
      const Cap c = CutValue(tail, head, fwd, bwd, excess, side);
      if (c < best) best = c;
    }
    for (int v = 0; v < n; ++v) side[v] = f.OnSourceSide(v);
    REQUIRE(!side[n - 1]);
    CHECK(flow == best);
    CHECK(CutValue(tail, head, fwd, bwd, excess, side) == best);
  }
}

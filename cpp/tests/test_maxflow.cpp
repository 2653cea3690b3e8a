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

// Capacity of the cut whose source side is the nodes flagged in `side`,
// saturated at 2^62 (infinite).
Cap CutValue(const std::vector<int>& tail, const std::vector<int>& head,
             const std::vector<Cap>& fwd, const std::vector<Cap>& bwd,
             const std::vector<bool>& source_side) {
  Cap c = 0;
  auto add = [&c](Cap x) {
    c = (x >= PushRelabel::kInfinity - c) ? PushRelabel::kInfinity : c + x;
  };
  for (size_t i = 0; i < tail.size(); ++i) {
    if (source_side[tail[i]] && !source_side[head[i]]) add(fwd[i]);
    if (source_side[head[i]] && !source_side[tail[i]]) add(bwd[i]);
  }
  return c;
}

}  // namespace

TEST_CASE("maxflow: hand-drawn network, flow value and both sides") {
  // s feeds a (5) and b (4); a->b 3, a->t 2, b->t 6. Max flow 8: a sends 2 to
  // t and 3 to b, b sends 6 of its 7 to t. Min cut value 8 = {a->t, b->t}.
  // Node ids: a=0, b=1, t=2.
  cic::FlowNetwork net;
  net.Reset(4, 3, 2);
  const int ab = net.AddPair(0, 1), at = net.AddPair(0, 2), bt = net.AddPair(1, 2);
  const int sa = net.AddPair(3, 0), sb = net.AddPair(3, 1);
  net.Finalize();
  PushRelabel f;
  f.Bind(net);
  f.SetPair(ab, 3, 0);
  f.SetPair(at, 2, 0);
  f.SetPair(bt, 6, 0);
  f.SetPair(sa, 5, 0);
  f.SetPair(sb, 4, 0);
  for (auto dir : {PushRelabel::Direction::kForward, PushRelabel::Direction::kReverse,
                   PushRelabel::Direction::kAuto}) {
    CHECK(f.Solve(dir) == 8);
    CHECK(f.OnSourceSide(3));
    CHECK(f.OnSourceSide(0));
    CHECK(f.OnSourceSide(1));
    CHECK(!f.OnSourceSide(2));
  }
  // Raise b->t: now the source arcs are the bottleneck.
  f.SetPair(bt, 100, 0);
  for (auto dir : {PushRelabel::Direction::kForward, PushRelabel::Direction::kReverse}) {
    CHECK(f.Solve(dir) == 9);  // everything reaches t
    CHECK(!f.OnSourceSide(1));
    CHECK(f.OnSourceSide(3));
  }
}

TEST_CASE("maxflow: infinite arcs never cut; reuse across solves") {
  // s -10-> a -inf-> b -> t (7 + round): a and b on the source side.
  cic::FlowNetwork net;
  net.Reset(4, 3, 2);
  const int ab = net.AddPair(0, 1), bt = net.AddPair(1, 2), sa = net.AddPair(3, 0);
  net.Finalize();
  PushRelabel f;
  f.Bind(net);
  f.SetPair(ab, PushRelabel::kInfinity, 0);
  f.SetPair(sa, 10, 0);
  for (int round = 0; round < 3; ++round) {
    f.SetPair(bt, 7 + round, 0);
    for (auto dir : {PushRelabel::Direction::kForward, PushRelabel::Direction::kReverse}) {
      CHECK(f.Solve(dir) == 7 + round);
      CHECK(f.OnSourceSide(0));
      CHECK(f.OnSourceSide(1));
      CHECK(!f.OnSourceSide(2));
    }
  }
}

TEST_CASE("maxflow: random networks against brute-force cut enumeration") {
  cic_test::Rng rng(42);
  for (int trial = 0; trial < 600; ++trial) {
    const int n = 2 + rng.Below(9);  // node n-2 is the source, n-1 the sink
    const int s = n - 2, t = n - 1;
    cic::FlowNetwork net;
    net.Reset(n, s, t);
    std::vector<int> tail, head;
    std::vector<Cap> fwd, bwd;
    for (int u = 0; u < n; ++u) {
      for (int v = 0; v < n; ++v) {
        if (u == v || rng.Uniform() >= 0.35) continue;
        const bool terminal = u >= s || v >= s;  // arcs at s and t are finite
        tail.push_back(u);
        head.push_back(v);
        fwd.push_back(!terminal && rng.Below(4) == 0 ? PushRelabel::kInfinity : rng.Below(20));
        bwd.push_back(rng.Below(3) == 0 ? rng.Below(20) : 0);
        net.AddPair(u, v);
      }
    }
    net.Finalize();
    PushRelabel f;
    f.Bind(net);
    for (size_t i = 0; i < tail.size(); ++i) f.SetPair(static_cast<int>(i), fwd[i], bwd[i]);
    Cap best = std::numeric_limits<Cap>::max();
    std::vector<bool> side(n);
    for (uint32_t mask = 0; mask < (1u << s); ++mask) {
      for (int v = 0; v < s; ++v) side[v] = (mask >> v) & 1u;
      side[s] = true;
      side[t] = false;
      best = std::min(best, CutValue(tail, head, fwd, bwd, side));
    }
    for (auto dir : {PushRelabel::Direction::kForward, PushRelabel::Direction::kReverse,
                     PushRelabel::Direction::kAuto}) {
      const Cap flow = f.Solve(dir);
      for (int v = 0; v < n; ++v) side[v] = f.OnSourceSide(v);
      REQUIRE(side[s]);
      REQUIRE(!side[t]);
      CHECK(flow == best);
      CHECK(CutValue(tail, head, fwd, bwd, side) == best);
    }
  }
}

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cic/compress.hpp"
#include "cic/graph.hpp"
#include "cic/plan.hpp"
#include "test_util.hpp"

using cic_test::BruteForce;
using cic_test::Make;
using cic_test::Problem;
using cic_test::Rng;
namespace cd = cic::compress_detail;

namespace {

// A DNN-shaped random DAG: a trunk of chain layers, zero-cost views and
// branching blocks (2-3 branches of 1-3 layers joined by one node), with an
// occasional long skip.
Problem DnnProblem(Rng& rng, int32_t target) {
  Problem p;
  auto node = [&](double d, double s, double bytes) {
    p.device.push_back(d);
    p.server.push_back(s);
    p.bytes.push_back(bytes);
    return p.n++;
  };
  auto edge = [&](int32_t u, int32_t v) {
    p.edges.push_back(u);
    p.edges.push_back(v);
  };
  auto layer = [&]() {
    const double d = rng.Uniform() * 0.02;
    const double bytes = rng.Uniform() < 0.1 ? 0.0 : 1e3 + rng.Uniform() * 5e5;
    return node(d, d / (1 + 9 * rng.Uniform()), bytes);
  };
  int32_t cur = node(0.0, 0.0, 6e5);
  int32_t skip = -1;
  while (p.n < target) {
    const int kind = rng.Below(6);
    if (kind <= 1) {
      const int32_t v = layer();
      edge(cur, v);
      cur = v;
    } else if (kind == 2) {  // a view: zero cost, same bytes
      const int32_t v = node(0.0, 0.0, p.bytes[cur]);
      edge(cur, v);
      cur = v;
    } else if (kind == 3 && skip < 0) {
      skip = cur;
    } else {
      const int branches = 2 + rng.Below(2);
      std::vector<int32_t> ends;
      for (int b = 0; b < branches; ++b) {
        int32_t x = cur;
        const int len = rng.Below(3);  // 0 = a direct edge
        for (int i = 0; i < len; ++i) {
          const int32_t v = layer();
          edge(x, v);
          x = v;
        }
        ends.push_back(x);
      }
      const int32_t join = layer();
      for (int32_t x : ends) edge(x, join);
      if (skip >= 0 && rng.Uniform() < 0.5) {
        edge(skip, join);
        skip = -1;
      }
      cur = join;
    }
  }
  return p;
}

cd::Work ToWork(const cic::Graph& g) {
  cd::Work w;
  std::vector<int64_t> edges;
  for (int32_t u = 0; u < g.num_nodes(); ++u) {
    for (const int32_t* x = g.dag().succ_begin(u); x != g.dag().succ_end(u); ++x) {
      edges.push_back(u);
      edges.push_back(*x);
    }
  }
  REQUIRE(cic::Dag::Build(g.num_nodes(), edges.data(), static_cast<int64_t>(edges.size() / 2),
                          &w.dag)
              .ok());
  w.d = g.device_s();
  w.s = g.server_s();
  w.bytes = g.out_bytes();
  for (int32_t v = 0; v < g.num_nodes(); ++v) w.group.push_back(v);
  return w;
}

void ToGraph(const cd::Work& w, cic::Graph* g) {
  std::vector<int64_t> edges;
  for (int32_t u = 0; u < w.dag.num_nodes(); ++u) {
    for (const int32_t* x = w.dag.succ_begin(u); x != w.dag.succ_end(u); ++x) {
      edges.push_back(u);
      edges.push_back(*x);
    }
  }
  cic::Dag dag;
  REQUIRE(cic::Dag::Build(w.dag.num_nodes(), edges.data(),
                          static_cast<int64_t>(edges.size() / 2), &dag)
              .ok());
  REQUIRE(cic::Graph::Create(std::move(dag), w.d.data(), w.s.data(), w.bytes.data(), g).ok());
}

// The compressed optimum equals the original one (`best`, if >= 0, else the
// full graph's min cut), and its expansion is valid with the same latency.
void CheckSame(cic::Graph& full, const cd::Work& w, Rng& rng, bool brute) {
  cic::Graph small;
  ToGraph(w, &small);
  std::vector<uint8_t> on_small(small.num_nodes()), on_full(full.num_nodes()),
      expanded(full.num_nodes());
  for (int t = 0; t < 6; ++t) {
    const double bw = std::pow(10.0, 3.0 + 8.0 * rng.Uniform());  // 1 kbit/s .. 100 Gbit/s
    const double rtt = rng.Below(3) == 0 ? 0.0 : rng.Uniform() * 0.01;
    cic::Breakdown bs, bf, be;
    REQUIRE(small.MinCut(bw, rtt, on_small.data(), &bs).ok());
    double best = 0.0;
    if (brute) {
      best = BruteForce(full, bw, rtt);
    } else {
      REQUIRE(full.MinCut(bw, rtt, on_full.data(), &bf).ok());
      best = bf.latency_s;
    }
    CAPTURE(bw);
    CAPTURE(rtt);
    CHECK(bs.latency_s == doctest::Approx(best).epsilon(1e-9));
    for (int32_t v = 0; v < full.num_nodes(); ++v) expanded[v] = on_small[w.group[v]];
    REQUIRE(full.Evaluate(expanded.data(), bw, rtt, &be).ok());
    CHECK(be.latency_s == doctest::Approx(bs.latency_s).epsilon(1e-9));
  }
}

}  // namespace

TEST_CASE("compress: a view between two layers merges away") {
  // 0 (input) -> 1 (conv) -> 2 (view, 0 s, same bytes) -> 3 (fc); 1 -> 4 -> 3.
  Problem p{5, {0, 1, 1, 2, 2, 3, 1, 4, 4, 3},
            {0.0, 0.01, 0.0, 0.01, 0.01}, {0.0, 0.001, 0.0, 0.001, 0.001},
            {6e5, 1e4, 1e4, 10, 1e4}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cd::Work w = ToWork(g);
  CHECK(cd::PassThroughOnce(&w) == 1);
  CHECK(w.dag.num_nodes() == 4);
  CHECK(w.group[2] == w.group[3]);  // rule (a): the view joins its consumer
  Rng rng(1);
  CheckSame(g, w, rng, true);
}

TEST_CASE("compress: chain positions off the lower hull merge") {
  // input -> a -> b -> c -> d: cutting after b (big output) is never optimal.
  Problem p{5, {0, 1, 1, 2, 2, 3, 3, 4},
            {0.0, 0.01, 0.01, 0.01, 0.01}, {0.0, 0.001, 0.001, 0.001, 0.001},
            {6e5, 1e3, 5e5, 1e3, 10}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cd::Work w = ToWork(g);
  CHECK(cd::ChainHull(&w) >= 1);
  CHECK(w.group[2] == w.group[3]);
  Rng rng(2);
  CheckSame(g, w, rng, true);
}

TEST_CASE("compress: a diamond block becomes a path of its own optimal cuts") {
  // 0 -> 1 -> {2 -> 3, 4} -> 5 -> 6: node 1 and 5 are cut vertices.
  Problem p{7, {0, 1, 1, 2, 2, 3, 3, 5, 1, 4, 4, 5, 5, 6},
            {0.0, 0.01, 0.02, 0.02, 0.03, 0.01, 0.01},
            {0.0, 0.001, 0.002, 0.002, 0.003, 0.001, 0.001},
            {6e5, 2e5, 3e5, 1e3, 2e3, 1e4, 10}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cd::Work w = ToWork(g);
  std::vector<std::pair<std::string, double>> stats;
  CHECK(cd::Blocks(&w, &stats) >= 0);
  Rng rng(3);
  CheckSame(g, w, rng, true);
}

TEST_CASE("compress: each rule alone and all together keep the optimum (brute force)") {
  Rng rng(5);
  for (int trial = 0; trial < 60; ++trial) {
    Problem p = DnnProblem(rng, 4 + rng.Below(8));
    cic::Graph g;
    REQUIRE(Make(p, &g).ok());
    CAPTURE(trial);
    {
      cd::Work w = ToWork(g);
      while (cd::PassThroughOnce(&w) > 0) {
      }
      CheckSame(g, w, rng, true);
    }
    {
      cd::Work w = ToWork(g);
      cd::ChainHull(&w);
      CheckSame(g, w, rng, true);
    }
    {
      cd::Work w = ToWork(g);
      std::vector<std::pair<std::string, double>> stats;
      REQUIRE(cd::Blocks(&w, &stats) >= 0);
      CheckSame(g, w, rng, true);
    }
    cic::Compressed c;
    REQUIRE(cic::Compress(g, &c).ok());
    cd::Work w;
    REQUIRE(cic::Dag::Build(static_cast<int64_t>(c.device_s.size()), c.edges.data(),
                            static_cast<int64_t>(c.edges.size() / 2), &w.dag)
                .ok());
    w.d = c.device_s;
    w.s = c.server_s;
    w.bytes = c.out_bytes;
    w.group = c.group;
    CheckSame(g, w, rng, true);
  }
}

TEST_CASE("compress: larger DNN-shaped graphs against the full min cut") {
  Rng rng(7);
  for (int trial = 0; trial < 30; ++trial) {
    Problem p = DnnProblem(rng, 30 + rng.Below(120));
    cic::Graph g;
    REQUIRE(Make(p, &g).ok());
    cic::Compressed c;
    REQUIRE(cic::Compress(g, &c).ok());
    CHECK(c.device_s.size() <= static_cast<size_t>(g.num_nodes()));
    cd::Work w;
    REQUIRE(cic::Dag::Build(static_cast<int64_t>(c.device_s.size()), c.edges.data(),
                            static_cast<int64_t>(c.edges.size() / 2), &w.dag)
                .ok());
    w.d = c.device_s;
    w.s = c.server_s;
    w.bytes = c.out_bytes;
    w.group = c.group;
    CAPTURE(trial);
    CheckSame(g, w, rng, false);
    // The expansion lists are the inverse of group.
    for (size_t k = 0; k + 1 < c.expand_start.size(); ++k) {
      for (int64_t i = c.expand_start[k]; i < c.expand_start[k + 1]; ++i) {
        CHECK(c.group[c.expand_nodes[i]] == static_cast<int32_t>(k));
      }
    }
  }
}

TEST_CASE("compress: the plan on the compressed graph equals the full plan") {
  Rng rng(9);
  for (int trial = 0; trial < 30; ++trial) {
    Problem p = DnnProblem(rng, 20 + rng.Below(100));
    cic::Graph g;
    REQUIRE(Make(p, &g).ok());
    const double rtt = trial % 2 ? 0.0 : rng.Uniform() * 0.01;
    cic::Plan full, small;
    cic::Compressed c;
    REQUIRE(cic::Plan::Build(g, rtt, &full).ok());
    REQUIRE(cic::Plan::BuildCompressed(g, rtt, &small, &c).ok());
    CAPTURE(trial);
    CHECK(small.num_partitions() == full.num_partitions());
    CHECK(small.num_solves() <= 2 * small.num_partitions() + 1);
    for (double e = 3.0; e <= 11.0; e += 0.25) {
      const double bw = std::pow(10.0, e);
      int32_t a = 0, b = 0;
      cic::Breakdown x, y;
      REQUIRE(full.Decide(bw, &a, &x).ok());
      REQUIRE(small.Decide(bw, &b, &y).ok());
      CHECK(y.latency_s == doctest::Approx(x.latency_s).epsilon(1e-9));
    }
  }
}

// One immutable Graph, many workspaces: concurrent solves equal sequential
// ones, and a workspace moves between graphs of any size.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "cic/graph.hpp"
#include "cic/plan.hpp"
#include "test_util.hpp"

using cic_test::Make;
using cic_test::Problem;
using cic_test::Rng;

namespace {

// A DNN-like chain of blocks with skips (chains, fan-out and bypassed edges).
Problem Layered(Rng& rng, int32_t n) {
  Problem p;
  p.n = n;
  for (int32_t v = 1; v < n; ++v) {
    p.edges.push_back(v - 1);
    p.edges.push_back(v);
    if (v >= 3 && rng.Uniform() < 0.3) {
      p.edges.push_back(v - 2 - rng.Below(std::min<int32_t>(v - 1, 6)));
      p.edges.push_back(v);
    }
  }
  for (int32_t v = 0; v < n; ++v) {
    p.device.push_back(v == 0 ? 0.0 : rng.Uniform() * 0.02);
    p.server.push_back(v == 0 ? 0.0 : rng.Uniform() * 0.002);
    p.bytes.push_back(std::pow(10.0, 2.0 + 4.0 * rng.Uniform()));
  }
  p.bytes[0] = 6e5;
  return p;
}

struct Answer {
  std::vector<uint8_t> on;
  cic::Breakdown b;
};

bool Same(const Answer& x, const Answer& y) {
  return x.on == y.on && x.b.latency_s == y.b.latency_s && x.b.bytes_sent == y.b.bytes_sent &&
         x.b.device_s == y.b.device_s && x.b.server_s == y.b.server_s;
}

Answer Solve(const cic::Graph& g, double bw, double rtt, cic::Graph::Workspace* ws) {
  Answer a;
  a.on.resize(g.num_nodes());
  REQUIRE(g.MinCut(bw, rtt, a.on.data(), &a.b, ws).ok());
  return a;
}

}  // namespace

TEST_CASE("threads: two threads on one const Graph give the sequential partitions") {
  Rng rng(31);
  const Problem p = Layered(rng, 400);
  cic::Graph graph;
  REQUIRE(Make(p, &graph).ok());
  const cic::Graph& g = graph;
  std::vector<double> bws;
  for (int i = 0; i < 200; ++i) bws.push_back(std::pow(10.0, 3.0 + 8.0 * i / 199.0));
  std::vector<Answer> expected;
  {
    cic::Graph::Workspace ws;
    for (double bw : bws) expected.push_back(Solve(g, bw, 0.002, &ws));
  }
  // Thread 0 walks the bandwidths up, thread 1 down: at every step the two
  // workspaces hold the states of different bandwidths.
  std::vector<Answer> got[2];
  bool ok[2] = {true, true};
  auto work = [&](int t) {
    cic::Graph::Workspace ws;
    got[t].resize(bws.size());
    for (int round = 0; round < 3; ++round) {
      for (size_t k = 0; k < bws.size(); ++k) {
        const size_t i = t == 0 ? k : bws.size() - 1 - k;
        Answer a;
        a.on.resize(g.num_nodes());
        // No doctest macros in threads (doctest is not thread-safe).
        if (!g.MinCut(bws[i], 0.002, a.on.data(), &a.b, &ws).ok()) ok[t] = false;
        got[t][i] = a;
      }
    }
  };
  std::thread a(work, 0), b(work, 1);
  a.join();
  b.join();
  for (int t = 0; t < 2; ++t) {
    CHECK(ok[t]);
    for (size_t i = 0; i < bws.size(); ++i) {
      CAPTURE(i);
      CHECK(Same(got[t][i], expected[i]));
    }
  }
}

TEST_CASE("threads: plans built concurrently on one Graph agree") {
  Rng rng(37);
  const Problem p = Layered(rng, 150);
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::Plan expected;
  REQUIRE(cic::Plan::Build(g, 0.0, &expected).ok());
  cic::Plan plans[2];
  bool ok[2] = {false, false};
  auto work = [&](int t) {
    cic::Graph::Workspace ws;
    ok[t] = cic::Plan::Build(g, 0.0, &plans[t], &ws).ok();
  };
  std::thread a(work, 0), b(work, 1);
  a.join();
  b.join();
  for (int t = 0; t < 2; ++t) {
    REQUIRE(ok[t]);
    CHECK(plans[t].breakpoints_bps() == expected.breakpoints_bps());
    REQUIRE(plans[t].num_partitions() == expected.num_partitions());
    for (int32_t k = 0; k < expected.num_partitions(); ++k) {
      const uint8_t* x = plans[t].on_device(k);
      const uint8_t* y = expected.on_device(k);
      CHECK(std::vector<uint8_t>(x, x + g.num_nodes()) == std::vector<uint8_t>(y, y + g.num_nodes()));
    }
  }
}

TEST_CASE("workspace: reused across graphs of different size (re-binds)") {
  Rng rng(41);
  std::vector<cic::Graph> graphs(4);
  const int32_t sizes[4] = {5, 300, 20, 120};
  for (int i = 0; i < 4; ++i) REQUIRE(Make(Layered(rng, sizes[i]), &graphs[i]).ok());
  cic::Graph::Workspace shared;
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 4; ++i) {
      const double bw = std::pow(10.0, 4.0 + round + i * 0.5);
      cic::Graph::Workspace fresh;
      CAPTURE(i);
      CHECK(Same(Solve(graphs[i], bw, 0.0, &shared), Solve(graphs[i], bw, 0.0, &fresh)));
    }
  }
  // A copy of a Graph is another network: the workspace re-binds to it, and
  // a Graph re-created in place (same address) is re-bound too.
  cic::Graph copy = graphs[1];
  CHECK(Same(Solve(copy, 1e6, 0.0, &shared), Solve(graphs[1], 1e6, 0.0, &shared)));
  REQUIRE(Make(Layered(rng, 7), &graphs[1]).ok());
  cic::Graph::Workspace fresh;
  CHECK(Same(Solve(graphs[1], 1e6, 0.0, &shared), Solve(graphs[1], 1e6, 0.0, &fresh)));
}

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cic/graph.hpp"
#include "test_util.hpp"

using cic_test::Make;
using cic_test::Problem;

namespace {

std::vector<uint8_t> Solve(cic::Graph& g, double bw, double rtt, cic::Breakdown* b) {
  std::vector<uint8_t> on(g.num_nodes());
  REQUIRE(g.MinCut(bw, rtt, on.data(), b).ok());
  return on;
}

}  // namespace

TEST_CASE("graph: chain picks the cut after the small activation") {
  // input(600 KB) -> conv (50 ms dev, 5 ms srv, 1 KB out) -> fc (50/5 ms).
  Problem p{3, {0, 1, 1, 2}, {0.0, 0.05, 0.05}, {0.0, 0.005, 0.005}, {600e3, 1e3, 4e3}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::Breakdown b;
  CHECK(Solve(g, 10e6, 0.0, &b) == std::vector<uint8_t>{1, 1, 0});
  CHECK(b.latency_s == doctest::Approx(0.05 + 8e3 / 10e6 + 0.005));
  CHECK(b.bytes_sent == 1e3);
  CHECK(Solve(g, 1e3, 0.0, &b) == std::vector<uint8_t>{1, 1, 1});   // slow link
  CHECK(Solve(g, 1e10, 0.0, &b) == std::vector<uint8_t>{1, 0, 0});  // fast link
}

TEST_CASE("graph: an output read by two server layers is sent once") {
  // 0 -> 1 -> {2, 3} -> 4. Sending node 1's output (100 KB) once is cheapest.
  Problem p{5, {0, 1, 1, 2, 1, 3, 2, 4, 3, 4},
            {0.0, 0.001, 0.04, 0.04, 0.001}, {0.0, 0.01, 0.001, 0.001, 0.001},
            {1e6, 1e5, 1e6, 1e6, 10.0}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::Breakdown b;
  CHECK(Solve(g, 100e6, 0.0, &b) == std::vector<uint8_t>{1, 1, 0, 0, 0});
  CHECK(b.bytes_sent == 1e5);
  CHECK(b.num_sent == 1);
  CHECK(b.transfer_s == doctest::Approx(8e5 / 100e6));
}

TEST_CASE("graph: closure forbids sending data back to the device") {
  // 0 -> 1 -> 2 with 1 cheap on the server, 2 cheap on the device: without
  // closure arcs the cut would put 1 on the server and 2 back on the device.
  Problem p{3, {0, 1, 1, 2}, {0.0, 1.0, 0.0}, {0.0, 0.0, 1.0}, {0.0, 0.0, 0.0}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::Breakdown b;
  const auto on = Solve(g, 1e6, 0.0, &b);
  CHECK(b.latency_s == doctest::Approx(1.0));
  CHECK(g.CheckPartition(on.data()).ok());
  const std::vector<uint8_t> invalid = {1, 0, 1};
  CHECK(!g.CheckPartition(invalid.data()).ok());
}

TEST_CASE("graph: the input is pinned to the device") {
  // A big input is cheaper to run remotely, but it lives on the device.
  Problem p{2, {0, 1}, {10.0, 1.0}, {0.0, 0.0}, {1e9, 0.0}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::Breakdown b;
  const auto on = Solve(g, 1e6, 0.0, &b);
  CHECK(on[0] == 1);
  CHECK(b.latency_s == doctest::Approx(11.0));  // 8e9 / 1e6 s to send it is worse
}

TEST_CASE("graph: rtt makes all-device win") {
  Problem p{2, {0, 1}, {0.0, 0.01}, {0.0, 0.001}, {1e3, 0.0}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::Breakdown b;
  CHECK(Solve(g, 1e9, 0.0, &b) == std::vector<uint8_t>{1, 0});
  CHECK(Solve(g, 1e9, 0.1, &b) == std::vector<uint8_t>{1, 1});
  CHECK(b.rtt_s == 0.0);
  CHECK(b.latency_s == doctest::Approx(0.01));
}

TEST_CASE("graph: random DAGs equal brute force") {
  cic_test::Rng rng(7);
  for (int trial = 0; trial < 600; ++trial) {
    const Problem p = cic_test::RandomProblem(rng, 1 + rng.Below(10));
    cic::Graph g;
    REQUIRE(Make(p, &g).ok());
    const double bw = std::pow(10.0, 3.0 + 8.0 * rng.Uniform());
    const double rtt = rng.Below(3) == 0 ? 0.02 * rng.Uniform() : 0.0;
    cic::Breakdown b;
    const auto on = Solve(g, bw, rtt, &b);
    REQUIRE(g.CheckPartition(on.data()).ok());
    const double best = cic_test::BruteForce(g, bw, rtt);
    CHECK(b.latency_s <= best * (1 + 1e-12) + 1e-15);
  }
}

TEST_CASE("graph: bad costs and links are reported") {
  Problem p{2, {0, 1}, {0.0, 1.0}, {0.0, 1.0}, {1.0, 1.0}};
  cic::Graph g;
  p.device[1] = std::nan("");
  CHECK(Make(p, &g).message() == "device_s[1] is not finite (nan)");
  p.device[1] = 1.0;
  p.server[0] = -1.0;
  CHECK(Make(p, &g).message().find("server_s[0] is negative") == 0);
  p.server[0] = 0.0;
  p.bytes[1] = std::numeric_limits<double>::infinity();
  CHECK(Make(p, &g).message().find("out_bytes[1] is not finite") == 0);
  p.bytes[1] = 0.0;
  REQUIRE(Make(p, &g).ok());
  std::vector<uint8_t> on(2);
  cic::Breakdown b;
  for (double bw : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    CHECK(g.MinCut(bw, 0.0, on.data(), &b).message().find("bandwidth_bps") == 0);
  }
  for (double rtt : {-1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    CHECK(g.MinCut(1e6, rtt, on.data(), &b).message().find("rtt_s") == 0);
  }
}

TEST_CASE("graph: extreme magnitudes stay exact or report overflow") {
  Problem p{3, {0, 1, 1, 2}, {0.0, 1e-9, 1e-9}, {0.0, 1e-12, 1e-12}, {1e12, 1.0, 1.0}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  std::vector<uint8_t> on(3);
  cic::Breakdown b;
  // Denormal and huge bandwidths: transfers clamp instead of overflowing.
  REQUIRE(g.MinCut(4.9e-324, 0.0, on.data(), &b).ok());
  CHECK(on == std::vector<uint8_t>{1, 1, 1});
  REQUIRE(g.MinCut(1e300, 0.0, on.data(), &b).ok());
  CHECK(on == std::vector<uint8_t>{1, 0, 0});
  // Costs whose sum overflows a double are refused, not mis-solved.
  Problem big{3, {0, 1, 1, 2}, {0.0, 1.5e308, 1.5e308}, {0.0, 1.0, 1.0}, {1.0, 1.0, 1.0}};
  cic::Graph h;
  cic::Result r = Make(big, &h);
  CHECK(r.status() == cic::Status::kIntOverflow);
  Problem big2{3, {0, 1, 1, 2}, {0.0, 1.0, 1.0}, {0.0, 1.7e308, 1.7e308}, {1.0, 1.0, 1.0}};
  r = Make(big2, &h);
  CHECK(r.status() == cic::Status::kIntOverflow);
  CHECK(r.message().find("overflow") != std::string::npos);
}

TEST_CASE("graph: chain and bypass reductions agree with the plain network") {
  cic_test::Rng rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    // A long chain with side branches and skips, so chains, bypassed edges
    // and auxiliary nodes all occur.
    Problem p;
    p.n = 6 + rng.Below(40);
    for (int32_t v = 1; v < p.n; ++v) {
      p.edges.push_back(v - 1);
      p.edges.push_back(v);
      if (v >= 3 && rng.Uniform() < 0.15) {
        p.edges.push_back(v - 3 - rng.Below(std::min<int32_t>(v - 2, 8)));
        p.edges.push_back(v);
      }
    }
    for (int32_t v = 0; v < p.n; ++v) {
      p.device.push_back(rng.Uniform() < 0.1 ? 0.0 : rng.Uniform() * 0.05);
      p.server.push_back(rng.Uniform() < 0.1 ? 0.0 : rng.Uniform() * 0.005);
      p.bytes.push_back(rng.Uniform() < 0.1 ? 0.0 : std::pow(10.0, 2.0 + 4.0 * rng.Uniform()));
    }
    cic::Graph reduced, plain;
    cic::Dag d1, d2;
    REQUIRE(cic::Dag::Build(p.n, p.edges.data(), static_cast<int64_t>(p.edges.size() / 2), &d1).ok());
    REQUIRE(cic::Dag::Build(p.n, p.edges.data(), static_cast<int64_t>(p.edges.size() / 2), &d2).ok());
    REQUIRE(cic::Graph::Create(std::move(d1), p.device.data(), p.server.data(), p.bytes.data(), &reduced, true).ok());
    REQUIRE(cic::Graph::Create(std::move(d2), p.device.data(), p.server.data(), p.bytes.data(), &plain, false).ok());
    CHECK(reduced.network_arc_pairs() <= plain.network_arc_pairs());
    for (int k = 0; k < 5; ++k) {
      const double bw = std::pow(10.0, 3.0 + 8.0 * rng.Uniform());
      const double rtt = k == 4 ? 0.01 : 0.0;
      cic::Breakdown a, b;
      const auto on_a = Solve(reduced, bw, rtt, &a);
      const auto on_b = Solve(plain, bw, rtt, &b);
      REQUIRE(reduced.CheckPartition(on_a.data()).ok());
      CHECK(a.latency_s == doctest::Approx(b.latency_s).epsilon(1e-12));
    }
  }
}

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cic/graph.hpp"
#include "cic/plan.hpp"
#include "test_util.hpp"

using cic_test::BruteForce;
using cic_test::Make;
using cic_test::Problem;
using cic_test::Rng;

namespace {

// Every valid partition's line (brute force), for the envelope oracle.
std::vector<cic::Line> AllLines(const cic::Graph& g, double rtt) {
  const int32_t n = g.num_nodes();
  std::vector<cic::Line> lines;
  std::vector<uint8_t> on(n);
  for (uint32_t mask = 0; mask < (1u << n); ++mask) {
    for (int32_t v = 0; v < n; ++v) on[v] = (mask >> v) & 1u;
    cic::Breakdown b;
    if (g.Evaluate(on.data(), 1.0, rtt, &b).ok()) {
      lines.push_back({b.device_s + b.server_s + b.rtt_s, 8.0 * b.bytes_sent});
    }
  }
  return lines;
}

void CheckPlanAgainstBruteForce(cic::Graph& g, double rtt) {
  cic::Plan plan;
  REQUIRE(cic::Plan::Build(g, rtt, &plan).ok());
  const int32_t k = plan.num_partitions();
  REQUIRE(k >= 1);
  CHECK(static_cast<int32_t>(plan.breakpoints_bps().size()) == k - 1);
  CHECK(plan.num_solves() <= 2 * k + 1);  // 2K - 1 + a tied seed per end
  for (size_t i = 1; i < plan.breakpoints_bps().size(); ++i) {
    CHECK(plan.breakpoints_bps()[i - 1] < plan.breakpoints_bps()[i]);
  }
  // The true envelope has as many pieces.
  std::vector<int32_t> pieces;
  std::vector<double> cross;
  cic::LowerEnvelope(AllLines(g, rtt), &pieces, &cross);
  CHECK(static_cast<int32_t>(pieces.size()) == k);
  std::vector<double> bws;
  for (double e = 3.0; e <= 11.0; e += 0.5) bws.push_back(std::pow(10.0, e));
  for (double b : plan.breakpoints_bps()) {
    bws.push_back(b * (1 + 1e-9));
    bws.push_back(b * (1 - 1e-9));
    bws.push_back(b);
  }
  for (double bw : bws) {
    int32_t seg = -1;
    cic::Breakdown b;
    REQUIRE(plan.Decide(bw, &seg, &b).ok());
    const double best = BruteForce(g, bw, rtt);
    CHECK(b.latency_s == doctest::Approx(best).epsilon(1e-9));
    cic::Breakdown check;
    REQUIRE(g.Evaluate(plan.on_device(seg), bw, rtt, &check).ok());
    CHECK(check.latency_s == b.latency_s);
  }
}

}  // namespace

TEST_CASE("plan: lower envelope of hand-made lines") {
  // y = 10 (flat), y = 1 + 2x, y = 4 + 0.5x, y = 20 + 0.1x (never lowest: above 10 always)
  std::vector<cic::Line> lines{{10, 0}, {1, 2}, {4, 0.5}, {20, 0.1}, {1, 2}};
  std::vector<int32_t> pieces;
  std::vector<double> cross;
  cic::LowerEnvelope(lines, &pieces, &cross);
  CHECK(pieces == std::vector<int32_t>{1, 2, 0});
  REQUIRE(cross.size() == 2);
  CHECK(cross[0] == doctest::Approx(2.0));   // 1 + 2x = 4 + 0.5x
  CHECK(cross[1] == doctest::Approx(12.0));  // 4 + 0.5x = 10
}

TEST_CASE("plan: a dominated line with a larger slope is dropped for x > 0") {
  std::vector<cic::Line> lines{{1, 5}, {1, 2}, {3, 0}};
  std::vector<int32_t> pieces;
  std::vector<double> cross;
  cic::LowerEnvelope(lines, &pieces, &cross);
  CHECK(pieces == std::vector<int32_t>{1, 2});
}

TEST_CASE("plan: chain example has three pieces and binary search picks them") {
  // input(600 KB) -> conv (50 ms dev, 5 ms srv, 1 KB out) -> fc (50/5 ms).
  Problem p{3, {0, 1, 1, 2}, {0.0, 0.05, 0.05}, {0.0, 0.005, 0.005}, {600e3, 1e3, 4e3}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::Plan plan;
  REQUIRE(cic::Plan::Build(g, 0.0, &plan).ok());
  REQUIRE(plan.num_partitions() == 3);
  CHECK(plan.num_solves() <= 5);
  const uint8_t* slow = plan.on_device(plan.Segment(1e3));
  CHECK(std::vector<uint8_t>(slow, slow + 3) == std::vector<uint8_t>{1, 1, 1});
  const uint8_t* mid = plan.on_device(plan.Segment(10e6));
  CHECK(std::vector<uint8_t>(mid, mid + 3) == std::vector<uint8_t>{1, 1, 0});
  const uint8_t* fast = plan.on_device(plan.Segment(1e10));
  CHECK(std::vector<uint8_t>(fast, fast + 3) == std::vector<uint8_t>{1, 0, 0});
  // Breakpoints: all-device (0.1) vs split (0.055 + 8e3 x): x = 0.045 / 8e3.
  CHECK(plan.breakpoints_bps()[0] == doctest::Approx(8e3 / 0.045));
  // +inf is the fastest link; NaN, 0 and negatives are rejected.
  int32_t seg = -1;
  cic::Breakdown b;
  CHECK(plan.Decide(std::numeric_limits<double>::infinity(), &seg, &b).ok());
  CHECK(seg == 2);
  CHECK(b.transfer_s == 0.0);
  CHECK_FALSE(plan.Decide(0.0, &seg, &b).ok());
  CHECK_FALSE(plan.Decide(-1.0, &seg, &b).ok());
  CHECK_FALSE(plan.Decide(std::nan(""), &seg, &b).ok());
  CHECK_FALSE(plan.Decide(-std::numeric_limits<double>::infinity(), &seg, &b).ok());
}

TEST_CASE("plan: rtt shifts offloading lines only") {
  Problem p{3, {0, 1, 1, 2}, {0.0, 0.05, 0.05}, {0.0, 0.005, 0.005}, {600e3, 1e3, 4e3}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::Plan plan;
  REQUIRE(cic::Plan::Build(g, 0.2, &plan).ok());  // rtt above any gain
  CHECK(plan.num_partitions() == 1);
  CHECK(plan.breakpoints_bps().empty());
  CheckPlanAgainstBruteForce(g, 0.01);
}

TEST_CASE("plan: random small DAGs against brute force at many bandwidths") {
  Rng rng(11);
  for (int trial = 0; trial < 80; ++trial) {
    Problem p = cic_test::RandomProblem(rng, 2 + rng.Below(8));
    cic::Graph g;
    REQUIRE(Make(p, &g).ok());
    const double rtt = trial % 3 == 0 ? 0.0 : rng.Uniform() * 0.01;
    CAPTURE(trial);
    CheckPlanAgainstBruteForce(g, rtt);
  }
}

TEST_CASE("plan: from_partitions rejects invalid candidates and keeps the envelope") {
  Problem p{3, {0, 1, 1, 2}, {0.0, 0.05, 0.05}, {0.0, 0.005, 0.005}, {600e3, 1e3, 4e3}};
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::Plan plan;
  const std::vector<uint8_t> bad{0, 1, 1};  // input on the server
  CHECK_FALSE(cic::Plan::FromPartitions(g, 0.0, bad.data(), 1, &plan).ok());
  const std::vector<uint8_t> back{1, 0, 1};  // data flows back
  CHECK_FALSE(cic::Plan::FromPartitions(g, 0.0, back.data(), 1, &plan).ok());
  const std::vector<uint8_t> parts{1, 1, 1, 1, 0, 0, 1, 1, 0};
  REQUIRE(cic::Plan::FromPartitions(g, 0.0, parts.data(), 3, &plan).ok());
  CHECK(plan.num_partitions() == 3);
  CHECK(plan.num_solves() == 0);
}

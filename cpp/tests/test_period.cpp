// The throughput objective (period.hpp) and its plan (plan.hpp) against brute
// force over every subset of nodes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "cic/graph.hpp"
#include "cic/period.hpp"
#include "cic/plan.hpp"
#include "test_util.hpp"

using cic_test::Make;
using cic_test::Problem;
using cic_test::RandomProblem;
using cic_test::Rng;

namespace {

double PeriodOf(const cic::Breakdown& b) {
  return std::max({b.device_s, b.transfer_s, b.server_s});
}

// Graph::Evaluate, also at bw = +inf (no transfer time).
cic::Result Eval(const cic::Graph& g, const uint8_t* on, double bw, cic::Breakdown* b) {
  cic::Result r = g.CheckPartition(on);
  if (r.ok()) *b = cic::Price(cic::SumPartition(g.costs(), on), bw, 0.0);
  return r;
}

// The smallest period over every valid partition.
double BrutePeriod(const cic::Graph& g, double bw) {
  const int32_t n = g.num_nodes();
  double best = std::numeric_limits<double>::infinity();
  std::vector<uint8_t> on(n);
  for (uint32_t mask = 0; mask < (1u << n); ++mask) {
    for (int32_t v = 0; v < n; ++v) on[v] = (mask >> v) & 1u;
    cic::Breakdown b;
    if (Eval(g, on.data(), bw, &b).ok()) best = std::min(best, PeriodOf(b));
  }
  return best;
}

// The Pareto front of (max(device, server), bytes), bytes ascending; points
// closer than `tol` in c count as equal (float sums of equal exact values).
std::vector<std::pair<double, double>> BruteFront(const cic::Graph& g, double tol) {
  const int32_t n = g.num_nodes();
  std::vector<std::pair<double, double>> pts;  // (bytes, c)
  std::vector<uint8_t> on(n);
  for (uint32_t mask = 0; mask < (1u << n); ++mask) {
    for (int32_t v = 0; v < n; ++v) on[v] = (mask >> v) & 1u;
    cic::Breakdown b;
    if (g.Evaluate(on.data(), 1.0, 0.0, &b).ok()) {
      pts.push_back({b.bytes_sent, std::max(b.device_s, b.server_s)});
    }
  }
  std::sort(pts.begin(), pts.end());
  std::vector<std::pair<double, double>> front;
  for (const auto& p : pts) {
    if (!front.empty() && front.back().second <= p.second + tol) continue;
    front.push_back(p);
  }
  return front;
}

bool Close(double a, double b) { return std::fabs(a - b) <= 1e-9 * std::max(1.0, std::fabs(b)); }

}  // namespace

TEST_CASE("MinPeriod equals brute force on random DAGs") {
  Rng rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const Problem p = RandomProblem(rng, 1 + rng.Below(11));
    cic::Graph g;
    REQUIRE(Make(p, &g).ok());
    cic::PeriodSearch search;
    REQUIRE(cic::PeriodSearch::Create(g, &search).ok());
    for (double bw : {1e5, 1e6, 1e7, 1e8, std::numeric_limits<double>::infinity()}) {
      cic::PeriodSolution sol;
      REQUIRE(search.MinPeriod(bw, cic::PeriodOptions{}, &sol).ok());
      CHECK(sol.optimal);
      cic::Breakdown b;
      REQUIRE(Eval(g, sol.on_device.data(), bw, &b).ok());  // valid
      const double best = BrutePeriod(g, bw);
      CHECK(Close(PeriodOf(b), best));
      CHECK(sol.lower_bound_s <= PeriodOf(b) * (1 + 1e-9) + 1e-15);
    }
  }
}

TEST_CASE("MinPeriod past its step limit: the best found and a valid lower bound") {
  Rng rng(12);
  for (int trial = 0; trial < 100; ++trial) {
    const Problem p = RandomProblem(rng, 4 + rng.Below(8));
    cic::Graph g;
    REQUIRE(Make(p, &g).ok());
    cic::PeriodSearch search;
    REQUIRE(cic::PeriodSearch::Create(g, &search).ok());
    const double bw = 1e7;
    const double best = BrutePeriod(g, bw);
    for (int64_t limit : {0, 1, 3, 10}) {
      cic::PeriodOptions opt;
      opt.max_steps = limit;
      cic::PeriodSolution sol;
      REQUIRE(search.MinPeriod(bw, opt, &sol).ok());
      CHECK(sol.steps <= limit);
      cic::Breakdown b;
      REQUIRE(g.Evaluate(sol.on_device.data(), bw, 0.0, &b).ok());
      CHECK(PeriodOf(b) >= best * (1 - 1e-9));
      CHECK(sol.lower_bound_s <= best * (1 + 1e-9) + 1e-15);
      if (sol.optimal) CHECK(Close(PeriodOf(b), best));
    }
  }
}

TEST_CASE("ParetoFront and the throughput plan equal brute force") {
  Rng rng(13);
  for (int trial = 0; trial < 200; ++trial) {
    const Problem p = RandomProblem(rng, 1 + rng.Below(10));
    cic::Graph g;
    REQUIRE(Make(p, &g).ok());
    cic::Plan plan;
    bool complete = false;
    REQUIRE(cic::Plan::BuildThroughput(g, 0.0, cic::PeriodOptions{}, &plan, &complete).ok());
    CHECK(complete);
    const auto front = BruteFront(g, 1e-12);
    REQUIRE(plan.num_partitions() == static_cast<int32_t>(front.size()));
    for (int32_t k = 0; k < plan.num_partitions(); ++k) {
      const cic::PartitionSums& s = plan.sums(k);
      CHECK(Close(std::max(s.device_s, s.server_s), front[k].second));
      CHECK(Close(s.bytes_sent, front[k].first));
    }
    const auto& bps = plan.breakpoints_bps();
    for (size_t i = 1; i < bps.size(); ++i) CHECK(bps[i - 1] < bps[i]);
    std::vector<double> bws = {1e3, 1e5, 1e6, 1e7, 1e8, 1e10};
    for (double b : bps) {
      bws.push_back(b);
      bws.push_back(b * (1 + 1e-9));
      bws.push_back(b * (1 - 1e-9));
    }
    for (double bw : bws) {
      int32_t seg = -1;
      cic::Breakdown b;
      REQUIRE(plan.Decide(bw, &seg, &b).ok());
      CHECK(Close(PeriodOf(b), BrutePeriod(g, bw)));
    }
  }
}

TEST_CASE("MinPeriod on a chain equals the best cut point") {
  // 0 -> 1 -> ... -> 39; every prefix is a partition.
  Rng rng(14);
  Problem p;
  p.n = 40;
  for (int32_t v = 0; v + 1 < p.n; ++v) {
    p.edges.push_back(v);
    p.edges.push_back(v + 1);
  }
  for (int32_t v = 0; v < p.n; ++v) {
    p.device.push_back(rng.Uniform() * 0.02);
    p.server.push_back(rng.Uniform() * 0.002);
    p.bytes.push_back(rng.Uniform() * 1e6);
  }
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::PeriodSearch search;
  REQUIRE(cic::PeriodSearch::Create(g, &search).ok());
  for (double bw : {1e5, 1e6, 1e7, 1e8, 1e9}) {
    double best = std::numeric_limits<double>::infinity();
    std::vector<uint8_t> on(p.n, 0);
    for (int32_t k = 1; k <= p.n; ++k) {
      std::fill(on.begin(), on.end(), 0);
      std::fill(on.begin(), on.begin() + k, 1);
      cic::Breakdown b;
      REQUIRE(g.Evaluate(on.data(), bw, 0.0, &b).ok());
      best = std::min(best, PeriodOf(b));
    }
    cic::PeriodSolution sol;
    REQUIRE(search.MinPeriod(bw, cic::PeriodOptions{}, &sol).ok());
    cic::Breakdown b;
    REQUIRE(g.Evaluate(sol.on_device.data(), bw, 0.0, &b).ok());
    CHECK(Close(PeriodOf(b), best));
  }
}

TEST_CASE("MinPeriod rejects a bad bandwidth and step limit") {
  Rng rng(15);
  const Problem p = RandomProblem(rng, 5);
  cic::Graph g;
  REQUIRE(Make(p, &g).ok());
  cic::PeriodSearch search;
  REQUIRE(cic::PeriodSearch::Create(g, &search).ok());
  cic::PeriodSolution sol;
  CHECK(!search.MinPeriod(0.0, cic::PeriodOptions{}, &sol).ok());
  CHECK(!search.MinPeriod(std::nan(""), cic::PeriodOptions{}, &sol).ok());
  cic::PeriodOptions bad;
  bad.max_steps = -1;
  CHECK(!search.MinPeriod(1e6, bad, &sol).ok());
  // A denormal bandwidth: every transfer is clamped; the optimum is still exact.
  REQUIRE(search.MinPeriod(5e-324, cic::PeriodOptions{}, &sol).ok());
  cic::Breakdown b;
  REQUIRE(g.Evaluate(sol.on_device.data(), 5e-324, 0.0, &b).ok());
  CHECK(Close(PeriodOf(b), BrutePeriod(g, 5e-324)));
}

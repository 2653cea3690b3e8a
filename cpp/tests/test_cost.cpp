// The one pricing function (cost.hpp) on hand-drawn partitions, the chain
// detector, and the network builder with nodes pinned to the server against
// brute force.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cic/cost.hpp"
#include "cic/dag.hpp"
#include "cic/graph.hpp"
#include "test_util.hpp"

using cic_test::Problem;
using cic_test::Rng;

namespace {

cic::Dag MakeDag(int32_t n, const std::vector<int64_t>& edges) {
  cic::Dag d;
  REQUIRE(cic::Dag::Build(n, edges.data(), static_cast<int64_t>(edges.size() / 2), &d).ok());
  return d;
}

}  // namespace

TEST_CASE("cost: sums, sent set and breakdown of a hand-drawn partition") {
  //      0 (input) -> 1 -> 2 -> 4
  //                    \-> 3 -/
  // D = {0, 1, 2}, S = {3, 4}: 1 sends to 3, 2 sends to 4; 0 sends nothing.
  const cic::Dag dag = MakeDag(5, {0, 1, 1, 2, 1, 3, 2, 4, 3, 4});
  const std::vector<double> d{1.0, 2.0, 4.0, 8.0, 16.0};
  const std::vector<double> s{0.5, 0.25, 0.125, 0.0625, 0.03125};
  const std::vector<double> b{100.0, 10.0, 20.0, 40.0, 80.0};
  const cic::LayerCosts c{&dag, d.data(), s.data(), b.data()};
  const std::vector<uint8_t> on{1, 1, 1, 0, 0};
  REQUIRE(cic::CheckPartition(dag, on.data()).ok());
  const cic::PartitionSums sums = cic::SumPartition(c, on.data());
  CHECK(sums.device_s == 7.0);
  CHECK(sums.server_s == 0.09375);
  CHECK(sums.bytes_sent == 30.0);  // node 1 once (two successors, one on S), node 2
  CHECK(sums.num_sent == 2);
  CHECK(sums.offloads);
  std::vector<int64_t> sent(2);
  cic::FillSent(dag, on.data(), sent.data());
  CHECK(sent == std::vector<int64_t>{1, 2});
  const cic::Breakdown bd = cic::Price(sums, 80.0, 0.5);
  CHECK(bd.transfer_s == 3.0);  // 8 * 30 / 80
  CHECK(bd.rtt_s == 0.5);
  CHECK(bd.latency_s == 7.0 + 3.0 + 0.09375 + 0.5);
  CHECK(bd.bytes_sent == 30.0);
  const cic::Line line = cic::LineOf(sums, 0.5);
  CHECK(line.a == 7.0 + 0.09375 + 0.5);
  CHECK(line.b == 240.0);
  CHECK(cic::LineOf(bd).a == line.a);
  CHECK(cic::LineOf(bd).b == line.b);
  // An output read by two server layers is sent once.
  const std::vector<uint8_t> head{1, 1, 0, 0, 0};
  const cic::PartitionSums h = cic::SumPartition(c, head.data());
  CHECK(h.bytes_sent == 10.0);
  CHECK(h.num_sent == 1);
}

TEST_CASE("cost: rtt only when offloading, and never -0") {
  const cic::Dag dag = MakeDag(2, {0, 1});
  const std::vector<double> d{1.0, 1.0}, s{1.0, 0.5}, b{8.0, 8.0};
  const cic::LayerCosts c{&dag, d.data(), s.data(), b.data()};
  const std::vector<uint8_t> all{1, 1}, split{1, 0};
  const cic::Breakdown local = cic::Price(cic::SumPartition(c, all.data()), 64.0, 0.25);
  CHECK(!local.offloads);
  CHECK(local.rtt_s == 0.0);
  CHECK(local.transfer_s == 0.0);
  CHECK(local.latency_s == 2.0);
  CHECK(cic::LineOf(cic::SumPartition(c, all.data()), 0.25).a == 2.0);
  const cic::Breakdown off = cic::Price(cic::SumPartition(c, split.data()), 64.0, -0.0);
  CHECK(off.offloads);
  CHECK(off.transfer_s == 1.0);
  CHECK(!std::signbit(off.rtt_s));  // -0.0 + 0.0 == +0.0
  CHECK(off.latency_s == 1.0 + 1.0 + 0.5);
  // +inf bandwidth: no transfer time.
  CHECK(cic::Price(cic::SumPartition(c, split.data()),
                   std::numeric_limits<double>::infinity(), 0.0)
            .transfer_s == 0.0);
}

TEST_CASE("cost: validity names the node (inputs, closure, pins)") {
  const cic::Dag dag = MakeDag(3, {0, 1, 1, 2});
  const std::vector<uint8_t> input_off{0, 0, 0}, back{1, 0, 1}, ok{1, 1, 0}, all{1, 1, 1};
  CHECK(cic::CheckPartition(dag, input_off.data()).message().find("model input") !=
        std::string::npos);
  CHECK(cic::CheckPartition(dag, back.data()).message().find("predecessor 1") !=
        std::string::npos);
  CHECK(cic::CheckPartition(dag, ok.data()).ok());
  const std::vector<uint8_t> pins{0, 0, 1};
  CHECK(cic::CheckPartition(dag, ok.data(), pins.data()).ok());
  CHECK(cic::CheckPartition(dag, all.data(), pins.data()).message().find("pinned") !=
        std::string::npos);
}

TEST_CASE("cost: chain split lines") {
  // Chain 0 -> 1 -> 2: after 0 costs d0 + s1 + s2 + 8 b0 x, after 1 d0 + d1 + s2 + 8 b1 x.
  const cic::Dag dag = MakeDag(3, {0, 1, 1, 2});
  const std::vector<double> d{1.0, 2.0, 4.0}, s{0.5, 0.25, 0.125}, b{3.0, 5.0, 7.0};
  const cic::LayerCosts c{&dag, d.data(), s.data(), b.data()};
  const std::vector<int32_t> members{0, 1, 2};
  std::vector<cic::Line> lines(2);
  cic::ChainSplitLines(c, members.data(), 3, lines.data());
  CHECK(lines[0].a == 1.0 + 0.25 + 0.125);
  CHECK(lines[0].b == 24.0);
  CHECK(lines[1].a == 1.0 + 2.0 + 0.125);
  CHECK(lines[1].b == 40.0);
  // Each line is the cost model's price of that split (without rtt).
  for (int j = 0; j < 2; ++j) {
    std::vector<uint8_t> on{1, static_cast<uint8_t>(j >= 1), 0};
    const cic::Line l = cic::LineOf(cic::SumPartition(c, on.data()), 0.0);
    CHECK(l.a == lines[j].a);
    CHECK(l.b == lines[j].b);
  }
}

TEST_CASE("dag: the chain detector includes input heads and honours exclusions") {
  // 0 (input) -> 1 -> 2 -> {3, 4} -> 5; 6 (input) -> 5.
  const cic::Dag dag = MakeDag(7, {0, 1, 1, 2, 2, 3, 2, 4, 3, 5, 4, 5, 6, 5});
  std::vector<int32_t> next;
  std::vector<uint8_t> has_prev;
  dag.FindLinks(nullptr, &next, &has_prev);
  CHECK(next == std::vector<int32_t>{1, 2, -1, -1, -1, -1, -1});
  CHECK(has_prev == std::vector<uint8_t>{0, 1, 1, 0, 0, 0, 0});
  const std::vector<uint8_t> exclude{0, 0, 1, 0, 0, 0, 0};
  dag.FindLinks(exclude.data(), &next, &has_prev);
  CHECK(next == std::vector<int32_t>{1, -1, -1, -1, -1, -1, -1});
  CHECK(has_prev == std::vector<uint8_t>{0, 1, 0, 0, 0, 0, 0});
}

TEST_CASE("graph: an input-headed chain is reduced and stays exact") {
  // input -> a -> b -> c: one chain headed by the input (H contracted into s).
  Problem p{4, {0, 1, 1, 2, 2, 3}, {0.0, 0.02, 0.03, 0.01}, {0.0, 0.002, 0.003, 0.001},
            {6e5, 1e3, 5e4, 10.0}};
  cic::Graph reduced, plain;
  REQUIRE(cic_test::Make(p, &reduced).ok());
  cic::Dag dag = MakeDag(p.n, p.edges);
  REQUIRE(cic::Graph::Create(std::move(dag), p.device.data(), p.server.data(), p.bytes.data(),
                             &plain, false)
              .ok());
  // The whole chain is two reduced nodes: H (= s) and L; one arc pair s->L
  // (the chain arc) and L's terminal.
  CHECK(reduced.network_arc_pairs() < plain.network_arc_pairs());
  for (double bw : {1e3, 1e5, 1e6, 1e7, 1e8, 1e10}) {
    for (double rtt : {0.0, 0.005}) {
      std::vector<uint8_t> on(p.n);
      cic::Breakdown b;
      REQUIRE(reduced.MinCut(bw, rtt, on.data(), &b).ok());
      REQUIRE(reduced.CheckPartition(on.data()).ok());
      CHECK(b.latency_s == doctest::Approx(cic_test::BruteForce(reduced, bw, rtt)).epsilon(1e-12));
    }
  }
}

TEST_CASE("graph: nodes pinned to the server (the block construction) equal brute force") {
  Rng rng(23);
  int pinned_cases = 0;
  for (int trial = 0; trial < 500; ++trial) {
    const Problem p = cic_test::RandomProblem(rng, 2 + rng.Below(9));
    cic::Dag probe = MakeDag(p.n, p.edges);
    // Pin a random subset of the outputs that have a predecessor.
    cic::GraphOptions options;
    options.reduce = rng.Below(4) != 0;
    options.on_server.assign(p.n, 0);
    int pins = 0;
    for (int32_t v = 0; v < p.n; ++v) {
      if (!probe.is_input(v) && probe.out_degree(v) == 0 && rng.Below(2) == 0) {
        options.on_server[v] = 1;
        ++pins;
      }
    }
    if (pins == 0) continue;
    ++pinned_cases;
    cic::Graph g;
    REQUIRE(cic::Graph::Create(std::move(probe), p.device.data(), p.server.data(),
                               p.bytes.data(), &g, options)
                .ok());
    CAPTURE(trial);
    cic::Graph::Workspace ws;
    for (int k = 0; k < 4; ++k) {
      // Bandwidths down to 1e-280 and up to 1e300 exercise the per-solve scale.
      const double bw = k == 0 ? 1e-280 : k == 1 ? 1e300 : std::pow(10.0, 3.0 + 8.0 * rng.Uniform());
      const double rtt = rng.Below(3) == 0 ? 0.01 * rng.Uniform() : 0.0;
      std::vector<uint8_t> on(p.n);
      cic::Breakdown b;
      REQUIRE(g.MinCut(bw, rtt, on.data(), &b, &ws).ok());
      REQUIRE(g.CheckPartition(on.data()).ok());  // pinned nodes are on the server
      CHECK(b.offloads);
      if (k >= 2) {
        const double best = cic_test::BruteForce(g, bw, rtt);
        CHECK(b.latency_s == doctest::Approx(best).epsilon(1e-12));
      }
    }
  }
  CHECK(pinned_cases > 100);
}

TEST_CASE("graph: bad pins are reported") {
  Problem p{3, {0, 1, 1, 2}, {0.0, 1.0, 1.0}, {0.0, 1.0, 1.0}, {1.0, 1.0, 1.0}};
  for (int32_t v : {0, 1}) {  // an input; a node with a successor
    cic::GraphOptions options;
    options.on_server.assign(3, 0);
    options.on_server[v] = 1;
    cic::Graph g;
    cic::Dag dag = MakeDag(p.n, p.edges);
    const cic::Result r = cic::Graph::Create(std::move(dag), p.device.data(), p.server.data(),
                                             p.bytes.data(), &g, options);
    CHECK(r.status() == cic::Status::kBadInput);
    CHECK(r.message().find("pinned to the server") != std::string::npos);
  }
  cic::GraphOptions wrong;
  wrong.on_server.assign(2, 0);
  cic::Graph g;
  cic::Dag dag = MakeDag(p.n, p.edges);
  CHECK(cic::Graph::Create(std::move(dag), p.device.data(), p.server.data(), p.bytes.data(), &g,
                           wrong)
            .message()
            .find("on_server has 2 entries") == 0);
}

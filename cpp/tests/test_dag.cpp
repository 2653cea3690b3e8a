#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "cic/dag.hpp"

using cic::Dag;

TEST_CASE("dag: duplicates removed, inputs and topological order") {
  const std::vector<int64_t> e = {0, 2, 1, 2, 0, 2, 2, 3, 1, 3};
  Dag g;
  REQUIRE(Dag::Build(4, e.data(), 5, &g).ok());
  CHECK(g.num_nodes() == 4);
  CHECK(g.num_edges() == 4);  // (0,2) given twice
  CHECK(g.inputs() == std::vector<int32_t>{0, 1});
  CHECK(g.out_degree(0) == 1);
  CHECK(g.in_degree(2) == 2);
  CHECK(g.in_degree(3) == 2);
  std::vector<int32_t> pos(4);
  const auto& order = g.topological_order();
  REQUIRE(order.size() == 4);
  for (int32_t i = 0; i < 4; ++i) pos[order[i]] = i;
  for (size_t i = 0; i < e.size(); i += 2) CHECK(pos[e[i]] < pos[e[i + 1]]);
}

TEST_CASE("dag: single node and no edges") {
  Dag g;
  REQUIRE(Dag::Build(1, nullptr, 0, &g).ok());
  CHECK(g.inputs() == std::vector<int32_t>{0});
  CHECK(g.num_edges() == 0);
}

TEST_CASE("dag: bad input is reported, never crashes") {
  Dag g;
  CHECK(Dag::Build(0, nullptr, 0, &g).message() == "graph has no nodes");
  const std::vector<int64_t> out_of_range = {0, 1, 1, 5};
  cic::Result r = Dag::Build(3, out_of_range.data(), 2, &g);
  CHECK(r.status() == cic::Status::kBadInput);
  CHECK(r.message().find("out of range") != std::string::npos);
  const std::vector<int64_t> negative = {-1, 1};
  CHECK(Dag::Build(3, negative.data(), 1, &g).message().find("out of range") != std::string::npos);
  const std::vector<int64_t> self_loop = {0, 1, 1, 1};
  CHECK(Dag::Build(3, self_loop.data(), 2, &g).message().find("cycle") != std::string::npos);
  // 0 -> 1 -> 2 -> 3 -> 1: the named node must lie on the cycle {1, 2, 3}.
  const std::vector<int64_t> cycle = {0, 1, 1, 2, 2, 3, 3, 1, 3, 4};
  r = Dag::Build(5, cycle.data(), 5, &g);
  REQUIRE(!r.ok());
  const std::string m = r.message();
  CHECK(m.find("cycle through node") != std::string::npos);
  const char last = m.back();
  CHECK((last == '1' || last == '2' || last == '3'));
}

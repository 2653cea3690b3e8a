// Small helpers shared by the C++ tests: a deterministic RNG and brute force.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "cic/graph.hpp"

namespace cic_test {

// SplitMix64: deterministic on every platform (x86_64 and aarch64 alike).
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t Next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  int Below(int k) { return static_cast<int>(Next() % static_cast<uint64_t>(k)); }
};

struct Problem {
  int32_t n = 0;
  std::vector<int64_t> edges;  // flattened (u, v) pairs
  std::vector<double> device, server, bytes;
};

// A random DAG on n nodes (edges go from lower to higher index), with zero
// costs, several inputs, fan-out and duplicate edges all likely.
inline Problem RandomProblem(Rng& rng, int32_t n) {
  Problem p;
  p.n = n;
  for (int32_t u = 0; u < n; ++u) {
    for (int32_t v = u + 1; v < n; ++v) {
      if (rng.Uniform() < 0.35) {
        p.edges.push_back(u);
        p.edges.push_back(v);
        if (rng.Uniform() < 0.1) {  // duplicate
          p.edges.push_back(u);
          p.edges.push_back(v);
        }
      }
    }
  }
  for (int32_t v = 0; v < n; ++v) {
    p.device.push_back(rng.Uniform() < 0.15 ? 0.0 : rng.Uniform() * 0.05);
    p.server.push_back(rng.Uniform() < 0.15 ? 0.0 : rng.Uniform() * 0.01);
    p.bytes.push_back(rng.Uniform() < 0.15 ? 0.0 : rng.Uniform() * 1e6);
  }
  return p;
}

// The optimum of the cost model by enumerating every subset of nodes and
// keeping the valid ones (inputs on the device, closed under predecessors).
inline double BruteForce(const cic::Graph& g, double bw, double rtt) {
  const int32_t n = g.num_nodes();
  double best = std::numeric_limits<double>::infinity();
  std::vector<uint8_t> on(n);
  for (uint32_t mask = 0; mask < (1u << n); ++mask) {
    for (int32_t v = 0; v < n; ++v) on[v] = (mask >> v) & 1u;
    cic::Breakdown b;
    if (g.Evaluate(on.data(), bw, rtt, &b).ok() && b.latency_s < best) best = b.latency_s;
  }
  return best;
}

inline cic::Result Make(const Problem& p, cic::Graph* g) {
  cic::Dag dag;
  cic::Result r = cic::Dag::Build(p.n, p.edges.data(),
                                  static_cast<int64_t>(p.edges.size() / 2), &dag);
  if (!r.ok()) return r;
  return cic::Graph::Create(std::move(dag), p.device.data(), p.server.data(),
                            p.bytes.data(), g);
}

}  // namespace cic_test

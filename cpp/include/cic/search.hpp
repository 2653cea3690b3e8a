// The optimum of one Graph at every bandwidth: the Eisner-Severance search
// (envelope.hpp) with Graph::MinCut as the oracle. The plan (plan.hpp) is
// this search on a whole model; the compression (compress.hpp, rule 3) runs
// it on each single-entry single-exit block, as a Graph whose exit is pinned
// to the server.
//
// The limits. The seeds are solved at the extreme bandwidths kMaxBandwidth
// (x -> 0: the partition with the least compute, ties by least traffic as the
// search refines them) and kMinBandwidth (x -> inf: the least traffic, in
// practice all-device, the only rtt-free line). Outside
// [kMinBandwidth, kMaxBandwidth] the plan keeps the first / last partition;
// a different optimum beyond the fast end would need two partitions whose
// compute differs by less than 1e-300 s per bit of traffic between them, and
// beyond the slow end two whose traffic differs by less than 1e-280 bits per
// second of compute: far below the solver's resolution (network.hpp: 2^-60
// of the total cost), which bounds the exactness of every solve anyway.
//
// With rtt. Graph::MinCut(bw, rtt) is exact for the rtt-shifted problem;
// every offloading line carries + rtt in a and the all-device line does not
// (cost.hpp: LineOf), here and in every re-pricing.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <vector>

#include "cic/cost.hpp"
#include "cic/envelope.hpp"
#include "cic/graph.hpp"
#include "cic/status.hpp"

namespace cic {

// The seeds of the search (see the header comment), in bits per second.
constexpr double kMinBandwidth = 1e-280;
constexpr double kMaxBandwidth = 1e300;

// What the search met: distinct partitions of one Graph with their lines, in
// the order found. The lower envelope of the lines (LowerEnvelope) is the
// optimum at every bandwidth in [kMinBandwidth, kMaxBandwidth].
struct Candidates {
  int32_t n = 0;               // nodes per partition
  std::vector<uint8_t> parts;  // count() * n: parts[k * n + v] = 1 if v on the device
  std::vector<Line> lines;     // their lines (cost.hpp: LineOf) at the search's rtt
  int32_t num_solves = 0;      // min cuts run (at most 2K + 1, envelope.hpp)

  int32_t count() const { return static_cast<int32_t>(lines.size()); }
  const uint8_t* part(int32_t k) const {
    assert(k >= 0 && k < count());
    return parts.data() + static_cast<size_t>(k) * n;
  }
};

// Runs the search on `g` at `rtt_s` (finite, >= 0), solving with `ws`.
inline Result SearchGraph(const Graph& g, double rtt_s, Graph::Workspace* ws,
                          Candidates* out) {
  const int32_t n = g.num_nodes();
  std::vector<uint8_t> store;  // distinct partitions met, n bytes each, by id
  std::vector<uint8_t> buf(static_cast<size_t>(n));
  auto oracle = [&](double x, Line* line, int32_t* id) -> Result {
    double bw = 1.0 / x;
    bw = std::min(std::max(bw, kMinBandwidth), kMaxBandwidth);
    Breakdown b;
    Result r = g.MinCut(bw, rtt_s, buf.data(), &b, ws);
    if (!r.ok()) return r;
    *line = LineOf(b);
    const size_t count = store.size() / static_cast<size_t>(n);
    for (size_t k = 0; k < count; ++k) {
      if (std::equal(buf.begin(), buf.end(), store.begin() + k * n)) {
        *id = static_cast<int32_t>(k);
        return Result::Ok();
      }
    }
    store.insert(store.end(), buf.begin(), buf.end());
    *id = static_cast<int32_t>(count);
    return Result::Ok();
  };
  std::vector<int32_t> ids;
  out->n = n;
  Result r = SearchEnvelope(oracle, 1.0 / kMaxBandwidth, 1.0 / kMinBandwidth, &out->lines,
                            &ids, &out->num_solves);
  if (!r.ok()) return r;
  out->parts.clear();
  for (int32_t id : ids) {
    out->parts.insert(out->parts.end(), store.begin() + static_cast<size_t>(id) * n,
                      store.begin() + static_cast<size_t>(id + 1) * n);
  }
  return Result::Ok();
}

}  // namespace cic

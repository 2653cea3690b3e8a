// The all-bandwidth splitting plan: every partition that is optimal at some
// bandwidth, and the bandwidths at which the optimum changes.
//
// Theory (envelope.hpp). With x = 1 / bandwidth each partition's latency is
// a line a + b x (cost.hpp: LineOf), the optimum over all bandwidths is the
// lower envelope of the lines, K pieces, and the Eisner-Severance search
// finds them with at most 2K + 1 min cuts (search.hpp: SearchGraph, which
// also explains the bandwidth limits of the search and the rtt). The online
// decision is then a binary search over the K - 1 breakpoints.
//
// Exactness. Lines are recomputed from the partitions with the cost model
// (never read off a flow) and compared in long double; the final envelope is
// recomputed from the found lines by a monotone hull pass, so a line that the
// fixed-point solver returned while being only equal (within its 2^-60
// resolution) to the envelope never becomes a piece of its own. Ties: at a
// breakpoint both neighbours are optimal; Segment() gives the partition of
// the faster side (bandwidth >= breakpoint goes up).
//
// The plan of a large model is best searched on its exact compression
// (compress.hpp): BuildCompressed compresses, searches the small graph, and
// expands and re-prices the K partitions on the original one.
#pragma once

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cic/compress.hpp"
#include "cic/cost.hpp"
#include "cic/envelope.hpp"
#include "cic/graph.hpp"
#include "cic/period.hpp"
#include "cic/search.hpp"
#include "cic/status.hpp"

namespace cic {

// The splitting plan of one Graph at one rtt: K partitions ordered by
// bandwidth (partition 0 is optimal on the slowest links) and K - 1
// ascending breakpoints in bits per second. Immutable once built; Segment and
// Decide allocate nothing and may be called from several threads.
class Plan {
 public:
  // The seeds of the search (search.hpp).
  static constexpr double kMinBandwidth = cic::kMinBandwidth;
  static constexpr double kMaxBandwidth = cic::kMaxBandwidth;

  // Runs the Eisner-Severance search with Graph::MinCut as the oracle (at
  // most 2K + 1 min-cuts), solving with `ws` (or a temporary workspace if
  // null). `rtt_s` finite and >= 0.
  static Result Build(const Graph& g, double rtt_s, Plan* out,
                      Graph::Workspace* ws = nullptr) {
    Result r = CheckLink(1.0, rtt_s);
    if (!r.ok()) return r;
    Graph::Workspace local;
    Candidates found;
    r = SearchGraph(g, rtt_s, ws != nullptr ? ws : &local, &found);
    if (!r.ok()) return r;
    return FromPartitions(g, rtt_s, found.parts.data(), found.count(), out, found.num_solves);
  }

  // The plan of g (Build's result) computed on the compressed graph:
  // Compress, run the search there (a few nodes instead of hundreds), expand
  // the K partitions through Compressed::group and re-price them on g
  // (FromPartitions). Exact by Compress's guarantee. num_solves() counts the
  // min-cuts on the compressed graph; `compressed` (may be null) receives the
  // compression and its statistics.
  static Result BuildCompressed(const Graph& g, double rtt_s, Plan* out,
                                Compressed* compressed = nullptr) {
    Compressed local;
    Compressed& c = compressed != nullptr ? *compressed : local;
    Result r = Compress(g, &c);
    if (!r.ok()) return r;
    Dag dag;
    r = Dag::Build(static_cast<int64_t>(c.device_s.size()), c.edges.data(),
                   static_cast<int64_t>(c.edges.size() / 2), &dag);
    if (!r.ok()) return r;
    Graph small;
    r = Graph::Create(std::move(dag), c.device_s.data(), c.server_s.data(), c.out_bytes.data(),
                      &small);
    if (!r.ok()) return r;
    Plan plan;
    r = Build(small, rtt_s, &plan);
    if (!r.ok()) return r;
    const int32_t n = g.num_nodes(), k = plan.num_partitions();
    std::vector<uint8_t> parts(static_cast<size_t>(k) * n);
    for (int32_t i = 0; i < k; ++i) {
      const uint8_t* on = plan.on_device(i);
      for (int32_t v = 0; v < n; ++v) parts[static_cast<size_t>(i) * n + v] = on[c.group[v]];
    }
    return FromPartitions(g, rtt_s, parts.data(), k, out, plan.num_solves());
  }

  // The plan whose candidates are the `count` given partitions
  // (parts[k * n + v] = 1 if layer v is on the device in candidate k): each
  // is checked (inputs on the device, closed under predecessors), priced with
  // the cost model, and those on the lower envelope are kept. With the
  // candidates of Build it reproduces Build; it is also how a saved plan is
  // restored without any min-cut. `num_solves` is recorded as the plan's
  // num_solves() (the min-cuts that found the candidates, if any).
  static Result FromPartitions(const Graph& g, double rtt_s, const uint8_t* parts,
                               int32_t count, Plan* out, int32_t num_solves = 0) {
    std::vector<PartitionSums> sums;
    Result r = CheckedSums(g, rtt_s, parts, count, &sums);
    if (!r.ok()) return r;
    std::vector<Line> lines(sums.size());
    for (size_t k = 0; k < sums.size(); ++k) lines[k] = LineOf(sums[k], rtt_s);
    std::vector<int32_t> pieces;
    std::vector<double> cross_x;
    LowerEnvelope(lines, &pieces, &cross_x);
    Plan& pl = *out;
    pl.Reset(g.num_nodes(), rtt_s, num_solves);
    const int32_t K = static_cast<int32_t>(pieces.size());
    // Pieces come in increasing x; the plan is stored by increasing bandwidth.
    for (int32_t i = K - 1; i >= 0; --i) pl.Append(g, parts, pieces[i], sums[pieces[i]]);
    for (int32_t i = K - 2; i >= 0; --i) pl.breakpoints_bps_.push_back(1.0 / cross_x[i]);
    return Result::Ok();
  }

  // The throughput plan of g: the partition with the smallest pipeline
  // period (period.hpp) at every bandwidth. Its candidates are the Pareto
  // front of (c, bytes), c = max(device_s, server_s); FromThroughputPartitions
  // orders them and derives the breakpoints. `complete` (may be null) is set
  // to false when max_steps stopped the search (the plan is then the front
  // found so far). num_solves() is 0.
  static Result BuildThroughput(const Graph& g, double rtt_s, const PeriodOptions& opt,
                                Plan* out, bool* complete = nullptr, int64_t* steps = nullptr) {
    PeriodSearch search;
    Result r = PeriodSearch::Create(g, &search);
    if (!r.ok()) return r;
    PeriodFront front;
    r = search.ParetoFront(opt, &front);
    if (!r.ok()) return r;
    if (complete != nullptr) *complete = front.complete;
    if (steps != nullptr) *steps = front.steps;
    return FromThroughputPartitions(g, rtt_s, front.parts.data(), front.count, out);
  }

  // The throughput plan whose candidates are the `count` given partitions.
  //
  // Theory. With x = 8 / bandwidth a partition's period is max(c, bytes * x).
  // Keep the Pareto points of (c, bytes) (recomputed with the cost model, in
  // long double), sorted by bytes ascending, so c strictly descends: b_0 <
  // b_1 < ..., c_0 > c_1 > .... For i < j, j is strictly better than i iff
  // bytes_j * x < c_i (if b_j x <= c_j both sides are c's and c_j < c_i; else
  // j's period is b_j x, and i's is max(c_i, b_i x) with b_i x < b_j x). So
  // as x grows (the link slows) the optimum moves from j to j - 1 exactly at
  // x = c_{j-1} / b_j, i.e. at the bandwidth 8 b_j / c_{j-1}, which increases
  // with j: partition j is optimal on [8 b_j / c_{j-1}, 8 b_{j+1} / c_j), and
  // every Pareto point is a piece. At a breakpoint both are optimal and
  // Segment gives the faster side, as for the latency plan.
  static Result FromThroughputPartitions(const Graph& g, double rtt_s, const uint8_t* parts,
                                         int32_t count, Plan* out) {
    std::vector<PartitionSums> sums;
    Result r = CheckedSums(g, rtt_s, parts, count, &sums);
    if (!r.ok()) return r;
    std::vector<int32_t> idx(static_cast<size_t>(count));
    for (int32_t k = 0; k < count; ++k) idx[k] = k;
    auto c_of = [&](int32_t k) {
      return std::max<long double>(sums[k].device_s, sums[k].server_s);
    };
    auto b_of = [&](int32_t k) { return static_cast<long double>(sums[k].bytes_sent); };
    std::sort(idx.begin(), idx.end(), [&](int32_t i, int32_t j) {
      if (b_of(i) != b_of(j)) return b_of(i) < b_of(j);
      if (c_of(i) != c_of(j)) return c_of(i) < c_of(j);
      return i < j;
    });
    std::vector<int32_t> keep;  // the Pareto points, bytes ascending
    for (int32_t k : idx) {
      if (!keep.empty() && c_of(keep.back()) <= c_of(k)) continue;  // dominated or equal
      keep.push_back(k);
    }
    Plan& pl = *out;
    pl.Reset(g.num_nodes(), rtt_s, 0);
    for (size_t i = 0; i < keep.size(); ++i) {
      const int32_t k = keep[i];
      pl.Append(g, parts, k, sums[k]);
      if (i > 0) {
        const long double bp = 8.0L * b_of(k) / c_of(keep[i - 1]);
        pl.breakpoints_bps_.push_back(static_cast<double>(bp));
      }
    }
    return Result::Ok();
  }

  int32_t num_nodes() const { return n_; }
  int32_t num_partitions() const { return static_cast<int32_t>(parts_.size()); }
  // Min-cuts the search ran (0 for a plan made by FromPartitions).
  int32_t num_solves() const { return num_solves_; }
  double rtt_s() const { return rtt_s_; }
  // K - 1 ascending bandwidths (bits/s): partition k is optimal on
  // [breakpoints[k-1], breakpoints[k]].
  const std::vector<double>& breakpoints_bps() const { return breakpoints_bps_; }
  const Line& line(int32_t k) const {
    assert(k >= 0 && k < num_partitions());
    return lines_[k];
  }

  // The partition index for a bandwidth: the number of breakpoints <= it
  // (binary search). Any bandwidth > 0 including +inf; the caller rejects NaN.
  int32_t Segment(double bandwidth_bps) const {
    assert(!std::isnan(bandwidth_bps) && "Segment(NaN)");
    return static_cast<int32_t>(
        std::upper_bound(breakpoints_bps_.begin(), breakpoints_bps_.end(), bandwidth_bps) -
        breakpoints_bps_.begin());
  }

  // Partition k's layers: on_device(k)[v] = 1 if v runs on the device.
  const uint8_t* on_device(int32_t k) const {
    assert(k >= 0 && k < num_partitions());
    return on_device_.data() + static_cast<size_t>(k) * n_;
  }
  // Partition k's sent layers, ascending: [sent_begin(k), sent_end(k)).
  const int64_t* sent_begin(int32_t k) const {
    assert(k >= 0 && k < num_partitions());
    return sent_.data() + sent_start_[k];
  }
  const int64_t* sent_end(int32_t k) const {
    assert(k >= 0 && k < num_partitions());
    return sent_.data() + sent_start_[k + 1];
  }
  // Partition k's sums (cost.hpp).
  const PartitionSums& sums(int32_t k) const {
    assert(k >= 0 && k < num_partitions());
    return parts_[k];
  }

  // The optimal partition at `bandwidth_bps` (> 0; +inf means an infinitely
  // fast link, the last partition, with zero transfer time) and its latency
  // parts, priced with the cost model exactly as Graph::Evaluate does.
  // Allocates nothing.
  Result Decide(double bandwidth_bps, int32_t* segment, Breakdown* out) const {
    if (!(bandwidth_bps > 0.0)) {  // also NaN
      return Result::BadInput("bandwidth_bps must be > 0, got " + std::to_string(bandwidth_bps));
    }
    const int32_t k = Segment(bandwidth_bps);
    *segment = k;
    Price(k, bandwidth_bps, out);
    return Result::Ok();
  }

  // Partition k priced at a bandwidth (> 0) with the plan's rtt (cost.hpp).
  void Price(int32_t k, double bandwidth_bps, Breakdown* out) const {
    *out = cic::Price(sums(k), bandwidth_bps, rtt_s_);
  }

 private:
  // Checks and sums the `count` candidate partitions (FromPartitions' input).
  static Result CheckedSums(const Graph& g, double rtt_s, const uint8_t* parts, int32_t count,
                            std::vector<PartitionSums>* sums) {
    Result r = CheckLink(1.0, rtt_s);
    if (!r.ok()) return r;
    if (count <= 0) return Result::BadInput("a plan needs at least one partition");
    const int32_t n = g.num_nodes();
    sums->resize(static_cast<size_t>(count));
    for (int32_t k = 0; k < count; ++k) {
      const uint8_t* p = parts + static_cast<size_t>(k) * n;
      r = g.CheckPartition(p);
      if (!r.ok()) {
        return Result::BadInput("partition " + std::to_string(k) + ": " + r.message());
      }
      (*sums)[k] = SumPartition(g.costs(), p);
    }
    return Result::Ok();
  }

  // An empty plan of n layers.
  void Reset(int32_t n, double rtt_s, int32_t num_solves) {
    n_ = n;
    rtt_s_ = rtt_s;
    num_solves_ = num_solves;
    on_device_.clear();
    sent_.clear();
    sent_start_.assign(1, 0);
    parts_.clear();
    lines_.clear();
    breakpoints_bps_.clear();
  }

  // Appends candidate k of `parts` (sums s) as the next piece.
  void Append(const Graph& g, const uint8_t* parts, int32_t k, const PartitionSums& s) {
    const uint8_t* p = parts + static_cast<size_t>(k) * n_;
    on_device_.insert(on_device_.end(), p, p + n_);
    const size_t at = sent_.size();
    sent_.resize(at + static_cast<size_t>(s.num_sent));
    g.FillSent(p, sent_.data() + at);
    sent_start_.push_back(static_cast<int64_t>(sent_.size()));
    parts_.push_back(s);
    lines_.push_back(LineOf(s, rtt_s_));
  }

  int32_t n_ = 0;
  double rtt_s_ = 0.0;
  int32_t num_solves_ = 0;
  std::vector<uint8_t> on_device_;  // K * n
  std::vector<int64_t> sent_;
  std::vector<int64_t> sent_start_{0};
  std::vector<PartitionSums> parts_;
  std::vector<Line> lines_;
  std::vector<double> breakpoints_bps_;
};

}  // namespace cic

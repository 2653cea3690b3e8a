// The all-bandwidth splitting plan: every partition that is optimal at some
// bandwidth, and the bandwidths at which the optimum changes.
//
// Theory. Write x = 1 / bandwidth (seconds per bit). A fixed partition P costs
//   latency_P(x) = a_P + b_P * x,
//   a_P = device_s + server_s (+ rtt if P offloads),  b_P = 8 * bytes_sent,
// a line in x. The optimum OPT(x) = min_P latency_P(x) is the lower envelope
// of finitely many lines: concave, piecewise linear, with K pieces, whose
// slopes b decrease as x grows (a slow link favours sending little). Every
// piece is one partition, so the answer for every bandwidth is K partitions
// and the K - 1 crossing points.
//
// Eisner-Severance search (Eisner & Severance, "Mathematical techniques for
// efficient record segmentation in large shared databases", JACM 1976). Take
// L optimal at x_L and R optimal at x_R > x_L. If they are not the same line,
// they cross at x* = (a_R - a_L) / (b_L - b_R) in [x_L, x_R]. Solve at x*:
// if the optimum M is strictly below L(x*) = R(x*), M is a new envelope piece
// and the search recurses on (L, M) and (M, R); otherwise L and R are adjacent
// on the envelope (a line below the envelope between them would lie below
// min(L, R) at the corner x*, which is where that minimum is largest). Each
// solve either finds a new piece or proves one crossing, so with the two
// seeds the search makes 2 + (K - 2) + (K - 1) = 2K - 1 solves (one when the
// first seed is already flat: K = 1). That count assumes each seed is the
// envelope's end piece. At the extreme bandwidths the fixed-point solver
// cannot see the small term (b * x at x -> 0, a at x -> inf), so among
// partitions with exactly equal compute (e.g. through zero-cost layers) or
// equal traffic it may return a seed that is off the envelope; the search
// then meets the true end piece at the first crossing and drops the seed,
// one extra solve per end: at most 2K + 1 in all.
//
// The limits. The seeds are solved at the extreme bandwidths kMaxBandwidth
// (x -> 0: the partition with the least compute, ties by least traffic as the
// search refines them) and kMinBandwidth (x -> inf: the least traffic, in
// practice all-device, the only rtt-free line). Outside
// [kMinBandwidth, kMaxBandwidth] the plan keeps the first / last partition;
// a different optimum beyond the fast end would need two partitions whose
// compute differs by less than 1e-300 s per bit of traffic between them, and
// beyond the slow end two whose traffic differs by less than 1e-280 bits per
// second of compute: far below the solver's resolution (graph.hpp: 2^-60 of
// the total cost), which bounds the exactness of every solve anyway.
//
// With rtt. The oracle is Graph::MinCut(bw, rtt), which is exact for the
// rtt-shifted problem; every offloading line carries + rtt in a and the
// all-device line does not, here and in every re-pricing.
//
// Exactness. Lines are recomputed from the partitions with the cost model
// (never read off a flow) and compared in long double; the final envelope is
// recomputed from the found lines by a monotone hull pass, so a line that the
// fixed-point solver returned while being only equal (within its 2^-60
// resolution) to the envelope never becomes a piece of its own. Ties: at a
// breakpoint both neighbours are optimal; Segment() gives the partition of
// the faster side (bandwidth >= breakpoint goes up).
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cic/graph.hpp"
#include "cic/status.hpp"

namespace cic {

struct Compressed;  // compress.hpp
class Plan;
// Defined in compress.hpp: Compress, Build on the compressed graph, expand.
Result PlanCompressed(Graph& g, double rtt_s, Plan* out, Compressed* compressed);

// latency(x) = a + b * x with x = 1 / bandwidth in seconds per bit.
struct Line {
  double a = 0.0;  // seconds: device + server (+ rtt when offloading)
  double b = 0.0;  // bits sent: 8 * bytes_sent
};

inline long double LineAt(const Line& l, long double x) {
  return static_cast<long double>(l.a) + static_cast<long double>(l.b) * x;
}

// The lower envelope over x in (0, inf) of `lines`. Writes the indices of
// its pieces in order of increasing x (decreasing b) into `pieces` and the
// K - 1 crossing points between consecutive pieces into `cross_x`
// (increasing). Of identical lines the lowest index is kept; a line that is
// optimal at a single point only is dropped. Products are formed in long
// double from exact differences where the exponents allow.
inline void LowerEnvelope(const std::vector<Line>& lines, std::vector<int32_t>* pieces,
                          std::vector<double>* cross_x) {
  std::vector<int32_t> order(lines.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t i, int32_t j) {
    if (lines[i].b != lines[j].b) return lines[i].b > lines[j].b;
    return lines[i].a < lines[j].a;
  });
  std::vector<int32_t>& st = *pieces;
  st.clear();
  for (int32_t l : order) {
    const Line& L = lines[l];
    if (!st.empty() && lines[st.back()].b == L.b) continue;  // same slope, not lower
    // A previous line with a larger slope and no smaller intercept is above
    // L for every x > 0.
    while (!st.empty() && lines[st.back()].a >= L.a) st.pop_back();
    while (st.size() >= 2) {
      const Line& P = lines[st[st.size() - 2]];
      const Line& T = lines[st.back()];
      // T is useless if L crosses P no later than T does:
      // (a_L - a_P) / (b_P - b_L) <= (a_T - a_P) / (b_P - b_T).
      const long double lhs = (static_cast<long double>(L.a) - P.a) *
                              (static_cast<long double>(P.b) - T.b);
      const long double rhs = (static_cast<long double>(T.a) - P.a) *
                              (static_cast<long double>(P.b) - L.b);
      if (lhs <= rhs) {
        st.pop_back();
      } else {
        break;
      }
    }
    st.push_back(l);
  }
  cross_x->clear();
  for (size_t i = 0; i + 1 < st.size(); ++i) {
    const Line& P = lines[st[i]];
    const Line& Q = lines[st[i + 1]];
    cross_x->push_back(static_cast<double>((static_cast<long double>(Q.a) - P.a) /
                                           (static_cast<long double>(P.b) - Q.b)));
  }
}

// Eisner-Severance search on an oracle. `solve(x, &line, &id)` returns the
// optimum at x = 1 / bandwidth as its line and an id naming the partition
// (equal partitions, equal ids). Collects the ids and lines of every partition
// the search met (possibly some off the final envelope: run LowerEnvelope on
// them) and counts the solves.
template <class Oracle>
Result SearchEnvelope(Oracle& solve, double x_lo, double x_hi, std::vector<Line>* lines,
                      std::vector<int32_t>* ids, int32_t* num_solves) {
  struct Found {
    Line line;
    int32_t id;
    double x;
  };
  std::vector<Found> found;
  *num_solves = 0;
  auto run = [&](double x, Found* f) -> Result {
    ++*num_solves;
    f->x = x;
    return solve(x, &f->line, &f->id);
  };
  Found lo, hi;
  Result r = run(x_lo, &lo);
  if (!r.ok()) return r;
  found.push_back(lo);
  if (lo.line.b == 0.0) {
    // A flat line optimal at x_lo stays optimal for every larger x (every
    // line has b >= 0): K = 1 after one solve.
    lines->assign(1, lo.line);
    ids->assign(1, lo.id);
    return Result::Ok();
  }
  r = run(x_hi, &hi);
  if (!r.ok()) return r;
  if (hi.id != lo.id) found.push_back(hi);
  std::vector<std::pair<int32_t, int32_t>> todo;
  if (found.size() == 2) todo.push_back({0, 1});
  while (!todo.empty()) {
    const auto [li, ri] = todo.back();
    todo.pop_back();
    const Found L = found[li], R = found[ri];
    const long double db = static_cast<long double>(L.line.b) - R.line.b;
    if (!(db > 0)) continue;  // not crossing from above in (x_L, x_R)
    const double x = static_cast<double>((static_cast<long double>(R.line.a) - L.line.a) / db);
    if (!(x > L.x && x < R.x) || !std::isfinite(1.0 / x)) continue;
    Found M;
    r = run(x, &M);
    if (!r.ok()) return r;
    if (M.id == L.id || M.id == R.id) continue;
    const long double at_l = LineAt(L.line, x), at_m = LineAt(M.line, x);
    const long double tol = 8.0L * DBL_EPSILON *
                            (std::fabs(at_l) + std::fabs(at_m) + L.line.a + M.line.a);
    if (!(at_m < at_l - tol)) continue;  // L and R meet on the envelope
    found.push_back(M);
    const int32_t mi = static_cast<int32_t>(found.size()) - 1;
    todo.push_back({mi, ri});
    todo.push_back({li, mi});
  }
  lines->clear();
  ids->clear();
  for (const Found& f : found) {
    lines->push_back(f.line);
    ids->push_back(f.id);
  }
  return Result::Ok();
}

// The splitting plan of one Graph at one rtt: K partitions ordered by
// bandwidth (partition 0 is optimal on the slowest links) and K - 1
// ascending breakpoints in bits per second. Immutable once built; Segment and
// Decide allocate nothing and may be called from several threads.
class Plan {
 public:
  // The seeds of the search (see the header comment).
  static constexpr double kMinBandwidth = 1e-280;
  static constexpr double kMaxBandwidth = 1e300;

  // Runs the Eisner-Severance search with Graph::MinCut as the oracle
  // (at most 2K - 1 min-cuts). `rtt_s` finite and >= 0.
  static Result Build(Graph& g, double rtt_s, Plan* out) {
    Result r = CheckLink(1.0, rtt_s);
    if (!r.ok()) return r;
    const int32_t n = g.num_nodes();
    std::vector<uint8_t> store;  // distinct partitions found, n bytes each
    std::vector<uint8_t> buf(static_cast<size_t>(n));
    auto oracle = [&](double x, Line* line, int32_t* id) -> Result {
      double bw = 1.0 / x;
      bw = std::min(std::max(bw, kMinBandwidth), kMaxBandwidth);
      Breakdown b;
      Result rr = g.MinCut(bw, rtt_s, buf.data(), &b);
      if (!rr.ok()) return rr;
      line->a = b.device_s + b.server_s + b.rtt_s;
      line->b = 8.0 * b.bytes_sent;
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
    std::vector<Line> lines;
    std::vector<int32_t> ids;
    int32_t solves = 0;
    r = SearchEnvelope(oracle, 1.0 / kMaxBandwidth, 1.0 / kMinBandwidth, &lines, &ids, &solves);
    if (!r.ok()) return r;
    std::vector<uint8_t> parts;
    for (int32_t id : ids) {
      parts.insert(parts.end(), store.begin() + static_cast<size_t>(id) * n,
                   store.begin() + static_cast<size_t>(id + 1) * n);
    }
    r = FromPartitions(g, rtt_s, parts.data(), static_cast<int32_t>(ids.size()), out);
    out->num_solves_ = solves;
    return r;
  }

  // The plan whose candidates are the `count` given partitions
  // (parts[k * n + v] = 1 if layer v is on the device in candidate k): each
  // is checked (inputs on the device, closed under predecessors), priced with
  // the cost model, and those on the lower envelope are kept. With the
  // candidates of Build it reproduces Build; it is also how a saved plan is
  // restored without any min-cut.
  static Result FromPartitions(const Graph& g, double rtt_s, const uint8_t* parts,
                               int32_t count, Plan* out) {
    Result r = CheckLink(1.0, rtt_s);
    if (!r.ok()) return r;
    if (count <= 0) return Result::BadInput("a plan needs at least one partition");
    const int32_t n = g.num_nodes();
    std::vector<Line> lines(static_cast<size_t>(count));
    std::vector<Breakdown> prices(static_cast<size_t>(count));
    for (int32_t k = 0; k < count; ++k) {
      const uint8_t* p = parts + static_cast<size_t>(k) * n;
      r = g.Evaluate(p, 1.0, rtt_s, &prices[k]);
      if (!r.ok()) {
        return Result::BadInput("partition " + std::to_string(k) + ": " + r.message());
      }
      lines[k] = {prices[k].device_s + prices[k].server_s + prices[k].rtt_s,
                  8.0 * prices[k].bytes_sent};
    }
    std::vector<int32_t> pieces;
    std::vector<double> cross_x;
    LowerEnvelope(lines, &pieces, &cross_x);
    Plan& pl = *out;
    pl.n_ = n;
    pl.rtt_s_ = rtt_s;
    pl.num_solves_ = 0;
    const int32_t K = static_cast<int32_t>(pieces.size());
    pl.on_device_.clear();
    pl.sent_.clear();
    pl.sent_start_.assign(1, 0);
    pl.parts_.clear();
    pl.lines_.clear();
    // Pieces come in increasing x; the plan is stored by increasing bandwidth.
    for (int32_t i = K - 1; i >= 0; --i) {
      const int32_t k = pieces[i];
      const uint8_t* p = parts + static_cast<size_t>(k) * n;
      pl.on_device_.insert(pl.on_device_.end(), p, p + n);
      const size_t at = pl.sent_.size();
      pl.sent_.resize(at + static_cast<size_t>(prices[k].num_sent));
      g.FillSent(p, pl.sent_.data() + at);
      pl.sent_start_.push_back(static_cast<int64_t>(pl.sent_.size()));
      Part part;
      part.device_s = prices[k].device_s;
      part.server_s = prices[k].server_s;
      part.rtt_s = prices[k].rtt_s;
      part.bytes_sent = prices[k].bytes_sent;
      part.num_sent = prices[k].num_sent;
      part.offloads = prices[k].offloads;
      pl.parts_.push_back(part);
      pl.lines_.push_back(lines[k]);
    }
    pl.breakpoints_bps_.clear();
    for (int32_t i = K - 2; i >= 0; --i) pl.breakpoints_bps_.push_back(1.0 / cross_x[i]);
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
  const Line& line(int32_t k) const { return lines_[k]; }

  // The partition index for a bandwidth: the number of breakpoints <= it
  // (binary search). Any bandwidth > 0 including +inf; the caller rejects NaN.
  int32_t Segment(double bandwidth_bps) const {
    return static_cast<int32_t>(
        std::upper_bound(breakpoints_bps_.begin(), breakpoints_bps_.end(), bandwidth_bps) -
        breakpoints_bps_.begin());
  }

  // Partition k's layers: on_device(k)[v] = 1 if v runs on the device.
  const uint8_t* on_device(int32_t k) const {
    return on_device_.data() + static_cast<size_t>(k) * n_;
  }
  // Partition k's sent layers, ascending: [sent_begin(k), sent_end(k)).
  const int64_t* sent_begin(int32_t k) const { return sent_.data() + sent_start_[k]; }
  const int64_t* sent_end(int32_t k) const { return sent_.data() + sent_start_[k + 1]; }

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

  // Partition k priced at a bandwidth (> 0).
  void Price(int32_t k, double bandwidth_bps, Breakdown* out) const {
    const Part& p = parts_[k];
    Breakdown b;
    b.device_s = p.device_s;
    b.server_s = p.server_s;
    b.rtt_s = p.rtt_s;
    b.bytes_sent = p.bytes_sent;
    b.num_sent = p.num_sent;
    b.offloads = p.offloads;
    b.transfer_s = 8.0 * p.bytes_sent / bandwidth_bps;
    b.latency_s = b.device_s + b.transfer_s + b.server_s + b.rtt_s;
    *out = b;
  }

 private:
  friend Result PlanCompressed(Graph& g, double rtt_s, Plan* out, Compressed* compressed);
  struct Part {
    double device_s = 0.0, server_s = 0.0, rtt_s = 0.0, bytes_sent = 0.0;
    int64_t num_sent = 0;
    bool offloads = false;
  };
  int32_t n_ = 0;
  double rtt_s_ = 0.0;
  int32_t num_solves_ = 0;
  std::vector<uint8_t> on_device_;  // K * n
  std::vector<int64_t> sent_;
  std::vector<int64_t> sent_start_{0};
  std::vector<Part> parts_;
  std::vector<Line> lines_;
  std::vector<double> breakpoints_bps_;
};

}  // namespace cic

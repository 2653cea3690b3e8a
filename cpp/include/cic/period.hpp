// The throughput objective: the exact minimum pipeline period, and the Pareto
// front every bandwidth's optimum comes from.
//
// For a stream the device, the link and the server work on different frames
// at once, so a partition D delivers one frame per
//   period(D) = max(A(D), T(D), C(D)),
//   A = sum(device_s[D]), C = sum(server_s[S]), T = 8 * bytes_sent(D) / bandwidth
// (all-device: T = C = 0). Minimising it over the closed sets D (inputs in D,
// closed under predecessors) is NP-hard on general DAGs: with zero transfer
// it is precedence-constrained min-max partitioning, which contains
// precedence-constrained knapsack. So the solver is exact by enumeration and
// fast by bounds.
//
// Algorithm (PeriodSearch). A depth-first branch and bound over the nodes in
// a fixed topological order t_0, t_1, ...: at depth i node v = t_i goes to
// the device or to the server. If a predecessor of v is already on the server
// v is forced to the server (closure); an input is forced to the device;
// otherwise both are tried. Every valid partition is reached by exactly one
// root-to-leaf path (its own restriction to each prefix), and every leaf is
// valid (a node goes to the device only when all its predecessors are there),
// so without pruning the search enumerates the valid partitions exactly.
//
// Pruning. A subtree is cut when a lower bound on every leaf below it is not
// better than the best leaf found. The bounds, for the state after deciding
// t_0..t_i (A, C: the sums over the decided nodes; T: the transfer of the
// decided device nodes that already have a decided server successor; B their
// bytes), all hold for every leaf below because costs are >= 0 and a
// decision is never undone (A, C, T, B only grow along a path):
//   - A, C, T themselves, and the bytes B;
//   - C_desc: when a node u went to the server, every descendant of u will be
//     on the server too (closure), and all of them come after u in the order,
//     so C_final >= C(before u) + s_u + sum(s over descendants of u); the
//     largest such value on the path;
//   - balance: each undecided node adds its device time to A or its server
//     time to C, so max(A, C)_final >= (A + C + sum(min(d, s) over t_{i+1..}))
//     / 2.
// The descendant and balance sums are kept in double and converted to units
// rounded down with a margin for rounding (LowerUnits), so a bound is never
// above the true value in units. Ties are broken by fewer bytes, so the
// search is a lexicographic minimum of (period, bytes) and deterministic.
//
// Incumbents. The search starts from the best topological prefix (the first
// k nodes of the order on the device, k >= the number of inputs: each is a
// valid partition; all n + 1 are priced in O(n + E)), so it prunes from the
// start.
//
// Limit. Each decision is one step; past `max_steps` the search stops and
// reports the best leaf found with optimal = false and a valid lower bound:
// the smallest bound of the states still open on the path (every leaf not yet
// seen lies below one of them, and every pruned one was no better than the
// best leaf).
//
// The front (ParetoFront). Over x = 8 / bandwidth a partition's period is
// max(c, bytes * x) with c = max(A, C). The optimum at every bandwidth is a
// Pareto-optimal point of (c, bytes) (a point dominated in both is never
// better at any x), and every strict Pareto point is optimal at x = c / bytes
// (plan.hpp: BuildThroughput derives the breakpoints). The same search with
// T left out and the incumbent replaced by the current front (a subtree is
// cut when a front point has c' <= its c bound and bytes' <= its bytes
// bound) finds every point: a leaf is only ever skipped when a point at least
// as good in both is already on the front.
//
// Units. Times are int64 units of one FixedPoint (network.hpp) over the sum
// of every device, server and transfer time, so every sum is exact and below
// 2^60; bytes use a second FixedPoint over the sum of out_bytes (exact for
// whole byte counts). The optimum is exact for the rounded problem, within
// n units (2^-60 of the total each) of the real-valued one; callers report
// periods recomputed from the partition with the cost model (cost.hpp).
#pragma once

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "cic/cost.hpp"
#include "cic/dag.hpp"
#include "cic/graph.hpp"
#include "cic/network.hpp"
#include "cic/status.hpp"

namespace cic {

struct PeriodOptions {
  // Decisions of the branch and bound before it gives up (optimal = false).
  int64_t max_steps = 20000000;
};

// One min-period solve.
struct PeriodSolution {
  std::vector<uint8_t> on_device;  // the best partition found
  bool optimal = true;             // false when max_steps stopped the search
  double lower_bound_s = 0.0;      // a lower bound on the optimal period (seconds)
  int64_t steps = 0;               // decisions made
};

// The Pareto front of (max(device, server), bytes sent).
struct PeriodFront {
  std::vector<uint8_t> parts;  // count * n masks, bytes ascending
  int32_t count = 0;
  bool complete = true;  // false when max_steps stopped the search
  int64_t steps = 0;
};

class PeriodSearch {
 public:
  // Nodes above this get no descendant bound (its bitsets take n^2 / 8 bytes).
  static constexpr int32_t kMaxDescendantNodes = 8192;

  // Precomputes the order, predecessor lists and bound sums of g (O(n^2 / 64)).
  static Result Create(const Graph& g, PeriodSearch* out) {
    const Dag& dag = g.dag();
    const int32_t n = dag.num_nodes();
    PeriodSearch& p = *out;
    p.g_ = &g;
    p.n_ = n;
    p.order_ = dag.topological_order();
    p.num_inputs_ = static_cast<int32_t>(dag.inputs().size());
    // Predecessors, CSR.
    p.pred_start_.assign(static_cast<size_t>(n) + 1, 0);
    for (int32_t u = 0; u < n; ++u) {
      for (const int32_t* w = dag.succ_begin(u); w != dag.succ_end(u); ++w) ++p.pred_start_[*w + 1];
    }
    for (int32_t v = 0; v < n; ++v) p.pred_start_[v + 1] += p.pred_start_[v];
    p.pred_.assign(static_cast<size_t>(p.pred_start_[n]), 0);
    std::vector<int32_t> fill(p.pred_start_.begin(), p.pred_start_.end() - 1);
    for (int32_t u = 0; u < n; ++u) {
      for (const int32_t* w = dag.succ_begin(u); w != dag.succ_end(u); ++w) p.pred_[fill[*w]++] = u;
    }
    const double* d = g.device_s().data();
    const double* s = g.server_s().data();
    // Balance sums: sum of min(d, s) over positions >= i.
    p.min_suffix_.assign(static_cast<size_t>(n) + 1, 0.0);
    for (int32_t i = n - 1; i >= 0; --i) {
      const int32_t v = p.order_[i];
      p.min_suffix_[i] = p.min_suffix_[i + 1] + std::min(d[v], s[v]);
    }
    // Descendant server sums (strict descendants), by bitsets in reverse order.
    p.desc_server_.assign(static_cast<size_t>(n), 0.0);
    p.desc_count_.assign(static_cast<size_t>(n), 0);
    if (n <= kMaxDescendantNodes) {
      const size_t words = (static_cast<size_t>(n) + 63) / 64;
      std::vector<uint64_t> bits(words * static_cast<size_t>(n), 0);
      for (int32_t i = n - 1; i >= 0; --i) {
        const int32_t u = p.order_[i];
        uint64_t* bu = bits.data() + words * u;
        for (const int32_t* w = dag.succ_begin(u); w != dag.succ_end(u); ++w) {
          const uint64_t* bw = bits.data() + words * (*w);
          for (size_t k = 0; k < words; ++k) bu[k] |= bw[k];
          bu[*w / 64] |= uint64_t{1} << (*w % 64);
        }
        double sum = 0.0;
        int32_t count = 0;
        for (size_t k = 0; k < words; ++k) {
          uint64_t word = bu[k];
          while (word != 0) {
            const int bit = __builtin_ctzll(word);
            sum += s[static_cast<int32_t>(k * 64) + bit];
            ++count;
            word &= word - 1;
          }
        }
        p.desc_server_[u] = sum;
        p.desc_count_[u] = count;
      }
    }
    return Result::Ok();
  }

  int32_t num_nodes() const { return n_; }

  // The valid partition with the smallest period at `bandwidth_bps` (> 0,
  // +inf: no transfer time), fewest bytes among ties.
  Result MinPeriod(double bandwidth_bps, const PeriodOptions& opt, PeriodSolution* out) const {
    if (!(bandwidth_bps > 0.0)) {  // also NaN; +inf is a link with no transfer time
      return Result::BadInput("bandwidth_bps must be > 0, got " + std::to_string(bandwidth_bps));
    }
    if (opt.max_steps < 0) return Result::BadInput("max_steps must be >= 0");
    Units u;
    Result r = MakeUnits(bandwidth_bps, true, &u);
    if (!r.ok()) return r;
    Search search(*this, u, /*pareto=*/false, opt.max_steps);
    search.Run();
    out->on_device = std::move(search.best_mask);
    out->optimal = !search.aborted;
    out->steps = search.steps;
    const int64_t lb = search.aborted ? std::min(search.open_bound, search.best_p) : search.best_p;
    out->lower_bound_s = static_cast<double>(lb) / u.time_scale;
    return Result::Ok();
  }

  // The Pareto front of (max(device_s, server_s), bytes_sent), bytes ascending.
  Result ParetoFront(const PeriodOptions& opt, PeriodFront* out) const {
    if (opt.max_steps < 0) return Result::BadInput("max_steps must be >= 0");
    Units u;
    Result r = MakeUnits(std::numeric_limits<double>::infinity(), false, &u);
    if (!r.ok()) return r;
    Search search(*this, u, /*pareto=*/true, opt.max_steps);
    search.Run();
    out->count = static_cast<int32_t>(search.front.size());
    out->parts.clear();
    for (const auto& point : search.front) {
      out->parts.insert(out->parts.end(), point.mask.begin(), point.mask.end());
    }
    out->complete = !search.aborted;
    out->steps = search.steps;
    return Result::Ok();
  }

 private:
  using Cap = int64_t;

  // The costs of one solve in integer units.
  struct Units {
    std::vector<Cap> d, s, t, b;           // device, server, transfer, bytes per node
    std::vector<Cap> desc_s, min_suffix;  // the bound sums, rounded down
    double time_scale = 1.0;               // units per second
  };

  // x * scale rounded down, less a margin for the rounding of `terms` summed
  // rounded-to-nearest values and of the double sum itself: never above the
  // sum of the nodes' own units.
  static Cap LowerUnits(double x, double scale, int64_t terms) {
    const double y = x * scale * (1.0 - 1e-12) - 0.5 * static_cast<double>(terms) - 1.0;
    return y > 0.0 ? static_cast<Cap>(y) : 0;
  }

  Result MakeUnits(double bandwidth_bps, bool with_transfer, Units* u) const {
    const int32_t n = n_;
    const double* d = g_->device_s().data();
    const double* s = g_->server_s().data();
    const double* b = g_->out_bytes().data();
    // A transfer is clamped to twice the all-device period: a partition that
    // sends it is then no better than all-device (which sends no byte and wins
    // the tie), as it was before, and a denormal bandwidth cannot overflow.
    double all_device = 0.0;
    for (int32_t v = 0; v < n; ++v) all_device += d[v];
    const double clamp = 2.0 * all_device;
    std::vector<double> seconds(static_cast<size_t>(n) * 3, 0.0);
    for (int32_t v = 0; v < n; ++v) {
      seconds[3 * v] = d[v];
      seconds[3 * v + 1] = s[v];
      seconds[3 * v + 2] = with_transfer ? std::min(8.0 * b[v] / bandwidth_bps, clamp) : 0.0;
    }
    double total = 0.0;
    for (double x : seconds) total += x;
    FixedPoint time;
    Result r = FixedPoint::For(total, &time);
    if (!r.ok()) return r;
    double btotal = 0.0;
    for (int32_t v = 0; v < n; ++v) btotal += b[v];
    FixedPoint bytes;
    r = FixedPoint::For(btotal, &bytes);
    if (!r.ok()) return r;
    u->d.resize(static_cast<size_t>(n));
    u->s.resize(static_cast<size_t>(n));
    u->t.resize(static_cast<size_t>(n));
    u->b.resize(static_cast<size_t>(n));
    for (int32_t v = 0; v < n; ++v) {
      u->d[v] = time.ToUnits(seconds[3 * v]);
      u->s[v] = time.ToUnits(seconds[3 * v + 1]);
      u->t[v] = time.ToUnits(seconds[3 * v + 2]);
      u->b[v] = bytes.ToUnits(b[v]);
    }
    // FixedPoint's scale, 2^(60 - exponent of total), for the bounds and seconds.
    int exponent = 0;
    if (total > 0.0) std::frexp(total, &exponent);
    u->time_scale = std::ldexp(1.0, 60 - exponent);
    u->desc_s.resize(static_cast<size_t>(n));
    for (int32_t v = 0; v < n; ++v) {
      u->desc_s[v] = LowerUnits(desc_server_[v], u->time_scale, desc_count_[v]);
    }
    u->min_suffix.resize(static_cast<size_t>(n) + 1);
    for (int32_t i = 0; i <= n; ++i) {
      u->min_suffix[i] = LowerUnits(min_suffix_[i], u->time_scale, n - i);
    }
    return Result::Ok();
  }

  // One branch and bound (see the top of the file).
  struct Search {
    struct Point {
      Cap c, bytes;
      std::vector<uint8_t> mask;
    };
    struct Frame {
      int32_t depth;
      uint8_t choice[2];  // 0 = device, 1 = server
      uint8_t count, tried;
      Cap a, c, t, b, c_desc;  // the state before this node's decision
      size_t trail;
      Cap bound;  // a lower bound for every leaf below this frame
    };

    Search(const PeriodSearch& p, const Units& u, bool pareto, int64_t max_steps)
        : p(p), u(u), pareto(pareto), max_steps(max_steps) {
      side.assign(static_cast<size_t>(p.n_), kFree);
      sent.assign(static_cast<size_t>(p.n_), 0);
    }

    static constexpr uint8_t kFree = 2;
    const PeriodSearch& p;
    const Units& u;
    const bool pareto;
    const int64_t max_steps;
    std::vector<uint8_t> side;  // 1 = device, 0 = server, kFree
    std::vector<uint8_t> sent;
    std::vector<int32_t> trail;  // nodes marked sent, in order
    std::vector<Frame> stack;
    int64_t steps = 0;
    bool aborted = false;
    Cap open_bound = std::numeric_limits<Cap>::max();
    // Single-bandwidth incumbent.
    Cap best_p = std::numeric_limits<Cap>::max(), best_b = std::numeric_limits<Cap>::max();
    std::vector<uint8_t> best_mask;
    // The front: bytes ascending, c strictly descending.
    std::vector<Point> front;

    // The primary value of a (partial) state: its period bound.
    Cap Primary(Cap a, Cap c, Cap t) const { return pareto ? std::max(a, c) : std::max({a, c, t}); }

    // True if a state with primary bound `lb` and bytes `b` can lead to nothing better.
    bool Dominated(Cap lb, Cap b) const {
      if (!pareto) return lb > best_p || (lb == best_p && b >= best_b);
      // The last front point with bytes <= b has the smallest c among those.
      auto it = std::upper_bound(front.begin(), front.end(), b,
                                 [](Cap x, const Point& q) { return x < q.bytes; });
      return it != front.begin() && std::prev(it)->c <= lb;
    }

    void Offer(Cap a, Cap c, Cap t, Cap b, const uint8_t* mask) {
      const Cap value = Primary(a, c, t);
      if (Dominated(value, b)) return;
      if (!pareto) {
        best_p = value;
        best_b = b;
        best_mask.assign(mask, mask + p.n_);
        return;
      }
      // Remove the points the new one dominates (bytes >= b and c >= value).
      auto first = std::lower_bound(front.begin(), front.end(), b,
                                    [](const Point& q, Cap x) { return q.bytes < x; });
      auto last = first;
      while (last != front.end() && last->c >= value) ++last;
      first = front.erase(first, last);
      front.insert(first, Point{value, b, std::vector<uint8_t>(mask, mask + p.n_)});
    }

    // The best topological prefixes (the incumbents the search starts from).
    void SeedPrefixes() {
      const int32_t n = p.n_;
      const Dag& dag = p.g_->dag();
      std::vector<int32_t> outside(static_cast<size_t>(n));  // successors not in the prefix
      for (int32_t v = 0; v < n; ++v) outside[v] = static_cast<int32_t>(dag.out_degree(v));
      Cap a = 0, c = 0, t = 0, b = 0;
      for (int32_t v = 0; v < n; ++v) c += u.s[v];
      std::vector<uint8_t> mask(static_cast<size_t>(n), 0);
      for (int32_t k = 1; k <= n; ++k) {  // prefix of length k
        const int32_t v = p.order_[k - 1];
        mask[v] = 1;
        a += u.d[v];
        c -= u.s[v];
        if (outside[v] > 0) {
          t += u.t[v];
          b += u.b[v];
        }
        for (int32_t j = p.pred_start_[v]; j < p.pred_start_[v + 1]; ++j) {
          const int32_t w = p.pred_[j];
          if (--outside[w] == 0) {
            t -= u.t[w];
            b -= u.b[w];
          }
        }
        if (k >= p.num_inputs_) Offer(a, c, t, b, mask.data());
      }
    }

    // A lower bound on every leaf below a state (primary part).
    Cap Bound(int32_t next_depth, Cap a, Cap c, Cap t, Cap c_desc) const {
      const Cap half = (a + c + u.min_suffix[next_depth] + 1) / 2;
      return std::max({Primary(a, c, t), c_desc, half});
    }

    // Pushes the frame of depth `depth` (< n) for the current state.
    void Push(int32_t depth, Cap a, Cap c, Cap t, Cap b, Cap c_desc, Cap bound) {
      Frame f{};
      f.depth = depth;
      f.a = a;
      f.c = c;
      f.t = t;
      f.b = b;
      f.c_desc = c_desc;
      f.trail = trail.size();
      f.bound = bound;
      f.tried = 0;
      const int32_t v = p.order_[depth];
      bool forced_server = false;
      for (int32_t j = p.pred_start_[v]; j < p.pred_start_[v + 1]; ++j) {
        if (side[p.pred_[j]] == 0) {
          forced_server = true;
          break;
        }
      }
      const uint8_t* pinned = p.g_->on_server();
      if (pinned != nullptr && pinned[v]) forced_server = true;
      if (forced_server) {
        f.choice[0] = 1;
        f.count = 1;
      } else if (p.g_->dag().is_input(v)) {
        f.choice[0] = 0;
        f.count = 1;
      } else {
        // Balanced first: the side whose own bound grows less.
        const Cap if_device = a + u.d[v];
        const Cap if_server = std::max(c + u.s[v] + u.desc_s[v], c_desc);
        f.choice[0] = if_device <= if_server ? 0 : 1;
        f.choice[1] = 1 - f.choice[0];
        f.count = 2;
      }
      stack.push_back(f);
    }

    void Undo(const Frame& f) {
      while (trail.size() > f.trail) {
        sent[trail.back()] = 0;
        trail.pop_back();
      }
      side[p.order_[f.depth]] = kFree;
    }

    void Run() {
      const int32_t n = p.n_;
      SeedPrefixes();
      if (n == 0) return;
      Push(0, 0, 0, 0, 0, 0, Bound(0, 0, 0, 0, 0));
      while (!stack.empty()) {
        Frame& f = stack.back();
        if (f.tried == f.count) {
          Undo(f);
          stack.pop_back();
          continue;
        }
        if (steps >= max_steps) {
          aborted = true;
          for (const Frame& open : stack) open_bound = std::min(open_bound, open.bound);
          return;
        }
        ++steps;
        const uint8_t choice = f.choice[f.tried++];
        Undo(f);  // back to the state before this node (a sibling may have run)
        const int32_t v = p.order_[f.depth];
        Cap a = f.a, c = f.c, t = f.t, b = f.b, c_desc = f.c_desc;
        if (choice == 0) {
          side[v] = 1;
          a += u.d[v];
        } else {
          side[v] = 0;
          c_desc = std::max(c_desc, c + u.s[v] + u.desc_s[v]);
          c += u.s[v];
          for (int32_t j = p.pred_start_[v]; j < p.pred_start_[v + 1]; ++j) {
            const int32_t w = p.pred_[j];
            if (side[w] == 1 && !sent[w]) {
              sent[w] = 1;
              trail.push_back(w);
              t += u.t[w];
              b += u.b[w];
            }
          }
        }
        const int32_t next = f.depth + 1;
        const Cap bound = Bound(next, a, c, t, c_desc);
        if (Dominated(bound, b)) continue;
        if (next == n) {
          mask_.resize(static_cast<size_t>(n));
          for (int32_t x = 0; x < n; ++x) mask_[x] = side[x] == 1;
          Offer(a, c, t, b, mask_.data());
          continue;
        }
        Push(next, a, c, t, b, c_desc, bound);
      }
    }

    std::vector<uint8_t> mask_;
  };

  const Graph* g_ = nullptr;
  int32_t n_ = 0;
  int32_t num_inputs_ = 0;
  std::vector<int32_t> order_;
  std::vector<int32_t> pred_start_, pred_;
  std::vector<double> min_suffix_;
  std::vector<double> desc_server_;
  std::vector<int32_t> desc_count_;
};

}  // namespace cic

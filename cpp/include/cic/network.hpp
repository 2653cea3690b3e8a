// The DADS flow network of a partition problem, and its fixed-point scale.
// This is the one network builder and the one scaler of the core: Graph
// builds its network here (graph.hpp), and so does every block of the
// compression, whose problem is a Graph with its exit pinned to the server
// (compress.hpp, rule 3).
//
// The problem. A DAG whose node v has terminal costs dev[v] (paid if v is on
// the device) and srv[v] (paid if on the server), and whose nodes with
// successors send: a per-solve transfer cost T_u (seconds) is paid if u is on
// the device and some successor is on the server. The caller decides what T_u
// is at a bandwidth (Graph: 8 out_bytes[u] / bw, or a chain's best split).
// Inputs (no in-edge) are pinned to the device; optionally some nodes
// without successors are pinned to the server.
//
// Construction (DADS, Hu et al. 2019, with its two gaps closed). Source side
// = device, sink side = server. For every free node v: v->t of capacity
// dev[v] (paid iff v in D) and s->v of capacity srv[v] (paid iff v in S). For
// u with one successor w: u->w of capacity T_u and w->u infinite. For u with
// several successors: an auxiliary node u', u->u' of capacity T_u, u'->w
// infinite and w->u infinite for each successor w. Why this is the cost
// model:
//  * closure: an infinite w->u forbids w in D with u in S, i.e. data flowing
//    back from server to device (DADS omits it and then "finds" cheaper,
//    impossible partitions);
//  * send once: if u in D has successors in S, u' must be in S (else u'->w is
//    an infinite cut arc), so exactly u->u' is cut and T_u is paid once
//    however many successors consume the tensor; if u in D has none in S, u'
//    goes to D at no cost; if u in S all successors are in S by closure, u' in
//    S, no cost. A single successor needs no auxiliary node;
//  * pinned inputs: inputs are contracted into s (an infinite s->input arc),
//    so the raw input cannot be "uploaded for free"; their device time is a
//    constant and their T_u arcs become source arcs. A closure arc into s is
//    always satisfied and is left out;
//  * pinned to the server: such a node o is contracted into t; its server
//    time is a constant, a closure arc out of t (o->u) never binds and is
//    left out, and o has no successors (the builder's precondition), so o
//    sends nothing. The arcs at t must be finite (maxflow.hpp), so an
//    auxiliary arc u'->o, which would be infinite, gets the clamp bound below
//    instead: above every minimal cut, just as infinity is.
// So finite cuts and valid partitions correspond one to one (up to free
// auxiliary nodes) with equal cost, up to the constants above.
//
// Reductions that leave every cut's cost shifted by a constant: for every v
// the smaller of dev[v] and srv[v] is subtracted from both (every cut pays
// exactly one of them), so each node keeps one terminal arc; a transfer
// capacity above a reference cut is clamped to it plus one unit (a cut
// containing such an arc costs more than the reference, so it is never
// minimal either way). Arcs implied by others are dropped (Build's comment).
//
// Fixed point (FixedPoint, FixScale, Solve). Capacities are int64 values c * 2^k,
// rounded to nearest, with the scale chosen so that every finite capacity
// together stays below 2^60 units. Without nodes pinned to the server the
// reference cut is "every free node on the device", which does not depend on
// the bandwidth: the scale and every terminal capacity are fixed once, and a
// new solve re-sets just the transfer arcs. With such nodes that cut is not
// valid; the reference is "every free node on the server", whose cost
// includes the transfers out of s, and the scale is chosen at every solve.
// The min cut is exact for the rounded problem and within (number of cut
// arcs) * 2^-60 * B of the real-valued optimum (B = Total(reference), the
// bound on the sum of every finite capacity), far below 1e-9 relative on any
// DNN-sized graph. Costs whose total a double cannot hold report kIntOverflow. Callers report latencies recomputed
// from the partition with the cost model (cost.hpp), never read off the flow.
#pragma once

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cic/dag.hpp"
#include "cic/maxflow.hpp"
#include "cic/status.hpp"

namespace cic {

// Seconds to int64 capacity units: x -> x * 2^shift, rounded to nearest.
class FixedPoint {
 public:
  using Cap = PushRelabel::Cap;

  // The scale 2^shift with total * 2^shift < 2^60, for a total (seconds,
  // >= 0) that bounds the sum of every finite capacity. kIntOverflow when
  // the total is not finite (costs near 1e308).
  static Result For(double total, FixedPoint* out) {
    if (!std::isfinite(total)) {
      return Result::Overflow(
          "costs too large: their sum overflows the fixed-point range (overflow)");
    }
    int exponent = 0;
    if (total > 0.0) std::frexp(total, &exponent);
    out->shift_ = 60 - exponent;  // total * 2^shift_ < 2^60
    out->scale_ = (out->shift_ > -1000 && out->shift_ < 1000) ? std::ldexp(1.0, out->shift_) : 0.0;
    return Result::Ok();
  }

  // x * 2^shift rounded to nearest, for 0 <= x * 2^shift < 2^62.
  Cap ToUnits(double x) const {
    const double y = Scaled(x);
    assert(y >= 0.0 && y < 0x1p62 && "ToUnits out of range");
    return static_cast<Cap>(y + 0.5);
  }
  // Like ToUnits, but clamped to `bound` (x >= 0; +inf clamps too).
  Cap Clamped(double x, Cap bound) const {
    assert(x >= 0.0 && "Clamped: negative or NaN seconds");
    const double y = Scaled(x);
    return y >= static_cast<double>(bound) ? bound : static_cast<Cap>(y + 0.5);
  }

 private:
  double Scaled(double x) const { return scale_ != 0.0 ? x * scale_ : std::ldexp(x, shift_); }
  int shift_ = 0;
  double scale_ = 1.0;  // 2^shift_, or 0 when that is not a normal double
};

class CutNetwork {
 public:
  using Cap = PushRelabel::Cap;

  // A node with successors, whose transfer arc (u->w, u->u', or from s for
  // an input) carries T_u.
  struct Sender {
    int32_t node;      // the DAG node
    int32_t pair;      // its transfer pair
    bool closure;      // the pair's backward capacity is infinite (closure)
    bool from_source;  // u is an input (the arc leaves s)
  };

  // Builds the network of the problem on `dag` with terminal costs dev[v],
  // srv[v] (finite, >= 0). `on_server` (may be null) flags nodes pinned to
  // the server: each must have no successor and not be an input (callers
  // check; asserted here). `reduce` = false keeps every arc of the plain
  // construction (for tests). Fails only with kIntOverflow, when the fixed
  // scale (no node pinned to the server) cannot hold the costs.
  static Result Build(const Dag& dag, const double* dev, const double* srv,
                      const uint8_t* on_server, bool reduce, CutNetwork* out) {
    out->BuildArcs(dag, dev, srv, on_server, reduce);
    return out->fixed_scale_ ? out->FixScale() : Result::Ok();
  }

  const FlowNetwork& flow() const { return flow_; }
  int32_t num_nodes() const { return flow_.num_nodes(); }
  int32_t num_pairs() const { return flow_.num_pairs(); }
  // The senders, in the order Solve reads their transfer seconds.
  const std::vector<Sender>& senders() const { return senders_; }
  // Whether the scale is chosen once (no node pinned to the server).
  bool fixed_scale() const { return fixed_scale_; }

  // Binds a solver to this network with the bandwidth-independent
  // capacities. Needed once per solver (and after it served another one).
  void Bind(PushRelabel* ws) const { ws->Bind(flow_, base_cap_.data()); }

  // Sets the bandwidth-dependent capacities from seconds[i], the transfer
  // cost T of senders()[i] (>= 0, +inf allowed without server pins), and
  // solves. `ws` must be bound to this network (Bind). Allocates nothing.
  // kIntOverflow when a per-solve scale cannot hold the costs.
  Result Solve(const double* seconds, PushRelabel* ws) const {
    assert(ws->network() == &flow_ && "Solve with a solver bound to another network");
    FixedPoint fp = fp_;
    Cap bound = bound_;
    if (!fixed_scale_) {
      // Reference cut: every free node on the server. It cuts the s->v
      // terminal arcs and the transfer arcs out of s, nothing else.
      double ref = srv_total_;
      for (size_t i = 0; i < senders_.size(); ++i) {
        if (senders_[i].from_source) ref += seconds[i];
      }
      Result r = FixedPoint::For(Total(ref), &fp);
      if (!r.ok()) return r;
      Cap ref_units = 0;
      for (const Terminal& t : terminals_) {
        const Cap c = fp.ToUnits(t.seconds);
        ws->SetPair(t.pair, c, 0);
        if (!t.to_sink) ref_units += c;
      }
      for (size_t i = 0; i < senders_.size(); ++i) {
        if (senders_[i].from_source) ref_units += fp.ToUnits(seconds[i]);
      }
      bound = ref_units + 1;
      for (int32_t p : bound_pairs_) ws->SetPair(p, bound, 0);
    }
    for (size_t i = 0; i < senders_.size(); ++i) {
      const Sender& s = senders_[i];
      ws->SetPair(s.pair, fp.Clamped(seconds[i], bound),
                  s.closure ? PushRelabel::kInfinity : 0);
    }
    ws->Solve();
    return Result::Ok();
  }

  // After Solve: whether DAG node v is on the device side of the cut.
  bool OnDevice(const PushRelabel& ws, int32_t v) const { return ws.OnSourceSide(node_[v]); }

 private:
  struct Terminal {
    int32_t pair;
    double seconds;  // reduced terminal cost
    bool to_sink;    // v->t (device time) rather than s->v (server time)
  };

  // Arcs implied by others are dropped. For an edge (u, w), call it
  // "bypassed" if w is reachable from another successor x of u.
  //  * closure: w->u is dropped when (u, w) is bypassed: w in D => (closure
  //    along x ~> w) x in D => u in D. Induction on the distance of u and w
  //    in a topological order (every edge of u -> x ~> w is shorter) shows
  //    every closure constraint still follows from the kept arcs.
  //  * send-once: u'->x is dropped when x reaches another successor w of u:
  //    in a valid partition x in S => w in S, so "some successor of u is in
  //    S" is still seen at w, or (inductively, further along a topological
  //    order) at a successor that reaches no other; one always remains.
  //  * an auxiliary node left with one target m is the arc u->m itself.
  // Both arguments use only closure, so they hold as well with nodes pinned
  // to the server (which only removes partitions). So every valid partition
  // keeps its cost and invalid ones stay infinite. On DenseNet-like graphs,
  // where most edges are bypassed, this removes most arcs. Reachability uses
  // one bitset per node (n^2 / 8 bytes, O(E n / 64) time); above
  // kReduceLimit nodes the network is built unreduced.
  static constexpr int32_t kReduceLimit = 16384;

  void BuildArcs(const Dag& g, const double* dev, const double* srv,
                 const uint8_t* on_server, bool reduce) {
    const int32_t n = g.num_nodes();
    const int64_t edges = g.num_edges();
    const int32_t* base = edges ? g.succ_begin(0) : nullptr;
    auto pinned = [&](int32_t v) { return on_server != nullptr && on_server[v] != 0; };
    // keep_send[k] / keep_closure[k] for successor entry k (CSR order).
    std::vector<uint8_t> keep(2 * static_cast<size_t>(edges), 1);
    uint8_t* keep_send = keep.data();
    uint8_t* keep_closure = keep.data() + edges;
    // rank[v] (the bitset pass) and aux[u] (the network) share one buffer.
    std::vector<int32_t> ints(2 * static_cast<size_t>(n));
    int32_t* rank = ints.data();
    int32_t* aux = ints.data() + n;
    // Nothing is bypassed unless some node has two successors.
    bool fan_out = false;
    for (int32_t u = 0; u < n && !fan_out; ++u) fan_out = g.out_degree(u) >= 2;
    if (reduce && n <= kReduceLimit && fan_out) {
      // Bits are topological ranks, so a node's descendants all lie above
      // its own rank: word loops start at the first word that can hold one,
      // and the "does x reach another successor" test only scans the words
      // spanned by the successors.
      const auto& order = g.topological_order();
      for (int32_t i = 0; i < n; ++i) rank[order[i]] = i;
      const size_t words = (static_cast<size_t>(n) + 63) / 64;
      std::vector<uint64_t> bits((static_cast<size_t>(n) + 2) * words, 0);
      uint64_t* reach = bits.data();  // strict descendants, per rank
      uint64_t* mine = reach + static_cast<size_t>(n) * words;  // successors of u
      uint64_t* others = mine + words;  // reachable from successors of u
      for (int32_t i = n - 1; i >= 0; --i) {
        const int32_t u = order[i];
        uint64_t* ru = &reach[static_cast<size_t>(i) * words];
        const size_t from = static_cast<size_t>(i + 1) / 64;
        if (g.out_degree(u) == 0) continue;
        if (g.out_degree(u) == 1) {
          const int32_t r = rank[*g.succ_begin(u)];
          const uint64_t* rx = &reach[static_cast<size_t>(r) * words];
          for (size_t k = from; k < words; ++k) ru[k] = rx[k];
          ru[r >> 6] |= uint64_t{1} << (r & 63);
          continue;
        }
        size_t lo = words, hi = 0;  // word span of the successors' ranks
        for (const int32_t* x = g.succ_begin(u); x != g.succ_end(u); ++x) {
          const int32_t r = rank[*x];
          mine[r >> 6] |= uint64_t{1} << (r & 63);
          lo = std::min(lo, static_cast<size_t>(r >> 6));
          hi = std::max(hi, static_cast<size_t>(r >> 6));
          const uint64_t* rx = &reach[static_cast<size_t>(r) * words];
          for (size_t k = from; k < words; ++k) others[k] |= rx[k];
        }
        for (const int32_t* x = g.succ_begin(u); x != g.succ_end(u); ++x) {
          const int32_t r = rank[*x];
          // Bypassed: reachable from a successor (never from itself: a DAG).
          if ((others[r >> 6] >> (r & 63)) & 1u) keep_closure[x - base] = 0;
          const uint64_t* rx = &reach[static_cast<size_t>(r) * words];
          uint64_t hit = 0;
          for (size_t k = lo; k <= hi; ++k) hit |= rx[k] & mine[k];
          if (hit) keep_send[x - base] = 0;
        }
        for (size_t k = from; k < words; ++k) {
          ru[k] = others[k] | mine[k];
          others[k] = 0;
          mine[k] = 0;
        }
      }
    }
    // Network nodes: free nodes, auxiliary nodes, then t, s; inputs map to s
    // and nodes pinned to the server to t.
    node_.assign(n, -1);
    int32_t count = 0;
    fixed_scale_ = true;
    for (int32_t v = 0; v < n; ++v) {
      if (pinned(v)) {
        assert(!g.is_input(v) && g.out_degree(v) == 0 &&
               "a node pinned to the server must have predecessors and no successor");
        fixed_scale_ = false;
      } else if (!g.is_input(v)) {
        node_[v] = count++;
      }
    }
    std::fill(aux, aux + n, -1);
    for (int32_t u = 0; u < n; ++u) {
      int64_t targets = 0;
      for (const int32_t* w = g.succ_begin(u); w != g.succ_end(u); ++w) {
        targets += keep_send[w - base];
      }
      if (targets >= 2) aux[u] = count++;
    }
    const int32_t sink = count++;
    const int32_t source = count++;
    for (int32_t v = 0; v < n; ++v) {
      if (g.is_input(v)) node_[v] = source;
      if (pinned(v)) node_[v] = sink;
    }
    flow_.Reset(count, source, sink);
    flow_.Reserve(2 * static_cast<int64_t>(n) + 2 * edges);  // terminals, senders, aux, closure
    terminals_.clear();
    senders_.clear();
    bound_pairs_.clear();
    dev_total_ = srv_total_ = 0.0;
    std::vector<int32_t> infinite;
    infinite.reserve(2 * static_cast<size_t>(edges));
    for (int32_t v = 0; v < n; ++v) {
      if (g.is_input(v) || pinned(v)) continue;  // constants
      const double m = std::min(dev[v], srv[v]);
      // After the reduction one of the two is zero; a zero arc is left out.
      if (srv[v] - m > 0.0) {
        terminals_.push_back({flow_.AddPair(source, node_[v]), srv[v] - m, false});
        srv_total_ += srv[v] - m;
      } else if (dev[v] - m > 0.0) {
        terminals_.push_back({flow_.AddPair(node_[v], sink), dev[v] - m, true});
        dev_total_ += dev[v] - m;
      }
    }
    for (int32_t u = 0; u < n; ++u) {
      if (g.out_degree(u) == 0) continue;
      const int32_t from = node_[u];
      const bool input = g.is_input(u);
      if (aux[u] >= 0) {
        senders_.push_back({u, flow_.AddPair(from, aux[u]), false, input});
        for (const int32_t* w = g.succ_begin(u); w != g.succ_end(u); ++w) {
          if (!keep_send[w - base]) continue;
          if (node_[*w] == sink) {
            bound_pairs_.push_back(flow_.AddPair(aux[u], sink));
          } else {
            infinite.push_back(flow_.AddPair(aux[u], node_[*w]));
          }
        }
      } else {
        const int32_t* m = g.succ_begin(u);
        while (!keep_send[m - base]) ++m;  // the last successor is always kept
        // The backward infinity is the closure of (u, m); never at s or t.
        const int32_t to = node_[*m];
        senders_.push_back({u, flow_.AddPair(from, to), from != source && to != sink, input});
      }
      if (input) continue;  // closure into s is always satisfied
      for (const int32_t* w = g.succ_begin(u); w != g.succ_end(u); ++w) {
        if (node_[*w] == sink) continue;  // closure out of t never binds
        if (keep_closure[w - base] && !(aux[u] < 0 && keep_send[w - base])) {
          infinite.push_back(flow_.AddPair(node_[*w], node_[u]));
        }
      }
    }
    flow_.Finalize();
    base_cap_.assign(static_cast<size_t>(flow_.num_arcs()), 0);
    for (int32_t p : infinite) flow_.SetPair(base_cap_.data(), p, PushRelabel::kInfinity, 0);
  }

  // The fixed-point total for a reference cut of cost `ref` (seconds): every
  // terminal plus every transfer and bound arc clamped to ref (+ 1 unit,
  // and 1/2 unit of rounding per arc, both far below the 2^60 margin).
  double Total(double ref) const {
    const double arcs = static_cast<double>(senders_.size() + bound_pairs_.size());
    return dev_total_ + srv_total_ + arcs * ref;
  }

  // The fixed scale (no node pinned to the server). The reference cut is
  // "every free node on the device", which cuts exactly the v->t terminal
  // arcs: its cost dev_total_ does not depend on the bandwidth. Transfer
  // capacities are clamped to bound_ = (that cut in units) + 1, so the sum of
  // every finite capacity is at most dev + srv + senders * dev (+ rounding),
  // which the scale keeps below 2^60. An infinite arc gets 2^62 (above every
  // finite cut; 2^62 + 2^61 still fits, and no excess or flow can exceed
  // 2^61).
  Result FixScale() {
    Result r = FixedPoint::For(Total(dev_total_), &fp_);
    if (!r.ok()) return r;
    Cap device_units = 0;
    for (const Terminal& t : terminals_) {
      const Cap c = fp_.ToUnits(t.seconds);
      flow_.SetPair(base_cap_.data(), t.pair, c, 0);
      if (t.to_sink) device_units += c;
    }
    bound_ = device_units + 1;
    return Result::Ok();
  }

  FlowNetwork flow_;
  std::vector<int32_t> node_;  // DAG node -> network node (s for inputs, t if pinned)
  std::vector<Terminal> terminals_;
  std::vector<Sender> senders_;
  std::vector<int32_t> bound_pairs_;  // u'->t pairs, capacity = the clamp bound
  std::vector<Cap> base_cap_;         // bandwidth-independent capacities, per arc
  double dev_total_ = 0.0, srv_total_ = 0.0;  // reduced terminal sums
  bool fixed_scale_ = true;
  FixedPoint fp_;  // the fixed scale (fixed_scale_ only)
  Cap bound_ = 1;  // the fixed clamp bound (fixed_scale_ only)
};

}  // namespace cic

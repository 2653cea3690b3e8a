// The device/server partition problem of one layer DAG, and its exact optimum.
//
// Cost model (DESIGN.md). Each layer v has device_s[v], server_s[v] (seconds)
// and out_bytes[v]. A partition puts layers on the device (D) or the server
// (S); inputs (no in-edge) are in D and no edge goes from S to D. Then
//   latency(D) = sum device_s[D] + sum server_s[S]
//              + 8 * sum{out_bytes[u] : u in D, some successor in S} / bw
//              + rtt if S is not empty.
//
// Construction (DADS, Hu et al. 2019, with its two gaps closed). Source side
// = device, sink side = server. For every non-input v: v->t of capacity
// device_s[v] (paid iff v in D) and s->v of capacity server_s[v] (paid iff v
// in S). For u with one successor w: u->w of capacity T_u = 8 out_bytes[u]/bw
// and w->u infinite. For u with several successors: an auxiliary node u',
// u->u' of capacity T_u, u'->w infinite and w->u infinite for each successor
// w. Why this is the cost model:
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
//    constant and their T_u arcs become source arcs.
// So finite cuts and valid partitions correspond one to one (up to free
// auxiliary nodes) with equal cost, minus rtt, which a cut cannot express:
// the optimum with rtt is the cheaper of the min cut plus rtt (if it offloads)
// and all-device. This is exact: every offloading partition costs at least
// the min cut, and all-device is itself a cut.
//
// Reductions that leave every cut's cost shifted by a constant: for every v
// the smaller of device_s[v] and server_s[v] is subtracted from both (every
// cut pays exactly one of them), so each node keeps one terminal arc; a
// transfer capacity above the all-device cut is clamped to it plus one unit
// (a cut containing such an arc costs more than all-device, so it is never
// minimal either way).
//
// Fixed point. Capacities are int64 values c * 2^k, rounded to nearest. k is
// chosen once per graph so that B = dev + srv + (transfer and chain arcs) * dev
// is below 2^60 units, where dev and srv are the reduced device and server
// totals: B bounds the sum of all finite capacities, because each transfer is
// clamped to the all-device cut plus one unit. An infinite arc gets 2^62
// (above every finite cut; 2^62 + 2^61 still fits, and no excess or flow can
// exceed 2^61). Only transfer capacities change with the bandwidth, so a new
// solve re-sets just those. The min cut is exact for the rounded problem and
// within (number of cut arcs) * 2^-60 * B of the real-valued optimum, far
// below 1e-9 relative on any DNN-sized graph. The latency reported is
// recomputed from the partition in double with the formula above, never read
// off the flow. Sums that overflow double (costs near 1e308) report
// kIntOverflow.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "cic/dag.hpp"
#include "cic/maxflow.hpp"
#include "cic/status.hpp"

namespace cic {

// Latency parts of one partition at one bandwidth.
struct Breakdown {
  double latency_s = 0.0;   // device_s + transfer_s + server_s + rtt_s
  double device_s = 0.0;    // sum of device_s over layers on the device
  double transfer_s = 0.0;  // 8 * bytes_sent / bandwidth
  double server_s = 0.0;    // sum of server_s over layers on the server
  double rtt_s = 0.0;       // rtt if anything runs on the server, else 0
  double bytes_sent = 0.0;  // sum of out_bytes over sent layers
  int64_t num_sent = 0;     // layers on the device with a successor on the server
  bool offloads = false;    // some layer runs on the server
};

// Checks that `values[0..n)` are finite and >= 0; the message names `what`.
inline Result CheckCosts(const char* what, const double* values, int32_t n) {
  for (int32_t i = 0; i < n; ++i) {
    const double x = values[i];
    if (!std::isfinite(x)) {
      return Result::BadInput(std::string(what) + "[" + std::to_string(i) +
                              "] is not finite (" + std::to_string(x) + ")");
    }
    if (x < 0.0) {
      return Result::BadInput(std::string(what) + "[" + std::to_string(i) +
                              "] is negative (" + std::to_string(x) + ")");
    }
  }
  return Result::Ok();
}

// Checks bandwidth (finite, > 0, bits per second) and rtt (finite, >= 0).
inline Result CheckLink(double bandwidth_bps, double rtt_s) {
  if (!(std::isfinite(bandwidth_bps) && bandwidth_bps > 0.0)) {
    return Result::BadInput("bandwidth_bps must be finite and > 0, got " +
                            std::to_string(bandwidth_bps));
  }
  if (!(std::isfinite(rtt_s) && rtt_s >= 0.0)) {
    return Result::BadInput("rtt_s must be finite and >= 0, got " +
                            std::to_string(rtt_s));
  }
  return Result::Ok();
}

class Graph {
 public:
  // Validates the costs (finite, >= 0; the message names array and index)
  // and builds the flow network once. `dag` is taken by value (move it in).
  // The three arrays have dag.num_nodes() entries each and are copied.
  // `reduce` = false keeps every arc of the plain construction (for tests).
  static Result Create(Dag dag, const double* device_s, const double* server_s,
                       const double* out_bytes, Graph* out, bool reduce = true) {
    const int32_t n = dag.num_nodes();
    Result r = CheckCosts("device_s", device_s, n);
    if (r.ok()) r = CheckCosts("server_s", server_s, n);
    if (r.ok()) r = CheckCosts("out_bytes", out_bytes, n);
    if (!r.ok()) return r;
    Graph& g = *out;
    g.dag_ = std::move(dag);
    g.device_.assign(device_s, device_s + n);
    g.server_.assign(server_s, server_s + n);
    g.bytes_.assign(out_bytes, out_bytes + n);
    g.all_device_s_ = 0.0;
    for (int32_t v = 0; v < n; ++v) g.all_device_s_ += device_s[v];
    if (!std::isfinite(g.all_device_s_)) {
      return Result::Overflow("device_s sums to more than a double holds (overflow)");
    }
    g.BuildChains(reduce);
    g.BuildNetwork(reduce);
    return g.ScaleCapacities();
  }

  const Dag& dag() const { return dag_; }
  int32_t num_nodes() const { return dag_.num_nodes(); }
  const std::vector<double>& device_s() const { return device_; }
  const std::vector<double>& server_s() const { return server_; }
  const std::vector<double>& out_bytes() const { return bytes_; }
  // Size of the flow network the solver runs on (for statistics).
  int32_t network_nodes() const { return flow_.num_nodes(); }
  int32_t network_arc_pairs() const { return flow_.num_pairs(); }

  // The exact optimum at `bandwidth_bps` (bits/s) and `rtt_s`: writes 1 (on
  // the device) or 0 into on_device[0..n) and the latency parts into `out`.
  // Ties with all-device go to all-device; other ties to one optimal
  // partition, deterministic for a given graph and bandwidth. Allocates nothing;
  // serialised by an internal mutex, so one Graph may be shared by threads.
  Result MinCut(double bandwidth_bps, double rtt_s, uint8_t* on_device,
                Breakdown* out) {
    Result r = CheckLink(bandwidth_bps, rtt_s);
    if (!r.ok()) return r;
    std::lock_guard<std::mutex> lock(mutex_);
    r = SolveCut(bandwidth_bps, on_device);
    if (!r.ok()) return r;
    Price(on_device, bandwidth_bps, rtt_s, out);
    if (out->offloads && !(out->latency_s < all_device_s_)) {
      // The cut offloads, but with rtt (or by rounding) it does not beat
      // keeping everything on the device.
      for (int32_t v = 0; v < num_nodes(); ++v) on_device[v] = 1;
      Price(on_device, bandwidth_bps, rtt_s, out);
    }
    return Result::Ok();
  }

  // Prices a caller-given partition: checks that it is valid (inputs on the
  // device, no edge from server to device) and fills `out`.
  Result Evaluate(const uint8_t* on_device, double bandwidth_bps, double rtt_s,
                  Breakdown* out) const {
    Result r = CheckLink(bandwidth_bps, rtt_s);
    if (!r.ok()) return r;
    r = CheckPartition(on_device);
    if (!r.ok()) return r;
    Price(on_device, bandwidth_bps, rtt_s, out);
    return Result::Ok();
  }

  // Inputs on the device and closed under predecessors.
  Result CheckPartition(const uint8_t* on_device) const {
    const int32_t n = num_nodes();
    for (int32_t v : dag_.inputs()) {
      if (!on_device[v]) {
        return Result::BadInput("on_device[" + std::to_string(v) +
                                "] is False but node " + std::to_string(v) +
                                " is a model input (inputs stay on the device)");
      }
    }
    for (int32_t u = 0; u < n; ++u) {
      if (on_device[u]) continue;
      for (const int32_t* w = dag_.succ_begin(u); w != dag_.succ_end(u); ++w) {
        if (on_device[*w]) {
          return Result::BadInput(
              "on_device is not closed under predecessors: node " +
              std::to_string(*w) + " is on the device but its predecessor " +
              std::to_string(u) + " is on the server");
        }
      }
    }
    return Result::Ok();
  }

  // Writes the ascending indices of the sent layers (on the device, with a
  // successor on the server) into sent[0..num_sent).
  void FillSent(const uint8_t* on_device, int64_t* sent) const {
    int64_t k = 0;
    for (int32_t u = 0; u < num_nodes(); ++u) {
      if (IsSent(on_device, u)) sent[k++] = u;
    }
  }

 private:
  bool IsSent(const uint8_t* on_device, int32_t u) const {
    if (!on_device[u]) return false;
    for (const int32_t* w = dag_.succ_begin(u); w != dag_.succ_end(u); ++w) {
      if (!on_device[*w]) return true;
    }
    return false;
  }

  // The cost model, in double, for a valid partition.
  void Price(const uint8_t* on_device, double bandwidth_bps, double rtt_s,
             Breakdown* out) const {
    Breakdown b;
    for (int32_t v = 0; v < num_nodes(); ++v) {
      if (on_device[v]) {
        b.device_s += device_[v];
        if (IsSent(on_device, v)) {
          b.bytes_sent += bytes_[v];
          ++b.num_sent;
        }
      } else {
        b.server_s += server_[v];
        b.offloads = true;
      }
    }
    b.transfer_s = 8.0 * b.bytes_sent / bandwidth_bps;
    b.rtt_s = b.offloads ? rtt_s + 0.0 : 0.0;  // + 0.0 turns -0.0 into 0.0
    b.latency_s = b.device_s + b.transfer_s + b.server_s + b.rtt_s;
    *out = b;
  }

  // Chains. A link is an edge (u, v) with u not an input, v the only
  // successor of u and u the only predecessor of v; maximal runs of links
  // form chains c_1 -> ... -> c_k. A valid partition puts a prefix c_1..c_j
  // of a chain on the device (closure), so the chain costs
  //   all on the device: sum d,  all on the server: sum s,
  //   split after c_j (1 <= j < k): a_j + b_j / bw with
  //   a_j = d_1 + .. + d_j + s_{j+1} + .. + s_k and b_j = 8 out_bytes[c_j],
  // and the rest of the graph only sees c_1 (its predecessors' edges) and
  // c_k (its successors). A chain with k >= 2 is therefore replaced by two
  // nodes, H (device 0, server sum s) and L (device sum d, server 0), with
  // an arc H->L of capacity M = min_j (a_j + b_j / bw) and an infinite L->H:
  // (H, L) in (D, D) costs sum d, (S, S) sum s, (D, S) exactly M, and (S, D)
  // is forbidden like any closure violation. So each cut of the reduced
  // network costs the best original partition that agrees with it outside
  // the chains, and expanding H in D, L in S to the argmin j gives that
  // partition. M is recomputed per solve (O(n) in all); the rest of the
  // network does not depend on the bandwidth.
  void BuildChains(bool reduce) {
    const int32_t n = num_nodes();
    std::vector<int32_t> next(n, -1);
    std::vector<uint8_t> has_prev(n, 0);
    if (reduce) {
      for (int32_t u = 0; u < n; ++u) {
        if (dag_.is_input(u) || dag_.out_degree(u) != 1) continue;
        const int32_t v = *dag_.succ_begin(u);
        if (dag_.in_degree(v) == 1) {
          next[u] = v;
          has_prev[v] = 1;
        }
      }
    }
    chains_.clear();
    chain_nodes_.clear();
    cut_a_.clear();
    cut_b_.clear();
    cid_.assign(n, -1);
    int32_t count = 0;
    for (int32_t v = 0; v < n; ++v) {
      if (has_prev[v]) continue;
      cid_[v] = count++;
      if (next[v] < 0) continue;
      Chain c;
      c.begin = static_cast<int32_t>(chain_nodes_.size());
      double sum_d = 0.0, sum_s = 0.0;
      for (int32_t x = v; x >= 0; x = next[x]) {
        chain_nodes_.push_back(x);
        sum_d += device_[x];
        sum_s += server_[x];
      }
      c.end = static_cast<int32_t>(chain_nodes_.size());
      const int32_t last = chain_nodes_[c.end - 1];
      cid_[last] = count++;
      c.sum_d = sum_d;
      c.sum_s = sum_s;
      // Cut options after member p, for p in [begin, end - 1); suffix sums
      // are accumulated backwards (no cancellation).
      const size_t first_option = cut_a_.size();
      cut_a_.resize(first_option + (c.end - c.begin - 1));
      cut_b_.resize(cut_a_.size());
      double suffix_s = 0.0;
      for (int32_t p = c.end - 2; p >= c.begin; --p) {
        suffix_s += server_[chain_nodes_[p + 1]];
        cut_a_[first_option + (p - c.begin)] = suffix_s;
      }
      double prefix_d = 0.0;
      for (int32_t p = c.begin; p + 1 < c.end; ++p) {
        prefix_d += device_[chain_nodes_[p]];
        cut_a_[first_option + (p - c.begin)] += prefix_d;
        cut_b_[first_option + (p - c.begin)] = 8.0 * bytes_[chain_nodes_[p]];
      }
      chains_.push_back(c);
    }
    // The reduced DAG: inter-chain edges (from a chain's last node to a
    // chain's first node) and H->L inside each chain.
    std::vector<int64_t> edges;
    edges.reserve(2 * static_cast<size_t>(dag_.num_edges()));
    for (int32_t u = 0; u < n; ++u) {
      if (next[u] >= 0) continue;  // its only edge is a link
      for (const int32_t* w = dag_.succ_begin(u); w != dag_.succ_end(u); ++w) {
        edges.push_back(cid_[u]);
        edges.push_back(cid_[*w]);
      }
    }
    for (const Chain& c : chains_) {
      edges.push_back(cid_[chain_nodes_[c.begin]]);
      edges.push_back(cid_[chain_nodes_[c.end - 1]]);
    }
    // Cannot fail: a contraction of a DAG along paths is a DAG.
    (void)Dag::Build(count, edges.data(), static_cast<int64_t>(edges.size() / 2), &reduced_);
    // Per reduced node: terminal costs, the layer whose output it sends (or
    // -1 for an H node, whose out-arc is the chain arc), and its chain.
    r_dev_.assign(count, 0.0);
    r_srv_.assign(count, 0.0);
    r_layer_.assign(count, -1);
    r_chain_.assign(count, -1);
    for (int32_t v = 0; v < n; ++v) {
      if (cid_[v] >= 0 && next[v] < 0 && !has_prev[v]) {  // a single node
        r_dev_[cid_[v]] = device_[v];
        r_srv_[cid_[v]] = server_[v];
        r_layer_[cid_[v]] = v;
      }
    }
    for (size_t i = 0; i < chains_.size(); ++i) {
      const Chain& c = chains_[i];
      const int32_t h = cid_[chain_nodes_[c.begin]], l = cid_[chain_nodes_[c.end - 1]];
      r_srv_[h] = c.sum_s;
      r_dev_[l] = c.sum_d;
      r_layer_[l] = chain_nodes_[c.end - 1];
      r_chain_[h] = static_cast<int32_t>(i);
    }
  }

  // Builds the flow network on the reduced DAG, dropping arcs implied by
  // others. For an edge (u, w), call it "bypassed" if w is reachable from
  // another successor x of u.
  //  * closure: w->u is dropped when (u, w) is bypassed: w in D => (closure
  //    along x ~> w) x in D => u in D. Induction on the distance of u and w
  //    in a topological order (every edge of u -> x ~> w is shorter) shows
  //    every closure constraint still follows from the kept arcs.
  //  * send-once: u'->x is dropped when x reaches another successor w of u:
  //    in a valid partition x in S => w in S, so "some successor of u is in
  //    S" is still seen at w, or (inductively, further along a topological
  //    order) at a successor that reaches no other; one always remains.
  //  * an auxiliary node left with one target m is the arc u->m itself.
  // So every valid partition keeps its cost and invalid ones stay infinite.
  // On DenseNet-like graphs, where most edges are bypassed, this removes
  // most arcs. Reachability uses one bitset per node (n^2 / 8 bytes, O(E n /
  // 64) time); above kReduceLimit nodes the network is built unreduced.
  static constexpr int32_t kReduceLimit = 16384;

  void BuildNetwork(bool reduce) {
    const Dag& g = reduced_;
    const int32_t n = g.num_nodes();
    const int64_t edges = g.num_edges();
    const int32_t* base = edges ? g.succ_begin(0) : nullptr;
    // keep_send[k] / keep_closure[k] for successor entry k (CSR order).
    std::vector<uint8_t> keep_send(static_cast<size_t>(edges), 1);
    std::vector<uint8_t> keep_closure(static_cast<size_t>(edges), 1);
    if (reduce && n <= kReduceLimit && edges > 0) {
      // Bits are topological ranks, so a node's descendants all lie above
      // its own rank: word loops start at the first word that can hold one,
      // and the "does x reach another successor" test only scans the words
      // spanned by the successors.
      const auto& order = g.topological_order();
      std::vector<int32_t> rank(n);
      for (int32_t i = 0; i < n; ++i) rank[order[i]] = i;
      const size_t words = (static_cast<size_t>(n) + 63) / 64;
      std::vector<uint64_t> reach(static_cast<size_t>(n) * words, 0);  // strict descendants
      std::vector<uint64_t> mine(words, 0);    // successors of u
      std::vector<uint64_t> others(words, 0);  // reachable from successors of u
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
    // Network nodes: non-input reduced nodes, auxiliary nodes, then t, s.
    net_.assign(n, -1);
    int32_t count = 0;
    for (int32_t v = 0; v < n; ++v) {
      if (!g.is_input(v)) net_[v] = count++;
    }
    std::vector<int32_t> aux(n, -1);
    for (int32_t u = 0; u < n; ++u) {
      int64_t targets = 0;
      for (const int32_t* w = g.succ_begin(u); w != g.succ_end(u); ++w) {
        targets += keep_send[w - base];
      }
      if (targets >= 2) aux[u] = count++;
    }
    const int32_t sink = count++;
    const int32_t source = count++;
    flow_.Reset(count, source, sink);
    terminals_.clear();
    transfers_.clear();
    std::vector<int32_t> infinite;
    infinite.reserve(2 * static_cast<size_t>(edges));
    for (int32_t v = 0; v < n; ++v) {
      if (g.is_input(v)) continue;
      const double m = std::min(r_dev_[v], r_srv_[v]);
      // After the reduction one of the two is zero; a zero arc is left out.
      if (r_srv_[v] - m > 0.0) {
        terminals_.push_back({flow_.AddPair(source, net_[v]), r_srv_[v] - m, false});
      } else if (r_dev_[v] - m > 0.0) {
        terminals_.push_back({flow_.AddPair(net_[v], sink), r_dev_[v] - m, true});
      }
    }
    for (int32_t u = 0; u < n; ++u) {
      if (g.out_degree(u) == 0) continue;
      const int32_t from = g.is_input(u) ? source : net_[u];
      if (r_chain_[u] >= 0) {  // H -> L, with the chain's closure backwards
        chains_[r_chain_[u]].pair = flow_.AddPair(from, net_[*g.succ_begin(u)]);
        continue;
      }
      if (aux[u] >= 0) {
        transfers_.push_back({r_layer_[u], flow_.AddPair(from, aux[u]), false});
        for (const int32_t* w = g.succ_begin(u); w != g.succ_end(u); ++w) {
          if (keep_send[w - base]) infinite.push_back(flow_.AddPair(aux[u], net_[*w]));
        }
      } else {
        const int32_t* m = g.succ_begin(u);
        while (!keep_send[m - base]) ++m;  // the last successor is always kept
        // The backward infinity is the closure of (u, m); never on s.
        transfers_.push_back({r_layer_[u], flow_.AddPair(from, net_[*m]), from != source});
      }
      if (g.is_input(u)) continue;  // closure into s is always satisfied
      for (const int32_t* w = g.succ_begin(u); w != g.succ_end(u); ++w) {
        if (keep_closure[w - base] && !(aux[u] < 0 && keep_send[w - base])) {
          infinite.push_back(flow_.AddPair(net_[*w], net_[u]));
        }
      }
    }
    flow_.Finalize();
    for (int32_t p : infinite) flow_.SetPair(p, PushRelabel::kInfinity, 0);
  }

  // Chooses the fixed-point scale 2^shift_ and sets the capacities that do
  // not depend on the bandwidth. Transfer and chain capacities are clamped
  // to bound_ = (all-device cut) + 1 unit, so the sum of every finite
  // capacity is at most dev + srv + (transfers + chains) * dev (+ rounding),
  // which the scale keeps below 2^60.
  Result ScaleCapacities() {
    double dev = 0.0, srv = 0.0;
    for (const Terminal& t : terminals_) (t.to_sink ? dev : srv) += t.seconds;
    const double arcs = static_cast<double>(transfers_.size() + chains_.size());
    const double total = dev * (arcs + 1.0) + srv;
    if (!std::isfinite(total)) {
      return Result::Overflow(
          "costs too large: their sum overflows the fixed-point range (overflow)");
    }
    int exponent = 0;
    if (total > 0.0) std::frexp(total, &exponent);
    shift_ = 60 - exponent;  // total * 2^shift_ < 2^60
    scale_ = (shift_ > -1000 && shift_ < 1000) ? std::ldexp(1.0, shift_) : 0.0;
    using Cap = PushRelabel::Cap;
    Cap device_units = 0;
    for (const Terminal& t : terminals_) {
      const Cap c = ToUnits(t.seconds);
      flow_.SetPair(t.pair, c, 0);
      if (t.to_sink) device_units += c;
    }
    bound_ = device_units + 1;
    return Result::Ok();
  }

  // x * 2^shift_ rounded to nearest, for 0 <= x * 2^shift_ < 2^62.
  PushRelabel::Cap ToUnits(double x) const {
    const double y = scale_ != 0.0 ? x * scale_ : std::ldexp(x, shift_);
    return static_cast<PushRelabel::Cap>(y + 0.5);
  }
  // Seconds to capacity units, clamped to bound_ (+inf clamps too).
  PushRelabel::Cap Clamped(double seconds) const {
    const double y = scale_ != 0.0 ? seconds * scale_ : std::ldexp(seconds, shift_);
    return y >= static_cast<double>(bound_) ? bound_ : static_cast<PushRelabel::Cap>(y + 0.5);
  }

  // Sets the bandwidth-dependent capacities, solves, and writes the
  // partition of the original layers into on_device.
  Result SolveCut(double bandwidth_bps, uint8_t* on_device) {
    for (const Transfer& t : transfers_) {
      // 8 * b / bw, not b * (8 / bw): the latter is 0 * inf = NaN for b = 0
      // at a denormal bandwidth. Infinity clamps like any large value.
      const double seconds = 8.0 * bytes_[t.layer] / bandwidth_bps;
      flow_.SetPair(t.pair, Clamped(seconds), t.closure ? PushRelabel::kInfinity : 0);
    }
    int32_t option = 0;
    for (Chain& c : chains_) {
      double best = std::numeric_limits<double>::infinity();
      for (int32_t p = c.begin; p + 1 < c.end; ++p, ++option) {
        const double cost = cut_a_[option] + cut_b_[option] / bandwidth_bps;
        if (cost < best) {
          best = cost;
          c.best = p;
        }
      }
      flow_.SetPair(c.pair, Clamped(best), PushRelabel::kInfinity);
    }
    flow_.Solve();
    const int32_t n = num_nodes();
    for (int32_t v = 0; v < n; ++v) {
      const int32_t x = cid_[v];
      if (x >= 0) on_device[v] = net_[x] < 0 ? 1 : (flow_.OnSourceSide(net_[x]) ? 1 : 0);
    }
    for (const Chain& c : chains_) {
      // H in D, L in S: split after the best member; otherwise uniform.
      const uint8_t head = on_device[chain_nodes_[c.begin]];
      const uint8_t tail = on_device[chain_nodes_[c.end - 1]];
      for (int32_t p = c.begin + 1; p + 1 < c.end; ++p) {
        on_device[chain_nodes_[p]] = head && (tail || p <= c.best) ? 1 : 0;
      }
    }
    return Result::Ok();
  }

  struct Terminal {
    int32_t pair;
    double seconds;  // reduced terminal cost
    bool to_sink;    // v->t (device time) rather than s->v (server time)
  };
  struct Transfer {
    int32_t layer;  // the layer whose output the arc carries
    int32_t pair;   // u->m, u->u', or s->... for an input
    bool closure;   // the pair's backward capacity is infinite (closure)
  };
  struct Chain {
    int32_t begin = 0, end = 0;  // members in chain_nodes_[begin, end)
    double sum_d = 0.0, sum_s = 0.0;
    int32_t pair = -1;  // H->L
    int32_t best = 0;   // last member on the device when split (per solve)
  };

  Dag dag_;
  std::vector<double> device_, server_, bytes_;
  double all_device_s_ = 0.0;
  // Chain reduction: cid_[layer] = reduced node of a single layer or of a
  // chain's first (H) or last (L) member, -1 for inner chain members.
  std::vector<int32_t> cid_;
  std::vector<Chain> chains_;
  std::vector<int32_t> chain_nodes_;
  std::vector<double> cut_a_, cut_b_;  // per chain cut option, in order
  Dag reduced_;
  std::vector<double> r_dev_, r_srv_;
  std::vector<int32_t> r_layer_, r_chain_;
  std::vector<int32_t> net_;  // reduced node -> network node (-1: an input, inside s)
  std::vector<Terminal> terminals_;
  std::vector<Transfer> transfers_;
  PushRelabel::Cap bound_ = 1;
  int shift_ = 0;
  double scale_ = 1.0;  // 2^shift_, or 0 when that is not a normal double
  PushRelabel flow_;
  std::mutex mutex_;
};

}  // namespace cic

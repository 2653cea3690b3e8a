// The device/server partition problem of one layer DAG, and its exact optimum.
//
// The cost model is cost.hpp's (DESIGN.md): inputs on the device, the device
// set closed under predecessors, latency = device + transfer + server (+ rtt
// if anything is offloaded), each sent output counted once.
//
// A Graph is the immutable problem: the DAG, the costs, the chain reduction
// below, and the flow network (network.hpp: the DADS construction, its
// reductions and its fixed-point scale) with every capacity that does not
// depend on the bandwidth. A Graph::Workspace is one solver's mutable state:
// residuals, excess, labels, buckets, queue, the transfer capacities of the
// current bandwidth, the chain choices. MinCut is const: threads that each
// bring a workspace solve on one shared Graph in parallel, without locks.
//
// Optimum with rtt. A cut cannot express rtt (paid once if anything is
// offloaded). The optimum with rtt is the cheaper of the min cut plus rtt (if
// it offloads) and all-device. This is exact: every offloading partition costs
// at least the min cut, and all-device is itself a cut. With nodes pinned to
// the server (GraphOptions; the compression's blocks) every partition
// offloads and all-device is not valid, so the min cut plus rtt is the
// optimum.
//
// Chains. The chain detector is Dag::FindLinks: maximal runs c_1 -> ... ->
// c_k (k >= 2) of links. A valid partition puts a prefix c_1..c_j of a chain
// on the device (closure), so the chain costs
//   all on the device: sum d,  all on the server: sum s,
//   split after c_j (1 <= j < k): a_j + b_j / bw (cost.hpp: ChainSplitLines),
// and the rest of the graph only sees c_1 (its predecessors' edges) and c_k
// (its successors). A chain is therefore replaced by two nodes, H (device 0,
// server sum s) and L (device sum d, server 0), with an arc H->L of capacity
// M = min_j (a_j + b_j / bw) and an infinite L->H: (H, L) in (D, D) costs sum
// d, (S, S) sum s, (D, S) exactly M, and (S, D) is forbidden like any
// closure violation. So each cut of the reduced network costs the best
// original partition that agrees with it outside the chains, and expanding H
// in D, L in S to the argmin j gives that partition. In the network H is a
// node whose one successor is L and whose transfer cost is M (recomputed per
// solve, O(n) in all); the rest of the network does not depend on the
// bandwidth.
//  * A chain headed by an input (c_1 has no in-edge): H is then an input of
//    the reduced DAG, so the network contracts it into s like every input:
//    (S, S) is impossible, as it is for the original chain, (D, D) and (D, S)
//    cost as above, and H->L becomes a source arc without its backward
//    infinity (closure into s always holds), exactly like an input's transfer
//    arc.
//  * Nodes pinned to the server are in no chain (FindLinks excludes them).
#pragma once

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cic/cost.hpp"
#include "cic/dag.hpp"
#include "cic/envelope.hpp"
#include "cic/maxflow.hpp"
#include "cic/network.hpp"
#include "cic/status.hpp"

namespace cic {

// Options of Graph::Create.
struct GraphOptions {
  // false keeps every arc of the plain construction, no chain reduction and
  // no bypass pruning (for tests).
  bool reduce = true;
  // Empty, or one entry per node: 1 pins the node to the server. A pinned
  // node must have a predecessor and no successor.
  std::vector<uint8_t> on_server;
};

class Graph {
 public:
  // One solver's state for MinCut (see the header comment). Default
  // constructed it is empty; the first MinCut binds it to its Graph, sizing
  // every array. Reusing it on the same Graph allocates nothing; passing it
  // to another Graph (of any size) re-binds it, reusing its memory where it
  // is large enough. Not shareable between threads.
  class Workspace {
   public:
    Workspace() = default;

   private:
    friend class Graph;
    uint64_t graph_id_ = 0;    // the Graph it is bound to (0: none)
    PushRelabel flow_;         // capacities, residuals, labels, buckets
    std::vector<double> seconds_;       // per sender: transfer cost at this bandwidth
    std::vector<int32_t> chain_best_;   // per chain: last member on the device if split
  };

  // Validates the costs (finite, >= 0; the message names array and index)
  // and builds the flow network once. `dag` is taken by value (move it in).
  // The three arrays have dag.num_nodes() entries each and are copied. On
  // failure `out` is unspecified: do not solve on it.
  static Result Create(Dag dag, const double* device_s, const double* server_s,
                       const double* out_bytes, Graph* out, const GraphOptions& options) {
    const int32_t n = dag.num_nodes();
    Result r = CheckCosts("device_s", device_s, n);
    if (r.ok()) r = CheckCosts("server_s", server_s, n);
    if (r.ok()) r = CheckCosts("out_bytes", out_bytes, n);
    if (!r.ok()) return r;
    if (!options.on_server.empty()) {
      if (options.on_server.size() != static_cast<size_t>(n)) {
        return Result::BadInput("on_server has " + std::to_string(options.on_server.size()) +
                                " entries for " + std::to_string(n) + " nodes");
      }
      for (int32_t v = 0; v < n; ++v) {
        if (!options.on_server[v]) continue;
        if (dag.is_input(v) || dag.out_degree(v) != 0) {
          return Result::BadInput("node " + std::to_string(v) +
                                  " is pinned to the server but is an input or has successors");
        }
      }
    }
    Graph& g = *out;
    g.id_ = NextId();
    g.dag_ = std::move(dag);
    g.device_.assign(device_s, device_s + n);
    g.server_.assign(server_s, server_s + n);
    g.bytes_.assign(out_bytes, out_bytes + n);
    g.on_server_.clear();
    for (uint8_t p : options.on_server) {
      if (p) {
        g.on_server_.assign(options.on_server.begin(), options.on_server.end());
        break;
      }
    }
    g.all_device_s_ = 0.0;
    for (int32_t v = 0; v < n; ++v) g.all_device_s_ += device_s[v];
    if (!std::isfinite(g.all_device_s_)) {
      return Result::Overflow("device_s sums to more than a double holds (overflow)");
    }
    // Every partition's compute, and every chain split line's intercept, is
    // at most this sum: refuse costs whose sums a double cannot hold.
    double all_server_s = 0.0;
    for (int32_t v = 0; v < n; ++v) all_server_s += server_s[v];
    if (!std::isfinite(g.all_device_s_ + all_server_s)) {
      return Result::Overflow(
          "device_s and server_s sum to more than a double holds (overflow)");
    }
    g.BuildChains(options.reduce);
    // Without chains the reduced DAG is the DAG itself (cid_ is the identity).
    const Dag& reduced = g.chains_.empty() ? g.dag_ : g.reduced_;
    r = CutNetwork::Build(reduced, g.r_dev_.data(), g.r_srv_.data(),
                          g.r_on_server_.empty() ? nullptr : g.r_on_server_.data(),
                          options.reduce, &g.network_);
    if (!r.ok()) return r;
    g.BuildSenders();
    return Result::Ok();
  }
  // The same with default options, or `reduce` = false (for tests).
  static Result Create(Dag dag, const double* device_s, const double* server_s,
                       const double* out_bytes, Graph* out, bool reduce = true) {
    GraphOptions options;
    options.reduce = reduce;
    return Create(std::move(dag), device_s, server_s, out_bytes, out, options);
  }

  const Dag& dag() const { return dag_; }
  int32_t num_nodes() const { return dag_.num_nodes(); }
  const std::vector<double>& device_s() const { return device_; }
  const std::vector<double>& server_s() const { return server_; }
  const std::vector<double>& out_bytes() const { return bytes_; }
  // The layer costs as the pricing functions of cost.hpp read them.
  LayerCosts costs() const { return {&dag_, device_.data(), server_.data(), bytes_.data()}; }
  // Nodes pinned to the server (null if none).
  const uint8_t* on_server() const { return on_server_.empty() ? nullptr : on_server_.data(); }
  // Size of the flow network the solver runs on (for statistics).
  int32_t network_nodes() const { return network_.num_nodes(); }
  int32_t network_arc_pairs() const { return network_.num_pairs(); }

  // The exact optimum at `bandwidth_bps` (bits/s) and `rtt_s`: writes 1 (on
  // the device) or 0 into on_device[0..n) and the latency parts into `out`.
  // Ties with all-device go to all-device; other ties to one optimal
  // partition, deterministic for a given graph and bandwidth. Uses (and, on
  // first use with this Graph, binds) `ws`; allocates nothing otherwise.
  // Thread-safe for distinct workspaces.
  Result MinCut(double bandwidth_bps, double rtt_s, uint8_t* on_device, Breakdown* out,
                Workspace* ws) const {
    assert(ws != nullptr);
    Result r = CheckLink(bandwidth_bps, rtt_s);
    if (!r.ok()) return r;
    if (ws->graph_id_ != id_ || ws->flow_.network() != &network_.flow()) Bind(ws);
    r = SolveCut(bandwidth_bps, on_device, ws);
    if (!r.ok()) return r;
    *out = Price(SumPartition(costs(), on_device), bandwidth_bps, rtt_s);
    if (on_server_.empty() && out->offloads && !(out->latency_s < all_device_s_)) {
      // The cut offloads, but with rtt (or by rounding) it does not beat
      // keeping everything on the device.
      std::fill(on_device, on_device + num_nodes(), uint8_t{1});
      *out = Price(SumPartition(costs(), on_device), bandwidth_bps, rtt_s);
    }
    return Result::Ok();
  }
  // The same with a temporary workspace (allocates; for one-off calls).
  Result MinCut(double bandwidth_bps, double rtt_s, uint8_t* on_device, Breakdown* out) const {
    Workspace ws;
    return MinCut(bandwidth_bps, rtt_s, on_device, out, &ws);
  }

  // Prices a caller-given partition: checks that it is valid (cost.hpp:
  // inputs on the device, no edge from server to device, pinned nodes on the
  // server) and fills `out`.
  Result Evaluate(const uint8_t* on_device, double bandwidth_bps, double rtt_s,
                  Breakdown* out) const {
    Result r = CheckLink(bandwidth_bps, rtt_s);
    if (!r.ok()) return r;
    r = CheckPartition(on_device);
    if (!r.ok()) return r;
    *out = Price(SumPartition(costs(), on_device), bandwidth_bps, rtt_s);
    return Result::Ok();
  }

  // Validity of a partition (cost.hpp).
  Result CheckPartition(const uint8_t* on_device) const {
    return cic::CheckPartition(dag_, on_device, on_server());
  }

  // Writes the ascending indices of the sent layers (on the device, with a
  // successor on the server) into sent[0..num_sent).
  void FillSent(const uint8_t* on_device, int64_t* sent) const {
    cic::FillSent(dag_, on_device, sent);
  }

 private:
  static uint64_t NextId() {
    static std::atomic<uint64_t> next{1};
    return next.fetch_add(1, std::memory_order_relaxed);
  }

  void Bind(Workspace* ws) const {
    network_.Bind(&ws->flow_);
    ws->seconds_.resize(network_.senders().size());
    ws->chain_best_.resize(chains_.size());
    ws->graph_id_ = id_;
  }

  // Builds the chains (see the header comment) and the reduced DAG.
  void BuildChains(bool reduce) {
    const int32_t n = num_nodes();
    std::vector<int32_t> next;
    std::vector<uint8_t> has_prev;
    if (reduce) {
      dag_.FindLinks(on_server(), &next, &has_prev);
    } else {
      next.assign(n, -1);
      has_prev.assign(n, 0);
    }
    chains_.clear();
    chain_nodes_.clear();
    cut_lines_.clear();
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
      // Cut options after member p, for p in [begin, end - 1).
      c.first_line = static_cast<int32_t>(cut_lines_.size());
      cut_lines_.resize(cut_lines_.size() + (c.end - c.begin - 1));
      ChainSplitLines(costs(), chain_nodes_.data() + c.begin, c.end - c.begin,
                      cut_lines_.data() + c.first_line);
      chains_.push_back(c);
    }
    // The reduced DAG: inter-chain edges (from a chain's last node to a
    // chain's first node) and H->L inside each chain.
    std::vector<int64_t> edges;
    if (!chains_.empty()) edges.reserve(2 * static_cast<size_t>(dag_.num_edges()));
    for (int32_t u = 0; u < n && !chains_.empty(); ++u) {
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
    // Cannot fail: a contraction of a DAG along paths is a DAG. (Not needed
    // without chains: then the reduced DAG is dag_ itself.)
    if (!chains_.empty()) {
      (void)Dag::Build(count, edges.data(), static_cast<int64_t>(edges.size() / 2), &reduced_);
    } else {
      reduced_ = Dag();
    }
    // Per reduced node: terminal costs, the layer whose output it sends (or
    // -1 for an H node, whose out-arc is the chain arc), its chain, its pin.
    r_dev_.assign(count, 0.0);
    r_srv_.assign(count, 0.0);
    r_layer_.assign(count, -1);
    r_chain_.assign(count, -1);
    r_on_server_.clear();
    if (!on_server_.empty()) r_on_server_.assign(count, 0);
    for (int32_t v = 0; v < n; ++v) {
      if (cid_[v] >= 0 && next[v] < 0 && !has_prev[v]) {  // a single node
        r_dev_[cid_[v]] = device_[v];
        r_srv_[cid_[v]] = server_[v];
        r_layer_[cid_[v]] = v;
        if (!on_server_.empty()) r_on_server_[cid_[v]] = on_server_[v];
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

  // What each sender of the network sends: a layer's output, or a chain's
  // best split (encoded as -1 - chain).
  void BuildSenders() {
    const auto& senders = network_.senders();
    send_src_.resize(senders.size());
    for (size_t i = 0; i < senders.size(); ++i) {
      const int32_t u = senders[i].node;
      send_src_[i] = r_chain_[u] >= 0 ? -1 - r_chain_[u] : r_layer_[u];
    }
  }

  // Sets the bandwidth-dependent capacities, solves, and writes the
  // partition of the original layers into on_device.
  Result SolveCut(double bandwidth_bps, uint8_t* on_device, Workspace* ws) const {
    double* seconds = ws->seconds_.data();
    int32_t* best_member = ws->chain_best_.data();
    for (size_t i = 0; i < send_src_.size(); ++i) {
      const int32_t src = send_src_[i];
      if (src >= 0) {
        // 8 * b / bw, not b * (8 / bw): the latter is 0 * inf = NaN for b = 0
        // at a denormal bandwidth. Infinity clamps like any large value.
        seconds[i] = 8.0 * bytes_[src] / bandwidth_bps;
        continue;
      }
      const Chain& c = chains_[-1 - src];
      double best = std::numeric_limits<double>::infinity();
      int32_t best_p = c.begin;
      const Line* line = cut_lines_.data() + c.first_line;
      for (int32_t p = c.begin; p + 1 < c.end; ++p, ++line) {
        const double cost = line->a + line->b / bandwidth_bps;
        if (cost < best) {
          best = cost;
          best_p = p;
        }
      }
      best_member[-1 - src] = best_p;
      seconds[i] = best;
    }
    Result r = network_.Solve(seconds, &ws->flow_);
    if (!r.ok()) return r;
    const int32_t n = num_nodes();
    for (int32_t v = 0; v < n; ++v) {
      const int32_t x = cid_[v];
      if (x >= 0) on_device[v] = network_.OnDevice(ws->flow_, x) ? 1 : 0;
    }
    for (size_t i = 0; i < chains_.size(); ++i) {
      const Chain& c = chains_[i];
      // H in D, L in S: split after the best member; otherwise uniform.
      const uint8_t head = on_device[chain_nodes_[c.begin]];
      const uint8_t tail = on_device[chain_nodes_[c.end - 1]];
      const int32_t best = best_member[i];
      for (int32_t p = c.begin + 1; p + 1 < c.end; ++p) {
        on_device[chain_nodes_[p]] = head && (tail || p <= best) ? 1 : 0;
      }
    }
    return Result::Ok();
  }

  struct Chain {
    int32_t begin = 0, end = 0;  // members in chain_nodes_[begin, end)
    int32_t first_line = 0;      // its split lines in cut_lines_, end - begin - 1 of them
    double sum_d = 0.0, sum_s = 0.0;
  };

  uint64_t id_ = 0;  // identifies this Graph's network for Workspace binding
  Dag dag_;
  std::vector<double> device_, server_, bytes_;
  std::vector<uint8_t> on_server_;  // empty, or n entries
  double all_device_s_ = 0.0;
  // Chain reduction: cid_[layer] = reduced node of a single layer or of a
  // chain's first (H) or last (L) member, -1 for inner chain members.
  std::vector<int32_t> cid_;
  std::vector<Chain> chains_;
  std::vector<int32_t> chain_nodes_;
  std::vector<Line> cut_lines_;  // per chain split option, in order
  Dag reduced_;
  std::vector<double> r_dev_, r_srv_;
  std::vector<int32_t> r_layer_, r_chain_;
  std::vector<uint8_t> r_on_server_;
  CutNetwork network_;
  std::vector<int32_t> send_src_;  // per network sender: layer, or -1 - chain
};

}  // namespace cic

// A layer DAG in compressed sparse row form.
//
// Nodes are layers 0..n-1; an edge (u, v) means v consumes u's output. The
// DAG is validated once (indices in range, no self-loop, no cycle) and stored
// with duplicate edges removed, as successor CSR arrays, in-degrees and a
// topological order. Duplicates are legal input (a layer that reads the same
// tensor twice, e.g. `x * x`) but the cost model sends an output once, so they
// carry no information.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cic/status.hpp"

namespace cic {

class Dag {
 public:
  // Largest accepted sizes: the flow network has at most 2n + 1 nodes and
  // 2n + 2E arc pairs, i.e. 4(n + E) < 2^31 arcs, all indexed by int32.
  static constexpr int64_t kMaxNodes = int64_t{1} << 26;
  static constexpr int64_t kMaxEdges = int64_t{1} << 26;

  // Builds the DAG of `num_nodes` nodes from `num_edges` (u, v) pairs stored
  // row-major in `edges` (2 * num_edges int64 values). On failure `out` is
  // left unspecified and the message names the offending edge or a node on
  // the cycle. Runs in O(n + E).
  static Result Build(int64_t num_nodes, const int64_t* edges,
                      int64_t num_edges, Dag* out) {
    if (num_nodes <= 0) return Result::BadInput("graph has no nodes");
    if (num_nodes > kMaxNodes) {
      return Result::BadInput("graph has " + std::to_string(num_nodes) +
                              " nodes, more than the supported " +
                              std::to_string(kMaxNodes));
    }
    if (num_edges < 0 || num_edges > kMaxEdges) {
      return Result::BadInput("edge count " + std::to_string(num_edges) +
                              " out of range");
    }
    const int32_t n = static_cast<int32_t>(num_nodes);
    const int32_t m = static_cast<int32_t>(num_edges);
    Dag& g = *out;
    g.n_ = n;
    // One pass validates and counts out-degrees.
    g.succ_start_.assign(static_cast<size_t>(n) + 1, 0);
    int32_t* count = g.succ_start_.data() + 1;
    for (int32_t i = 0; i < m; ++i) {
      const int64_t u = edges[2 * i], v = edges[2 * i + 1];
      if (static_cast<uint64_t>(u) >= static_cast<uint64_t>(n) ||
          static_cast<uint64_t>(v) >= static_cast<uint64_t>(n)) {
        return Result::BadInput("edge " + std::to_string(i) + " (" + std::to_string(u) + ", " +
                                std::to_string(v) + "): node index out of range [0, " +
                                std::to_string(n) + ")");
      }
      if (u == v) {
        return Result::BadInput("graph has a cycle: edge " + std::to_string(i) +
                                " is a self-loop on node " + std::to_string(u));
      }
      ++count[u];
    }
    for (int32_t v = 0; v < n; ++v) g.succ_start_[v + 1] += g.succ_start_[v];
    // Successor CSR by counting sort on u, filled back to front so that the
    // offsets end up as the row starts without a second array.
    g.succ_.resize(static_cast<size_t>(m));
    {
      std::vector<int32_t>& end = g.succ_start_;  // row ends before this loop
      for (int32_t i = m - 1; i >= 0; --i) {
        g.succ_[--end[edges[2 * i] + 1]] = static_cast<int32_t>(edges[2 * i + 1]);
      }
      // end[u + 1] now holds the start of row u; shift back by one.
      for (int32_t v = 0; v < n; ++v) end[v] = end[v + 1];
      end[n] = m;
    }
    // De-duplicate each row in place with a per-node stamp (keeps first-seen
    // order) and count in-degrees.
    std::vector<int32_t> stamp(n, -1);
    g.indeg_.assign(static_cast<size_t>(n), 0);
    int32_t write = 0;
    for (int32_t u = 0; u < n; ++u) {
      const int32_t begin = g.succ_start_[u], end = g.succ_start_[u + 1];
      g.succ_start_[u] = write;
      for (int32_t k = begin; k < end; ++k) {
        const int32_t v = g.succ_[k];
        if (stamp[v] != u) {
          stamp[v] = u;
          g.succ_[write++] = v;
          ++g.indeg_[v];
        }
      }
    }
    g.succ_start_[n] = write;
    g.succ_.resize(static_cast<size_t>(write));
    // Kahn's algorithm: `left` counts the unprocessed predecessors.
    std::vector<int32_t>& left = stamp;  // reused
    left.assign(g.indeg_.begin(), g.indeg_.end());
    g.inputs_.clear();
    g.topo_.clear();
    g.topo_.reserve(static_cast<size_t>(n));
    for (int32_t v = 0; v < n; ++v) {
      if (left[v] == 0) {
        g.inputs_.push_back(v);
        g.topo_.push_back(v);
      }
    }
    for (size_t head = 0; head < g.topo_.size(); ++head) {
      const int32_t u = g.topo_[head];
      for (int32_t k = g.succ_start_[u]; k < g.succ_start_[u + 1]; ++k) {
        if (--left[g.succ_[k]] == 0) g.topo_.push_back(g.succ_[k]);
      }
    }
    if (static_cast<int32_t>(g.topo_.size()) != n) {
      // Walk back along unfinished predecessors: after n steps we are on a
      // cycle, so the node we name really lies on one.
      // (Error path only: predecessor lists are built just for this walk.)
      std::vector<int32_t> pred_start(static_cast<size_t>(n) + 1, 0), pred(g.succ_.size());
      for (int32_t v = 0; v < n; ++v) pred_start[v + 1] = pred_start[v] + g.indeg_[v];
      std::vector<int32_t> fill(pred_start.begin(), pred_start.end() - 1);
      for (int32_t u = 0; u < n; ++u) {
        for (int32_t k = g.succ_start_[u]; k < g.succ_start_[u + 1]; ++k) {
          pred[fill[g.succ_[k]]++] = u;
        }
      }
      int32_t v = 0;
      while (left[v] == 0) ++v;
      for (int32_t step = 0; step < n; ++step) {
        for (int32_t k = pred_start[v]; k < pred_start[v + 1]; ++k) {
          if (left[pred[k]] > 0) {
            v = pred[k];
            break;
          }
        }
      }
      return Result::BadInput("graph has a cycle through node " +
                              std::to_string(v));
    }
    return Result::Ok();
  }

  int32_t num_nodes() const { return n_; }
  // Number of distinct edges.
  int64_t num_edges() const { return static_cast<int64_t>(succ_.size()); }

  // Successors of u (distinct, in first-seen input order).
  const int32_t* succ_begin(int32_t u) const { return succ_.data() + succ_start_[u]; }
  const int32_t* succ_end(int32_t u) const { return succ_.data() + succ_start_[u + 1]; }
  int64_t out_degree(int32_t u) const { return succ_start_[u + 1] - succ_start_[u]; }

  int64_t in_degree(int32_t v) const { return indeg_[v]; }

  // Nodes with no in-edge, ascending: the model inputs, pinned to the device.
  const std::vector<int32_t>& inputs() const { return inputs_; }
  bool is_input(int32_t v) const { return in_degree(v) == 0; }
  // A topological order (inputs first).
  const std::vector<int32_t>& topological_order() const { return topo_; }

  // The chain detector (the one Graph and the compression both use). A link
  // is an edge (u, v) with v the only successor of u and u the only
  // predecessor of v; maximal runs of links are the chains c_1 -> ... -> c_k
  // (k >= 2), on which a valid partition puts a prefix on the device. Writes
  // next[u] = v for every link (u, v), -1 elsewhere, and has_prev[v] = 1 for
  // the head v of every link, 0 elsewhere: the chains start at the nodes with
  // next >= 0 and has_prev = 0. O(n + E).
  //
  // Inputs are not excluded. An input has no predecessor, so it can only be
  // a chain's first member, and such a chain is an ordinary chain whose first
  // member is pinned to the device: every split position is still a valid
  // partition (c_1 in D) and only "the whole chain on the server" is not.
  // Each user handles that case where it uses the chain: Graph's H node is
  // then an input, contracted into the source (graph.hpp), and the chain
  // pruning keeps the first run an input (compress.hpp).
  //
  // `exclude` (may be null) flags nodes that are in no link (Graph passes the
  // nodes pinned to the server, which a chain must not absorb).
  void FindLinks(const uint8_t* exclude, std::vector<int32_t>* next,
                 std::vector<uint8_t>* has_prev) const {
    next->assign(static_cast<size_t>(n_), -1);
    has_prev->assign(static_cast<size_t>(n_), 0);
    for (int32_t u = 0; u < n_; ++u) {
      if (out_degree(u) != 1 || (exclude != nullptr && exclude[u])) continue;
      const int32_t v = *succ_begin(u);
      if (in_degree(v) != 1 || (exclude != nullptr && exclude[v])) continue;
      (*next)[u] = v;
      (*has_prev)[v] = 1;
    }
  }

 private:
  int32_t n_ = 0;
  std::vector<int32_t> succ_start_;
  std::vector<int32_t> succ_, indeg_, inputs_, topo_;
};

}  // namespace cic

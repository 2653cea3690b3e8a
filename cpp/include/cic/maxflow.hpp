// Push-relabel minimum s-t cut (Goldberg & Tarjan, JACM 1988), phase one only.
//
// Theory. A preflow gives every node v != s, t an excess e(v) >= 0 (inflow
// minus outflow). A distance labelling d with d(t) = 0 and d(v) <= d(w) + 1
// for every residual arc (v, w) is a lower bound on the residual distance to
// t. An active node (e > 0, d < N) pushes excess along admissible arcs
// (residual, d(v) = d(w) + 1) or, if it has none, is relabelled to
// 1 + min d(w) over its residual arcs. When no node is active every node with
// excess has d >= N and so cannot reach t: the preflow is maximum and the set
// T of nodes that can still reach t in the residual graph is the sink side of
// a minimum cut (every arc into T is saturated; an arc out of T carrying flow
// would give its head a residual path to t). That is all a cut needs, so, as
// LEMON's Preflow does when only the cut is wanted, phase two (returning the
// stranded excess to s to obtain a flow) is never run.
//
// Heuristics (Cherkassky & Goldberg, "On implementing push-relabel", 1997):
// highest-label selection through buckets, the gap heuristic (if no node has
// label k, no node above k can reach t), and global relabelling by a reverse
// breadth-first search from t, at start and after O(N + A) relabel work.
//
// Direction. Phase one's cost is dominated by excess that cannot reach the
// sink: it climbs label by label until the gap or a global relabel strands
// it. The excess that enters is the capacity leaving s, so the amount
// stranded is (capacity out of s) - (min cut). Solving the reversed network
// (every arc reversed, t as source, s as sink) has the same min cuts (a cut
// (X, Y) of G has the capacity of (Y, X) in the reverse) and strands
// (capacity into t) - (min cut) instead. Solve picks the side with less to
// strand; on a DNN at a slow link, where the answer is "keep everything on
// the device", the reversed solve strands nothing and sweeps the DAG once.
//
// Capacities are int64 and exact. The caller guarantees the sum of all
// finite capacities stays below 2^61 (so no residual or excess can
// overflow), that arcs at s and t are finite, and uses kInfinity for
// uncuttable arcs.
//
// Problem and state. FlowNetwork is the topology (CSR arcs, immutable once
// finalized, shareable by threads); PushRelabel is one solver's state over a
// network (capacities, residuals, excess, labels, buckets, queue): one per
// thread, reusable across solves and across networks. The arc capacities
// that do not change between solves can be kept by the caller in one
// arc-indexed array (FlowNetwork::SetPair) and copied in by Bind.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace cic {

// The topology of a flow network: nodes 0..n-1, a source, a sink, and arc
// pairs tail->head / head->tail laid out in CSR order by Finalize.
class FlowNetwork {
 public:
  using Cap = int64_t;
  // Larger than any finite cut the caller may build (< 2^61), and small
  // enough that kInfinity + 2^61 still fits: an infinite arc's reverse may
  // receive every unit of flow in the network.
  static constexpr Cap kInfinity = Cap{1} << 62;

  // Starts a network of `num_nodes` nodes (0..num_nodes-1) with source
  // `source` and sink `sink` (distinct).
  void Reset(int32_t num_nodes, int32_t source, int32_t sink) {
    assert(num_nodes >= 2 && source >= 0 && source < num_nodes && sink >= 0 &&
           sink < num_nodes && source != sink);
    n_ = num_nodes;
    source_ = source;
    sink_ = sink;
    finalized_ = false;
    tails_.clear();
    heads_.clear();
  }

  // Reserves room for `pairs` AddPair calls (optional).
  void Reserve(int64_t pairs) {
    tails_.reserve(static_cast<size_t>(pairs));
    heads_.reserve(static_cast<size_t>(pairs));
  }

  // Declares the arc pair tail->head / head->tail; returns its id. Call
  // between Reset and Finalize.
  int32_t AddPair(int32_t tail, int32_t head) {
    assert(!finalized_ && "AddPair after Finalize");
    assert(tail >= 0 && tail < n_ && head >= 0 && head < n_ && tail != head);
    tails_.push_back(tail);
    heads_.push_back(head);
    return static_cast<int32_t>(tails_.size()) - 1;
  }

  // Lays the arcs out in CSR order. After this the network is immutable.
  void Finalize() {
    assert(!finalized_ && "Finalize twice");
    const int32_t pairs = static_cast<int32_t>(tails_.size());
    first_.assign(static_cast<size_t>(n_) + 1, 0);
    for (int32_t p = 0; p < pairs; ++p) {
      ++first_[tails_[p] + 1];
      ++first_[heads_[p] + 1];
    }
    for (int32_t v = 0; v < n_; ++v) first_[v + 1] += first_[v];
    const int32_t arcs = 2 * pairs;
    head_.assign(arcs, 0);
    rev_.assign(arcs, 0);
    pair_arc_.assign(pairs, 0);
    std::vector<int32_t> fill(first_.begin(), first_.end() - 1);
    for (int32_t p = 0; p < pairs; ++p) {
      const int32_t a = fill[tails_[p]]++;
      const int32_t b = fill[heads_[p]]++;
      head_[a] = heads_[p];
      head_[b] = tails_[p];
      rev_[a] = b;
      rev_[b] = a;
      pair_arc_[p] = a;
    }
    tails_.clear();
    tails_.shrink_to_fit();
    heads_.clear();
    heads_.shrink_to_fit();
    finalized_ = true;
  }

  bool finalized() const { return finalized_; }
  int32_t num_nodes() const { return n_; }
  int32_t num_pairs() const { return static_cast<int32_t>(pair_arc_.size()); }
  int32_t num_arcs() const { return static_cast<int32_t>(head_.size()); }
  int32_t source() const { return source_; }
  int32_t sink() const { return sink_; }

  // Writes pair `pair`'s capacities (forward = tail->head) into the
  // arc-indexed array caps[0..num_arcs()).
  void SetPair(Cap* caps, int32_t pair, Cap forward, Cap backward) const {
    assert(finalized_ && "SetPair before Finalize");
    assert(pair >= 0 && pair < num_pairs());
    const int32_t a = pair_arc_[pair];
    caps[a] = forward;
    caps[rev_[a]] = backward;
  }

  // CSR arrays (valid after Finalize): arcs of v are first[v]..first[v+1],
  // arc a goes to head[a] and rev[a] is its reverse.
  const int32_t* first() const { return first_.data(); }
  const int32_t* head() const { return head_.data(); }
  const int32_t* rev() const { return rev_.data(); }
  const int32_t* pair_arc() const { return pair_arc_.data(); }

 private:
  int32_t n_ = 0;
  int32_t source_ = 0, sink_ = 0;
  bool finalized_ = false;
  std::vector<int32_t> tails_, heads_;  // pair endpoints until Finalize
  std::vector<int32_t> first_, head_, rev_, pair_arc_;
};

// One solver's state over a FlowNetwork (see the header comment).
class PushRelabel {
 public:
  using Cap = FlowNetwork::Cap;
  static constexpr Cap kInfinity = FlowNetwork::kInfinity;

  // Binds the solver to `net` (finalized; it must outlive the binding) and
  // sets every capacity from `base` (net.num_arcs() entries, arc-indexed) or
  // to zero. Sizes every work array, so that Solve never allocates; a solver
  // may be re-bound to another network of any size (it allocates only when
  // that network is larger than every one before).
  void Bind(const FlowNetwork& net, const Cap* base = nullptr) {
    assert(net.finalized() && "Bind to a network before its Finalize");
    net_ = &net;
    n_ = net.num_nodes();
    source_ = net.source();
    sink_ = net.sink();
    num_arcs_ = net.num_arcs();
    first_ = net.first();
    head_ = net.head();
    rev_ = net.rev();
    if (base != nullptr) {
      cap_.assign(base, base + num_arcs_);
    } else {
      cap_.assign(num_arcs_, 0);
    }
    res_.resize(num_arcs_);
    excess_.resize(n_);
    label_.resize(n_);
    current_.resize(n_);
    queue_.resize(n_);
    // Buckets for labels 0..n_-1: active nodes (singly linked stack) and all
    // labelled nodes (doubly linked, for the gap heuristic).
    active_head_.resize(n_);
    next_active_.resize(n_);
    all_head_.resize(n_);
    all_next_.resize(n_);
    all_prev_.resize(n_);
    solved_ = false;
  }

  const FlowNetwork* network() const { return net_; }

  // Sets the capacities of pair `pair` (forward = tail->head). They persist
  // across solves: each Solve starts from these capacities, so a caller
  // re-solving at a new bandwidth only re-sets the arcs that changed.
  void SetPair(int32_t pair, Cap forward, Cap backward) {
    assert(net_ != nullptr && "SetPair before Bind");
    net_->SetPair(cap_.data(), pair, forward, backward);
    solved_ = false;
  }
  enum class Direction { kAuto, kForward, kReverse };

  // Runs phase one (on the reversed network if `direction` says so or, for
  // kAuto, if less capacity enters t than leaves s) and marks the minimum
  // cut. Returns its capacity. Allocates nothing.
  Cap Solve(Direction direction = Direction::kAuto) {
    assert(net_ != nullptr && "Solve before Bind");
    Cap out_of_source = 0, into_sink = 0;
    for (int32_t a = first_[source_]; a < first_[source_ + 1]; ++a) out_of_source += cap_[a];
    for (int32_t a = first_[sink_]; a < first_[sink_ + 1]; ++a) into_sink += cap_[rev_[a]];
    reversed_ = direction == Direction::kReverse ||
                (direction == Direction::kAuto && into_sink < out_of_source);
    if (reversed_) {
      for (int32_t a = 0; a < num_arcs_; ++a) res_[a] = cap_[rev_[a]];
      src_ = sink_;
      dst_ = source_;
    } else {
      std::copy(cap_.begin(), cap_.end(), res_.begin());
      src_ = source_;
      dst_ = sink_;
    }
    std::fill(excess_.begin(), excess_.end(), Cap{0});
    for (int32_t a = first_[src_]; a < first_[src_ + 1]; ++a) {
      const Cap delta = res_[a];
      res_[a] = 0;
      res_[rev_[a]] += delta;
      excess_[head_[a]] += delta;
    }
    excess_[src_] = 0;
    GlobalRelabel();
    int64_t work = 0;
    const int64_t relabel_period =
        6 * static_cast<int64_t>(n_) + static_cast<int64_t>(num_arcs_) / 2;
    while (max_active_ >= 0) {
      const int32_t v = active_head_[max_active_];
      if (v < 0) {
        --max_active_;
        continue;
      }
      active_head_[max_active_] = next_active_[v];
      work += Discharge(v);
      if (work > relabel_period) {
        GlobalRelabel();
        work = 0;
      }
    }
    MarkSinkSide();
    solved_ = true;
    return excess_[dst_];
  }

  // After Solve: true if `node` is on the source side of the minimum cut
  // found. A forward solve gives the cut with the largest source side, a
  // reversed one the cut with the smallest.
  bool OnSourceSide(int32_t node) const {
    assert(solved_ && "OnSourceSide before Solve (or after a SetPair)");
    assert(node >= 0 && node < n_);
    return (label_[node] == n_) != reversed_;
  }
  // Whether the last Solve ran on the reversed network.
  bool reversed() const { return reversed_; }

 private:
  // Reverse BFS from the sink over residual arcs; unreached nodes get label
  // n_ (they cannot reach the sink). Rebuilds the buckets. The source is
  // never labelled: it must not receive pushes in phase one.
  void GlobalRelabel() {
    std::fill(label_.begin(), label_.end(), n_);
    std::fill(active_head_.begin(), active_head_.end(), -1);
    std::fill(all_head_.begin(), all_head_.end(), -1);
    max_active_ = -1;
    max_label_ = 0;
    label_[dst_] = 0;
    label_[src_] = n_ + 1;  // unreachable marker, reset below
    int32_t qh = 0, qt = 0;
    queue_[qt++] = dst_;
    while (qh < qt) {
      const int32_t w = queue_[qh++];
      const int32_t dw = label_[w] + 1;
      for (int32_t a = first_[w]; a < first_[w + 1]; ++a) {
        const int32_t x = head_[a];
        if (label_[x] == n_ && res_[rev_[a]] > 0) {
          label_[x] = dw;
          queue_[qt++] = x;
        }
      }
    }
    label_[src_] = n_;
    for (int32_t i = 1; i < qt; ++i) {
      const int32_t v = queue_[i];
      const int32_t d = label_[v];
      current_[v] = first_[v];
      LinkAll(v, d);
      if (excess_[v] > 0) LinkActive(v, d);
    }
  }

  // Final reverse BFS: label_ == n_ marks the nodes that cannot reach dst_.
  void MarkSinkSide() {
    std::fill(label_.begin(), label_.end(), n_);
    label_[dst_] = 0;
    label_[src_] = n_ + 1;
    int32_t qh = 0, qt = 0;
    queue_[qt++] = dst_;
    while (qh < qt) {
      const int32_t w = queue_[qh++];
      for (int32_t a = first_[w]; a < first_[w + 1]; ++a) {
        const int32_t x = head_[a];
        if (label_[x] == n_ && res_[rev_[a]] > 0) {
          label_[x] = 0;
          queue_[qt++] = x;
        }
      }
    }
    label_[src_] = n_;
  }

  void LinkActive(int32_t v, int32_t d) {
    next_active_[v] = active_head_[d];
    active_head_[d] = v;
    if (d > max_active_) max_active_ = d;
  }
  void LinkAll(int32_t v, int32_t d) {
    all_prev_[v] = -1;
    all_next_[v] = all_head_[d];
    if (all_head_[d] >= 0) all_prev_[all_head_[d]] = v;
    all_head_[d] = v;
    if (d > max_label_) max_label_ = d;
  }
  void UnlinkAll(int32_t v, int32_t d) {
    if (all_prev_[v] >= 0) {
      all_next_[all_prev_[v]] = all_next_[v];
    } else {
      all_head_[d] = all_next_[v];
    }
    if (all_next_[v] >= 0) all_prev_[all_next_[v]] = all_prev_[v];
  }

  // Pushes v's excess away, relabelling as needed, until it is gone or v
  // cannot reach the sink. Returns a measure of the work done.
  int64_t Discharge(int32_t v) {
    int64_t work = 0;
    while (true) {
      const int32_t d = label_[v];
      const int32_t end = first_[v + 1];
      for (int32_t a = current_[v]; a < end; ++a) {
        if (res_[a] <= 0) continue;
        const int32_t w = head_[a];
        if (label_[w] != d - 1) continue;
        const Cap delta = excess_[v] < res_[a] ? excess_[v] : res_[a];
        res_[a] -= delta;
        res_[rev_[a]] += delta;
        excess_[v] -= delta;
        if (excess_[w] == 0 && w != dst_) LinkActive(w, d - 1);
        excess_[w] += delta;
        if (excess_[v] == 0) {
          current_[v] = a;
          return work;
        }
      }
      // No admissible arc left: relabel, or give up on v.
      work += 12 + (end - first_[v]);
      UnlinkAll(v, d);
      if (all_head_[d] < 0) {
        Gap(d);  // v was alone at d: v and everything above are cut off.
        label_[v] = n_;
        return work;
      }
      int32_t best = n_;
      int32_t best_arc = first_[v];
      for (int32_t a = first_[v]; a < end; ++a) {
        if (res_[a] > 0 && label_[head_[a]] + 1 < best) {
          best = label_[head_[a]] + 1;
          best_arc = a;
        }
      }
      label_[v] = best;
      if (best >= n_) return work;
      current_[v] = best_arc;
      LinkAll(v, best);
    }
  }

  // Every labelled node above `d` loses its path to the sink. Under
  // highest-label selection none of them is active.
  void Gap(int32_t d) {
    for (int32_t h = d + 1; h <= max_label_; ++h) {
      for (int32_t v = all_head_[h]; v >= 0; v = all_next_[v]) label_[v] = n_;
      all_head_[h] = -1;
    }
    max_label_ = d - 1;
  }

  const FlowNetwork* net_ = nullptr;
  int32_t n_ = 0, num_arcs_ = 0;
  int32_t source_ = 0, sink_ = 0;  // as built
  int32_t src_ = 0, dst_ = 0;      // as solved (swapped when reversed)
  bool reversed_ = false;
  bool solved_ = false;
  const int32_t* first_ = nullptr;  // the bound network's CSR arrays
  const int32_t* head_ = nullptr;
  const int32_t* rev_ = nullptr;
  std::vector<Cap> cap_, res_, excess_;
  std::vector<int32_t> label_, current_, queue_;
  std::vector<int32_t> active_head_, next_active_;
  std::vector<int32_t> all_head_, all_next_, all_prev_;
  int32_t max_active_ = -1;
  int32_t max_label_ = 0;
};

}  // namespace cic

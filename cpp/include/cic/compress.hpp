// Exact offline compression of a layer DAG for the partition problem (CIC).
//
// Compress() takes a Graph (DAG + device_s, server_s, out_bytes) and returns a
// smaller DAG with its own costs, plus `group`: the compressed node that each
// original layer belongs to. Groups partition the layers; a compressed
// partition expands to the original one by on_device[v] = on_c[group[v]].
//
// Guarantee (for every bandwidth > 0 and every rtt >= 0): every valid
// compressed partition expands to a valid original partition of exactly the
// same latency (the same device, server and transfer parts, and it offloads
// iff the compressed one does), and some optimal original partition is such
// an expansion. So the compressed optimum equals the original optimum, and
// its expansion achieves it. Each rule below proves the second half ("some
// optimum survives"); the first half holds because every compressed node's
// costs are the sums over its group and its out_bytes are what the group
// sends when its successors are on the server.
//
// The rules, applied in this order (the pass-through and chain rules again
// after the block rule, whose output chains they can shorten):
//  1. zero-cost pass-through merges (views, flattens, getitems);
//  2. chain pruning to the lower hull of the chain's cut positions;
//  3. cut-vertex decomposition and single-entry single-exit block
//     replacement by the chain of the block's own optimal internal cuts.
// The proofs sit with each rule.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cic/cost.hpp"
#include "cic/dag.hpp"
#include "cic/envelope.hpp"
#include "cic/graph.hpp"
#include "cic/search.hpp"
#include "cic/status.hpp"

namespace cic {

// The result of Compress.
struct Compressed {
  std::vector<int64_t> edges;  // flattened (u, v) pairs of the compressed DAG
  std::vector<double> device_s, server_s, out_bytes;
  std::vector<int32_t> group;         // original layer -> compressed node
  std::vector<int64_t> expand_start;  // compressed node c -> its layers:
  std::vector<int32_t> expand_nodes;  //   expand_nodes[expand_start[c] .. [c+1])
  double offset_s = 0.0;  // constant added to every latency (0 for these rules)
  std::vector<std::pair<std::string, double>> stats;  // sizes per pass, counts
};

// Which rules Compress applies (all by default; one alone for tests).
struct CompressOptions {
  bool passthrough = true;
  bool chains = true;
  bool blocks = true;
};

namespace compress_detail {

// A graph being compressed, and the map from the original layers to it.
struct Work {
  Dag dag;
  std::vector<double> d, s, bytes;
  std::vector<int32_t> group;  // original layer -> node of this graph
};

inline int64_t NumEdges(const Work& w) { return w.dag.num_edges(); }

// Builds the contraction of `w` by `to` (node -> new node, 0..n_new-1): costs
// summed over each new node's members, out_bytes given, edges = the mapped
// edges that `keep(u, v)` accepts (self-loops dropped) plus `extra`.
template <class Keep>
Work Contract(const Work& w, const std::vector<int32_t>& to, int32_t n_new,
              const std::vector<double>& new_bytes, Keep keep,
              const std::vector<int64_t>& extra) {
  Work out;
  out.d.assign(n_new, 0.0);
  out.s.assign(n_new, 0.0);
  out.bytes = new_bytes;
  const int32_t n = w.dag.num_nodes();
  for (int32_t v = 0; v < n; ++v) {
    out.d[to[v]] += w.d[v];
    out.s[to[v]] += w.s[v];
  }
  std::vector<int64_t> edges;
  for (int32_t u = 0; u < n; ++u) {
    for (const int32_t* x = w.dag.succ_begin(u); x != w.dag.succ_end(u); ++x) {
      if (to[u] == to[*x] || !keep(u, *x)) continue;
      edges.push_back(to[u]);
      edges.push_back(to[*x]);
    }
  }
  edges.insert(edges.end(), extra.begin(), extra.end());
  // Cannot fail: each rule contracts closed, connected pieces of a DAG, or
  // replaces a block by a path between the same two nodes.
  (void)Dag::Build(n_new, edges.data(), static_cast<int64_t>(edges.size() / 2), &out.dag);
  out.group.resize(w.group.size());
  for (size_t v = 0; v < w.group.size(); ++v) out.group[v] = to[w.group[v]];
  return out;
}

inline std::vector<std::vector<int32_t>> Predecessors(const Dag& g) {
  std::vector<std::vector<int32_t>> pred(g.num_nodes());
  for (int32_t u = 0; u < g.num_nodes(); ++u) {
    for (const int32_t* x = g.succ_begin(u); x != g.succ_end(u); ++x) pred[*x].push_back(u);
  }
  return pred;
}

// Rule 1: zero-cost pass-through merges. Let v have device_s = server_s = 0.
//  (a) v is not an input, has one successor w, and the outputs of all its
//      predecessors together are no larger than its own:
//      sum_{u in pred(v)} out_bytes[u] <= out_bytes[v]. Then v merges into w.
//      Proof: take a valid partition with v in D, w in S. Moving v to S keeps
//      it valid (v's only successor is in S; a predecessor may be on either
//      side). Compute is unchanged (v costs 0), v stops sending out_bytes[v]
//      (it was sent: w is in S), each predecessor in D starts sending at most
//      its own output, and it offloads before and after (w in S). So the
//      latency changes by at most sum out_bytes[pred] - out_bytes[v] <= 0
//      (times 8 / bandwidth): some optimum has v and w on one side. The
//      merged node has w's output and successors, so it is priced exactly.
//  (b) v has one predecessor u, u has no other successor, and
//      out_bytes[v] <= out_bytes[u]. Then v merges into u.
//      Proof: a valid partition with u in D, v in S stays valid with v moved
//      to D (its only predecessor u is in D). u stops sending out_bytes[u]
//      (v was its only successor), v sends at most out_bytes[v], compute is
//      unchanged, and rtt can only disappear. The merged node has u's
//      predecessors (so it is an input iff u is) and v's output and
//      successors.
// A pass merges disjoint pairs only (every proof is about one pair in the
// current graph); passes repeat until nothing merges.
inline int32_t PassThroughOnce(Work* w) {
  const Dag& g = w->dag;
  const int32_t n = g.num_nodes();
  std::vector<std::vector<int32_t>> pred = Predecessors(g);
  std::vector<int32_t> into(n, -1);  // v -> the node it merges into
  std::vector<uint8_t> touched(n, 0);
  int32_t merges = 0;
  for (int32_t v : g.topological_order()) {
    if (touched[v] || w->d[v] != 0.0 || w->s[v] != 0.0) continue;
    if (!g.is_input(v) && g.out_degree(v) == 1) {
      const int32_t x = *g.succ_begin(v);
      double in_bytes = 0.0;
      for (int32_t u : pred[v]) in_bytes += w->bytes[u];
      if (!touched[x] && in_bytes <= w->bytes[v]) {
        into[v] = x;
        touched[v] = touched[x] = 1;
        ++merges;
        continue;
      }
    }
    if (g.in_degree(v) == 1) {
      const int32_t u = pred[v][0];
      if (!touched[u] && g.out_degree(u) == 1 && w->bytes[v] <= w->bytes[u]) {
        into[v] = u;
        touched[v] = touched[u] = 1;
        ++merges;
      }
    }
  }
  if (merges == 0) return 0;
  std::vector<int32_t> to(n, -1);
  int32_t count = 0;
  for (int32_t v = 0; v < n; ++v) {
    if (into[v] < 0) to[v] = count++;
  }
  std::vector<double> bytes(count, 0.0);
  for (int32_t v = 0; v < n; ++v) {
    if (into[v] < 0) bytes[to[v]] = w->bytes[v];
  }
  for (int32_t v = 0; v < n; ++v) {
    if (into[v] < 0) continue;
    to[v] = to[into[v]];
    // (a): the merged node keeps w's output; (b): it takes v's.
    const bool rule_b = g.in_degree(v) == 1 && pred[v][0] == into[v];
    if (rule_b) bytes[to[v]] = w->bytes[v];
  }
  *w = Contract(*w, to, count, bytes, [](int32_t, int32_t) { return true; }, {});
  return merges;
}

// Rule 2: chain pruning. The chains are Dag::FindLinks's: maximal runs
// c_1 -> ... -> c_k of links (v the only successor of u, u the only
// predecessor of v). A valid partition puts a prefix c_1..c_j of a chain on
// the device (closure). Splitting after c_j (1 <= j < k) costs, inside the
// chain, A_j + B_j * x with x = 1 / bandwidth (cost.hpp: ChainSplitLines),
// and every split offloads (c_k in S) and shows the rest of the graph the
// same thing (c_1 in D, c_k in S). So a split j whose line is nowhere
// strictly below the lower envelope of the split lines over x > 0 can be
// replaced, at every x, by an envelope split of no greater cost: the
// positions off the envelope merge away. Each run between two kept split
// positions becomes one node (costs summed; its out_bytes those of its last
// member, which is what it sends; the last run's last member is c_k, so the
// chain's external output is unchanged). A chain headed by an input (the
// detector's input case): its first run contains c_1 and no other member has
// an in-edge from outside the chain, so the first run is an input, as it must
// be; the argument above uses only split positions, all valid with c_1 in D.
inline int32_t ChainHull(Work* w) {
  const Dag& g = w->dag;
  const int32_t n = g.num_nodes();
  std::vector<int32_t> next;
  std::vector<uint8_t> has_prev;
  g.FindLinks(nullptr, &next, &has_prev);
  const LayerCosts costs{&g, w->d.data(), w->s.data(), w->bytes.data()};
  std::vector<int32_t> to(n, -1);
  std::vector<double> bytes;
  int32_t count = 0, removed = 0;
  std::vector<int32_t> members;
  std::vector<Line> lines;
  std::vector<int32_t> pieces;
  std::vector<double> cross;
  std::vector<uint8_t> cut_after;
  for (int32_t v0 : g.topological_order()) {
    if (has_prev[v0]) continue;
    members.clear();
    for (int32_t x = v0; x >= 0; x = next[x]) members.push_back(x);
    const int32_t k = static_cast<int32_t>(members.size());
    cut_after.assign(k, 0);
    cut_after[k - 1] = 1;
    if (k >= 2) {
      lines.assign(k - 1, Line{});
      ChainSplitLines(costs, members.data(), k, lines.data());
      LowerEnvelope(lines, &pieces, &cross);
      for (int32_t j : pieces) cut_after[j] = 1;
    }
    for (int32_t j = 0; j < k; ++j) {
      to[members[j]] = count;
      if (cut_after[j]) {
        bytes.push_back(w->bytes[members[j]]);
        ++count;
      } else {
        ++removed;
      }
    }
  }
  if (removed == 0) return 0;
  *w = Contract(*w, to, count, bytes, [](int32_t, int32_t) { return true; }, {});
  return removed;
}

// Rule 3: cut vertices and single-entry single-exit blocks.
//
// Cut vertices (QDMP, Zhang et al. 2020). Add a super-source before every
// input and a super-sink after every node without successors, and take a
// topological order. A node c lies on every super-source -> super-sink path
// iff no edge jumps over it (goes from before c to after c): a path must
// step onto c's position, and conversely a jumping edge (u, w) with u
// reachable from an input and w reaching an output gives a path avoiding c.
// One sweep with a difference array finds them all. Between two consecutive
// cut vertices e and o the interior I (the positions strictly between) is a
// single-entry single-exit block: edges into I come from I or e, edges out
// of I go to I or o.
//
// A valid partition is, on {e} + I + {o}, one of: e in S (then all of I and o
// in S); o in D (all of e and I in D); or e in D, o in S with some internal
// split, which the rest of the graph cannot see (its edges touch only e and
// o). Such a split costs A_P + B_P * x, A_P the interior compute and B_P the
// bits sent by e and the interior. So only the lower envelope over x > 0 of
// the internal splits matters.
//
// The block as a Graph. Its internal splits are exactly the valid partitions
// of the Graph on {e} + I + {o} with the block's edges, e's and o's compute
// set to 0 (paid outside: e in D and o in S in every split), o's output set
// to 0 and o pinned to the server (GraphOptions::on_server; e, the only
// input, is on the device as every input is). The cost model prices such a
// partition at device + server = A_P and 8 * bytes_sent = B_P (LineOf at rtt
// 0), so the envelope is found by the same search as the plan's
// (search.hpp: SearchGraph), on the same network construction and scale
// (network.hpp, whose comment covers the pinned exit).
//
// Replacement. If the envelope pieces, together with "interior all on the
// server" (P_0, which sends e's output) and "interior all on the device"
// (P_m), are nested when ordered by x, P_0 = {} c P_1 c ... c P_m = I, the
// block becomes the path e -> h_1 -> ... -> h_m -> o with h_j = P_j \ P_{j-1}
// (costs summed over h_j) and out_bytes[h_j] = B_{P_j} / 8 (everything P_j
// sends, e's output included when P_j sends it). Then cutting the path after
// h_j (j >= 1) is P_j at exactly its cost, after e is P_0 at its cost (e's
// only successor is now h_1, so it sends its output once, as in P_0), and
// the (S, S) and (D, D) cases cost the sums of s and d over I, as before;
// the path offers no other split. Since every envelope piece is offered,
// the compressed optimum equals the original one at every x, and rtt is
// unaffected (every split offloads o). Blocks whose pieces are not nested
// are left as they are (counted in the stats); a parametric min cut here
// need not be monotone, as transfer arcs sit inside the network.
inline int32_t Blocks(Work* w, std::vector<std::pair<std::string, double>>* stats) {
  const Dag& g = w->dag;
  const int32_t n = g.num_nodes();
  const auto& order = g.topological_order();
  std::vector<int32_t> pos(n);
  for (int32_t i = 0; i < n; ++i) pos[order[i]] = i;
  // cover[p] = number of edges (u, w) with pos u < p < pos w, super edges
  // included (super-source at -1, super-sink at n).
  std::vector<int32_t> diff(static_cast<size_t>(n) + 2, 0);
  auto add_jump = [&](int32_t a, int32_t b) {  // positions a < b, covers (a, b)
    if (b - a >= 2) {
      ++diff[a + 1 + 1];
      --diff[b + 1];
    }
  };  // diff is offset by one so that a = -1 works
  for (int32_t u = 0; u < n; ++u) {
    if (g.is_input(u)) add_jump(-1, pos[u]);
    if (g.out_degree(u) == 0) add_jump(pos[u], n);
    for (const int32_t* x = g.succ_begin(u); x != g.succ_end(u); ++x) add_jump(pos[u], pos[*x]);
  }
  std::vector<int32_t> cuts;
  int32_t cover = 0;
  for (int32_t p = 0; p < n; ++p) {
    cover += diff[p + 1];
    if (cover == 0) cuts.push_back(order[p]);
  }
  int32_t replaced = 0, not_nested = 0, solves_total = 0, removed = 0;
  std::vector<uint8_t> in_block(n, 0);        // interior of a replaced block
  std::vector<int64_t> extra;
  // Per node of the new graph: its out_bytes; nodes 0..n-1 keep theirs,
  // path nodes get new ids n, n+1, ...
  std::vector<double> bytes(w->bytes);
  std::vector<int32_t> path_of(n, -1);
  int32_t next_id = n;
  std::vector<uint8_t> replaced_entry(n, 0);
  // One block Graph, workspace and search result serve every block (their
  // memory is reused; a Graph re-created in place re-binds the workspace).
  Graph block;
  Graph::Workspace ws;
  Candidates found;
  GraphOptions options;
  std::vector<int64_t> local_edges;
  std::vector<double> local_d, local_s, local_bytes;
  std::vector<uint8_t> on;
  std::vector<int32_t> interior;
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    const int32_t e = cuts[c], o = cuts[c + 1];
    if (pos[o] - pos[e] < 2) continue;
    interior.assign(order.begin() + pos[e] + 1, order.begin() + pos[o]);
    const int32_t m = static_cast<int32_t>(interior.size());
    // Local ids: e = 0, interior[i] = i + 1, o = m + 1 (the slice of the
    // topological order: local = pos - pos[e]).
    auto local = [&](int32_t v) { return pos[v] - pos[e]; };
    local_edges.clear();
    local_d.assign(m + 2, 0.0);
    local_s.assign(m + 2, 0.0);
    local_bytes.assign(m + 2, 0.0);
    local_bytes[0] = w->bytes[e];
    for (int32_t i = -1; i < m; ++i) {
      const int32_t u = i < 0 ? e : interior[i];
      if (i >= 0) {
        local_d[i + 1] = w->d[u];
        local_s[i + 1] = w->s[u];
        local_bytes[i + 1] = w->bytes[u];
      }
      for (const int32_t* x = g.succ_begin(u); x != g.succ_end(u); ++x) {
        local_edges.push_back(local(u));
        local_edges.push_back(local(*x));
      }
    }
    options.on_server.assign(m + 2, 0);
    options.on_server[m + 1] = 1;
    Dag dag;
    // Cannot fail: a sub-DAG. Create fails only on overflow.
    (void)Dag::Build(m + 2, local_edges.data(), static_cast<int64_t>(local_edges.size() / 2),
                     &dag);
    Result r = Graph::Create(std::move(dag), local_d.data(), local_s.data(), local_bytes.data(),
                             &block, options);
    if (r.ok()) r = SearchGraph(block, 0.0, &ws, &found);
    if (!r.ok()) return -1;
    solves_total += found.num_solves;
    std::vector<int32_t> pieces;
    std::vector<double> cross;
    LowerEnvelope(found.lines, &pieces, &cross);
    // Candidate sets in order of x: {} , pieces..., I; nested and distinct.
    std::vector<std::vector<uint8_t>> sets;
    sets.emplace_back(m, 0);
    for (int32_t p : pieces) {
      const uint8_t* in = found.part(p) + 1;  // the interior's entries
      sets.emplace_back(in, in + m);
    }
    sets.emplace_back(m, 1);
    std::vector<std::vector<uint8_t>> chain;
    bool nested = true;
    for (const auto& set : sets) {
      if (!chain.empty()) {
        const auto& prev = chain.back();
        if (prev == set) continue;
        for (int32_t i = 0; i < m; ++i) {
          if (prev[i] && !set[i]) nested = false;
        }
      }
      chain.push_back(set);
    }
    if (!nested) {
      ++not_nested;
      continue;
    }
    // chain[0] = {}, chain.back() = I; path node j covers chain[j] \ chain[j-1].
    const int32_t path = static_cast<int32_t>(chain.size()) - 1;
    int32_t prev_node = e;
    for (int32_t j = 1; j <= path; ++j) {
      const int32_t id = next_id++;
      // What chain[j] sends (e and the interior members on the device with
      // a successor off it; o is off), priced by the block Graph.
      on.assign(m + 2, 0);
      on[0] = 1;
      std::copy(chain[j].begin(), chain[j].end(), on.begin() + 1);
      bytes.push_back(SumPartition(block.costs(), on.data()).bytes_sent);
      for (int32_t i = 0; i < m; ++i) {
        if (chain[j][i] && !chain[j - 1][i]) path_of[interior[i]] = id;
      }
      extra.push_back(prev_node);
      extra.push_back(id);
      prev_node = id;
    }
    extra.push_back(prev_node);
    extra.push_back(o);
    for (int32_t v : interior) in_block[v] = 1;
    replaced_entry[e] = 1;
    ++replaced;
    removed += m - path;
  }
  stats->push_back({"cut_vertices", static_cast<double>(cuts.size())});
  stats->push_back({"blocks_replaced", static_cast<double>(replaced)});
  stats->push_back({"blocks_not_nested", static_cast<double>(not_nested)});
  stats->push_back({"block_min_cuts", static_cast<double>(solves_total)});
  if (replaced == 0) return 0;
  // Renumber: kept nodes, then path nodes, in id order.
  std::vector<int32_t> new_id(next_id, -1);
  int32_t count = 0;
  for (int32_t v = 0; v < n; ++v) {
    if (!in_block[v]) new_id[v] = count++;
  }
  for (int32_t id = n; id < next_id; ++id) new_id[id] = count++;
  std::vector<int32_t> to(n);
  for (int32_t v = 0; v < n; ++v) to[v] = new_id[in_block[v] ? path_of[v] : v];
  std::vector<double> new_bytes(count, 0.0);
  for (int32_t id = 0; id < next_id; ++id) {
    if (new_id[id] >= 0) new_bytes[new_id[id]] = bytes[id];
  }
  for (int64_t& x : extra) x = new_id[x];
  // Edges inside a replaced block (from its entry or interior) are dropped:
  // the path replaces them.
  // (Every out-edge of an entry or an interior node stays in its block.)
  auto keep = [&](int32_t u, int32_t) { return !(in_block[u] || replaced_entry[u]); };
  *w = Contract(*w, to, count, new_bytes, keep, extra);
  return removed;
}

}  // namespace compress_detail

// Compresses g exactly (see the header comment). Never fails on a valid
// Graph except for costs so large that a block's fixed-point range
// overflows (kIntOverflow).
inline Result Compress(const Graph& g, Compressed* out, const CompressOptions& opt = {}) {
  using namespace compress_detail;
  Work w;
  const int32_t n = g.num_nodes();
  {
    std::vector<int64_t> edges;
    const Dag& d = g.dag();
    for (int32_t u = 0; u < n; ++u) {
      for (const int32_t* x = d.succ_begin(u); x != d.succ_end(u); ++x) {
        edges.push_back(u);
        edges.push_back(*x);
      }
    }
    (void)Dag::Build(n, edges.data(), static_cast<int64_t>(edges.size() / 2), &w.dag);
  }
  w.d = g.device_s();
  w.s = g.server_s();
  w.bytes = g.out_bytes();
  w.group.resize(n);
  for (int32_t v = 0; v < n; ++v) w.group[v] = v;
  Compressed& c = *out;
  c.stats.clear();
  auto size = [&](const char* name) {
    c.stats.push_back({std::string(name) + "_nodes", static_cast<double>(w.dag.num_nodes())});
    c.stats.push_back({std::string(name) + "_edges", static_cast<double>(NumEdges(w))});
  };
  size("original");
  int32_t merged = 0;
  for (int pass = 0; opt.passthrough && pass < 64; ++pass) {
    const int32_t k = PassThroughOnce(&w);
    merged += k;
    if (k == 0) break;
  }
  c.stats.push_back({"passthrough_merged", static_cast<double>(merged)});
  size("after_passthrough");
  c.stats.push_back({"chain_removed", opt.chains ? static_cast<double>(ChainHull(&w)) : 0.0});
  size("after_chains");
  const int32_t removed = opt.blocks ? Blocks(&w, &c.stats) : 0;
  if (removed < 0) return Result::Overflow("block min-cut overflowed (overflow)");
  c.stats.push_back({"block_removed", static_cast<double>(removed)});
  size("after_blocks");
  for (int pass = 0; opt.passthrough && pass < 64; ++pass) {
    if (PassThroughOnce(&w) == 0) break;
  }
  if (opt.chains) ChainHull(&w);
  size("compressed");
  const int32_t m = w.dag.num_nodes();
  c.edges.clear();
  for (int32_t u = 0; u < m; ++u) {
    for (const int32_t* x = w.dag.succ_begin(u); x != w.dag.succ_end(u); ++x) {
      c.edges.push_back(u);
      c.edges.push_back(*x);
    }
  }
  c.device_s = w.d;
  c.server_s = w.s;
  c.out_bytes = w.bytes;
  c.group = w.group;
  c.offset_s = 0.0;
  c.expand_start.assign(static_cast<size_t>(m) + 1, 0);
  for (int32_t v = 0; v < n; ++v) ++c.expand_start[c.group[v] + 1];
  for (int32_t i = 0; i < m; ++i) c.expand_start[i + 1] += c.expand_start[i];
  c.expand_nodes.assign(n, 0);
  std::vector<int64_t> fill(c.expand_start.begin(), c.expand_start.end() - 1);
  for (int32_t v = 0; v < n; ++v) c.expand_nodes[fill[c.group[v]]++] = v;
  return Result::Ok();
}

}  // namespace cic

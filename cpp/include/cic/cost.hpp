// The cost model (DESIGN.md), in one place: what a partition is, whether it
// is valid, and what it costs. Every other part of the core prices through
// these functions: Graph (the min cut's reported latency, Evaluate), Plan
// (its pieces and its decisions), and the compression (chain split lines and
// block lines).
//
// A layer DAG with, per node v, device_s[v], server_s[v] (seconds) and
// out_bytes[v]. A partition puts each node on the device (D) or the server
// (S), given as on_device[v] = 1 for v in D. It is valid if
//   * every input (no in-edge; the data lives on the device) is in D,
//   * D is closed under predecessors (no edge goes from S to D),
//   * every node pinned to the server (an optional constraint, used for the
//     exit of a block in compress.hpp) is in S.
// Its cost at a bandwidth (bits per second) and a round-trip time is
//   latency = device_s + transfer_s + server_s + rtt_s with
//   device_s   = sum of device_s over D,   server_s = sum of server_s over S,
//   bytes_sent = sum of out_bytes[u] over the sent set: u in D with at least
//                one successor in S, each u once however many such successors,
//   transfer_s = 8 * bytes_sent / bandwidth_bps,
//   rtt_s      = rtt if S is not empty (the partition offloads), else 0.
// The bandwidth-independent part is the PartitionSums (the sums above and
// whether it offloads); Price turns sums, bandwidth and rtt into a Breakdown,
// LineOf turns sums and rtt into the line a + b x with x = 1 / bandwidth.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "cic/dag.hpp"
#include "cic/envelope.hpp"
#include "cic/status.hpp"

namespace cic {

// Latency parts of one partition at one bandwidth.
struct Breakdown {
  double latency_s = 0.0;   // device_s + transfer_s + server_s + rtt_s
  double device_s = 0.0;    // sum of device_s over layers on the device
  double transfer_s = 0.0;  // 8 * bytes_sent / bandwidth
  double server_s = 0.0;    // sum of server_s over layers on the server
  double rtt_s = 0.0;       // rtt if anything runs on the server, else 0
  double bytes_sent = 0.0;  // sum of out_bytes over sent layers (exact sum)
  int64_t num_sent = 0;     // layers on the device with a successor on the server
  bool offloads = false;    // some layer runs on the server
};

// The bandwidth- and rtt-independent sums of one partition.
struct PartitionSums {
  double device_s = 0.0;    // over D
  double server_s = 0.0;    // over S
  double bytes_sent = 0.0;  // over the sent set
  int64_t num_sent = 0;     // size of the sent set
  bool offloads = false;    // S is not empty
};

// The layer costs of a DAG, as the pricing functions read them (a view: the
// arrays have dag->num_nodes() entries and outlive it).
struct LayerCosts {
  const Dag* dag = nullptr;
  const double* device_s = nullptr;
  const double* server_s = nullptr;
  const double* out_bytes = nullptr;
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

// Whether u is in the sent set: on the device with a successor on the server.
inline bool IsSent(const Dag& dag, const uint8_t* on_device, int32_t u) {
  if (!on_device[u]) return false;
  for (const int32_t* w = dag.succ_begin(u); w != dag.succ_end(u); ++w) {
    if (!on_device[*w]) return true;
  }
  return false;
}

// Validity (see the header comment). `on_server`, if not null, flags the
// nodes pinned to the server. The message names the offending node.
inline Result CheckPartition(const Dag& dag, const uint8_t* on_device,
                             const uint8_t* on_server = nullptr) {
  const int32_t n = dag.num_nodes();
  for (int32_t v : dag.inputs()) {
    if (!on_device[v]) {
      return Result::BadInput("on_device[" + std::to_string(v) + "] is False but node " +
                              std::to_string(v) +
                              " is a model input (inputs stay on the device)");
    }
  }
  for (int32_t u = 0; u < n; ++u) {
    if (on_device[u]) {
      if (on_server != nullptr && on_server[u]) {
        return Result::BadInput("on_device[" + std::to_string(u) + "] is True but node " +
                                std::to_string(u) + " is pinned to the server");
      }
      continue;
    }
    for (const int32_t* w = dag.succ_begin(u); w != dag.succ_end(u); ++w) {
      if (on_device[*w]) {
        return Result::BadInput("on_device is not closed under predecessors: node " +
                                std::to_string(*w) +
                                " is on the device but its predecessor " +
                                std::to_string(u) + " is on the server");
      }
    }
  }
  return Result::Ok();
}

// The sums of a partition (assumed valid: CheckPartition). O(n + E).
inline PartitionSums SumPartition(const LayerCosts& c, const uint8_t* on_device) {
  const Dag& dag = *c.dag;
  PartitionSums s;
  const int32_t n = dag.num_nodes();
  for (int32_t v = 0; v < n; ++v) {
    if (on_device[v]) {
      s.device_s += c.device_s[v];
      if (IsSent(dag, on_device, v)) {
        s.bytes_sent += c.out_bytes[v];
        ++s.num_sent;
      }
    } else {
      s.server_s += c.server_s[v];
      s.offloads = true;
    }
  }
  return s;
}

// The rtt a partition pays: rtt if it offloads, else 0. (+ 0.0 turns a
// caller's -0.0 into 0.0, so that an offloading partition never reports -0.)
inline double RttPaid(bool offloads, double rtt_s) { return offloads ? rtt_s + 0.0 : 0.0; }

// The latency parts of a partition with sums `s` at `bandwidth_bps` (> 0,
// +inf allowed: zero transfer time) and `rtt_s`.
inline Breakdown Price(const PartitionSums& s, double bandwidth_bps, double rtt_s) {
  Breakdown b;
  b.device_s = s.device_s;
  b.server_s = s.server_s;
  b.bytes_sent = s.bytes_sent;
  b.num_sent = s.num_sent;
  b.offloads = s.offloads;
  b.transfer_s = 8.0 * s.bytes_sent / bandwidth_bps;
  b.rtt_s = RttPaid(s.offloads, rtt_s);
  b.latency_s = b.device_s + b.transfer_s + b.server_s + b.rtt_s;
  return b;
}

// The partition's latency as a line in x = 1 / bandwidth (envelope.hpp).
inline Line LineOf(const PartitionSums& s, double rtt_s) {
  return {s.device_s + s.server_s + RttPaid(s.offloads, rtt_s), 8.0 * s.bytes_sent};
}

// The same from a priced partition (the line does not depend on its bandwidth).
inline Line LineOf(const Breakdown& b) {
  return {b.device_s + b.server_s + b.rtt_s, 8.0 * b.bytes_sent};
}

// Writes the ascending indices of the sent set into sent[0..num_sent).
inline void FillSent(const Dag& dag, const uint8_t* on_device, int64_t* sent) {
  int64_t k = 0;
  for (int32_t u = 0; u < dag.num_nodes(); ++u) {
    if (IsSent(dag, on_device, u)) sent[k++] = u;
  }
}

// The cost model on a chain c_1 -> ... -> c_k (Dag::FindLinks), k >= 2: a
// valid partition puts a prefix c_1..c_j on the device (closure), and splitting
// after c_j (1 <= j < k) costs, inside the chain,
//   A_j + B_j x,  A_j = d_1 + .. + d_j + s_{j+1} + .. + s_k,  B_j = 8 out_bytes[c_j]
// (c_j is the only member that sends). Writes line j - 1 = (A_j, B_j) for
// j = 1..k-1 into lines[0..k-1). Prefix and suffix sums are accumulated in
// their own direction (no cancellation).
inline void ChainSplitLines(const LayerCosts& c, const int32_t* members, int32_t k,
                            Line* lines) {
  double suffix = 0.0;
  for (int32_t j = k - 2; j >= 0; --j) {
    suffix += c.server_s[members[j + 1]];
    lines[j].a = suffix;
  }
  double prefix = 0.0;
  for (int32_t j = 0; j + 1 < k; ++j) {
    prefix += c.device_s[members[j]];
    lines[j].a += prefix;
    lines[j].b = 8.0 * c.out_bytes[members[j]];
  }
}

}  // namespace cic

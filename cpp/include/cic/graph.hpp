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
// chosen once per graph so that B = dev + srv + (number of transfer arcs) * dev
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

#include <cmath>
#include <cstdint>
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
  static Result Create(Dag dag, const double* device_s, const double* server_s,
                       const double* out_bytes, Graph* out) {
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
    g.BuildNetwork();
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
  // Ties go to all-device, then to the largest device set. Allocates nothing;
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
    b.rtt_s = b.offloads ? rtt_s : 0.0;
    b.latency_s = b.device_s + b.transfer_s + b.server_s + b.rtt_s;
    *out = b;
  }

  void BuildNetwork() {
    const int32_t n = num_nodes();
    net_.assign(n, -1);
    aux_.assign(n, -1);
    int32_t count = 0;
    for (int32_t v = 0; v < n; ++v) {
      if (!dag_.is_input(v)) net_[v] = count++;
    }
    for (int32_t u = 0; u < n; ++u) {
      if (dag_.out_degree(u) >= 2) aux_[u] = count++;
    }
    const int32_t sink = count++;
    flow_.Reset(count, sink);
    std::vector<int32_t> terminal_pairs;
    transfers_.clear();
    std::vector<int32_t> infinite;
    for (int32_t v = 0; v < n; ++v) {
      if (!dag_.is_input(v)) terminal_pairs.push_back(flow_.AddPair(net_[v], sink));
    }
    for (int32_t u = 0; u < n; ++u) {
      const int64_t deg = dag_.out_degree(u);
      if (deg == 0) continue;
      const bool input = dag_.is_input(u);
      Transfer t{u, -1, -1};
      if (deg == 1) {
        const int32_t w = net_[*dag_.succ_begin(u)];
        if (input) {
          t.excess_node = w;
        } else {
          t.pair = flow_.AddPair(net_[u], w);  // backward = closure
        }
      } else {
        if (input) {
          t.excess_node = aux_[u];
        } else {
          t.pair = flow_.AddPair(net_[u], aux_[u]);
        }
        for (const int32_t* w = dag_.succ_begin(u); w != dag_.succ_end(u); ++w) {
          infinite.push_back(flow_.AddPair(aux_[u], net_[*w]));
          if (!input) infinite.push_back(flow_.AddPair(net_[*w], net_[u]));
        }
      }
      transfers_.push_back(t);
    }
    flow_.Finalize();
    for (int32_t p : infinite) flow_.SetPair(p, PushRelabel::kInfinity, 0);
  }

  // Chooses the fixed-point scale 2^shift_ and sets the capacities that do
  // not depend on the bandwidth. Transfer capacities are clamped to
  // bound_ = (all-device cut) + 1 unit, so the sum of every finite capacity
  // is at most dev + srv + (transfers) * dev (+ rounding), which the scale
  // keeps below 2^60.
  Result ScaleCapacities() {
    double dev = 0.0, srv = 0.0;
    for (int32_t v = 0; v < num_nodes(); ++v) {
      if (dag_.is_input(v)) continue;
      const double m = std::fmin(device_[v], server_[v]);
      dev += device_[v] - m;
      srv += server_[v] - m;
    }
    const double total = dev * (static_cast<double>(transfers_.size()) + 1.0) + srv;
    if (!std::isfinite(total)) {
      return Result::Overflow(
          "costs too large: their sum overflows the fixed-point range (overflow)");
    }
    int exponent = 0;
    if (total > 0.0) std::frexp(total, &exponent);
    shift_ = 60 - exponent;  // total * 2^shift_ < 2^60
    scale_ = (shift_ > -1000 && shift_ < 1000) ? std::ldexp(1.0, shift_) : 0.0;
    fixed_excess_.assign(flow_.num_nodes(), 0);
    flow_.ClearExcess();
    using Cap = PushRelabel::Cap;
    Cap device_units = 0;
    int32_t pair = 0;  // terminal pairs were declared first, in node order
    for (int32_t v = 0; v < num_nodes(); ++v) {
      if (dag_.is_input(v)) continue;
      const double m = std::fmin(device_[v], server_[v]);
      const Cap d = ToUnits(device_[v] - m);
      fixed_excess_[net_[v]] = ToUnits(server_[v] - m);
      flow_.SetPair(pair++, d, 0);
      flow_.SetExcess(net_[v], fixed_excess_[net_[v]]);
      device_units += d;
    }
    bound_ = device_units + 1;
    return Result::Ok();
  }

  // x * 2^shift_ rounded to nearest, for 0 <= x * 2^shift_ < 2^62.
  PushRelabel::Cap ToUnits(double x) const {
    const double y = scale_ != 0.0 ? x * scale_ : std::ldexp(x, shift_);
    return static_cast<PushRelabel::Cap>(y + 0.5);
  }

  // Sets the transfer capacities for this bandwidth, solves, and writes the
  // source side of the minimum cut into on_device.
  Result SolveCut(double bandwidth_bps, uint8_t* on_device) {
    using Cap = PushRelabel::Cap;
    const double bound = static_cast<double>(bound_);
    for (const Transfer& t : transfers_) {
      if (t.pair < 0) flow_.SetExcess(t.excess_node, fixed_excess_[t.excess_node]);
    }
    for (const Transfer& t : transfers_) {
      // 8 * b / bw, not b * (8 / bw): the latter is 0 * inf = NaN for b = 0
      // at a denormal bandwidth. Infinity clamps like any large value.
      const double seconds = 8.0 * bytes_[t.layer] / bandwidth_bps;
      const double y = scale_ != 0.0 ? seconds * scale_ : std::ldexp(seconds, shift_);
      const Cap c = y >= bound ? bound_ : static_cast<Cap>(y + 0.5);
      if (t.pair >= 0) {
        flow_.SetPair(t.pair, c, PushRelabel::kInfinity);
      } else {
        // Input layer: its arc leaves the (contracted) source, so it is
        // saturated from the start. Its target may also hold server excess
        // or another input's, hence the sum.
        flow_.AddExcess(t.excess_node, c);
      }
    }
    flow_.Solve();
    for (int32_t v = 0; v < num_nodes(); ++v) {
      on_device[v] = net_[v] < 0 ? 1 : (flow_.OnSourceSide(net_[v]) ? 1 : 0);
    }
    return Result::Ok();
  }

  struct Transfer {
    int32_t layer;        // u
    int32_t pair;         // u->w or u->u' arc pair, or -1 for an input
    int32_t excess_node;  // for an input: the node its source arc feeds
  };

  Dag dag_;
  std::vector<double> device_, server_, bytes_;
  double all_device_s_ = 0.0;
  std::vector<int32_t> net_, aux_;  // layer -> network node (-1: contracted)
  std::vector<Transfer> transfers_;
  std::vector<PushRelabel::Cap> fixed_excess_;  // server units per network node
  PushRelabel::Cap bound_ = 1;
  int shift_ = 0;
  double scale_ = 1.0;  // 2^shift_, or 0 when that is not a normal double
  PushRelabel flow_;
  std::mutex mutex_;
};

}  // namespace cic

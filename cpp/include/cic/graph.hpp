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
// Fixed point. Capacities are int64 values c * 2^k, rounded to nearest, with k
// chosen per solve so that the sum of all finite capacities is below 2^60; an
// infinite arc gets 2^62 (above every finite cut; 2^62 + 2^61 still fits). So
// the min cut is exact for the rounded problem and within (number of cut
// arcs) * 2^-60 * (total cost) of the real-valued optimum: below double
// precision of the latencies themselves. The latency reported is recomputed
// from the partition in double with the formula above, never read off the
// flow. Sums that overflow double (costs near 1e308) report kIntOverflow.
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
    return Result::Ok();
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
    terminals_.clear();
    transfers_.clear();
    infinite_.clear();
    dev_red_.clear();
    srv_red_.clear();
    dev_net_ = srv_net_ = 0.0;
    for (int32_t v = 0; v < n; ++v) {
      if (dag_.is_input(v)) continue;
      const double m = std::fmin(device_[v], server_[v]);
      dev_red_.push_back(device_[v] - m);
      srv_red_.push_back(server_[v] - m);
      dev_net_ += device_[v] - m;
      srv_net_ += server_[v] - m;
      terminals_.push_back({flow_.AddPair(net_[v], sink), net_[v]});
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
          infinite_.push_back(flow_.AddPair(aux_[u], net_[*w]));
          if (!input) infinite_.push_back(flow_.AddPair(net_[*w], net_[u]));
        }
      }
      transfers_.push_back(t);
    }
    flow_.Finalize();
  }

  // Sets the fixed-point capacities for this bandwidth, solves, and writes
  // the source side of the minimum cut into on_device.
  Result SolveCut(double bandwidth_bps, uint8_t* on_device) {
    using Cap = PushRelabel::Cap;
    // 8 * b / bw, not b * (8 / bw): the latter is 0 * inf = NaN for b = 0
    // at a denormal bandwidth.
    auto seconds = [&](int32_t u) { return 8.0 * bytes_[u] / bandwidth_bps; };
    double total = dev_net_ + srv_net_;
    for (const Transfer& t : transfers_) total += std::fmin(seconds(t.layer), dev_net_);
    if (!std::isfinite(total)) {
      return Result::Overflow(
          "costs too large: their sum overflows the fixed-point range (overflow)");
    }
    int exponent = 0;
    if (total > 0.0) std::frexp(total, &exponent);
    const int shift = 60 - exponent;  // total * 2^shift < 2^60
    flow_.ClearExcess();
    Cap device_units = 0;
    for (size_t i = 0; i < terminals_.size(); ++i) {
      const Cap d = std::llround(std::ldexp(dev_red_[i], shift));
      const Cap s = std::llround(std::ldexp(srv_red_[i], shift));
      flow_.SetPair(terminals_[i].pair, d, 0);
      flow_.SetExcess(terminals_[i].node, s);
      device_units += d;
    }
    const Cap bound = device_units + 1;
    for (const Transfer& t : transfers_) {
      const double x = std::ldexp(seconds(t.layer), shift);
      const Cap c = x >= static_cast<double>(bound) ? bound : std::llround(x);
      if (t.pair >= 0) {
        flow_.SetPair(t.pair, c, PushRelabel::kInfinity);
      } else {
        // Input layer: its arc leaves the (contracted) source, so it is
        // saturated from the start. Its target may also hold server excess
        // or another input's, hence the sum.
        flow_.AddExcess(t.excess_node, c);
      }
    }
    for (int32_t p : infinite_) flow_.SetPair(p, PushRelabel::kInfinity, 0);
    flow_.Solve();
    for (int32_t v = 0; v < num_nodes(); ++v) {
      on_device[v] = net_[v] < 0 ? 1 : (flow_.OnSourceSide(net_[v]) ? 1 : 0);
    }
    return Result::Ok();
  }

  struct Terminal {
    int32_t pair;
    int32_t node;
  };
  struct Transfer {
    int32_t layer;        // u
    int32_t pair;         // u->w or u->u' arc pair, or -1 for an input
    int32_t excess_node;  // for an input: the node its source arc feeds
  };

  Dag dag_;
  std::vector<double> device_, server_, bytes_;
  double all_device_s_ = 0.0;
  std::vector<int32_t> net_, aux_;  // layer -> network node (-1: contracted)
  std::vector<Terminal> terminals_;
  std::vector<double> dev_red_, srv_red_;  // reduced terminal capacities
  double dev_net_ = 0.0, srv_net_ = 0.0;
  std::vector<Transfer> transfers_;
  std::vector<int32_t> infinite_;
  PushRelabel flow_;
  std::mutex mutex_;
};

}  // namespace cic

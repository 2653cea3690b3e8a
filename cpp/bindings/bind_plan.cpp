// Bindings for cic::Plan (the all-bandwidth splitting plan) and cic::Compress.
// No logic lives here: the core reports a cic::Result that becomes ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cic/compress.hpp"
#include "cic/graph.hpp"
#include "common.hpp"
#include "cic/plan.hpp"

namespace py = pybind11;

namespace {

// The shared array types, Check and GraphHandle (common.hpp).
using namespace cic_bind;  // NOLINT(google-build-using-namespace)

std::unique_ptr<cic::Plan> BuildPlan(GraphHandle& h, double rtt_s) {
  auto plan = std::make_unique<cic::Plan>();
  cic::Result r;
  {
    py::gil_scoped_release release;
    GraphHandle::Lease slot(h);
    r = cic::Plan::Build(h.graph, rtt_s, plan.get(), slot.workspace());
  }
  Check(r);
  return plan;
}

std::unique_ptr<cic::Plan> PlanFromPartitions(const GraphHandle& h, double rtt_s,
                                              const BoolArray& parts) {
  const cic::Graph& g = h.graph;
  if (parts.ndim() != 2 || parts.shape(1) != g.num_nodes()) {
    throw py::value_error("partitions must have shape (K, " + std::to_string(g.num_nodes()) +
                          ")");
  }
  auto plan = std::make_unique<cic::Plan>();
  Check(cic::Plan::FromPartitions(g, rtt_s, reinterpret_cast<const uint8_t*>(parts.data()),
                                  static_cast<int32_t>(parts.shape(0)), plan.get()));
  return plan;
}

template <class T>
py::array_t<T> ToArray(const std::vector<T>& v) {
  return py::array_t<T>(static_cast<py::ssize_t>(v.size()), v.data());
}

py::tuple PlanCompressedPy(const GraphHandle& h, double rtt_s) {
  auto plan = std::make_unique<cic::Plan>();
  cic::Compressed c;
  cic::Result r;
  {
    py::gil_scoped_release release;
    r = cic::Plan::BuildCompressed(h.graph, rtt_s, plan.get(), &c);
  }
  Check(r);
  py::dict stats;
  for (const auto& kv : c.stats) stats[py::str(kv.first)] = kv.second;
  return py::make_tuple(std::move(plan), stats);
}

py::tuple PlanThroughputPy(GraphHandle& h, double rtt_s, int64_t max_steps) {
  auto plan = std::make_unique<cic::Plan>();
  bool complete = true;
  int64_t steps = 0;
  cic::Result r;
  {
    py::gil_scoped_release release;
    cic::PeriodOptions opt;
    opt.max_steps = max_steps;
    r = cic::Plan::BuildThroughput(h.graph, rtt_s, opt, plan.get(), &complete, &steps);
  }
  Check(r);
  return py::make_tuple(std::move(plan), complete, steps);
}

std::unique_ptr<cic::Plan> PlanFromThroughputPartitions(const GraphHandle& h, double rtt_s,
                                                        const BoolArray& parts) {
  const cic::Graph& g = h.graph;
  if (parts.ndim() != 2 || parts.shape(1) != g.num_nodes()) {
    throw py::value_error("partitions must have shape (K, " + std::to_string(g.num_nodes()) +
                          ")");
  }
  auto plan = std::make_unique<cic::Plan>();
  Check(cic::Plan::FromThroughputPartitions(g, rtt_s,
                                            reinterpret_cast<const uint8_t*>(parts.data()),
                                            static_cast<int32_t>(parts.shape(0)), plan.get()));
  return plan;
}

}  // namespace

void BindPlan(py::module_& m) {
  py::class_<cic::Plan>(m, "Plan")
      .def(py::init(&BuildPlan), py::arg("graph"), py::arg("rtt_s") = 0.0,
           "Eisner-Severance search: every partition optimal at some bandwidth.")
      .def_static("from_partitions", &PlanFromPartitions, py::arg("graph"), py::arg("rtt_s"),
                  py::arg("partitions"),
                  "The plan of the given candidate partitions (K, n) bool: validated, "
                  "priced, and reduced to their lower envelope. No min-cut.")
      .def_static("compressed", &PlanCompressedPy, py::arg("graph"), py::arg("rtt_s") = 0.0,
                  "The same plan, searched on the exactly compressed graph: (plan, stats).")
      .def_static("throughput", &PlanThroughputPy, py::arg("graph"), py::arg("rtt_s"),
                  py::arg("max_steps"),
                  "The period-optimal plan (Pareto front of max(device, server) time against "
                  "bytes): (plan, complete, steps).")
      .def_static("from_throughput_partitions", &PlanFromThroughputPartitions,
                  py::arg("graph"), py::arg("rtt_s"), py::arg("partitions"),
                  "The throughput plan of the given candidates (K, n) bool: validated, priced, "
                  "reduced to their Pareto front.")
      .def_property_readonly("n_nodes", &cic::Plan::num_nodes)
      .def_property_readonly("n_partitions", &cic::Plan::num_partitions)
      .def_property_readonly("num_solves", &cic::Plan::num_solves)
      .def_property_readonly("rtt_s", &cic::Plan::rtt_s)
      .def_property_readonly("breakpoints_bps",
                             [](const cic::Plan& p) { return ToArray(p.breakpoints_bps()); })
      .def_property_readonly("lines",
                             [](const cic::Plan& p) {
                               const py::ssize_t k = p.num_partitions();
                               F64Array a({k, static_cast<py::ssize_t>(2)});
                               for (py::ssize_t i = 0; i < k; ++i) {
                                 a.mutable_data()[2 * i] = p.line(static_cast<int32_t>(i)).a;
                                 a.mutable_data()[2 * i + 1] = p.line(static_cast<int32_t>(i)).b;
                               }
                               return a;
                             })
      .def(
          "partition",
          [](const cic::Plan& p, int32_t k) {
            if (k < 0 || k >= p.num_partitions()) throw py::index_error("partition index");
            BoolArray on(p.num_nodes());
            const uint8_t* src = p.on_device(k);
            auto* dst = reinterpret_cast<uint8_t*>(on.mutable_data());
            std::copy(src, src + p.num_nodes(), dst);
            Int64Array sent(static_cast<py::ssize_t>(p.sent_end(k) - p.sent_begin(k)));
            std::copy(p.sent_begin(k), p.sent_end(k), sent.mutable_data());
            cic::Breakdown b;
            p.Price(k, 1.0, &b);
            return py::make_tuple(std::move(on), std::move(sent), b.device_s, b.server_s,
                                  b.rtt_s, b.bytes_sent);
          },
          py::arg("k"),
          "Partition k: (on_device, sent, device_s, server_s, rtt_s, bytes_sent).")
      .def(
          "segment",
          [](const cic::Plan& p, double bw) {
            if (std::isnan(bw)) throw py::value_error("bandwidth_bps must not be NaN");
            return p.Segment(bw);
          },
          py::arg("bandwidth_bps"),
          "Index of the partition optimal at a bandwidth (binary search).")
      .def(
          "decide",
          [](const cic::Plan& p, double bw) {
            int32_t k = 0;
            cic::Breakdown b;
            Check(p.Decide(bw, &k, &b));
            return py::make_tuple(k, b.latency_s, b.device_s, b.transfer_s, b.server_s, b.rtt_s,
                                  b.bytes_sent);
          },
          py::arg("bandwidth_bps"),
          "(k, latency_s, device_s, transfer_s, server_s, rtt_s, bytes_sent).")
      .def("decide_fn", &cic_bind::MakeDecideFn, py::arg("partition_type"), py::arg("pieces"),
           py::arg("as_real"),
           "decide(bandwidth_bps) -> partition_type, in C: partition_type must subclass "
           "PartitionBase; pieces are K tuples (on_device, sent, device_s, server_s, rtt_s, "
           "bytes_sent); as_real(value, name) converts a non-float bandwidth.");

  m.def(
      "compress",
      [](const GraphHandle& h, bool passthrough, bool chains, bool blocks) {
        cic::Compressed c;
        cic::Result r;
        {
          py::gil_scoped_release release;
          r = cic::Compress(h.graph, &c, cic::CompressOptions{passthrough, chains, blocks});
        }
        Check(r);
        const py::ssize_t e = static_cast<py::ssize_t>(c.edges.size() / 2);
        Int64Array edges({e, static_cast<py::ssize_t>(2)});
        std::copy(c.edges.begin(), c.edges.end(), edges.mutable_data());
        py::dict stats;
        for (const auto& kv : c.stats) stats[py::str(kv.first)] = kv.second;
        return py::make_tuple(std::move(edges), ToArray(c.device_s), ToArray(c.server_s),
                              ToArray(c.out_bytes), ToArray(c.group), ToArray(c.expand_start),
                              ToArray(c.expand_nodes), c.offset_s, stats);
      },
      py::arg("graph"), py::arg("passthrough") = true, py::arg("chains") = true,
      py::arg("blocks") = true,
      "Exact compression: (edges, device_s, server_s, out_bytes, group, expand_start, "
      "expand_nodes, offset_s, stats).");
}

// Bindings for cic::Graph: numpy arrays in, numpy arrays and floats out.
// No logic lives here; every check of values happens in the core, which
// reports a cic::Result that becomes ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include "cic/graph.hpp"
#include "common.hpp"

namespace py = pybind11;

namespace {

// The shared array types, Check and GraphHandle (common.hpp).
using namespace cic_bind;  // NOLINT(google-build-using-namespace)

void CheckVector(const F64Array& a, const char* name, py::ssize_t n) {
  if (a.ndim() != 1) throw py::value_error(std::string(name) + " must be 1-D");
  if (a.shape(0) != n) {
    throw py::value_error(std::string(name) + " has length " +
                          std::to_string(a.shape(0)) + ", expected " +
                          std::to_string(n) + " (the length of device_s)");
  }
}

uint8_t* Bytes(BoolArray& a) { return reinterpret_cast<uint8_t*>(a.mutable_data()); }

// (on_device, sent, latency_s, device_s, transfer_s, server_s, rtt_s, bytes_sent)
py::tuple Pack(BoolArray on_device, Int64Array sent, const cic::Breakdown& b) {
  return py::make_tuple(std::move(on_device), std::move(sent), b.latency_s, b.device_s,
                        b.transfer_s, b.server_s, b.rtt_s, b.bytes_sent);
}

std::unique_ptr<GraphHandle> MakeGraph(const Int64Array& edges, const F64Array& device_s,
                                      const F64Array& server_s, const F64Array& out_bytes) {
  if (edges.ndim() != 2 || edges.shape(1) != 2) {
    throw py::value_error("edges must have shape (E, 2)");
  }
  if (device_s.ndim() != 1) throw py::value_error("device_s must be 1-D");
  const py::ssize_t n = device_s.shape(0);
  CheckVector(server_s, "server_s", n);
  CheckVector(out_bytes, "out_bytes", n);
  auto handle = std::make_unique<GraphHandle>();
  cic::Dag dag;
  Check(cic::Dag::Build(n, edges.data(), edges.shape(0), &dag));
  Check(cic::Graph::Create(std::move(dag), device_s.data(), server_s.data(),
                           out_bytes.data(), &handle->graph));
  return handle;
}

// One exact solve on a pooled workspace: the solve and the sent-set scan run
// without the GIL, so calls from several threads run in parallel.
struct Solved {
  BoolArray on_device;
  Int64Array sent;
  cic::Breakdown breakdown;
};

Solved Solve(GraphHandle& h, double bandwidth_bps, double rtt_s) {
  const cic::Graph& g = h.graph;
  BoolArray on_device(g.num_nodes());
  uint8_t* out = Bytes(on_device);
  cic::Breakdown b;
  cic::Result r;
  GraphHandle::Lease slot(h);
  {
    py::gil_scoped_release release;
    r = g.MinCut(bandwidth_bps, rtt_s, out, &b, slot.workspace());
    if (r.ok()) {
      slot.sent().resize(static_cast<size_t>(b.num_sent));
      g.FillSent(out, slot.sent().data());
    }
  }
  Check(r);
  return {std::move(on_device), Int64Array(b.num_sent, slot.sent().data()), b};
}

}  // namespace

void BindGraph(py::module_& m) {
  py::class_<GraphHandle>(m, "Graph")
      .def(py::init(&MakeGraph), py::arg("edges"), py::arg("device_s"), py::arg("server_s"),
           py::arg("out_bytes"),
           "Validate a layer DAG and its costs and build its flow network once.")
      .def(
          "min_cut",
          [](GraphHandle& h, double bandwidth_bps, double rtt_s) {
            Solved s = Solve(h, bandwidth_bps, rtt_s);
            return Pack(std::move(s.on_device), std::move(s.sent), s.breakdown);
          },
          py::arg("bandwidth_bps"), py::arg("rtt_s") = 0.0,
          "Exact optimum: (on_device, sent, latency_s, device_s, transfer_s, server_s, "
          "rtt_s, bytes_sent). Thread-safe; the solve releases the GIL.")
      .def(
          "min_cut_as",
          [](GraphHandle& h, py::handle partition_type, double bandwidth_bps, double rtt_s) {
            PyTypeObject* type = cic_bind::CheckPartitionType(partition_type, "min_cut_as");
            Solved s = Solve(h, bandwidth_bps, rtt_s);
            const cic::Breakdown& b = s.breakdown;
            // Constructor order; bytes_sent is the exact double sum, as transfer_s uses.
            PyObject* const fields[9] = {
                s.on_device.release().ptr(),     PyFloat_FromDouble(b.latency_s),
                PyFloat_FromDouble(b.device_s),  PyFloat_FromDouble(b.transfer_s),
                PyFloat_FromDouble(b.server_s),  PyFloat_FromDouble(b.rtt_s),
                PyFloat_FromDouble(b.bytes_sent), s.sent.release().ptr(),
                PyFloat_FromDouble(bandwidth_bps)};
            PyObject* p = cic_bind::NewPartition(type, fields);
            if (p == nullptr) throw py::error_already_set();
            return py::reinterpret_steal<py::object>(p);
          },
          py::arg("partition_type"), py::arg("bandwidth_bps"), py::arg("rtt_s") = 0.0,
          "min_cut's optimum as an instance of partition_type (a PartitionBase subclass), "
          "built in C: one call, no tuple. Thread-safe; the solve releases the GIL.")
      .def(
          "min_period",
          [](GraphHandle& h, double bandwidth_bps, int64_t max_steps) {
            cic::PeriodSolution sol;
            cic::Result r;
            {
              py::gil_scoped_release release;
              r = h.period_status();
              if (r.ok()) {
                cic::PeriodOptions opt;
                opt.max_steps = max_steps;
                r = h.period().MinPeriod(bandwidth_bps, opt, &sol);
              }
            }
            Check(r);
            BoolArray on(static_cast<py::ssize_t>(sol.on_device.size()));
            std::copy(sol.on_device.begin(), sol.on_device.end(),
                      reinterpret_cast<uint8_t*>(on.mutable_data()));
            return py::make_tuple(std::move(on), sol.optimal, sol.lower_bound_s, sol.steps);
          },
          py::arg("bandwidth_bps"), py::arg("max_steps"),
          "Smallest pipeline period (branch and bound): (on_device, optimal, lower_bound_s, "
          "steps). Thread-safe; the search releases the GIL.")
      .def(
          "evaluate",
          [](const GraphHandle& h, BoolArray on_device, double bandwidth_bps, double rtt_s) {
            const cic::Graph& g = h.graph;
            if (on_device.ndim() != 1 || on_device.shape(0) != g.num_nodes()) {
              throw py::value_error("on_device must have length " +
                                    std::to_string(g.num_nodes()) + " (one entry per node)");
            }
            cic::Breakdown b;
            const auto* on = reinterpret_cast<const uint8_t*>(on_device.data());
            Check(g.Evaluate(on, bandwidth_bps, rtt_s, &b));
            Int64Array sent(static_cast<py::ssize_t>(b.num_sent));
            g.FillSent(on, sent.mutable_data());
            return Pack(std::move(on_device), std::move(sent), b);
          },
          py::arg("on_device"), py::arg("bandwidth_bps"), py::arg("rtt_s") = 0.0,
          "Price a valid partition; same tuple as min_cut.")
      .def_property_readonly("n_nodes", [](const GraphHandle& h) { return h.graph.num_nodes(); })
      .def_property_readonly("n_edges",
                             [](const GraphHandle& h) { return h.graph.dag().num_edges(); })
      .def_property_readonly("inputs",
                             [](const GraphHandle& h) {
                               const auto& in = h.graph.dag().inputs();
                               Int64Array a(static_cast<py::ssize_t>(in.size()));
                               for (size_t i = 0; i < in.size(); ++i) a.mutable_data()[i] = in[i];
                               return a;
                             })
      .def_property_readonly("edges",
                             [](const GraphHandle& h) {
                               const cic::Dag& d = h.graph.dag();
                               Int64Array a({static_cast<py::ssize_t>(d.num_edges()),
                                             static_cast<py::ssize_t>(2)});
                               int64_t* out = a.mutable_data();
                               for (int32_t u = 0; u < d.num_nodes(); ++u) {
                                 for (const int32_t* w = d.succ_begin(u); w != d.succ_end(u); ++w) {
                                   *out++ = u;
                                   *out++ = *w;
                                 }
                               }
                               return a;
                             })
      .def_property_readonly("device_s",
                             [](const GraphHandle& h) {
                               const auto& v = h.graph.device_s();
                               return F64Array(static_cast<py::ssize_t>(v.size()), v.data());
                             })
      .def_property_readonly("server_s",
                             [](const GraphHandle& h) {
                               const auto& v = h.graph.server_s();
                               return F64Array(static_cast<py::ssize_t>(v.size()), v.data());
                             })
      .def_property_readonly("out_bytes",
                             [](const GraphHandle& h) {
                               const auto& v = h.graph.out_bytes();
                               return F64Array(static_cast<py::ssize_t>(v.size()), v.data());
                             })
      .def_property_readonly("network_nodes",
                             [](const GraphHandle& h) { return h.graph.network_nodes(); })
      .def_property_readonly("network_arc_pairs",
                             [](const GraphHandle& h) { return h.graph.network_arc_pairs(); });
}

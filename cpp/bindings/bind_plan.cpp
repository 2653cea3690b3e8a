// Bindings for cic::Plan (the all-bandwidth splitting plan) and cic::Compress.
// No logic lives here: the core reports a cic::Result that becomes ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <structmember.h>

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

using cic_bind::BoolArray;
using cic_bind::Check;
using cic_bind::F64Array;
using cic_bind::GraphHandle;
using cic_bind::Int64Array;

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

// The decision as a plain CPython function (METH_FASTCALL, no pybind11
// dispatch): a Python-level decide spends most of its ~2 us building the
// frozen Partition through its slot descriptors, so this one allocates the
// Partition and fills its slots directly. Segment and Price are the core's;
// every per-piece object (on_device, sent, device_s, server_s, rtt_s,
// bytes_sent) is the one the Python side made, shared across calls.
struct Decider {
  cic::Plan plan;
  PyTypeObject* type = nullptr;  // Partition
  Py_ssize_t off[9] = {};        // slot offsets, in Partition._make's order
  PyObject* as_real = nullptr;   // converter for non-float arguments
  std::vector<PyObject*> pieces;  // K * 6 objects
  PyMethodDef def{};
  ~Decider() {
    Py_XDECREF(reinterpret_cast<PyObject*>(type));
    Py_XDECREF(as_real);
    for (PyObject* o : pieces) Py_XDECREF(o);
  }
};

void SetSlot(PyObject* obj, Py_ssize_t off, PyObject* value) {  // steals value
  *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(obj) + off) = value;
}

PyObject* Decide(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  auto* d = static_cast<Decider*>(PyCapsule_GetPointer(self, "cic_fast.decider"));
  if (d == nullptr) return nullptr;
  if (nargs != 1) {
    PyErr_SetString(PyExc_TypeError, "decide() takes exactly one argument (bandwidth_bps)");
    return nullptr;
  }
  PyObject* arg = args[0];
  Py_INCREF(arg);
  if (!PyFloat_CheckExact(arg)) {
    PyObject* conv = PyObject_CallFunction(d->as_real, "Os", arg, "bandwidth_bps");
    Py_DECREF(arg);
    if (conv == nullptr) return nullptr;
    if (!PyFloat_Check(conv)) {
      Py_DECREF(conv);
      PyErr_SetString(PyExc_TypeError, "bandwidth_bps must be a real number");
      return nullptr;
    }
    arg = conv;
  }
  const double bw = PyFloat_AS_DOUBLE(arg);
  if (!(bw > 0.0)) {
    PyErr_Format(PyExc_ValueError, "bandwidth_bps must be > 0, got %R", arg);
    Py_DECREF(arg);
    return nullptr;
  }
  const int32_t k = d->plan.Segment(bw);
  cic::Breakdown b;
  d->plan.Price(k, bw, &b);
  PyObject* latency = PyFloat_FromDouble(b.latency_s);
  PyObject* transfer = PyFloat_FromDouble(b.transfer_s);
  PyObject* out = d->type->tp_alloc(d->type, 0);
  if (latency == nullptr || transfer == nullptr || out == nullptr) {
    Py_XDECREF(latency);
    Py_XDECREF(transfer);
    Py_XDECREF(out);
    Py_DECREF(arg);
    return nullptr;
  }
  PyObject* const* piece = d->pieces.data() + 6 * static_cast<size_t>(k);
  // Order: on_device, latency_s, device_s, transfer_s, server_s, rtt_s,
  // bytes_sent, sent, bandwidth_bps.
  PyObject* values[9] = {piece[0], latency, piece[2], transfer, piece[3],
                         piece[4], piece[5], piece[1], arg};
  for (int i = 0; i < 9; ++i) {
    if (values[i] != latency && values[i] != transfer && values[i] != arg) Py_INCREF(values[i]);
    SetSlot(out, d->off[i], values[i]);
  }
  return out;
}

py::object MakeDecider(const cic::Plan& plan, py::object type, py::tuple fields,
                       py::object as_real, py::list pieces) {
  if (!PyType_Check(type.ptr()) || fields.size() != 9 ||
      static_cast<int32_t>(pieces.size()) != plan.num_partitions()) {
    throw py::value_error("decider: bad arguments");
  }
  auto d = std::make_unique<Decider>();
  d->plan = plan;
  for (size_t i = 0; i < 9; ++i) {
    py::object descr = type.attr(fields[i]);
    if (Py_TYPE(descr.ptr()) != &PyMemberDescr_Type) {
      throw py::value_error("decider: the result type has no slot " +
                            py::str(fields[i]).cast<std::string>());
    }
    const PyMemberDef* member = reinterpret_cast<PyMemberDescrObject*>(descr.ptr())->d_member;
    if (member->type != T_OBJECT_EX) throw py::value_error("decider: unexpected slot kind");
    d->off[i] = member->offset;
  }
  for (py::handle t : pieces) {
    py::tuple piece = py::reinterpret_borrow<py::tuple>(t);
    if (piece.size() != 6) throw py::value_error("decider: a piece needs 6 objects");
    for (py::handle o : piece) d->pieces.push_back(o.inc_ref().ptr());
  }
  d->type = reinterpret_cast<PyTypeObject*>(type.inc_ref().ptr());
  d->as_real = as_real.inc_ref().ptr();
  d->def.ml_name = "decide";
  d->def.ml_meth = reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&Decide));
  d->def.ml_flags = METH_FASTCALL;
  d->def.ml_doc = "decide(bandwidth_bps) -> Partition (see Planner.decide)";
  Decider* raw = d.get();
  PyObject* capsule = PyCapsule_New(raw, "cic_fast.decider", [](PyObject* c) {
    delete static_cast<Decider*>(PyCapsule_GetPointer(c, "cic_fast.decider"));
  });
  if (capsule == nullptr) throw py::error_already_set();
  d.release();
  PyObject* fn = PyCFunction_New(&raw->def, capsule);  // holds the capsule
  Py_DECREF(capsule);
  if (fn == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(fn);
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
      .def("decider", &MakeDecider, py::arg("partition_type"), py::arg("fields"),
           py::arg("as_real"), py::arg("pieces"),
           "A fast decide(bandwidth_bps) -> partition_type callable (internal; deprecated "
           "by decide_fn).")
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

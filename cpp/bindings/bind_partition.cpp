// _core.PartitionBase and the decide callable built on it (Plan.decide_fn).
//
// Only documented CPython API: the type is made with PyType_FromSpec, its
// nine fields are read-only members (PyMemberDef with READONLY) at offsets of
// our own struct, and the callable is a PyCFunction (METH_FASTCALL |
// METH_KEYWORDS) whose docstring carries its text signature. A Python
// subclass with `__slots__ = ()` adds properties, repr and docs; the decide
// callable allocates an instance of that subclass through its tp_alloc and
// fills the fields in C, so one decision costs one call, two floats and one
// allocation. No logic of the cost model lives here: Segment and Price are the
// core's (plan.hpp, cost.hpp).
#include <pybind11/pybind11.h>

#include <Python.h>
#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>  // T_OBJECT_EX, READONLY (in Python.h from 3.12)
#endif

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "cic/cost.hpp"
#include "cic/plan.hpp"
#include "common.hpp"

namespace py = pybind11;

namespace {

#if PY_VERSION_HEX >= 0x030C0000
constexpr int kObjectMember = Py_T_OBJECT_EX;
constexpr int kReadOnly = Py_READONLY;
#else
constexpr int kObjectMember = T_OBJECT_EX;
constexpr int kReadOnly = READONLY;
#endif

// Field order: the constructor's and __reduce__'s argument order.
constexpr int kFields = 9;
enum Field {
  kOnDevice = 0,
  kLatency,
  kDevice,
  kTransfer,
  kServer,
  kRtt,
  kBytes,
  kSent,
  kBandwidth,
};
const char* const kFieldNames[kFields] = {"on_device", "latency_s", "device_s",
                                          "transfer_s", "server_s", "rtt_s",
                                          "bytes_sent", "sent", "bandwidth_bps"};
const char* const kFieldDocs[kFields] = {
    "Boolean array of length n: True where the layer runs on the device.",
    "Predicted latency: device_s + transfer_s + server_s + rtt_s.",
    "Sum of the device times of the layers on the device.",
    "8 * bytes_sent / bandwidth_bps.",
    "Sum of the server times of the layers on the server.",
    "The round-trip time if anything is offloaded, else 0.",
    "Bytes transmitted: the outputs of `sent`, each counted once.",
    "Ascending int64 indices of the layers on the device with a successor on the server.",
    "The bandwidth, in bits per second, the partition was priced at.",
};

struct PartitionObject {
  PyObject_HEAD
  PyObject* fields[kFields];
};

PyTypeObject* g_partition_type = nullptr;  // a strong reference, for the module's life

PyObject* PartitionNew(PyTypeObject* type, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"on_device", "latency_s", "device_s",
                                 "transfer_s", "server_s", "rtt_s",
                                 "bytes_sent", "sent", "bandwidth_bps", nullptr};
  PyObject* v[kFields] = {};
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOOO:PartitionBase",
                                   const_cast<char**>(kwlist), &v[0], &v[1], &v[2], &v[3],
                                   &v[4], &v[5], &v[6], &v[7], &v[8])) {
    return nullptr;
  }
  PyObject* self = type->tp_alloc(type, 0);
  if (self == nullptr) return nullptr;
  auto* p = reinterpret_cast<PartitionObject*>(self);
  for (int i = 0; i < kFields; ++i) {
    Py_INCREF(v[i]);
    p->fields[i] = v[i];
  }
  return self;
}

int PartitionTraverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));  // a heap type's instances reference it
  auto* p = reinterpret_cast<PartitionObject*>(self);
  for (int i = 0; i < kFields; ++i) Py_VISIT(p->fields[i]);
  return 0;
}

int PartitionClear(PyObject* self) {
  auto* p = reinterpret_cast<PartitionObject*>(self);
  for (int i = 0; i < kFields; ++i) Py_CLEAR(p->fields[i]);
  return 0;
}

void PartitionDealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  PartitionClear(self);
  type->tp_free(self);
  Py_DECREF(type);
}

// __reduce__: (type(self), the nine fields): pickling gives the subclass back.
PyObject* PartitionReduce(PyObject* self, PyObject* /*unused*/) {
  auto* p = reinterpret_cast<PartitionObject*>(self);
  PyObject* args = PyTuple_New(kFields);
  if (args == nullptr) return nullptr;
  for (int i = 0; i < kFields; ++i) {
    PyObject* f = p->fields[i] != nullptr ? p->fields[i] : Py_None;
    Py_INCREF(f);
    PyTuple_SET_ITEM(args, i, f);
  }
  return Py_BuildValue("(ON)", reinterpret_cast<PyObject*>(Py_TYPE(self)), args);
}

PyMethodDef g_partition_methods[] = {
    {"__reduce__", reinterpret_cast<PyCFunction>(PartitionReduce), METH_NOARGS,
     "Pickle support: the type and the nine fields."},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef g_partition_members[kFields + 1] = {};

const char kPartitionDoc[] =
    "PartitionBase(on_device, latency_s, device_s, transfer_s, server_s, rtt_s, bytes_sent, "
    "sent, bandwidth_bps)\n--\n\n"
    "A device/server partition priced at one bandwidth: nine read-only fields, set once.\n"
    "Subclass it in Python with ``__slots__ = ()`` to add properties and a repr.";

PyType_Slot g_partition_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(PartitionNew)},
    {Py_tp_dealloc, reinterpret_cast<void*>(PartitionDealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(PartitionTraverse)},
    {Py_tp_clear, reinterpret_cast<void*>(PartitionClear)},
    {Py_tp_methods, g_partition_methods},
    {Py_tp_members, g_partition_members},
    {Py_tp_doc, const_cast<char*>(kPartitionDoc)},
    {0, nullptr},
};

#ifdef Py_TPFLAGS_IMMUTABLETYPE  // 3.10+: no attribute assignment on the type itself
constexpr unsigned long kImmutableType = Py_TPFLAGS_IMMUTABLETYPE;
#else
constexpr unsigned long kImmutableType = 0;
#endif

PyType_Spec g_partition_spec = {
    "cic_fast._core.PartitionBase",
    static_cast<int>(sizeof(PartitionObject)),
    0,
    static_cast<unsigned int>(Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
                              kImmutableType),
    g_partition_slots,
};

// The state of one decide callable, owned by the capsule that is its self.
struct DecideFn {
  cic::Plan plan;
  PyTypeObject* type = nullptr;   // a subclass of PartitionBase
  PyObject* as_real = nullptr;    // converter for non-float arguments
  PyObject* name = nullptr;       // "bandwidth_bps"
  std::vector<PyObject*> pieces;  // K * 6 objects
  PyMethodDef def{};
  ~DecideFn() {
    Py_XDECREF(reinterpret_cast<PyObject*>(type));
    Py_XDECREF(as_real);
    Py_XDECREF(name);
    for (PyObject* o : pieces) Py_XDECREF(o);
  }
};

constexpr const char* kDecideCapsule = "cic_fast.decide_fn";

PyObject* Decide(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  auto* d = static_cast<DecideFn*>(PyCapsule_GetPointer(self, kDecideCapsule));
  if (d == nullptr) return nullptr;
  const Py_ssize_t nkw = kwnames != nullptr ? PyTuple_GET_SIZE(kwnames) : 0;
  if (nargs + nkw != 1) {
    PyErr_SetString(PyExc_TypeError, "decide() takes exactly one argument (bandwidth_bps)");
    return nullptr;
  }
  if (nkw == 1) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, 0);
    if (key != d->name && PyUnicode_Compare(key, d->name) != 0) {
      if (!PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "decide() got an unexpected keyword argument %R", key);
      }
      return nullptr;
    }
  }
  PyObject* arg = args[0];  // the positional or the keyword value
  Py_INCREF(arg);
  if (!PyFloat_CheckExact(arg)) {
    PyObject* call_args[2] = {arg, d->name};
    PyObject* conv = PyObject_Vectorcall(d->as_real, call_args, 2, nullptr);
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
  if (!(bw > 0.0)) {  // also NaN
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
  PyObject** f = reinterpret_cast<PartitionObject*>(out)->fields;
  // Pieces: (on_device, sent, device_s, server_s, rtt_s, bytes_sent).
  f[kOnDevice] = piece[0];
  f[kSent] = piece[1];
  f[kDevice] = piece[2];
  f[kServer] = piece[3];
  f[kRtt] = piece[4];
  f[kBytes] = piece[5];
  for (int i = 0; i < 6; ++i) Py_INCREF(piece[i]);
  f[kLatency] = latency;    // new references, moved in
  f[kTransfer] = transfer;
  f[kBandwidth] = arg;
  return out;
}

const char kDecideDoc[] =
    "decide(bandwidth_bps)\n--\n\n"
    "The optimal partition at a bandwidth in bits per second (> 0; inf is the fastest "
    "link),\npriced with the cost model. Raises ValueError for <= 0 or NaN and TypeError "
    "for\na non-number.";

}  // namespace

namespace cic_bind {

PyTypeObject* PartitionBaseType() {
  if (g_partition_type == nullptr) {
    for (int i = 0; i < kFields; ++i) {
      PyMemberDef& m = g_partition_members[i];
      m.name = kFieldNames[i];
      m.type = kObjectMember;
      m.offset = static_cast<Py_ssize_t>(offsetof(PartitionObject, fields) +
                                         static_cast<size_t>(i) * sizeof(PyObject*));
      m.flags = kReadOnly;
      m.doc = kFieldDocs[i];
    }
    PyObject* t = PyType_FromSpec(&g_partition_spec);
    if (t == nullptr) throw py::error_already_set();
    g_partition_type = reinterpret_cast<PyTypeObject*>(t);
  }
  return g_partition_type;
}

PyTypeObject* CheckPartitionType(py::handle type, const char* who) {
  PyTypeObject* base = PartitionBaseType();
  if (!PyType_Check(type.ptr()) ||
      !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(type.ptr()), base)) {
    throw py::type_error(std::string(who) +
                         ": partition_type must be a subclass of PartitionBase");
  }
  return reinterpret_cast<PyTypeObject*>(type.ptr());
}

PyObject* NewPartition(PyTypeObject* type, PyObject* const fields[9]) {
  PyObject* out = nullptr;
  bool complete = true;
  for (int i = 0; i < kFields; ++i) complete = complete && fields[i] != nullptr;
  if (complete) out = type->tp_alloc(type, 0);
  if (out == nullptr) {
    for (int i = 0; i < kFields; ++i) Py_XDECREF(fields[i]);
    return nullptr;
  }
  PyObject** f = reinterpret_cast<PartitionObject*>(out)->fields;
  for (int i = 0; i < kFields; ++i) f[i] = fields[i];
  return out;
}

py::object MakeDecideFn(const cic::Plan& plan, py::object partition_type, py::list pieces,
                        py::object as_real) {
  CheckPartitionType(partition_type, "decide_fn");
  if (!PyCallable_Check(as_real.ptr())) throw py::type_error("decide_fn: as_real must be callable");
  if (static_cast<int32_t>(pieces.size()) != plan.num_partitions()) {
    throw py::value_error("decide_fn: pieces has " + std::to_string(pieces.size()) +
                          " entries for a plan of " + std::to_string(plan.num_partitions()) +
                          " partitions");
  }
  auto d = std::make_unique<DecideFn>();
  d->plan = plan;
  for (py::handle t : pieces) {
    if (!PyTuple_Check(t.ptr()) || PyTuple_GET_SIZE(t.ptr()) != 6) {
      throw py::value_error(
          "decide_fn: a piece is a tuple (on_device, sent, device_s, server_s, rtt_s, "
          "bytes_sent)");
    }
    for (py::handle o : py::reinterpret_borrow<py::tuple>(t)) d->pieces.push_back(o.inc_ref().ptr());
  }
  d->type = reinterpret_cast<PyTypeObject*>(partition_type.inc_ref().ptr());
  d->as_real = as_real.inc_ref().ptr();
  d->name = PyUnicode_InternFromString("bandwidth_bps");
  if (d->name == nullptr) throw py::error_already_set();
  d->def.ml_name = "decide";
  d->def.ml_meth = reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&Decide));
  d->def.ml_flags = METH_FASTCALL | METH_KEYWORDS;
  d->def.ml_doc = kDecideDoc;
  DecideFn* raw = d.get();
  PyObject* capsule = PyCapsule_New(raw, kDecideCapsule, [](PyObject* c) {
    delete static_cast<DecideFn*>(PyCapsule_GetPointer(c, kDecideCapsule));
  });
  if (capsule == nullptr) throw py::error_already_set();
  d.release();
  PyObject* fn = PyCFunction_New(&raw->def, capsule);  // holds the capsule
  Py_DECREF(capsule);
  if (fn == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(fn);
}

}  // namespace cic_bind

void BindPartition(py::module_& m) {
  PyTypeObject* t = cic_bind::PartitionBaseType();
  m.attr("PartitionBase") = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(t));
}

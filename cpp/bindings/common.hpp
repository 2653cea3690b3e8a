// What every bind_<area>.cpp shares: the numpy array types the bindings
// accept and return, and the one place a core Result becomes an exception.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cic/status.hpp"

namespace cic_bind {

namespace py = pybind11;

using Int64Array = py::array_t<int64_t, py::array::c_style>;
using F64Array = py::array_t<double, py::array::c_style>;
using BoolArray = py::array_t<bool, py::array::c_style>;

// BAD_INPUT and INT_OVERFLOW both reach Python as ValueError with the core's
// message, which names the problem.
inline void Check(const cic::Result& r) {
  if (!r.ok()) throw py::value_error(r.message());
}

}  // namespace cic_bind

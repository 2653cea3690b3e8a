// The private extension module cic_fast._core. One bind_<area>.cpp per area;
// this file only calls them.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void BindGraph(py::module_& m);
void BindPartition(py::module_& m);
void BindPlan(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "cic_fast C++ core (private; use the cic_fast package)";
  BindGraph(m);
  BindPartition(m);
  BindPlan(m);
}

// What every bind_<area>.cpp shares: the numpy array types the bindings
// accept and return, the one place a core Result becomes an exception, the
// Python-side Graph (a cic::Graph with its pool of solver workspaces), and
// the partition base type the fast decision fills.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "cic/graph.hpp"
#include "cic/plan.hpp"
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

// _core.Graph: an immutable cic::Graph and a small pool of workspaces, so
// that threads calling min_cut on one Graph solve in parallel (the GIL is
// released during the solve, and the mutex guards only the pool's pop and
// push, never a solve). A workspace is made when the pool is empty (the
// first call of each concurrent thread) and kept afterwards: a steady
// stream of calls allocates nothing for the solver.
class GraphHandle {
 public:
  static constexpr size_t kMaxPool = 8;  // workspaces kept for reuse

  GraphHandle() { pool_.reserve(kMaxPool); }
  GraphHandle(const GraphHandle&) = delete;
  GraphHandle& operator=(const GraphHandle&) = delete;

  cic::Graph graph;

  // A workspace for the lifetime of the lease (taken from the pool or made,
  // given back on destruction). Needs no GIL.
  class Lease {
   public:
    explicit Lease(GraphHandle& h) : h_(h), ws_(h.Take()) {}
    ~Lease() { h_.Give(std::move(ws_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    cic::Graph::Workspace* get() { return ws_.get(); }

   private:
    GraphHandle& h_;
    std::unique_ptr<cic::Graph::Workspace> ws_;
  };

 private:
  std::unique_ptr<cic::Graph::Workspace> Take() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!pool_.empty()) {
        std::unique_ptr<cic::Graph::Workspace> ws = std::move(pool_.back());
        pool_.pop_back();
        return ws;
      }
    }
    return std::make_unique<cic::Graph::Workspace>();
  }
  void Give(std::unique_ptr<cic::Graph::Workspace> ws) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (pool_.size() < kMaxPool) {
        pool_.push_back(std::move(ws));
        return;
      }
    }
    // Pool full: `ws` is freed here, outside the lock.
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<cic::Graph::Workspace>> pool_;
};

// bind_partition.cpp: _core.PartitionBase, and the fast decide callable
// built on it (Plan.decide_fn).
PyTypeObject* PartitionBaseType();
py::object MakeDecideFn(const cic::Plan& plan, py::object partition_type, py::list pieces,
                        py::object as_real);

}  // namespace cic_bind

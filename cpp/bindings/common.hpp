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
#include "cic/period.hpp"
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

// _core.Graph: an immutable cic::Graph and a small pool of solver slots (a
// workspace and a buffer for the sent indices), so that threads calling
// min_cut on one Graph solve in parallel: the GIL is released during the
// solve and the sent-set scan, and the mutex guards only the pool's pop and
// push, never a solve (nor is it ever held while waiting for the GIL). A
// slot is made when the pool is empty (the first call of each concurrent
// thread) and kept afterwards: a steady stream of calls allocates nothing
// for the solver.
class GraphHandle {
 public:
  static constexpr size_t kMaxPool = 8;  // slots kept for reuse

  struct Slot {
    cic::Graph::Workspace workspace;
    std::vector<int64_t> sent;  // the last solve's sent indices
  };

  GraphHandle() { pool_.reserve(kMaxPool); }
  GraphHandle(const GraphHandle&) = delete;
  GraphHandle& operator=(const GraphHandle&) = delete;

  cic::Graph graph;

  // The throughput search's precomputation (period.hpp), made by the first
  // min_period call (any thread, without the GIL) and read-only afterwards.
  // period_status() makes it if needed and says whether it succeeded.
  cic::Result period_status() {
    std::call_once(period_once_, [this] {
      period_result_ = cic::PeriodSearch::Create(graph, &period_);
    });
    return period_result_;
  }
  const cic::PeriodSearch& period() const { return period_; }

  // A slot for the lifetime of the lease (taken from the pool or made,
  // given back on destruction). Needs no GIL.
  class Lease {
   public:
    explicit Lease(GraphHandle& h) : h_(h), slot_(h.Take()) {}
    ~Lease() { h_.Give(std::move(slot_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    cic::Graph::Workspace* workspace() { return &slot_->workspace; }
    std::vector<int64_t>& sent() { return slot_->sent; }

   private:
    GraphHandle& h_;
    std::unique_ptr<Slot> slot_;
  };

 private:
  std::unique_ptr<Slot> Take() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!pool_.empty()) {
        std::unique_ptr<Slot> slot = std::move(pool_.back());
        pool_.pop_back();
        return slot;
      }
    }
    return std::make_unique<Slot>();
  }
  void Give(std::unique_ptr<Slot> slot) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (pool_.size() < kMaxPool) {
        pool_.push_back(std::move(slot));
        return;
      }
    }
    // Pool full: `slot` is freed here, outside the lock.
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<Slot>> pool_;
  std::once_flag period_once_;
  cic::PeriodSearch period_;
  cic::Result period_result_;
};

// bind_partition.cpp: _core.PartitionBase, and the fast decide callable
// built on it (Plan.decide_fn).
PyTypeObject* PartitionBaseType();
// Throws TypeError unless `type` is PartitionBase or a subclass.
PyTypeObject* CheckPartitionType(py::handle type, const char* who);
// A new instance of `type` (checked) with the nine fields in constructor
// order; steals the nine references (also on failure). Null on error.
PyObject* NewPartition(PyTypeObject* type, PyObject* const fields[9]);
py::object MakeDecideFn(const cic::Plan& plan, py::object partition_type, py::list pieces,
                        py::object as_real);

}  // namespace cic_bind

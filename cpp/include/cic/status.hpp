// Status results of the cic core.
//
// The core never throws and never aborts on bad input: every entry point that
// can fail returns a Result (as OR-tools' max-flow returns BAD_INPUT or
// INT_OVERFLOW) and the Python binding turns it into ValueError. The message
// names the problem (which array, which index, which value) because the caller
// usually passed numpy arrays it did not build by hand.
#pragma once

#include <string>
#include <utility>

namespace cic {

enum class Status {
  kOk = 0,
  kBadInput = 1,    // malformed graph, costs, bandwidth, rtt or partition
  kIntOverflow = 2  // the fixed-point capacities would not fit in int64
};

class Result {
 public:
  Result() = default;
  static Result Ok() { return Result(); }
  static Result BadInput(std::string message) {
    return Result(Status::kBadInput, std::move(message));
  }
  static Result Overflow(std::string message) {
    return Result(Status::kIntOverflow, std::move(message));
  }

  bool ok() const { return status_ == Status::kOk; }
  Status status() const { return status_; }
  const std::string& message() const { return message_; }

 private:
  Result(Status status, std::string message)
      : status_(status), message_(std::move(message)) {}
  Status status_ = Status::kOk;
  std::string message_;
};

}  // namespace cic

// Lines in x = 1 / bandwidth, their lower envelope, and the Eisner-Severance
// search for the envelope of an optimum that is known only through an oracle.
//
// Theory. Write x = 1 / bandwidth (seconds per bit). A fixed partition P costs
//   latency_P(x) = a_P + b_P * x,
//   a_P = device_s + server_s (+ rtt if P offloads),  b_P = 8 * bytes_sent,
// a line in x (cost.hpp: LineOf). The optimum OPT(x) = min_P latency_P(x) is
// the lower envelope of finitely many lines: concave, piecewise linear, with K
// pieces, whose slopes b decrease as x grows (a slow link favours sending
// little). Every piece is one partition, so the answer for every bandwidth is
// K partitions and the K - 1 crossing points. The same holds for any family of
// cut options whose cost is a line in x: a chain's split positions
// (compress.hpp, rule 2) and a block's internal splits (rule 3).
//
// Eisner-Severance search (Eisner & Severance, "Mathematical techniques for
// efficient record segmentation in large shared databases", JACM 1976). Take
// L optimal at x_L and R optimal at x_R > x_L. If they are not the same line,
// they cross at x* = (a_R - a_L) / (b_L - b_R) in [x_L, x_R]. Solve at x*:
// if the optimum M is strictly below L(x*) = R(x*), M is a new envelope piece
// and the search recurses on (L, M) and (M, R); otherwise L and R are adjacent
// on the envelope (a line below the envelope between them would lie below
// min(L, R) at the corner x*, which is where that minimum is largest). Each
// solve either finds a new piece or proves one crossing, so with the two
// seeds the search makes 2 + (K - 2) + (K - 1) = 2K - 1 solves (one when the
// first seed is already flat: K = 1). That count assumes each seed is the
// envelope's end piece. At the extreme bandwidths a fixed-point solver
// cannot see the small term (b * x at x -> 0, a at x -> inf), so among
// partitions with exactly equal compute (e.g. through zero-cost layers) or
// equal traffic it may return a seed that is off the envelope; the search
// then meets the true end piece at the first crossing and drops the seed,
// one extra solve per end: at most 2K + 1 in all.
//
// This header knows nothing about graphs: search.hpp runs the search with a
// Graph's min cut as the oracle, for the plan (plan.hpp) and for the blocks of
// the compression (compress.hpp).
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "cic/status.hpp"

namespace cic {

// latency(x) = a + b * x with x = 1 / bandwidth in seconds per bit.
struct Line {
  double a = 0.0;  // seconds: device + server (+ rtt when offloading)
  double b = 0.0;  // bits sent: 8 * bytes_sent
};

inline long double LineAt(const Line& l, long double x) {
  return static_cast<long double>(l.a) + static_cast<long double>(l.b) * x;
}

// The lower envelope over x in (0, inf) of `lines`. Writes the indices of
// its pieces in order of increasing x (decreasing b) into `pieces` and the
// K - 1 crossing points between consecutive pieces into `cross_x`
// (increasing). Of identical lines the lowest index is kept; a line that is
// optimal at a single point only is dropped. Products are formed in long
// double from exact differences where the exponents allow.
inline void LowerEnvelope(const std::vector<Line>& lines, std::vector<int32_t>* pieces,
                          std::vector<double>* cross_x) {
  std::vector<int32_t> order(lines.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t i, int32_t j) {
    if (lines[i].b != lines[j].b) return lines[i].b > lines[j].b;
    return lines[i].a < lines[j].a;
  });
  std::vector<int32_t>& st = *pieces;
  st.clear();
  for (int32_t l : order) {
    const Line& L = lines[l];
    if (!st.empty() && lines[st.back()].b == L.b) continue;  // same slope, not lower
    // A previous line with a larger slope and no smaller intercept is above
    // L for every x > 0.
    while (!st.empty() && lines[st.back()].a >= L.a) st.pop_back();
    while (st.size() >= 2) {
      const Line& P = lines[st[st.size() - 2]];
      const Line& T = lines[st.back()];
      // T is useless if L crosses P no later than T does:
      // (a_L - a_P) / (b_P - b_L) <= (a_T - a_P) / (b_P - b_T).
      const long double lhs = (static_cast<long double>(L.a) - P.a) *
                              (static_cast<long double>(P.b) - T.b);
      const long double rhs = (static_cast<long double>(T.a) - P.a) *
                              (static_cast<long double>(P.b) - L.b);
      if (lhs <= rhs) {
        st.pop_back();
      } else {
        break;
      }
    }
    st.push_back(l);
  }
  cross_x->clear();
  for (size_t i = 0; i + 1 < st.size(); ++i) {
    const Line& P = lines[st[i]];
    const Line& Q = lines[st[i + 1]];
    cross_x->push_back(static_cast<double>((static_cast<long double>(Q.a) - P.a) /
                                           (static_cast<long double>(P.b) - Q.b)));
  }
}

// Eisner-Severance search on an oracle over x in [x_lo, x_hi]. `solve(x,
// &line, &id)` returns the optimum at x = 1 / bandwidth as its line and an id
// naming the partition (equal partitions, equal ids). Collects the ids and
// lines of every partition the search met (possibly some off the final
// envelope: run LowerEnvelope on them) and counts the solves.
template <class Oracle>
Result SearchEnvelope(Oracle& solve, double x_lo, double x_hi, std::vector<Line>* lines,
                      std::vector<int32_t>* ids, int32_t* num_solves) {
  struct Found {
    Line line;
    int32_t id;
    double x;
  };
  std::vector<Found> found;
  *num_solves = 0;
  auto run = [&](double x, Found* f) -> Result {
    ++*num_solves;
    f->x = x;
    return solve(x, &f->line, &f->id);
  };
  Found lo, hi;
  Result r = run(x_lo, &lo);
  if (!r.ok()) return r;
  found.push_back(lo);
  if (lo.line.b == 0.0) {
    // A flat line optimal at x_lo stays optimal for every larger x (every
    // line has b >= 0): K = 1 after one solve.
    lines->assign(1, lo.line);
    ids->assign(1, lo.id);
    return Result::Ok();
  }
  r = run(x_hi, &hi);
  if (!r.ok()) return r;
  if (hi.id != lo.id) found.push_back(hi);
  std::vector<std::pair<int32_t, int32_t>> todo;
  if (found.size() == 2) todo.push_back({0, 1});
  while (!todo.empty()) {
    const auto [li, ri] = todo.back();
    todo.pop_back();
    const Found L = found[li], R = found[ri];
    const long double db = static_cast<long double>(L.line.b) - R.line.b;
    if (!(db > 0)) continue;  // not crossing from above in (x_L, x_R)
    const double x = static_cast<double>((static_cast<long double>(R.line.a) - L.line.a) / db);
    if (!(x > L.x && x < R.x) || !std::isfinite(1.0 / x)) continue;
    Found M;
    r = run(x, &M);
    if (!r.ok()) return r;
    if (M.id == L.id || M.id == R.id) continue;
    const long double at_l = LineAt(L.line, x), at_m = LineAt(M.line, x);
    const long double tol = 8.0L * DBL_EPSILON *
                            (std::fabs(at_l) + std::fabs(at_m) + L.line.a + M.line.a);
    if (!(at_m < at_l - tol)) continue;  // L and R meet on the envelope
    found.push_back(M);
    const int32_t mi = static_cast<int32_t>(found.size()) - 1;
    todo.push_back({mi, ri});
    todo.push_back({li, mi});
  }
  lines->clear();
  ids->clear();
  for (const Found& f : found) {
    lines->push_back(f.line);
    ids->push_back(f.id);
  }
  return Result::Ok();
}

}  // namespace cic

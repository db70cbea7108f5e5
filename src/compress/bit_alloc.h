// Bit allocation as an integer linear program solved by GLPK (MC-MoE's PMQ, techniques.md section 6):
// every item (an expert, or a (layer, projection) tensor) gets exactly one candidate type, the total bytes
// stay within the budget (and within each group's budget when groups have their own), and the summed cost
// is minimal. The caller builds the costs, e.g. PMQ's f^a * w^b * Q(b).
//
// The budget is never exceeded: the solver's answer is re-checked in exact integer bytes and, should
// GLPK's tolerances have let it past the budget, the cheapest downgrades are applied until it fits.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace moe::compress {

struct AllocItem {
  std::string name;              // for messages, e.g. "blk.3 expert 7"
  std::vector<double> cost;      // per candidate; +infinity = not allowed (e.g. a row length the type can't hold)
  std::vector<uint64_t> bytes;   // per candidate
  int forced = -1;               // a candidate this item must take (super experts: the highest precision)
  int group = -1;                // index into group_budgets, or -1
};

struct AllocProblem {
  std::vector<AllocItem> items;
  uint64_t budget = 0;                 // bytes, over all items
  std::vector<uint64_t> group_budgets; // optional, bytes per group (e.g. per layer)
  double time_limit_s = 60;
};

struct AllocResult {
  std::vector<int> choice;  // candidate index per item
  double cost = 0;
  uint64_t bytes = 0;
  bool optimal = false;     // proven optimal (false: the best found within the time limit)
  int repairs = 0;          // downgrades applied after the solver to stay within the budget
};

// Throws naming the budget when no allocation fits (the smallest possible one is reported), or an item
// without an allowed candidate.
AllocResult solve_allocation(const AllocProblem& p);

// The smallest total any allocation can reach (forced items included).
uint64_t min_allocation_bytes(const AllocProblem& p);

inline constexpr double kNotAllowed = std::numeric_limits<double>::infinity();

}  // namespace moe::compress

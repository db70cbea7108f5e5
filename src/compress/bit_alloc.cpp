#include "compress/bit_alloc.h"

#include <glpk.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "base/error.h"

namespace moe::compress {

namespace {

bool allowed(const AllocItem& it, size_t c) {
  return std::isfinite(it.cost[c]) && (it.forced < 0 || static_cast<int>(c) == it.forced);
}

void check_items(const AllocProblem& p) {
  for (const AllocItem& it : p.items) {
    if (it.cost.size() != it.bytes.size() || it.cost.empty())
      fail("bit allocation: item '{}': {} costs for {} byte sizes", it.name, it.cost.size(), it.bytes.size());
    if (it.forced >= static_cast<int>(it.cost.size()))
      fail("bit allocation: item '{}': forced candidate {} of {}", it.name, it.forced, it.cost.size());
    if (it.group >= static_cast<int>(p.group_budgets.size()))
      fail("bit allocation: item '{}': group {} without a budget", it.name, it.group);
    bool any = false;
    for (size_t c = 0; c < it.cost.size(); ++c) any |= allowed(it, c);
    if (!any) fail("bit allocation: item '{}' has no allowed type", it.name);
  }
}

int smallest_allowed(const AllocItem& it) {
  int best = -1;
  for (size_t c = 0; c < it.cost.size(); ++c)
    if (allowed(it, c) && (best < 0 || it.bytes[c] < it.bytes[best])) best = static_cast<int>(c);
  return best;
}

struct GlpDeleter {
  void operator()(glp_prob* p) const { glp_delete_prob(p); }
};

// GLPK prints to stdout by default; a library must not.
int silent(void*, const char*) { return 1; }

}  // namespace

uint64_t min_allocation_bytes(const AllocProblem& p) {
  check_items(p);
  uint64_t total = 0;
  for (const AllocItem& it : p.items) total += it.bytes[smallest_allowed(it)];
  return total;
}

AllocResult solve_allocation(const AllocProblem& p) {
  check_items(p);
  const uint64_t min_total = min_allocation_bytes(p);
  if (min_total > p.budget)
    fail("bit allocation: the budget of {} bytes is below the smallest allocation the candidate types allow ({} "
         "bytes)",
         p.budget, min_total);
  std::vector<uint64_t> group_min(p.group_budgets.size(), 0);
  for (const AllocItem& it : p.items)
    if (it.group >= 0) group_min[it.group] += it.bytes[smallest_allowed(it)];
  for (size_t g = 0; g < group_min.size(); ++g)
    if (group_min[g] > p.group_budgets[g])
      fail("bit allocation: group {}: the budget of {} bytes is below its smallest allocation ({} bytes)", g,
           p.group_budgets[g], group_min[g]);

  glp_term_hook(silent, nullptr);
  std::unique_ptr<glp_prob, GlpDeleter> lp(glp_create_prob());
  glp_set_obj_dir(lp.get(), GLP_MIN);
  // Costs are shifted per item (subtracting its cheapest allowed cost) so the objective's terms stay
  // comparable in size; the choice is unchanged since every item takes exactly one candidate.
  std::vector<std::vector<int>> col(p.items.size());
  for (size_t i = 0; i < p.items.size(); ++i) {
    const AllocItem& it = p.items[i];
    double base = kNotAllowed;
    for (size_t c = 0; c < it.cost.size(); ++c)
      if (allowed(it, c)) base = std::min(base, it.cost[c]);
    col[i].assign(it.cost.size(), 0);
    for (size_t c = 0; c < it.cost.size(); ++c) {
      if (!allowed(it, c)) continue;
      const int j = glp_add_cols(lp.get(), 1);
      glp_set_col_kind(lp.get(), j, GLP_BV);
      glp_set_obj_coef(lp.get(), j, it.cost[c] - base);
      col[i][c] = j;
    }
  }
  std::vector<int> ia{0}, ja{0};
  std::vector<double> ar{0};
  // One candidate per item.
  for (size_t i = 0; i < p.items.size(); ++i) {
    const int r = glp_add_rows(lp.get(), 1);
    glp_set_row_bnds(lp.get(), r, GLP_FX, 1, 1);
    for (int j : col[i])
      if (j) ia.push_back(r), ja.push_back(j), ar.push_back(1);
  }
  // The budgets (bytes; integers below 2^53 are exact in doubles).
  auto budget_row = [&](double budget, int group) {
    const int r = glp_add_rows(lp.get(), 1);
    glp_set_row_bnds(lp.get(), r, GLP_UP, 0, budget);
    for (size_t i = 0; i < p.items.size(); ++i) {
      if (group >= 0 && p.items[i].group != group) continue;
      for (size_t c = 0; c < col[i].size(); ++c)
        if (col[i][c]) ia.push_back(r), ja.push_back(col[i][c]), ar.push_back(static_cast<double>(p.items[i].bytes[c]));
    }
  };
  budget_row(static_cast<double>(p.budget), -1);
  for (size_t g = 0; g < p.group_budgets.size(); ++g) budget_row(static_cast<double>(p.group_budgets[g]), static_cast<int>(g));
  glp_load_matrix(lp.get(), static_cast<int>(ia.size()) - 1, ia.data(), ja.data(), ar.data());

  glp_iocp parm;
  glp_init_iocp(&parm);
  parm.presolve = GLP_ON;
  parm.msg_lev = GLP_MSG_OFF;
  parm.tm_lim = static_cast<int>(std::max(1.0, p.time_limit_s) * 1000);
  parm.mip_gap = 1e-9;
  const int rc = glp_intopt(lp.get(), &parm);
  const int status = glp_mip_status(lp.get());
  AllocResult res;
  res.choice.assign(p.items.size(), -1);
  if ((rc == 0 || rc == GLP_ETMLIM || rc == GLP_EMIPGAP) && (status == GLP_OPT || status == GLP_FEAS)) {
    res.optimal = rc == 0 && status == GLP_OPT;
    for (size_t i = 0; i < p.items.size(); ++i) {
      double best = -1;
      for (size_t c = 0; c < col[i].size(); ++c)
        if (col[i][c] && glp_mip_col_val(lp.get(), col[i][c]) > best) {
          best = glp_mip_col_val(lp.get(), col[i][c]);
          res.choice[i] = static_cast<int>(c);
        }
    }
  } else {
    // No integer solution within the time limit: start from the smallest allocation (which fits) and
    // let the repair below do nothing; this is the feasible fallback, not an optimum.
    for (size_t i = 0; i < p.items.size(); ++i) res.choice[i] = smallest_allowed(p.items[i]);
  }

  // Exact check; downgrade (to a smaller allowed candidate) where it costs least per byte saved.
  auto total_bytes = [&](int group) {
    uint64_t b = 0;
    for (size_t i = 0; i < p.items.size(); ++i)
      if (group < 0 || p.items[i].group == group) b += p.items[i].bytes[res.choice[i]];
    return b;
  };
  auto repair = [&](int group, uint64_t budget) {
    while (total_bytes(group) > budget) {
      double best_rate = kNotAllowed;
      size_t bi = 0;
      int bc = -1;
      for (size_t i = 0; i < p.items.size(); ++i) {
        if (group >= 0 && p.items[i].group != group) continue;
        const AllocItem& it = p.items[i];
        for (size_t c = 0; c < it.cost.size(); ++c) {
          if (!allowed(it, c) || it.bytes[c] >= it.bytes[res.choice[i]]) continue;
          const double rate = (it.cost[c] - it.cost[res.choice[i]]) /
                              static_cast<double>(it.bytes[res.choice[i]] - it.bytes[c]);
          if (rate < best_rate) best_rate = rate, bi = i, bc = static_cast<int>(c);
        }
      }
      if (bc < 0) fail("bit allocation: internal error: cannot fit the budget after solving");
      res.choice[bi] = bc;
      ++res.repairs;
      res.optimal = false;
    }
  };
  for (size_t g = 0; g < p.group_budgets.size(); ++g) repair(static_cast<int>(g), p.group_budgets[g]);
  repair(-1, p.budget);
  res.bytes = total_bytes(-1);
  for (size_t i = 0; i < p.items.size(); ++i) res.cost += p.items[i].cost[res.choice[i]];
  return res;
}

}  // namespace moe::compress

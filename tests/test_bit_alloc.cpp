// The GLPK bit-allocation ILP (compress/bit_alloc.h) on cases checkable by hand and against brute force;
// budgets are never exceeded.
#include <gtest/gtest.h>

#include <random>

#include "base/error.h"
#include "compress/bit_alloc.h"

namespace moe::compress {
namespace {

// Two candidates per item: small (2 bits) and large (4 bits), bytes 10 and 20.
AllocItem item(const std::string& name, double cost_small, double cost_large) {
  return AllocItem{name, {cost_small, cost_large}, {10, 20}};
}

TEST(BitAlloc, UpgradesWhereTheErrorDropsMost) {
  AllocProblem p;
  p.items = {item("a", 5, 1), item("b", 9, 1), item("c", 2, 1)};
  p.budget = 40;  // room for exactly one upgrade
  const AllocResult r = solve_allocation(p);
  EXPECT_EQ(r.choice, (std::vector<int>{0, 1, 0}));  // b gains 8, a 4, c 1
  EXPECT_EQ(r.bytes, 40u);
  EXPECT_DOUBLE_EQ(r.cost, 5 + 1 + 2);
  EXPECT_TRUE(r.optimal);
  p.budget = 50;  // two upgrades: b and a
  EXPECT_EQ(solve_allocation(p).choice, (std::vector<int>{1, 1, 0}));
  p.budget = 1000;  // everything at the large type
  EXPECT_EQ(solve_allocation(p).choice, (std::vector<int>{1, 1, 1}));
}

TEST(BitAlloc, KnapsackIsNotGreedy) {
  // Budget 30 above the minimum of 3 x 10: one upgrade to 40 bytes (gain 10) or two to 25 (gain 6 + 6).
  AllocProblem p;
  p.items = {AllocItem{"a", {20, 10}, {10, 40}}, AllocItem{"b", {10, 4}, {10, 25}}, AllocItem{"c", {10, 4}, {10, 25}}};
  p.budget = 60;
  const AllocResult r = solve_allocation(p);
  EXPECT_EQ(r.choice, (std::vector<int>{0, 1, 1}));  // cost 28; upgrading a alone (the largest gain) costs 30
  EXPECT_LE(r.bytes, p.budget);
}

TEST(BitAlloc, ForcedAndDisallowedCandidates) {
  AllocProblem p;
  p.items = {item("super", 100, 50), item("b", 9, 1)};
  p.items[0].forced = 1;                    // a super expert keeps the highest precision
  p.items[1].cost[1] = kNotAllowed;          // e.g. a row length the type cannot hold
  p.budget = 30;
  const AllocResult r = solve_allocation(p);
  EXPECT_EQ(r.choice, (std::vector<int>{1, 0}));
  p.budget = 29;
  try {
    solve_allocation(p);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("budget of 29 bytes is below the smallest allocation"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("(30 bytes)"), std::string::npos) << e.what();
  }
}

TEST(BitAlloc, GroupBudgets) {
  AllocProblem p;
  p.items = {item("l0.a", 9, 1), item("l0.b", 8, 1), item("l1.a", 2, 1), item("l1.b", 2, 1)};
  for (int i = 0; i < 4; ++i) p.items[i].group = i / 2;
  p.group_budgets = {30, 30};  // one upgrade per layer, although layer 0 would gain more from two
  p.budget = 60;
  const AllocResult r = solve_allocation(p);
  EXPECT_EQ(r.choice[0] + r.choice[1], 1);
  EXPECT_EQ(r.choice[0], 1);
  EXPECT_EQ(r.choice[2] + r.choice[3], 1);
}

TEST(BitAlloc, MatchesBruteForceAndNeverExceedsTheBudget) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    AllocProblem p;
    const int n = 2 + static_cast<int>(rng() % 5), m = 2 + static_cast<int>(rng() % 3);
    for (int i = 0; i < n; ++i) {
      AllocItem it;
      it.name = "item" + std::to_string(i);
      uint64_t bytes = 5 + rng() % 10;
      double cost = 100.0 * static_cast<double>(rng() % 1000) / 1000.0 + 1;
      for (int c = 0; c < m; ++c) {
        it.bytes.push_back(bytes);
        it.cost.push_back(cost);
        bytes += 1 + rng() % 17;
        cost *= static_cast<double>(rng() % 900) / 1000.0;
      }
      p.items.push_back(it);
    }
    const uint64_t lo = min_allocation_bytes(p);
    p.budget = lo + rng() % 60;
    double best = kNotAllowed;
    std::vector<int> idx(n, 0);
    for (;;) {  // every combination
      uint64_t b = 0;
      double c = 0;
      for (int i = 0; i < n; ++i) b += p.items[i].bytes[idx[i]], c += p.items[i].cost[idx[i]];
      if (b <= p.budget) best = std::min(best, c);
      int i = 0;
      while (i < n && ++idx[i] == m) idx[i++] = 0;
      if (i == n) break;
    }
    const AllocResult r = solve_allocation(p);
    EXPECT_LE(r.bytes, p.budget) << "trial " << trial;
    EXPECT_NEAR(r.cost, best, 1e-9 * std::max(1.0, best)) << "trial " << trial;
  }
}

TEST(BitAlloc, RejectsMalformedItems) {
  AllocProblem p;
  p.items = {AllocItem{"x", {1, 2}, {10}}};
  p.budget = 100;
  EXPECT_THROW(solve_allocation(p), Error);
  p.items = {AllocItem{"x", {kNotAllowed, kNotAllowed}, {10, 20}}};
  EXPECT_THROW(solve_allocation(p), Error);
  p.items = {item("x", 1, 2)};
  p.items[0].group = 3;
  EXPECT_THROW(solve_allocation(p), Error);
}

}  // namespace
}  // namespace moe::compress

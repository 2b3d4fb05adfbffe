// The serving scheduler's decisions (rules/serving.hpp): admission by the packed KV
// projection, FIFO waiting, preemption of the last admitted row by cost.
#include <gtest/gtest.h>

#include "memscale/core/rules/serving.hpp"

namespace {

using namespace memscale::serving;

ServingState state(double flops_per_token) {
  ServingState s;
  s.budget_bytes = 40000;
  s.weight_bytes = 1000;
  s.projection = "next_step";
  s.models.push_back({1000, 2, 100, 100, flops_per_token});
  for (std::int64_t i = 0; i < 3; ++i) s.running.push_back({i, 0, 10, 5, 40, false, false});
  return s;
}

TEST(Serving, ProjectionIsPackedKvPlusTheStepWorkingSet) {
  ServingState s = state(1.0);
  s.running[1].tokens = 20;  // packed: each row at its own length after the step, 11 + 21 + 11 tokens
  EXPECT_EQ(serving_detail::projected_peak(s, s.running), 1000u + 43u * 1000u + (3u * 100u + 43u * 1000u / 2u));
  s.models[0].attention_bytes_per_column = 7, s.models[0].attention_bytes_per_pair = 3;
  ServingRequest joining{9, 0, 0, 4, 20, false, false};  // joins: its 4 prompt tokens are fed with the 3 rows
  s.running.push_back(joining);
  EXPECT_EQ(serving_detail::projected_peak(s, s.running),
            1000u + 47u * 1000u + (3u * 100u + 4u * 100u + 47u * 1000u / 2u + 47u * 7u + 7u * 47u * 3u));
}

TEST(Serving, PreemptsTheLastAdmittedByCost) {
  const memscale::Hardware cpu;  // no GPU: the next tier is disk
  const auto recompute = decide_iteration(state(1.0), cpu);
  ASSERT_EQ(recompute.actions.size(), 1u);
  EXPECT_EQ(recompute.actions[0].rule, "serving.preempt_recompute");
  EXPECT_EQ(recompute.actions[0].id, 2);
  EXPECT_LE(recompute.projected_bytes, 40000u);
  const auto swap = decide_iteration(state(1e12), cpu);
  ASSERT_EQ(swap.actions.size(), 1u);
  EXPECT_EQ(swap.actions[0].rule, "serving.preempt_swap");
  EXPECT_NE(swap.actions[0].reason.find("to disk and back"), std::string::npos);
}

TEST(Serving, AdmitsInOrderAndTheFirstThatDoesNotFitWaitsWithEveryoneBehind) {
  ServingState s = state(1.0);
  s.running.clear();
  s.projection = "max_length";
  s.queued = {{0, 0, 0, 5, 9, false, false}, {1, 0, 0, 5, 30, false, false}, {2, 0, 0, 2, 3, false, false}};
  const auto d = decide_iteration(s, memscale::Hardware{});
  ASSERT_EQ(d.actions.size(), 2u);
  EXPECT_EQ(d.actions[0].rule, "serving.admit");
  EXPECT_EQ(d.actions[1].rule, "serving.wait_memory");
  EXPECT_EQ(d.actions[1].id, 1);
  EXPECT_GT(d.actions[1].projected_bytes, s.budget_bytes);
  s.max_batch = 1;
  s.queued[1].max_tokens = 9;
  const auto full = decide_iteration(s, memscale::Hardware{});
  EXPECT_EQ(full.actions.back().rule, "serving.batch_full");
  s.projection = "sometimes";
  EXPECT_THROW(decide_iteration(s, memscale::Hardware{}), memscale::ConfigError);
}

}  // namespace

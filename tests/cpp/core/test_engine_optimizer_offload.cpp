// Optimizer offload (rules/optimizer_offload.hpp): a training plan keeps the optimizer
// state, then the gradients, on the next tier only when no plan of per-layer techniques fits.
#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

// Weight offload off, as wrap plans training today: the static floor is weights + grads +
// optimizer state + workspace.
const std::string kNoWeights = R"("techniques": {"offload_weights": "off"})";

ModelGraph offloadable(ModelGraph g) {
  g.optimizer_offloadable = true;
  return g;
}

TEST(OptimizerOffload, PlansAreUnchangedWhereTheBudgetDoesNotNeedIt) {
  const Hardware hw = fixture_hardware("cpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  const std::uint64_t floor = min_budget(g, hw, kNoWeights);
  for (const std::uint64_t budget : {floor, floor + floor / 10, unoptimized_peak(g, hw)}) {
    const Plan resident = plan(g, hw, budget_config(budget, kNoWeights));
    const Plan p = plan(offloadable(g), hw, budget_config(budget, kNoWeights));
    EXPECT_EQ(p.to_json_text(), resident.to_json_text()) << budget;
    EXPECT_TRUE(p.optimizer_offload.kinds.empty());
  }
}

TEST(OptimizerOffload, StateThenGradientsBelowTheStaticFloor) {
  const Hardware hw = fixture_hardware("cpu_24gib.json");
  const ModelGraph g = offloadable(fixture_graph("gpt2_small_train.json"));
  const std::uint64_t floor = min_budget(fixture_graph("gpt2_small_train.json"), hw, kNoWeights);
  const std::uint64_t reach = min_budget(g, hw, kNoWeights);
  std::uint64_t state = 0, grads = 0;
  for (const auto& l : g.layers) state += l.optimizer_bytes, grads += l.grad_bytes;
  // At most the state and the gradients come off the floor (less the windows they need).
  EXPECT_LT(reach, floor);
  EXPECT_GT(reach, floor - state - grads);

  const Plan just_below = plan(g, hw, budget_config(floor - 1, kNoWeights));
  EXPECT_EQ(just_below.optimizer_offload.kinds, "state");
  EXPECT_EQ(just_below.optimizer_offload.rule, "optimizer_offload.state");
  EXPECT_EQ(just_below.optimizer_offload.tier, "disk");
  EXPECT_EQ(just_below.optimizer_offload.moved_bytes, state);
  EXPECT_LE(just_below.predicted_peak_bytes, floor - 1);
  EXPECT_NE(just_below.trace.back().find("per GiB saved"), std::string::npos) << just_below.trace.back();

  // At the minimum, the level that reaches it (on GPT-2 the state alone: the gradients'
  // windows in flight in backward cost what moving them saves there).
  const Plan lowest = plan(g, hw, budget_config(reach, kNoWeights));
  const bool gradients = lowest.optimizer_offload.kinds == "state+gradients";
  ASSERT_TRUE(gradients || lowest.optimizer_offload.kinds == "state") << lowest.optimizer_offload.kinds;
  EXPECT_EQ(lowest.optimizer_offload.moved_bytes, state + (gradients ? grads : 0));
  EXPECT_LE(lowest.predicted_peak_bytes, reach);
  // The plan's predicted peak is the memory model's with the offload applied.
  model::StepContext ctx = engine_detail::make_setup(g, hw, budget_config(reach, kNoWeights), {}).step;
  const rules::OptimizerOffload o = rules::optimizer_offload_rule(
      g, ctx, cost::rates_of(hw), cost::capacities_of(hw), gradients);
  ASSERT_TRUE(o.applies) << o.reason;
  rules::apply_optimizer_offload(o, ctx);
  EXPECT_EQ(model::evaluate(g, engine_detail::plan_states(lowest), ctx).peak, lowest.predicted_peak_bytes);
  const Plan again = Plan::from_json_text(lowest.to_json_text());
  EXPECT_EQ(again.optimizer_offload, lowest.optimizer_offload);
  EXPECT_EQ(again.to_json_text(), lowest.to_json_text());
}

TEST(OptimizerOffload, TrackerAgreesWithTheModel) {
  const Hardware hw = fixture_hardware("cpu_24gib.json");
  const ModelGraph g = offloadable(fixture_graph("gpt2_small_train.json"));
  model::StepContext ctx = engine_detail::make_setup(g, hw, budget_config(1ull << 40), {}).step;
  rules::apply_optimizer_offload(
      rules::optimizer_offload_rule(g, ctx, cost::rates_of(hw), cost::capacities_of(hw), true), ctx);
  std::vector<model::LayerState> states(g.layers.size());
  model::TrainingTracker tracker(g, ctx, states);
  EXPECT_EQ(static_cast<std::uint64_t>(tracker.peak().value), model::evaluate(g, states, ctx).peak);
  for (std::size_t l = 0; l < states.size(); l += 2) {
    states[l].checkpoint = true;
    tracker.set(l, states[l]);
    EXPECT_EQ(static_cast<std::uint64_t>(tracker.peak().value), model::evaluate(g, states, ctx).peak) << l;
  }
}

TEST(OptimizerOffload, RulesSayWhyNot) {
  const Hardware hw = fixture_hardware("cpu_24gib.json");
  ModelGraph g = fixture_graph("gpt2_small_train.json");
  const model::StepContext ctx = engine_detail::make_setup(g, hw, budget_config(1ull << 40), {}).step;
  const auto rule = [&](const ModelGraph& graph, const cost::TierCapacity& cap) {
    return rules::optimizer_offload_rule(graph, ctx, cost::rates_of(hw), cap, false);
  };
  EXPECT_EQ(rule(g, cost::capacities_of(hw)).rule, "optimizer_offload.not_offloadable");
  g.optimizer_offloadable = true;
  cost::TierCapacity small;
  small.disk = 1;
  small.disk_known = true;
  const rules::OptimizerOffload full = rule(g, small);
  EXPECT_FALSE(full.applies);
  EXPECT_EQ(full.rule, "optimizer_offload.tier_full");
  // Refused with the offload's own minimum when even it cannot fit.
  try {
    plan(g, hw, budget_config(1, kNoWeights));
    FAIL() << "1 byte was accepted";
  } catch (const InfeasibleBudgetError& e) {
    EXPECT_EQ(e.min_budget_bytes(), min_budget(g, hw, kNoWeights));
    EXPECT_LT(e.min_budget_bytes(), min_budget(fixture_graph("gpt2_small_train.json"), hw, kNoWeights));
  }
}

}  // namespace
}  // namespace memscale::test

// Training weight paging (optimizer offload level 3, rules/optimizer_offload.hpp): with the
// optimizer state and gradients offloaded, the greedy may page single layers' weights
// (offload_weights.last_resort, cost per byte saved); never at levels 0-2.
#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

/// Weight offload switched off: the plans of levels 0-2.
const std::string kNoWeights = R"("techniques": {"offload_weights": "off"})";

/// GPT-2 small (tests/data/graphs), its optimizer streamed by the runtime.
ModelGraph paging_graph() {
  ModelGraph g = fixture_graph("gpt2_small_train.json");
  g.optimizer_offloadable = true;
  return g;
}

std::size_t paged_layers(const Plan& p) {
  std::size_t n = 0;
  for (const auto& l : p.layers) n += l.has("offload_weights") ? 1 : 0;
  return n;
}

std::string techniques(const Plan& p) {
  std::string out;
  for (const auto& l : p.layers) {
    out += l.name + ":";
    for (const auto& t : l.techniques) out += t + ",";
    out += std::to_string(l.tile_chunks) + ";";
  }
  return out;
}

TEST(WeightPaging, LevelsZeroToTwoNeverPageWeights) {
  const Hardware hw = fixture_hardware("cpu_24gib.json");
  const ModelGraph g = paging_graph();
  const std::uint64_t level2 = min_budget(g, hw, kNoWeights);
  // Every budget the plan without weight paging fits: the same techniques, peak and
  // optimizer offload as with weight offload switched off.
  for (const std::uint64_t budget : {level2, level2 + level2 / 20, level2 + level2 / 2, unoptimized_peak(g, hw)}) {
    const Plan without = plan(g, hw, budget_config(budget, kNoWeights));
    const Plan p = plan(g, hw, budget_config(budget));
    EXPECT_EQ(paged_layers(p), 0u) << budget;
    EXPECT_EQ(techniques(p), techniques(without)) << budget;
    EXPECT_EQ(p.predicted_peak_bytes, without.predicted_peak_bytes) << budget;
    EXPECT_EQ(p.optimizer_offload, without.optimizer_offload) << budget;
    for (const auto& l : g.layers)
      if (l.param_bytes > 0) {
        bool said = false;
        for (const auto& r : p.rejected)
          said |= r.layer == l.name && r.technique == "offload_weights" && r.rule == "offload_weights.after_optimizer_offload";
        EXPECT_TRUE(said) << l.name;
      }
  }
}

TEST(WeightPaging, LevelThreeReachesBelowTheOffloadedFloor) {
  const Hardware hw = fixture_hardware("cpu_24gib.json");
  const ModelGraph g = paging_graph();
  const std::uint64_t level2 = min_budget(g, hw, kNoWeights);
  const std::uint64_t reach = min_budget(g, hw);
  std::uint64_t weights = 0;
  for (const auto& l : g.layers) weights += l.param_bytes + l.buffer_bytes;
  EXPECT_LT(reach, level2);
  EXPECT_GT(reach, level2 - weights);

  for (const std::uint64_t budget : {level2 - 1, reach}) {
    const Plan p = plan(g, hw, budget_config(budget));
    EXPECT_TRUE(p.optimizer_offload.rule == "optimizer_offload.weights" ||
                p.optimizer_offload.rule == "optimizer_offload.serial_step")
        << budget << " " << p.optimizer_offload.rule;
    EXPECT_EQ(p.optimizer_offload.kinds, "state+gradients");
    EXPECT_NE(p.optimizer_offload.reason.find("page their weights"), std::string::npos) << p.optimizer_offload.reason;
    EXPECT_LE(p.predicted_peak_bytes, budget);
    EXPECT_GT(paged_layers(p), 0u);
    EXPECT_EQ(p.offload.policy, "budget");
    for (const auto& l : p.layers) {
      if (!l.has("offload_weights")) continue;
      EXPECT_EQ(l.weight_tier, "disk") << l.name;
      bool decided = false;
      for (const auto& r : l.rules) decided |= r == "offload_weights.last_resort";
      EXPECT_TRUE(decided) << l.name;
    }
    // Deterministic, and the JSON round-trips.
    EXPECT_EQ(plan(g, hw, budget_config(budget)).to_json_text(), p.to_json_text());
    EXPECT_EQ(Plan::from_json_text(p.to_json_text()).to_json_text(), p.to_json_text());
  }
  EXPECT_EQ(plan(g, hw, budget_config(level2 - 1)).optimizer_offload.rule, "optimizer_offload.weights");
  // Just below level 2's floor a few layers are enough; at the minimum more are paged.
  EXPECT_LE(paged_layers(plan(g, hw, budget_config(level2 - 1))), paged_layers(plan(g, hw, budget_config(reach))));
}

TEST(WeightPaging, TheStepHoldsOnePagedLayer) {
  const Hardware hw = fixture_hardware("cpu_24gib.json");
  const ModelGraph g = paging_graph();
  const model::StepContext ctx = engine_detail::make_setup(g, hw, budget_config(1ull << 40), {}).step;
  const auto level = [&](bool gradients, bool weights) {
    return rules::optimizer_offload_rule(g, ctx, cost::rates_of(hw), cost::capacities_of(hw), gradients, weights);
  };
  std::uint64_t largest = 0;
  for (const auto& l : g.layers) largest = std::max(largest, l.param_bytes + l.buffer_bytes);
  const rules::OptimizerOffload two = level(true, false), three = level(false, true);
  ASSERT_TRUE(three.applies) << three.reason;
  EXPECT_TRUE(three.gradients);  // level 3 includes level 2
  EXPECT_EQ(three.rule, "optimizer_offload.weights");
  EXPECT_EQ(three.window_bytes, two.window_bytes + (1 + ctx.prefetch_n_ahead) * largest);
  EXPECT_EQ(three.moved_bytes, two.moved_bytes);
  // Level 4: one window of state and gradient instead of three.
  const rules::OptimizerOffload four =
      rules::optimizer_offload_rule(g, ctx, cost::rates_of(hw), cost::capacities_of(hw), false, false, true);
  ASSERT_TRUE(four.applies) << four.reason;
  EXPECT_TRUE(four.weights && four.gradients && four.serial);
  EXPECT_EQ(four.rule, "optimizer_offload.serial_step");
  const std::uint64_t w = rules::largest_trainable_tensor(g), factor = optimizer_state_factor(g.optimizer);
  EXPECT_EQ(three.window_bytes - four.window_bytes, 2 * (factor * w + w));

  // The incremental tracker and the full model agree with layers paged.
  model::StepContext step = ctx;
  rules::apply_optimizer_offload(three, step);
  std::vector<model::LayerState> states(g.layers.size());
  model::TrainingTracker tracker(g, step, states);
  for (std::size_t l = 0; l < states.size(); ++l) {
    states[l].offload_weights = l % 2 == 0;
    states[l].checkpoint = l % 3 == 0;
    tracker.set(l, states[l]);
    EXPECT_EQ(static_cast<std::uint64_t>(tracker.peak().value), model::evaluate(g, states, step).peak) << l;
  }
}

TEST(WeightPaging, NotOffloadableGraphsAreUnchanged) {
  const Hardware hw = fixture_hardware("cpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  // Without a runtime that streams the optimizer, weight offload in training plans as before
  // (the engine's own model); the minimum does not depend on optimizer offload.
  const Plan p = plan(g, hw, budget_config(min_budget(g, hw)));
  EXPECT_TRUE(p.optimizer_offload.kinds.empty());
  for (const auto& r : p.rejected) EXPECT_NE(r.rule, "offload_weights.after_optimizer_offload") << r.layer;
}

}  // namespace
}  // namespace memscale::test

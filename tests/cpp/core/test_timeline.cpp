// The predicted timeline of a training step: its maxima are the plan's peaks, its order is
// the step's, and inputs that are not the plan's are refused.
#include "engine_fixtures.hpp"
#include "memscale/core/timeline.hpp"

namespace memscale::test {
namespace {

/// A plan with techniques: half the unoptimized peak, or the smallest budget that fits.
Plan squeezed_plan(const ModelGraph& g, const Hardware& hw, Config& config) {
  config = budget_config(std::max(unoptimized_peak(g, hw) / 2, min_budget(g, hw)));
  return plan(g, hw, config);
}

TEST(Timeline, MaximaAreThePlansPeaks) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  for (const auto& name : graph_fixtures()) {
    const ModelGraph g = fixture_graph(name);
    if (!g.training) continue;
    Config config;
    const Plan p = squeezed_plan(g, hw, config);
    ASSERT_NE(p.predicted_peak_bytes, p.unoptimized_peak_bytes) << name;  // the plan changed something
    const PlanTimeline t = plan_timeline(g, hw, config, p);
    std::uint64_t before = 0, after = 0;
    for (const auto& point : t.points) before = std::max(before, point.before_bytes), after = std::max(after, point.after_bytes);
    EXPECT_EQ(before, p.unoptimized_peak_bytes) << name;
    EXPECT_EQ(after, p.predicted_peak_bytes) << name;
    EXPECT_LE(after, t.budget_bytes) << name;
    EXPECT_EQ(t.budget_bytes, p.budget_bytes) << name;
  }
}

TEST(Timeline, PositionsFollowTheStep) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  Config config;
  const Plan p = squeezed_plan(g, hw, config);
  const PlanTimeline t = plan_timeline(g, hw, config, p);
  const std::size_t n = g.layers.size();
  ASSERT_EQ(t.points.size(), 2 * n + 1);
  for (std::size_t l = 0; l < n; ++l) {
    EXPECT_EQ(t.points[l].phase, "forward");
    EXPECT_EQ(t.points[l].layer, static_cast<std::int64_t>(l));
    EXPECT_EQ(t.points[l].label, "forward " + g.layers[l].name);
    EXPECT_EQ(t.points[n + l].phase, "backward");
    EXPECT_EQ(t.points[n + l].layer, static_cast<std::int64_t>(n - 1 - l));
  }
  EXPECT_EQ(t.points.back().phase, "optimizer_step");
  EXPECT_EQ(t.points.back().label, "optimizer step");
  // A checkpointed layer's saved bytes are gone from the positions after its forward.
  bool lower = false;
  for (const auto& point : t.points) lower |= point.after_bytes < point.before_bytes;
  EXPECT_TRUE(lower);
}

TEST(Timeline, EvaluateTrainingIsTheTimelinesMaximum) {
  const ModelGraph g = fixture_graph("t5_base_train.json");
  model::StepContext ctx;
  ctx.optimizer_transient = 1.0;
  ctx.input_bytes = g.input_bytes;
  std::vector<model::LayerState> states(g.layers.size());
  for (std::size_t l = 0; l < states.size(); l += 3) states[l].checkpoint = true;
  const auto points = model::training_timeline(g, states, ctx);
  const model::PeakReport r = model::evaluate_training(g, states, ctx);
  const auto top = std::max_element(points.begin(), points.end(),
                                    [](const auto& a, const auto& b) { return a.bytes < b.bytes; });
  EXPECT_EQ(r.peak, static_cast<std::uint64_t>(top->bytes));
  EXPECT_EQ(r.phase, top->phase);
  EXPECT_EQ(r.layer, top->layer);
}

TEST(Timeline, RefusesInputsThatAreNotThePlans) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  Config config;
  const Plan p = squeezed_plan(g, hw, config);
  // Another machine: eight data-parallel replicas hold DDP gradient buckets, so the peaks
  // do not reproduce.
  EXPECT_THROW(plan_timeline(g, fixture_hardware("gpu_80gib_x8.json"), config, p), MemScaleError);
  ModelGraph shorter = g;
  shorter.layers.pop_back();
  EXPECT_THROW(plan_timeline(shorter, hw, config, p), MemScaleError);
  const ModelGraph infer = fixture_graph("llama7b_infer.json");
  EXPECT_THROW(plan_timeline(infer, hw, budget_config(40ull << 30), plan(infer, hw, budget_config(40ull << 30))),
               MemScaleError);
}

}  // namespace
}  // namespace memscale::test

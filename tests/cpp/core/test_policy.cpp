// The optional learned policy stage (auto_policy): the tree file format, the stage's
// narrowing and fallback, and that with auto_policy off the plan is the rule engine's.
#include <string>

#include <gtest/gtest.h>

#include "engine_fixtures.hpp"
#include "memscale/core/engine.hpp"
#include "memscale/core/policy/model.hpp"

namespace memscale::test {
namespace {

/// A tree that always answers `label` (one leaf).
policy::Tree leaf(const std::string& label) {
  return policy::parse_tree(nlohmann::json::parse(
      R"({"format": "memscale.auto_policy/1", "features": ["pressure"], "labels": [")" + label +
      R"("], "nodes": [{"label": 0, "samples": 5}]})"));
}

Plan staged(const ModelGraph& g, const Hardware& hw, const Config& c, const policy::Tree& tree) {
  return engine_detail::plan_with_policy(g, hw, c, {}, tree, [&](const Config& cc) {
    Config rules = cc;
    rules.auto_policy = false;
    return plan(g, hw, rules);
  });
}

bool any_layer_has(const Plan& p, const std::string& technique) {
  for (const auto& l : p.layers)
    if (l.has(technique)) return true;
  return false;
}

bool trace_has(const Plan& p, const std::string& text) {
  for (const auto& line : p.trace)
    if (line.find(text) != std::string::npos) return true;
  return false;
}

TEST(AutoPolicy, OffPlansAreTheRuleEnginesByteForByte) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  for (const auto& name : graph_fixtures()) {
    const ModelGraph g = fixture_graph(name);
    const std::uint64_t budget = unoptimized_peak(g, hw) * 6 / 10;
    const Config c = budget_config(budget, "\"force_optimize\": true");
    std::string via_plan, via_rules;
    try {
      via_plan = plan(g, hw, c).to_json_text();
    } catch (const InfeasibleBudgetError&) {
      continue;
    }
    via_rules = g.training ? engine_detail::run_engine<model::TrainingTracker>(g, hw, c, {}).to_json_text()
                           : engine_detail::plan_inference(g, hw, c, {}).to_json_text();
    EXPECT_EQ(via_plan, via_rules) << name;
    EXPECT_EQ(via_plan.find("auto_policy"), std::string::npos) << name;
  }
}

TEST(AutoPolicy, TreeWalksLikeSklearnAndRecordsThePath) {
  const policy::Tree t = policy::parse_tree(nlohmann::json::parse(R"({
    "format": "memscale.auto_policy/1", "features": ["pressure", "offload_vs_recompute"],
    "labels": ["rules", "no_offload", "checkpoint_only"],
    "nodes": [{"feature": 0, "threshold": 1.5, "left": 1, "right": 2},
              {"label": 0, "samples": 4},
              {"feature": 1, "threshold": 10.0, "left": 3, "right": 4},
              {"label": 2, "samples": 3}, {"label": 1, "samples": 6}]})"));
  policy::Features f;
  f.values = {{"pressure", 1.5}, {"offload_vs_recompute", 99.0}};
  EXPECT_EQ(t.predict(f).label, "rules");  // x <= threshold goes left
  f.values[0].second = 2.0;
  const policy::Prediction p = t.predict(f);
  EXPECT_EQ(p.label, "no_offload");
  ASSERT_EQ(p.path.size(), 2u);
  EXPECT_EQ(p.path[0].feature, "pressure");
  EXPECT_FALSE(p.path[0].went_left);
  EXPECT_EQ(p.leaf_samples, 6);
  f.values[1].second = 10.0;
  EXPECT_EQ(t.predict(f).label, "checkpoint_only");
}

TEST(AutoPolicy, BadModelFilesNameTheField) {
  auto error = [](const std::string& text) {
    try {
      policy::parse_tree(nlohmann::json::parse(text));
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  const std::string head = R"({"format": "memscale.auto_policy/1", )";
  EXPECT_NE(error(head + R"("features": ["colour"], "labels": ["rules"], "nodes": [{"label": 0}]})").find("colour"),
            std::string::npos);
  EXPECT_NE(error(head + R"("features": ["pressure"], "labels": ["fastest"], "nodes": [{"label": 0}]})").find("fastest"),
            std::string::npos);
  EXPECT_NE(error(head + R"("features": ["pressure"], "labels": ["rules"], "nodes": [{"feature": 0, "threshold": 1,
            "left": 0, "right": 0}]})").find("nodes[0]"), std::string::npos);
  EXPECT_NE(error(R"({"format": "v0", "features": [], "labels": [], "nodes": []})").find("auto_policy.format"),
            std::string::npos);
}

TEST(AutoPolicy, NarrowsOnlyWhatTheConfigLeavesToAuto) {
  const Config c = Config::from_json_text(R"({"memory_budget": 1000, "techniques": {"offload_activations": "on"}})");
  const Config n = policy::narrowed(c, policy::strategy("checkpoint_only"));
  EXPECT_EQ(n.techniques.at("offload_activations"), Switch::on);
  EXPECT_EQ(n.techniques.at("offload_weights"), Switch::off);
  EXPECT_EQ(n.techniques.at("tiling"), Switch::off);
  EXPECT_EQ(n.techniques.at("checkpoint"), Switch::automatic);
}

TEST(AutoPolicy, ANarrowedPlanUsesNoTurnedOffTechniqueAndSaysWhy) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("llama7b_train.json");
  const std::uint64_t min_all = min_budget(g, hw);
  const std::uint64_t min_recompute = min_budget(g, hw, R"("techniques": {"offload_activations": "off", "offload_weights": "off"})");
  ASSERT_GT(min_recompute, min_all) << "the fixture must need offload below some budget";
  // Above the recompute-only minimum: the narrowed plan, no offload, the choice in the trace.
  Config roomy = budget_config(min_recompute + min_recompute / 20);
  roomy.auto_policy = true;
  const Plan narrowed = staged(g, hw, roomy, leaf("no_offload"));
  EXPECT_FALSE(any_layer_has(narrowed, "offload_activations"));
  EXPECT_FALSE(any_layer_has(narrowed, "offload_weights"));
  EXPECT_LE(narrowed.predicted_peak_bytes, narrowed.budget_bytes);
  EXPECT_TRUE(trace_has(narrowed, "auto_policy: chose \"no_offload\""));
  // Between the two minimums: the narrowed set has no plan, the rules alone plan it.
  Config tight = budget_config((min_all + min_recompute) / 2);
  tight.auto_policy = true;
  const Plan fallback = staged(g, hw, tight, leaf("no_offload"));
  Config rules = tight;
  rules.auto_policy = false;
  EXPECT_EQ(fallback.layers.size(), plan(g, hw, rules).layers.size());
  EXPECT_TRUE(any_layer_has(fallback, "offload_activations") || any_layer_has(fallback, "offload_weights"));
  EXPECT_TRUE(trace_has(fallback, "has no plan at this budget"));
  // Below both: the rule engine's refusal, with its minimum.
  Config impossible = budget_config(min_all / 2);
  impossible.auto_policy = true;
  try {
    staged(g, hw, impossible, leaf("no_offload"));
    ADD_FAILURE() << "a budget below the minimum was planned";
  } catch (const InfeasibleBudgetError& e) {
    EXPECT_EQ(e.min_budget_bytes(), min_all);
  }
}

TEST(AutoPolicy, TheShippedModelParsesAndPlansDeterministically) {
  const policy::Tree& t = policy::shipped_model();
  EXPECT_FALSE(t.nodes.empty());
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  Config c = budget_config(unoptimized_peak(g, hw) * 7 / 10, "\"force_optimize\": true");
  c.auto_policy = true;
  const Plan a = plan(g, hw, c), b = plan(g, hw, c);
  EXPECT_EQ(a.to_json_text(), b.to_json_text());
  EXPECT_TRUE(trace_has(a, "auto_policy: chose"));
  EXPECT_LE(a.predicted_peak_bytes, a.budget_bytes);
}

TEST(AutoPolicy, FeaturesAreTheNamedOnesInOrder) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  const std::uint64_t peak = unoptimized_peak(g, hw);
  const policy::Features f = policy::features(g, hw, budget_config(peak / 2));
  ASSERT_EQ(f.values.size(), policy::feature_names().size());
  for (std::size_t i = 0; i < f.values.size(); ++i) EXPECT_EQ(f.values[i].first, policy::feature_names()[i]);
  const engine_detail::Setup setup = engine_detail::make_setup(g, hw, budget_config(peak / 2), {});
  EXPECT_NEAR(f.at("pressure"), static_cast<double>(peak) / static_cast<double>(setup.budget), 1e-9);
  EXPECT_EQ(f.at("gpu"), 1.0);
  EXPECT_EQ(f.at("layers"), static_cast<double>(g.layers.size()));
  EXPECT_GT(f.at("activation_share"), 0.0);
  EXPECT_LT(f.at("activation_share") + f.at("static_share"), 1.0 + 1e-9);
}

}  // namespace
}  // namespace memscale::test

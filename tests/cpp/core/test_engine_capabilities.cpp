// The engine plans only what the runtime can apply: Layer::cannot (recorded by the
// profiler) removes a technique from a layer's candidates, with rule capability.unsupported.
#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

/// The layers' plan entries that carry `technique`.
std::size_t count_with(const Plan& p, const std::string& technique) {
  std::size_t n = 0;
  for (const auto& l : p.layers) n += l.has(technique);
  return n;
}

ModelGraph with_cannot(ModelGraph g, const std::string& technique, const std::string& reason,
                       const std::string& kind = "") {
  for (auto& l : g.layers)
    if (kind.empty() || l.kind == kind) l.cannot[technique] = reason;
  return g;
}

bool rejected_by_capability(const Plan& p, const std::string& layer, const std::string& technique) {
  for (const auto& r : p.rejected)
    if (r.layer == layer && r.technique == technique && r.rule == "capability.unsupported") return true;
  return false;
}

TEST(Capabilities, RoundTripThroughJsonAndAbsentMeansCapable) {
  ModelGraph g = fixture_graph("gpt2_small_train.json");
  for (const auto& l : g.layers) EXPECT_TRUE(l.cannot.empty()) << l.name;  // old JSON: everything capable
  g.layers.back().cannot["tile"] = "forward takes no labels";
  const ModelGraph back = ModelGraph::from_json_text(g.to_json_text());
  EXPECT_EQ(back, g);
  EXPECT_EQ(back.layers.back().cannot.at("tile"), "forward takes no labels");
  EXPECT_THROW(ModelGraph::from_json_text(
                   R"({"layers": [{"index": 0, "name": "a", "kind": "mlp", "param_bytes": 1, "activation_bytes": 1,
                      "cannot": {"fly": "no"}}]})"),
               ConfigError);
}

TEST(Capabilities, AHeadThatCannotTileIsNeverTiledAtAnyBudget) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph full = fixture_graph("gpt2_small_train.json");
  ASSERT_GT(count_with(plan(full, hw, budget_config(min_budget(full, hw))), "tile"), 0u);
  const ModelGraph g = with_cannot(full, "tile", "the loss is computed outside the model", "lm_head");
  const std::uint64_t floor = min_budget(g, hw);
  EXPECT_GE(floor, min_budget(full, hw));  // fewer techniques: a floor no lower
  const std::uint64_t u = unoptimized_peak(g, hw);
  std::size_t planned = 0;
  for (double share : {1.0, 0.8, 0.6, 0.4}) {
    const auto budget = static_cast<std::uint64_t>(static_cast<double>(u) * share);
    if (budget < floor) continue;
    ++planned;
    const Plan p = plan(g, hw, budget_config(budget, "\"mode\": \"min_memory\""));
    for (std::size_t l = 0; l < g.layers.size(); ++l)
      if (g.layers[l].kind == "lm_head") {
        EXPECT_FALSE(p.layers[l].has("tile")) << share;
        EXPECT_TRUE(rejected_by_capability(p, g.layers[l].name, "tile"));
      }
  }
  EXPECT_GT(planned, 0u);
  const Plan at_floor = plan(g, hw, budget_config(floor));
  EXPECT_LE(at_floor.predicted_peak_bytes, floor);
}

TEST(Capabilities, NoWeightOffloadWhereNoLayerCanTakeIt) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph full = fixture_graph("llama7b_train.json");
  const ModelGraph g = with_cannot(full, "offload_weights", "the training runtime keeps weights resident");
  // Same floor as telling the engine offload_weights "off"; no plan offloads weights.
  EXPECT_EQ(min_budget(g, hw), min_budget(full, hw, R"("techniques": {"offload_weights": "off"})"));
  const Plan p = plan(g, hw, budget_config(min_budget(g, hw), "\"mode\": \"min_memory\""));
  EXPECT_EQ(count_with(p, "offload_weights"), 0u);
  EXPECT_TRUE(rejected_by_capability(p, g.layers[0].name, "offload_weights"));
}

TEST(Capabilities, ForcingAnIncapableTechniqueIsAConfigError) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = with_cannot(fixture_graph("gpt2_small_train.json"), "offload_weights",
                                   "the training runtime keeps weights resident");
  try {
    plan(g, hw, budget_config(1ull << 40, R"("techniques": {"offload_weights": "on"})"));
    ADD_FAILURE() << "offload_weights on was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("no layer of this training graph can take it"), std::string::npos) << e.what();
  }
  const std::string head = g.layers.back().name;
  const ModelGraph h = with_cannot(fixture_graph("gpt2_small_train.json"), "tile", "no labels", "lm_head");
  EXPECT_THROW(plan(h, hw, budget_config(1ull << 40, R"("layer_overrides": {")" + head + R"(": {"tiling": "on"}})")),
               ConfigError);
  // Global "on" with some capable layers: applied where capable, recorded where not.
  const ModelGraph c = with_cannot(fixture_graph("gpt2_small_train.json"), "checkpoint", "inplace", "block");
  const Plan p = plan(c, hw, budget_config(1ull << 40, R"("techniques": {"checkpoint": "on"})"));
  for (std::size_t l = 0; l < c.layers.size(); ++l)
    EXPECT_EQ(p.layers[l].has("checkpoint"), c.layers[l].kind != "block") << c.layers[l].name;
}

}  // namespace
}  // namespace memscale::test

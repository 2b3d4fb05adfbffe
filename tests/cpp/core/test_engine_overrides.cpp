// Overrides are never violated, over random override sets on the fixtures.
#include <map>
#include <random>

#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

const char* kConfigNames[] = {"checkpoint", "offload_activations", "offload_weights", "tiling"};
const char* kPlanNames[] = {"checkpoint", "offload_activations", "offload_weights", "tile"};

struct Override {
  std::string glob, prefix;  // prefix globs are "<prefix>*"; exact ones have no '*'
  bool is_prefix = false;
  int technique = 0;
  bool on = false;
  bool matches(const std::string& name) const { return is_prefix ? name.rfind(prefix, 0) == 0 : name == glob; }
};

/// Checks `p` against what the overrides say; returns the number of (layer, technique)
/// pairs an override decided.
std::size_t check_plan(const ModelGraph& g, const Plan& p, const std::map<int, std::string>& global,
                       const std::vector<Override>& overrides) {
  std::size_t decided = 0;
  for (std::size_t l = 0; l < g.layers.size(); ++l) {
    for (int t = 0; t < 4; ++t) {
      std::string value = global.count(t) ? global.at(t) : "auto";
      bool from_glob = false;
      for (const auto& o : overrides)
        if (o.technique == t && o.matches(g.layers[l].name)) value = o.on ? "on" : "off", from_glob = true;
      const bool has = p.layers[l].has(kPlanNames[t]);
      if (value == "off") EXPECT_FALSE(has) << g.layers[l].name << " " << kPlanNames[t] << " is off";
      if (value == "on") {
        const bool exempt = !from_glob && t == 3 && g.layers[l].tileable.empty();  // global tiling on: tileable layers
        if (!exempt) EXPECT_TRUE(has) << g.layers[l].name << " " << kPlanNames[t] << " is on";
      }
      decided += value != "auto";
    }
  }
  return decided;
}

TEST(Overrides, AreNeverViolatedUnderRandomOverrideSets) {
  std::mt19937 rng(20240611);  // the test may be random; the engine may not
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  std::size_t plans = 0, infeasible = 0, conflicts = 0, decided = 0;
  for (const auto& name : graph_fixtures()) {
    const ModelGraph g = fixture_graph(name);
    const std::uint64_t u = unoptimized_peak(g, hw);
    for (int trial = 0; trial < 25; ++trial) {
      std::map<int, std::string> global;
      for (int t = 0; t < 4; ++t) {
        const int r = static_cast<int>(rng() % 6);
        if (r == 0) global[t] = "on";
        if (r == 1) global[t] = "off";
      }
      std::vector<Override> overrides;
      const int count = static_cast<int>(rng() % 5);
      for (int i = 0; i < count; ++i) {
        Override o;
        const auto& layer = g.layers[rng() % g.layers.size()];
        o.is_prefix = rng() % 2;
        if (o.is_prefix) {
          o.prefix = layer.name.substr(0, 1 + rng() % layer.name.size());
          o.glob = o.prefix + "*";
        } else {
          o.glob = layer.name;
        }
        o.technique = static_cast<int>(rng() % 4);
        o.on = rng() % 2;
        // Keep a glob to one technique so the JSON object has one entry per glob.
        bool duplicate = false;
        for (const auto& x : overrides) duplicate |= x.glob == o.glob;
        if (!duplicate) overrides.push_back(o);
      }
      // Expected ConfigErrors: two matching globs that disagree; tiling forced on a layer
      // that cannot be tiled.
      bool expect_error = false;
      for (const auto& layer : g.layers)
        for (std::size_t i = 0; i < overrides.size(); ++i) {
          if (!overrides[i].matches(layer.name)) continue;
          if (overrides[i].technique == 3 && overrides[i].on && layer.tileable.empty()) expect_error = true;
          for (std::size_t j = i + 1; j < overrides.size(); ++j)
            if (overrides[j].matches(layer.name) && overrides[j].technique == overrides[i].technique &&
                overrides[j].on != overrides[i].on)
              expect_error = true;
        }
      std::string extra = "\"techniques\": {";
      bool first = true;
      for (const auto& [t, v] : global) extra += std::string(first ? "" : ", ") + "\"" + kConfigNames[t] + "\": \"" + v + "\"", first = false;
      extra += "}, \"layer_overrides\": {";
      first = true;
      for (const auto& o : overrides) {
        extra += std::string(first ? "" : ", ") + "\"" + o.glob + "\": {\"" + kConfigNames[o.technique] + "\": \"" +
                 (o.on ? "on" : "off") + "\"}";
        first = false;
      }
      extra += "}";
      const double share = 0.25 + 0.75 * static_cast<double>(rng() % 1000) / 1000.0;
      const Config config = budget_config(static_cast<std::uint64_t>(share * static_cast<double>(u)), extra);
      try {
        const Plan p = plan(g, hw, config);
        EXPECT_FALSE(expect_error) << name << " " << extra;
        EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
        decided += check_plan(g, p, global, overrides);
        ++plans;
      } catch (const ConfigError& e) {
        EXPECT_TRUE(expect_error) << name << " " << extra << ": " << e.what();
        ++conflicts;
      } catch (const InfeasibleBudgetError& e) {
        EXPECT_FALSE(expect_error) << name << " " << extra;
        ++infeasible;
        // The minimum it names has a plan, and that plan honours the overrides too.
        const Plan p = plan(g, hw, budget_config(e.min_budget_bytes(), extra));
        EXPECT_EQ(p.predicted_peak_bytes, e.min_budget_bytes());
        decided += check_plan(g, p, global, overrides);
        ++plans;
      }
    }
  }
  std::cout << "[overrides] " << plans << " plans checked, " << infeasible << " infeasible, " << conflicts
            << " conflicting sets rejected, " << decided << " (layer, technique) pairs decided by the Config\n";
  EXPECT_GT(plans, 100u);
  EXPECT_GT(conflicts, 0u);
  EXPECT_GT(infeasible, 0u);
  EXPECT_GT(decided, 1000u);
}

}  // namespace
}  // namespace memscale::test

// The optional learned policy stage (Config.auto_policy): before the rule engine, a small
// decision tree (policy/model.hpp) picks a strategy, i.e. which techniques stay eligible;
// the rule engine then plans per layer as always. The stage may only narrow: when the
// narrowed set has no plan at this budget, the Config itself is planned and the trace
// says so, so the budget guarantee and the refusals are the rule engine's. Off by default;
// with auto_policy false nothing here runs.
#pragma once

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "memscale/core/config.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/plan.hpp"
#include "memscale/core/policy/features.hpp"
#include "memscale/core/policy/strategies.hpp"
#include "memscale/core/policy/tree.hpp"

namespace memscale::engine_detail {

/// "pressure 1.43 > 1.25, offload_vs_recompute 12.1 <= 30": the comparisons that led to the leaf.
inline std::string describe_path(const policy::Prediction& p) {
  std::string out;
  for (const policy::Step& s : p.path) {
    char line[128];
    std::snprintf(line, sizeof line, "%s %.4g %s %.4g", s.feature.c_str(), s.value, s.went_left ? "<=" : ">",
                  s.threshold);
    out += (out.empty() ? "" : ", ") + std::string(line);
  }
  return out.empty() ? "no comparison (the tree is one leaf)" : out;
}

using PlanFn = std::function<Plan(const Config&)>;

inline Plan plan_with_policy(const ModelGraph& graph, const Hardware& hardware, const Config& config,
                             const PlanOptions& options, const policy::Tree& tree, const PlanFn& rules_plan) {
  std::vector<std::string> trace;
  auto finish = [&](Plan p) {
    p.trace.insert(p.trace.begin(), trace.begin(), trace.end());
    return p;
  };
  if (!graph.training) {
    trace.push_back("auto_policy: the learned stage picks for training plans; this inference plan is the rule "
                    "engine's alone");
    return finish(rules_plan(config));
  }
  if (config.mode != Mode::automatic) {
    trace.push_back(std::string("auto_policy: mode \"") + to_string(config.mode) +
                    "\" is the user's; the stage chooses only under mode \"auto\"");
    return finish(rules_plan(config));
  }
  const policy::Features features = policy::features(graph, hardware, config, options);
  const policy::Prediction chosen = tree.predict(features);
  const policy::Strategy& strategy = policy::strategy(chosen.label);
  trace.push_back("auto_policy: chose \"" + strategy.name + "\" (" + strategy.description + ") from " +
                  describe_path(chosen) + "; leaf of " + std::to_string(chosen.leaf_samples) +
                  " training case(s)" + (tree.trained_on.empty() ? "" : "; trained on " + tree.trained_on));
  const Config narrowed = policy::narrowed(config, strategy);
  if (narrowed.techniques == config.techniques) {
    if (!strategy.off.empty())
      trace.push_back("auto_policy: the Config already leaves none of the strategy's techniques to \"auto\"; "
                      "nothing narrowed");
    return finish(rules_plan(config));
  }
  try {
    return finish(rules_plan(narrowed));
  } catch (const InfeasibleBudgetError&) {
    trace.push_back("auto_policy: \"" + strategy.name + "\" has no plan at this budget; the rule engine planned "
                    "with every technique the Config allows");
    return finish(rules_plan(config));
  }
}

}  // namespace memscale::engine_detail

// The strategies the learned policy stage chooses between. A strategy only narrows the
// techniques the rule engine may use (never adds one, never forces one): techniques the
// user set "on" or "off" stay as set, and the rule engine still guarantees the budget
// (policy_stage.hpp falls back to the Config itself when a narrowed set has no plan).
#pragma once

#include <string>
#include <vector>

#include "memscale/core/config.hpp"
#include "memscale/core/errors.hpp"

namespace memscale::policy {

struct Strategy {
  std::string name;
  std::vector<std::string> off;  ///< techniques (Config.techniques keys) the strategy turns off
  std::string description;
};

/// Every strategy, "rules" (the Config as given) first. Mode stays the Config's: the stage
/// plans "auto" only ("min_memory" minimises memory, never time, so it is no speed choice).
inline const std::vector<Strategy>& strategies() {
  static const std::vector<Strategy> all = {
      {"rules", {}, "every technique the Config allows (the rule engine alone)"},
      {"no_offload", {"offload_activations", "offload_weights"}, "recompute only: checkpointing and tiling"},
      {"no_tiling", {"tiling"}, "checkpointing and offload, no tiling"},
      {"checkpoint_only", {"offload_activations", "offload_weights", "tiling"}, "checkpointing alone"},
  };
  return all;
}

inline const Strategy& strategy(const std::string& name) {
  for (const Strategy& s : strategies())
    if (s.name == name) return s;
  std::string allowed;
  for (const Strategy& s : strategies()) allowed += (allowed.empty() ? "" : ", ") + s.name;
  throw ConfigError("auto_policy model: label \"" + name + "\" is not a strategy; allowed: " + allowed);
}

/// `config` narrowed by `s`: each technique `s` turns off that the Config leaves "auto".
inline Config narrowed(const Config& config, const Strategy& s) {
  Config c = config;
  for (const std::string& t : s.off) {
    auto it = c.techniques.find(t);
    if (it != c.techniques.end() && it->second == Switch::automatic) it->second = Switch::off;
  }
  return c;
}

}  // namespace memscale::policy

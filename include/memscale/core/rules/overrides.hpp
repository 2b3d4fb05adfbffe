// Resolves what the Config says about each (layer, technique): a layer_overrides glob
// that matches the layer wins over the global `techniques` switch. Two globs that match
// the same layer and disagree on a technique are a ConfigError naming both.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "memscale/core/config.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/glob.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/rules/rule.hpp"

namespace memscale::rules {

/// What the Config says about one technique on one layer, and where it says it.
struct Setting {
  Switch value = Switch::automatic;
  std::string source;  ///< "techniques.checkpoint" or "layer_overrides[\"blocks.*\"]"
  bool from_glob = false;
};

using LayerSettings = std::array<Setting, 4>;  ///< indexed by Technique

struct ResolvedOverrides {
  std::vector<LayerSettings> layers;
  std::vector<std::string> unmatched_globs;  ///< globs that match no layer (reported in the trace)
};

inline std::string glob_source(const std::string& glob) { return "layer_overrides[\"" + glob + "\"]"; }

inline ResolvedOverrides resolve_overrides(const ModelGraph& graph, const Config& config) {
  ResolvedOverrides out;
  LayerSettings global;
  for (Technique t : kTechniques) {
    const auto it = config.techniques.find(config_name(t));
    global[static_cast<int>(t)] = {it == config.techniques.end() ? Switch::automatic : it->second,
                                   std::string("techniques.") + config_name(t), false};
  }
  out.layers.assign(graph.layers.size(), global);
  std::vector<std::array<const std::string*, 4>> setter(graph.layers.size(), {nullptr, nullptr, nullptr, nullptr});
  for (const auto& [glob, switches] : config.layer_overrides) {  // std::map: sorted, deterministic
    bool matched = false;
    for (std::size_t l = 0; l < graph.layers.size(); ++l) {
      if (!glob_match(glob, graph.layers[l].name)) continue;
      matched = true;
      for (const auto& [name, value] : switches) {
        for (Technique t : kTechniques) {
          if (name != config_name(t)) continue;
          const int i = static_cast<int>(t);
          if (setter[l][i] != nullptr && out.layers[l][i].value != value)
            throw ConfigError(glob_source(*setter[l][i]) + " sets " + name + " \"" + to_string(out.layers[l][i].value) +
                              "\" and " + glob_source(glob) + " sets it \"" + to_string(value) + "\" for layer \"" +
                              graph.layers[l].name + "\"; make the globs match different layers or agree");
          if (setter[l][i] == nullptr) {
            setter[l][i] = &glob;
            out.layers[l][i] = {value, glob_source(glob), true};
          }
        }
      }
    }
    if (!matched) out.unmatched_globs.push_back(glob);
  }
  return out;
}

}  // namespace memscale::rules

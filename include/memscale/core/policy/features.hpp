// Features of one planning problem for the optional learned policy stage (auto_policy):
// what the graph, the hardware and the budget look like before any technique, in a fixed
// order and with fixed names, so the model trained in Python (python/memscale/policy) and
// the engine in C++ read the same numbers. Pure functions of the inputs (no clock, no
// randomness): the same graph, hardware and Config give the same features.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "memscale/core/config.hpp"
#include "memscale/core/engine/setup.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/memory_model.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/rules/costs.hpp"

namespace memscale::policy {

/// Named feature values, in the order of kFeatureNames.
struct Features {
  std::vector<std::pair<std::string, double>> values;
  double at(const std::string& name) const {
    for (const auto& [n, v] : values)
      if (n == name) return v;
    throw MemScaleError("auto_policy: the model reads feature \"" + name + "\", which the engine does not compute");
  }
};

/// The features, in order. A model file lists the ones it was trained on; the engine refuses
/// a model that reads one not in this list.
inline const std::vector<std::string>& feature_names() {
  static const std::vector<std::string> names = {
      "pressure",                   // unoptimized peak / budget
      "activation_share",           // saved activations / unoptimized peak
      "static_share",               // weights + buffers + optimizer state / unoptimized peak
      "tileable_activation_share",  // share of the saved activations in layers that may be tiled
      "offload_vs_recompute",       // seconds to move a saved byte out and back / seconds to recompute it
      "gpu",                        // 1 when the planning device is a GPU
      "layers",                     // layers in the chain
  };
  return names;
}

inline double ratio(double num, double den) { return den > 0 ? num / den : 0.0; }

/// Features of planning `graph` on `hardware` under `config` (its budget and tiers).
inline Features features(const ModelGraph& graph, const Hardware& hardware, const Config& config,
                         const PlanOptions& options = {}) {
  const engine_detail::Setup setup = engine_detail::make_setup(graph, hardware, config, options);
  const std::vector<model::LayerState> none(graph.layers.size());
  const model::PeakReport peak = model::evaluate(graph, none, setup.step);
  double saved = 0, tileable_saved = 0, statics = 0, recompute_s = 0;
  for (const Layer& layer : graph.layers) {
    const double a = static_cast<double>(layer.activation_bytes);
    saved += a;
    if (!layer.tileable.empty()) tileable_saved += a;
    statics += static_cast<double>(layer.param_bytes + layer.buffer_bytes + layer.optimizer_bytes);
    recompute_s += rules::recompute_seconds(layer, graph, setup.rates);
  }
  const double offload_s_per_byte =
      1.0 / rules::next_tier_write(setup.rates) + 1.0 / rules::next_tier_read(setup.rates);
  const double recompute_s_per_byte = ratio(recompute_s, saved);
  const double p = static_cast<double>(peak.peak);
  Features f;
  f.values = {{"pressure", ratio(p, static_cast<double>(setup.budget))},
              {"activation_share", ratio(saved, p)},
              {"static_share", ratio(statics, p)},
              {"tileable_activation_share", ratio(tileable_saved, saved)},
              {"offload_vs_recompute", ratio(offload_s_per_byte, recompute_s_per_byte)},
              {"gpu", setup.rates.gpu ? 1.0 : 0.0},
              {"layers", static_cast<double>(graph.layers.size())}};
  return f;
}

}  // namespace memscale::policy

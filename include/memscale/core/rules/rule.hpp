// What every rule returns. A rule is one small function that looks at one layer (and the
// step-wide context) and says whether a technique applies, with its id, a one-line
// reason and, when it applies, what it costs per byte it saves; the engine only orders
// the candidates (escalation phase, then cost per byte, then layer index) and applies
// them. docs/rules.md lists every rule id with an example.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "memscale/core/cost_model.hpp"
#include "memscale/core/memory_model.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/sizes.hpp"

namespace memscale::rules {

enum class Technique { checkpoint = 0, offload_activations = 1, offload_weights = 2, tile = 3 };

/// Name in the Plan ("tile") ...
inline const char* plan_name(Technique t) {
  switch (t) {
    case Technique::checkpoint: return "checkpoint";
    case Technique::offload_activations: return "offload_activations";
    case Technique::offload_weights: return "offload_weights";
    default: return "tile";
  }
}
/// ... and in the Config ("tiling").
inline const char* config_name(Technique t) { return t == Technique::tile ? "tiling" : plan_name(t); }

inline constexpr Technique kTechniques[] = {Technique::checkpoint, Technique::offload_activations,
                                            Technique::offload_weights, Technique::tile};

/// Escalation order of the rule families (cheapest per byte saved first): recompute first (checkpointing and
/// tiling), then moving activations off the device, then moving weights.
enum class Phase : int { recompute = 1, offload_activations = 2, offload_weights = 3 };

/// A rule's verdict on one layer.
struct Candidate {
  bool eligible = false;
  std::string rule;    ///< rule id (docs/rules.md)
  std::string reason;  ///< one line, for the plan
  Phase phase = Phase::recompute;
  double cost_per_byte = 0.0;  ///< seconds of extra step time per byte saved
  std::int64_t chunks = 1;     ///< tile rules: the chunk count proposed
};

/// What rules may look at besides the layer.
struct RuleContext {
  const ModelGraph& graph;
  const model::StepContext& step;
  const cost::Rates& rates;
};

/// Rules build their one-line reasons only when asked to explain: the engine evaluates
/// candidates thousands of times per plan and needs the text only for what it records.
inline Candidate reject(std::string rule, std::string reason) {
  Candidate c;
  c.rule = std::move(rule);
  c.reason = std::move(reason);
  return c;
}

inline Candidate accept(std::string rule, std::string reason, Phase phase, double cost_s, std::int64_t saved) {
  Candidate c;
  c.eligible = true;
  c.rule = std::move(rule);
  c.reason = std::move(reason);
  c.phase = phase;
  c.cost_per_byte = saved > 0 ? cost_s / static_cast<double>(saved) : 0.0;
  return c;
}

/// "1.23 ms": durations in reasons.
inline std::string format_seconds(double s) {
  char buffer[32];
  if (s >= 1.0) std::snprintf(buffer, sizeof buffer, "%.2f s", s);
  else if (s >= 1e-3) std::snprintf(buffer, sizeof buffer, "%.2f ms", s * 1e3);
  else std::snprintf(buffer, sizeof buffer, "%.1f us", s * 1e6);
  return buffer;
}

inline std::string format_flops(double f) {
  char buffer[32];
  if (f >= 1e12) std::snprintf(buffer, sizeof buffer, "%.2f TFLOP", f / 1e12);
  else if (f >= 1e9) std::snprintf(buffer, sizeof buffer, "%.2f GFLOP", f / 1e9);
  else std::snprintf(buffer, sizeof buffer, "%.2f MFLOP", f / 1e6);
  return buffer;
}

inline std::string bytes(std::int64_t b) { return format_bytes(static_cast<std::uint64_t>(b < 0 ? 0 : b)); }

}  // namespace memscale::rules

// Checkpointing rules: keep only a layer's input through the forward pass and recompute
// its saved activations in backward. Cheapest recompute first: the candidate's cost is
// one extra forward of the layer per byte of saved activations it drops.
#pragma once

#include "memscale/core/rules/costs.hpp"
#include "memscale/core/rules/rule.hpp"

namespace memscale::rules {

/// checkpoint.cheapest_recompute | checkpoint.inference | checkpoint.applied |
/// checkpoint.tiled | checkpoint.no_gain
inline Candidate checkpoint_rule(const Layer& layer, const model::LayerState& state, const RuleContext& ctx,
                                 bool explain = true) {
  if (!ctx.step.training)
    return reject("checkpoint.inference", "an inference step keeps no activations for a backward pass");
  if (state.checkpoint) return reject("checkpoint.applied", "already checkpointed");
  if (state.tiled())
    return reject("checkpoint.tiled", "tiling already recomputes it chunk by chunk, keeping only its input");
  const std::int64_t saved = model::s64(layer.activation_bytes) - model::s64(layer.input_bytes);
  if (saved <= 0)
    return reject("checkpoint.no_gain", !explain ? "" : "its recompute boundary (input, " + bytes(model::s64(layer.input_bytes)) +
                                            ") is no smaller than its saved activations (" +
                                            bytes(model::s64(layer.activation_bytes)) + ")");
  const double flops = cost::layer_flops(layer, ctx.graph);
  const double seconds = recompute_seconds(layer, ctx.graph, ctx.rates);
  return accept("checkpoint.cheapest_recompute",
                !explain ? "" : "recompute " + format_flops(flops) + " (" + format_seconds(seconds) + ") to drop " + bytes(saved) +
                    " of saved activations",
                Phase::recompute, seconds, saved);
}

}  // namespace memscale::rules

// The modelled cost of a training plan: seconds of extra step time its techniques add,
// as cost_model.hpp and rules/costs.hpp price them. It is a function of the final
// per-layer states alone (not of the order techniques were applied in), so the greedy's
// plan and the exact solver's plan (engine/optimal.hpp) are compared on the same figure.
//
// Per layer: one extra forward when it is recomputed (checkpointed, or tiled unless it is
// an output head fused with its loss, which recomputes nothing); (chunks - 1) x the cost
// of one more chunk when tiled; the exposed transfer of what activation offload moves
// (what the layer keeps under its other techniques: the input of a checkpointed layer);
// the transfers and host optimizer step of weight offload.
#pragma once

#include <vector>

#include "memscale/core/errors.hpp"
#include "memscale/core/memory_model.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/rules/costs.hpp"
#include "memscale/core/rules/tiling.hpp"

namespace memscale::engine_detail {

inline double layer_cost_seconds(const Layer& layer, const model::LayerState& s, const rules::RuleContext& ctx) {
  double seconds = 0.0;
  const bool fused = model::fused_head(layer, s);
  if (s.checkpoint || (s.tiled() && !fused)) seconds += rules::recompute_seconds(layer, ctx.graph, ctx.rates);
  if (s.tiled()) seconds += rules::tile_chunk_seconds(layer, ctx) * static_cast<double>(s.chunks - 1);
  if (s.offload_activations) {
    const std::int64_t moved = model::train_terms(layer, s, ctx.step).activation_window;
    if (moved > 0) seconds += rules::activation_offload_seconds(layer, moved, ctx.graph, ctx.step, ctx.rates);
  }
  if (s.offload_weights) seconds += rules::weight_offload_seconds(layer, ctx.graph, ctx.step, ctx.rates);
  return seconds;
}

/// Sum over layers, in layer order (the same additions give the same double).
inline double plan_cost_seconds(const ModelGraph& graph, const std::vector<model::LayerState>& states,
                                const rules::RuleContext& ctx) {
  if (!ctx.step.training) throw MemScaleError("plan cost: the modelled cost is defined for training plans only");
  double total = 0.0;
  for (std::size_t l = 0; l < graph.layers.size(); ++l) total += layer_cost_seconds(graph.layers[l], states[l], ctx);
  return total;
}

}  // namespace memscale::engine_detail

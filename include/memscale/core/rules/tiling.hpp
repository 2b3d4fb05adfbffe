// Tiling rules: run a position-wise layer (an MLP, the LM head + loss) over its sequence
// or batch axis in chunks. The executor checkpoints every chunk, so a tiled layer keeps
// only its input for backward and needs one chunk's working set (saved + transient) at a
// time: it is the rule for layers whose transient dominates (the logits of a large
// vocabulary, a wide MLP). Each candidate doubles the chunk count (2, 4, 8, ... up to
// kMaxTileChunks and the axis length) so the engine tiles no finer than the budget needs.
#pragma once

#include <algorithm>

#include "memscale/core/rules/costs.hpp"
#include "memscale/core/rules/rule.hpp"

namespace memscale::rules {

inline constexpr std::int64_t kMaxTileChunks = 64;
/// Chunk count of a tile that a Config forces on (the greedy loop may split further).
inline constexpr std::int64_t kForcedTileChunks = 4;
/// Fixed cost of one more chunk: a checkpoint call, slicing and op dispatch (measured 75 to
/// 110 us per chunk on CPU with torch 2.13, docs/memory-model.md#costs).
inline constexpr double kTileChunkLatencyS = 100e-6;

/// Extra step time of one more chunk. Every chunk re-reads the layer's weights twice (its
/// forward or recompute, and the matmul of the input gradient) and reads and writes the
/// weight gradient once more (each chunk's contribution is accumulated into it): that
/// traffic at the device's memory bandwidth is what a chunk costs, whatever its share of
/// the FLOPs (measured: the cost per chunk follows the weight size, not the token count).
inline double tile_chunk_seconds(const Layer& layer, const RuleContext& ctx) {
  const model::LayerWeights w = model::layer_weights(layer, ctx.step.element_bytes);
  return kTileChunkLatencyS + 2.0 * static_cast<double>(w.weights + w.grads) / ctx.rates.memory;
}

/// Length of the longest axis the layer may be chunked over (0 when not tileable).
inline std::int64_t tile_axis_length(const Layer& layer, const ModelGraph& graph) {
  std::int64_t best = 0;
  for (const auto& axis : layer.tileable) {
    if (axis == "seq") best = std::max(best, layer.dims.seq > 0 ? layer.dims.seq : graph.seq);
    if (axis == "batch") best = std::max(best, layer.dims.batch > 0 ? layer.dims.batch : graph.batch);
  }
  return best;
}

/// Largest chunk count allowed for the layer (1 = cannot be tiled).
inline std::int64_t max_tile_chunks(const Layer& layer, const ModelGraph& graph) {
  return std::max<std::int64_t>(1, std::min(kMaxTileChunks, tile_axis_length(layer, graph)));
}

/// tile.split_working_set | tile.not_tileable | tile.inference | tile.max_chunks | tile.no_gain
inline Candidate tile_rule(const Layer& layer, const model::LayerState& state, const RuleContext& ctx,
                           bool explain = true) {
  if (layer.tileable.empty())
    return reject("tile.not_tileable", !explain ? "" : "the profiler found no axis it can be chunked over exactly (kind " + layer.kind + ")");
  if (!ctx.step.training)
    return reject("tile.inference", "the inference step reserves its activation working set as a whole (activation reservation)");
  const std::int64_t limit = max_tile_chunks(layer, ctx.graph);
  const std::int64_t next = std::max<std::int64_t>(2, state.chunks * 2);
  if (next > limit)
    return reject("tile.max_chunks", !explain ? "" : "already " + std::to_string(state.chunks) + " chunks; at most " +
                                         std::to_string(limit) + " (axis length, cap " + std::to_string(kMaxTileChunks) + ")");
  const std::int64_t a = model::s64(layer.activation_bytes), t = model::s64(layer.transient_bytes);
  const std::int64_t in = model::s64(layer.input_bytes);
  // An output head is tiled fused with its loss (model::fused_head): the loss gradient is
  // made in forward slice by slice, with the same matmuls as untiled, so nothing is
  // recomputed, and the logits and their gradient give way to the fused loss's buffers.
  model::LayerState tiled_state = state;
  tiled_state.chunks = next;
  const bool fused = model::fused_head(layer, tiled_state);
  const bool first_recompute = !state.tiled() && !state.checkpoint && !fused;
  std::int64_t saved = model::ceil_div(a + t, state.chunks) - model::ceil_div(a + t, next);
  if (first_recompute) saved += a - in;
  if (fused) {  // what it keeps, and its own working set, before and after
    const model::TrainTerms before = model::train_terms(layer, state, ctx.step);
    const model::TrainTerms after = model::train_terms(layer, tiled_state, ctx.step);
    saved = before.saved - after.saved + std::max(before.forward_local, before.backward_local) -
            std::max(after.forward_local, after.backward_local);
  }
  if (saved <= 0) return reject("tile.no_gain", "splitting further would not lower its working set");
  const double recompute = first_recompute ? recompute_seconds(layer, ctx.graph, ctx.rates) : 0.0;
  const double seconds = recompute + tile_chunk_seconds(layer, ctx) * static_cast<double>(next - state.chunks);
  if (!explain) {
    Candidate c = accept("tile.split_working_set", "", Phase::recompute, seconds, saved);
    c.chunks = next;
    return c;
  }
  const std::string what = fused ? "head + loss fused, logits " + bytes(model::s64(layer.output_bytes)) + " in " +
                                       std::to_string(next) + " slices of " +
                                       bytes(model::fused_head_slice(layer, next, ctx.step) - in)
                                 : "transient " + bytes(t) + " + saved " + bytes(a) + " in " + std::to_string(next) +
                                       " chunks of " + bytes(model::ceil_div(a + t, next));
  Candidate c = accept("tile.split_working_set", what + " (" + format_seconds(seconds) + ")", Phase::recompute, seconds, saved);
  c.chunks = next;
  return c;
}

}  // namespace memscale::rules

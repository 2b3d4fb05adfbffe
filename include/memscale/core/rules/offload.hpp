// Offload rules: move a layer's saved activations (inference: its KV cache) or its
// weights off the planning device, to host RAM first and disk when host is full (deeper
// tiers last). Applied only after recompute cannot fit (Phase order). The hot set of the
// pinned_hot_set residency policy (embeddings, output head, last N layers) is pinned:
// its weights never move.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "memscale/core/offload_policy.hpp"
#include "memscale/core/rules/costs.hpp"
#include "memscale/core/rules/rule.hpp"

namespace memscale::rules {

/// offload_activations.after_recompute | offload_activations.kv_cache | offload_activations.applied |
/// offload_activations.no_gain
inline Candidate activation_offload_rule(const Layer& layer, const model::LayerState& state, const RuleContext& ctx,
                                         bool explain = true) {
  if (state.offload_activations) return reject("offload_activations.applied", "already offloaded");
  const double flops = cost::layer_flops(layer, ctx.graph) * ctx.step.step_flops_share;
  if (!ctx.step.training) {
    const std::int64_t kv = model::s64(layer.kv_cache_bytes);
    if (kv <= 0) return reject("offload_activations.no_gain", "no KV cache to move in inference");
    const double seconds = exposed(static_cast<double>(kv) / next_tier_read(ctx.rates), flops / ctx.rates.flops_per_s) +
                           cost::kTransferLatencyS;
    return accept("offload_activations.kv_cache",
                  !explain ? "" : "stream its KV cache (" + bytes(kv) + ") in each step (" + format_seconds(seconds) + " exposed)",
                  Phase::offload_activations, seconds, kv);
  }
  if (model::fused_head(layer, state))
    return reject("offload_activations.no_gain",
                  "a tiled output head keeps its fused loss's gradient buffers, which are not saved tensors");
  const std::int64_t kept = model::train_terms(layer, state, ctx.step).saved;
  if (kept <= 0) return reject("offload_activations.no_gain", "keeps no activations on the device");
  const double seconds = activation_offload_seconds(layer, kept, ctx.graph, ctx.step, ctx.rates);
  return accept("offload_activations.after_recompute",
                !explain ? "" : "send " + bytes(kept) + " of saved activations off the device and back (" + format_seconds(seconds) +
                    " exposed)",
                Phase::offload_activations, seconds, kept);
}

/// offload_weights.last_resort | offload_weights.hot_set | offload_weights.applied | offload_weights.no_gain
inline Candidate weight_offload_rule(const Layer& layer, const model::LayerState& state, const RuleContext& ctx,
                                     const std::string& pinned_reason, bool explain = true) {
  if (state.offload_weights) return reject("offload_weights.applied", "already offloaded");
  if (!pinned_reason.empty()) return reject("offload_weights.hot_set", pinned_reason);
  const std::int64_t weights = model::s64(layer.param_bytes) + model::s64(layer.buffer_bytes);
  if (weights <= 0) return reject("offload_weights.no_gain", "has no parameters or buffers");
  const double flops = cost::layer_flops(layer, ctx.graph) * ctx.step.step_flops_share;
  const double compute = flops / ctx.rates.flops_per_s;
  if (!ctx.step.training) {
    // The inference pager pages parameters; buffers stay on the device (infer_terms).
    const std::int64_t params = model::s64(layer.param_bytes);
    if (params <= 0) return reject("offload_weights.no_gain", "has no parameters (its buffers stay on the device)");
    const double seconds = exposed(static_cast<double>(params) / next_tier_read(ctx.rates), compute) + cost::kTransferLatencyS;
    return accept("offload_weights.last_resort",
                  !explain ? "" : "page " + bytes(params) + " of weights in for each step (" + format_seconds(seconds) + " exposed)",
                  Phase::offload_weights, seconds, params);
  }
  const model::TrainTerms resident = model::train_terms(layer, state, ctx.step);
  const std::int64_t saved = resident.static_bytes + resident.grad;
  const double seconds = weight_offload_seconds(layer, ctx.graph, ctx.step, ctx.rates);
  return accept("offload_weights.last_resort",
                !explain ? "" : "move " + bytes(saved) + " of weights, gradients and optimizer state off the device (" +
                    format_seconds(seconds) + " per step)",
                Phase::offload_weights, seconds, saved);
}

/// The pinned_hot_set residency policy's hot set: per layer, why it is pinned ("" = not pinned). Only the
/// pinned_hot_set policy pins. "Last N layers" counts the deepest layers of kind block or
/// attention (the decoder layers), or, in a model without such layers, the deepest
/// layers other than embeddings and the output head.
inline std::vector<std::string> hot_set(const ModelGraph& graph, const OffloadPolicy& policy) {
  std::vector<std::string> pinned(graph.layers.size());
  if (policy.kind != OffloadPolicy::Kind::pinned_hot_set) return pinned;
  for (std::size_t l = 0; l < graph.layers.size(); ++l) {
    const auto& kind = graph.layers[l].kind;
    if (policy.pin_embeddings && kind == "embedding") pinned[l] = "pinned by offload.pin_embeddings";
    if (policy.pin_output_head && kind == "lm_head") pinned[l] = "pinned by offload.pin_output_head";
  }
  bool has_blocks = false;
  for (const auto& layer : graph.layers) has_blocks |= layer.kind == "block" || layer.kind == "attention";
  std::uint64_t left = policy.pin_last_n_layers;
  for (std::size_t l = graph.layers.size(); l-- > 0 && left > 0;) {
    const auto& kind = graph.layers[l].kind;
    const bool counts = has_blocks ? (kind == "block" || kind == "attention") : (kind != "embedding" && kind != "lm_head");
    if (!counts) continue;
    if (pinned[l].empty())
      pinned[l] = "pinned by offload.pin_last_n_layers = " + std::to_string(policy.pin_last_n_layers);
    --left;
  }
  return pinned;
}

}  // namespace memscale::rules

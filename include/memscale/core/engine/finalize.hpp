// Turns the decided per-layer states and the decision log into the Plan document.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "memscale/core/config.hpp"
#include "memscale/core/engine/decisions.hpp"
#include "memscale/core/engine/setup.hpp"
#include "memscale/core/engine/baseline.hpp"
#include "memscale/core/engine/tier_report.hpp"
#include "memscale/core/pager_model.hpp"
#include "memscale/core/plan.hpp"

namespace memscale::engine_detail {

inline std::vector<std::string> techniques_of(const model::LayerState& s) {
  std::vector<std::string> t;  // plan_techniques() order, which is sorted
  if (s.checkpoint) t.push_back("checkpoint");
  if (s.offload_activations) t.push_back("offload_activations");
  if (s.offload_weights) t.push_back("offload_weights");
  if (s.tiled()) t.push_back("tile");
  return t;
}

/// The pager as it will run the plan (pager_model.hpp): one unit per layer with parameters
/// (the profiler's layers are the paging units; parameterless ones are not paged), pinned
/// where the plan keeps the layer on the device, in execution order, which is also the order
/// the pager prefetches in. A tied output head (parameters counted at its embedding:
/// model::layer_weights) shares the unit of the embedding of its vocabulary and width, so
/// its call acquires that unit a second time.
inline PagerModelInput pager_model_input(const ModelGraph& graph, const std::vector<model::LayerState>& states,
                                         std::uint64_t ram_bytes, std::uint64_t prefetch_n_ahead) {
  PagerModelInput in;
  in.ram_bytes = ram_bytes;
  in.prefetch_n_ahead = prefetch_n_ahead;
  std::vector<std::size_t> unit(graph.layers.size(), ~std::size_t{0});
  for (std::size_t l = 0; l < graph.layers.size(); ++l) {
    const Layer& layer = graph.layers[l];
    if (layer.param_bytes > 0) {
      unit[l] = in.layers.size();
      in.layers.push_back({layer.param_bytes, !states[l].offload_weights});
      in.accesses.push_back(unit[l]);
      continue;
    }
    if (layer.kind != "lm_head" || layer.dims.vocab <= 0 || layer.dims.hidden <= 0) continue;
    for (std::size_t e = 0; e < l; ++e) {
      const Layer& embedding = graph.layers[e];
      if (embedding.kind == "embedding" && unit[e] != ~std::size_t{0} && embedding.dims.vocab == layer.dims.vocab &&
          embedding.dims.hidden == layer.dims.hidden) {
        in.accesses.push_back(unit[e]);
        break;
      }
    }
  }
  return in;
}

/// The weight residency policy in the plan: the residency policy the pager runs, its resident
/// limit, the pinned hot set, the prefetch depth and the resident peak the pager will reach.
/// The resident limit is the parameters the plan keeps resident plus the window the memory
/// model counted (setup.step, which may be shallower than the depth the pager runs: see
/// apply_ram_budget and plan_inference); with a policy the Config names, up to its ram_bytes
/// as far as the budget's headroom over the window-counted peak allows. Within that limit the
/// pager's LRU keeps what has room whatever the depth, so the peak it reaches is replayed
/// (predicted_resident_bytes) rather than assumed to be the counted window.
inline OffloadPlan offload_plan(const ModelGraph& graph, const Setup& setup, const Config& config,
                                const std::vector<model::LayerState>& states, std::uint64_t predicted) {
  OffloadPlan o;
  bool paged = false;
  for (const auto& s : states) paged |= s.offload_weights;
  if (config.offload.kind == OffloadPolicy::Kind::none && !paged) return o;
  // With policy "none" the engine decided to page: the pager runs a plain budget policy
  // sized to what the plan keeps resident.
  o.policy = config.offload.kind == OffloadPolicy::Kind::none ? "budget" : to_string(config.offload.kind);
  const std::uint64_t resident = resident_weight_bytes(graph, states, setup.step.prefetch_n_ahead);
  const std::uint64_t headroom = predicted < setup.budget ? setup.budget - predicted : 0;
  // Policy none: the engine's own limit, with the headroom left as the margin of the
  // activation reservation (an estimate). A ram_bytes the user gives may use the headroom.
  o.ram_bytes = config.offload.kind == OffloadPolicy::Kind::none
                    ? resident
                    : std::max(resident, std::min(config.offload.ram_bytes, resident + headroom));
  o.prefetch_n_ahead = config.offload.prefetch_n_ahead;
  for (std::size_t l = 0; l < graph.layers.size(); ++l)
    if (!setup.pinned[l].empty()) o.hot_set.push_back(graph.layers[l].name);
  if (!graph.training)
    o.predicted_resident_bytes = predicted_resident_peak(pager_model_input(graph, states, o.ram_bytes, o.prefetch_n_ahead));
  return o;
}

/// The plan's predicted peak report: the memory model's (window-counted) evaluation, with
/// the weights charged at the pager's predicted resident peak where the plan pages.
inline model::PeakReport predicted_report(const ModelGraph& graph, const Setup& setup,
                                          const std::vector<model::LayerState>& states, const OffloadPlan& offload) {
  if (graph.training || offload.policy == "none") return model::evaluate(graph, states, setup.step);
  return model::charge_pager_peak(graph, states, setup.step, offload.predicted_resident_bytes);
}

struct Outcome {
  bool skipped = false;
  std::string skip_rule, skip_reason;
  std::string keep_reason;  ///< why an untouched layer was left alone
};

inline Plan build_plan(const ModelGraph& graph, const Setup& setup, const Config& config,
                       const std::vector<model::LayerState>& states, DecisionLog& log, const Outcome& outcome,
                       std::uint64_t unoptimized, std::uint64_t predicted, OffloadPlan offload) {
  Plan p;
  p.mode = to_string(config.mode);
  p.training = graph.training;
  p.budget_bytes = setup.budget;
  p.device_count = setup.device_count;
  p.unoptimized_peak_bytes = unoptimized;
  p.predicted_peak_bytes = predicted;
  p.pressure = static_cast<double>(unoptimized) / static_cast<double>(setup.budget);
  p.skipped = outcome.skipped;
  p.skip_reason = outcome.skipped ? outcome.skip_reason : "";
  const std::vector<model::LayerState> none(graph.layers.size());
  const std::vector<std::string> kv_tier = kv_tiers_of(graph, states, log.activation_tier);
  for (std::size_t l = 0; l < graph.layers.size(); ++l) {
    const Layer& layer = graph.layers[l];
    LayerPlan lp;
    lp.index = layer.index;
    lp.name = layer.name;
    lp.kind = layer.kind;
    lp.techniques = techniques_of(states[l]);
    lp.tile_chunks = states[l].tiled() ? states[l].chunks : 1;
    lp.weight_tier = states[l].offload_weights ? log.weight_tier[l] : "device";
    // Inference: offload_activations moves the layer's KV cache (kv_tier); the activations
    // between layers stay on the device.
    lp.activation_tier = graph.training && states[l].offload_activations ? log.activation_tier[l] : "device";
    lp.kv_tier = kv_tier[l];
    lp.pinned = !setup.pinned[l].empty();
    lp.bytes_before = model::layer_resident_bytes(layer, none[l], setup.step);
    lp.bytes_after = model::layer_resident_bytes(layer, states[l], setup.step);
    lp.before = model::layer_resident_terms(layer, none[l], setup.step);
    lp.after = model::layer_resident_terms(layer, states[l], setup.step);
    for (const auto& [rule, reason] : log.layer_rules[l]) {
      lp.rules.push_back(rule);
      lp.reasons.push_back(reason);
    }
    if (lp.pinned) {
      lp.rules.push_back("offload_weights.hot_set");
      lp.reasons.push_back(setup.pinned[l]);
    }
    if (lp.rules.empty()) {
      lp.rules.push_back(outcome.skipped ? outcome.skip_rule : "keep.unchanged");
      lp.reasons.push_back(outcome.skipped ? outcome.skip_reason : outcome.keep_reason);
    }
    p.layers.push_back(std::move(lp));
  }
  p.rejected = std::move(log.rejected);
  p.trace = std::move(log.trace);
  if (!graph.training) p.reservation = setup.reservation;
  p.offload = std::move(offload);
  if (!graph.training) {
    bool moved = !config.tiers.empty();
    for (const auto& s : states) moved |= s.offload_weights || s.offload_activations;
    if (moved) p.tier_policy = realised_tiers(graph, setup, config, states, log.weight_tier, kv_tier);
  }
  return p;
}

}  // namespace memscale::engine_detail

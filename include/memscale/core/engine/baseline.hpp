// What the Config decides before any rule runs, whatever the budget: techniques forced
// "on" (always applied) or "off" (never applied), the weight residency limit
// (offload.ram_bytes) and, for inference, tensor-type splits fixed in Config.tiers.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "memscale/core/engine/decisions.hpp"
#include "memscale/core/engine/setup.hpp"
#include "memscale/core/rules/capability.hpp"
#include "memscale/core/rules/checkpoint.hpp"
#include "memscale/core/rules/offload.hpp"
#include "memscale/core/rules/tiling.hpp"

namespace memscale::engine_detail {

using rules::Technique;

struct Baseline {
  std::vector<model::LayerState> states;
  std::vector<std::array<bool, 4>> allowed;  ///< the rules may still decide (auto and undecided)
  bool anything_forced = false;              ///< the Config asks for something explicitly
};

inline const char* no_backward_note(bool training, Technique t) {
  return !training && (t == Technique::checkpoint || t == Technique::tile)
             ? "; no effect on an inference step (there is no backward pass)"
             : "";
}

/// Applies techniques the Config forces on and records the ones it forces off.
inline Baseline forced_baseline(const ModelGraph& graph, const Setup& setup, DecisionLog& log, TierLedger& ledger) {
  const std::size_t n = graph.layers.size();
  Baseline b;
  b.states.assign(n, {});
  b.allowed.assign(n, {true, true, true, true});
  std::vector<std::array<bool, 4>> forced(n, {false, false, false, false});
  // A technique forced on by `techniques.X` that no layer of the graph is capable of.
  std::array<std::string, 4> incapable_everywhere;
  std::array<bool, 4> capable_somewhere{false, false, false, false};
  for (std::size_t l = 0; l < n; ++l) {
    const Layer& layer = graph.layers[l];
    for (Technique t : rules::kTechniques) {
      const int i = static_cast<int>(t);
      const rules::Setting& s = setup.overrides.layers[l][i];
      const rules::Candidate capability = rules::capability_rule(layer, t);
      if (capability.eligible) capable_somewhere[i] = true;
      if (s.value == Switch::off) {
        b.allowed[l][i] = false;
        log.reject(layer, t, "override.off", s.source + " is \"off\"");
        continue;
      }
      if (!capability.eligible) {
        b.allowed[l][i] = false;
        if (s.value == Switch::on && s.from_glob)
          throw ConfigError(s.source + ": " + rules::plan_name(t) + " \"on\" for layer \"" + layer.name +
                            "\", but the runtime cannot apply it there: " + capability.reason +
                            "; drop the override or set it \"auto\"");
        if (s.value == Switch::on && incapable_everywhere[i].empty()) incapable_everywhere[i] = capability.reason;
        log.reject(layer, t, capability.rule,
                   (s.value == Switch::on ? s.source + " is \"on\" but " : std::string()) + capability.reason);
        continue;
      }
      if (s.value == Switch::automatic) continue;
      b.allowed[l][i] = false;
      if (t == Technique::tile && rules::max_tile_chunks(layer, graph) < 2) {
        const std::string why = layer.tileable.empty() ? "it has no tileable axis" : "its tileable axis has length 1";
        if (s.from_glob)
          throw ConfigError(s.source + ": tiling \"on\" for layer \"" + layer.name + "\", but " + why +
                            " (only position-wise layers such as MLPs and the LM head can be tiled)");
        log.reject(layer, t, "tile.not_tileable", s.source + " is \"on\" but " + why);
        continue;
      }
      if (t == Technique::offload_weights && !setup.pinned[l].empty()) {
        if (s.from_glob)
          throw ConfigError(s.source + ": offload_weights \"on\" for layer \"" + layer.name + "\", which is " +
                            setup.pinned[l] + "; unpin it or drop the override");
        log.reject(layer, t, "offload_weights.hot_set", s.source + " is \"on\" but the layer is " + setup.pinned[l]);
        continue;
      }
      forced[l][i] = true;
      b.anything_forced = true;
      auto& state = b.states[l];
      if (t == Technique::checkpoint) state.checkpoint = true;
      if (t == Technique::offload_activations) state.offload_activations = true;
      if (t == Technique::offload_weights) state.offload_weights = true;
      if (t == Technique::tile) state.chunks = std::min(rules::kForcedTileChunks, rules::max_tile_chunks(layer, graph));
    }
  }
  for (Technique t : rules::kTechniques) {
    const int i = static_cast<int>(t);
    if (!capable_somewhere[i] && !incapable_everywhere[i].empty())
      throw ConfigError(std::string("techniques.") + rules::config_name(t) + ": \"on\", but no layer of this " +
                        (graph.training ? "training" : "inference") + " graph can take it (" +
                        incapable_everywhere[i] + "); set it \"auto\" or \"off\"");
  }
  // Tiers of forced offloads, once every layer's final forced state is known.
  for (std::size_t l = 0; l < n; ++l) {
    for (Technique t : rules::kTechniques) {
      const int i = static_cast<int>(t);
      if (!forced[l][i]) continue;
      std::string reason = "forced by " + setup.overrides.layers[l][i].source + no_backward_note(setup.step.training, t);
      if (t == Technique::offload_weights || t == Technique::offload_activations) {
        const std::uint64_t bytes = offloaded_bytes(graph.layers[l], t, b.states[l], setup.step);
        const auto tier = ledger.place(bytes);
        if (!tier)
          throw ConfigError(setup.overrides.layers[l][i].source + ": " + rules::plan_name(t) + " \"on\" for layer \"" +
                            graph.layers[l].name + "\" needs " + format_bytes(bytes) + " below the device, but only " +
                            ledger.describe());
        ledger.take(*tier, bytes);
        (t == Technique::offload_weights ? log.weight_tier : log.activation_tier)[l] = *tier;
        reason += " (to " + *tier + ")";
      }
      if (t == Technique::tile) reason += " (" + std::to_string(b.states[l].chunks) + " chunks)";
      log.decide(l, "override.on", reason);
    }
  }
  return b;
}

/// Layers a weight-moving step may pick, cheapest first (the weight rule's order).
inline std::vector<std::size_t> weight_offload_order(const ModelGraph& graph, const Setup& setup, const Baseline& b,
                                                     Technique t) {
  const rules::RuleContext ctx{graph, setup.step, setup.rates};
  std::vector<std::pair<double, std::size_t>> keyed;
  for (std::size_t l = 0; l < graph.layers.size(); ++l) {
    if (!b.allowed[l][static_cast<int>(t)]) continue;
    const rules::Candidate c = t == Technique::offload_weights
                                   ? rules::weight_offload_rule(graph.layers[l], b.states[l], ctx, setup.pinned[l])
                                   : rules::activation_offload_rule(graph.layers[l], b.states[l], ctx);
    if (c.eligible) keyed.emplace_back(c.cost_per_byte, l);
  }
  std::sort(keyed.begin(), keyed.end());  // (cost, index): deterministic
  std::vector<std::size_t> order;
  for (const auto& [cost, l] : keyed) order.push_back(l);
  return order;
}

/// Weight bytes the pager's resident limit must hold (its books count parameters; buffers
/// stay on the device outside it): the parameters of the layers kept on the device plus the
/// window of `prefetch` paged layers ahead of the one computing.
inline std::uint64_t resident_weight_bytes(const ModelGraph& graph, const std::vector<model::LayerState>& states,
                                           std::uint64_t prefetch) {
  std::int64_t resident = 0, largest = 0, paged = 0;
  for (std::size_t l = 0; l < graph.layers.size(); ++l) {
    const std::int64_t w = model::s64(graph.layers[l].param_bytes);
    if (states[l].offload_weights) largest = std::max(largest, w), paged += w;
    else resident += w;
  }
  return model::u64(resident + model::window_bytes(largest, paged, prefetch));
}

/// Offloads weights (cheapest first, never the hot set) until resident weights + the window
/// of `prefetch` layers ahead fit `limit`; returns the resident weight bytes it ends at.
/// `log` null: a trial on copies (nothing is recorded).
inline std::uint64_t offload_to_ram_limit(const ModelGraph& graph, const Setup& setup, std::uint64_t limit,
                                          std::uint64_t prefetch, Baseline& b, TierLedger& ledger, DecisionLog* log) {
  for (std::size_t l : weight_offload_order(graph, setup, b, Technique::offload_weights)) {
    const std::uint64_t before = resident_weight_bytes(graph, b.states, prefetch);
    if (before <= limit) break;
    model::LayerState next = b.states[l];
    next.offload_weights = true;
    const std::uint64_t bytes = offloaded_bytes(graph.layers[l], Technique::offload_weights, next, setup.step);
    const auto tier = ledger.place(bytes);
    if (!tier) {
      if (log)
        log->reject(graph.layers[l], Technique::offload_weights, "offload.no_room",
                    "no room below the device for " + format_bytes(bytes) + " (" + ledger.describe() + ")");
      continue;
    }
    ledger.take(*tier, bytes);
    b.states[l] = next;
    b.allowed[l][static_cast<int>(Technique::offload_weights)] = false;
    if (!log) continue;
    log->weight_tier[l] = *tier;
    log->decide(l, "offload_weights.ram_budget",
                "offload.ram_bytes is " + format_bytes(limit) + " and resident weights were " + format_bytes(before) +
                    "; paged to " + *tier);
  }
  return resident_weight_bytes(graph, b.states, prefetch);
}

/// Weight residency policy: with policy budget or pinned_hot_set, offload weights (cheapest first, never
/// the hot set) until resident weights + the prefetch window fit offload.ram_bytes. The pager
/// never holds more than ram_bytes (it drops a prefetch that does not fit), so where
/// ram_bytes cannot hold the window of offload.prefetch_n_ahead layers the memory model counts
/// the deepest window that fits (setup.step) instead of refusing; only ram_bytes below the
/// hot set plus the layer computing is refused, as the pager itself refuses it.
inline void apply_ram_budget(const ModelGraph& graph, Setup& setup, const OffloadPolicy& policy, Baseline& b,
                             DecisionLog& log, TierLedger& ledger) {
  if (policy.kind == OffloadPolicy::Kind::none) return;
  b.anything_forced = true;
  const std::uint64_t limit = policy.ram_bytes;
  if (limit > setup.budget)
    throw ConfigError("offload.ram_bytes: got " + std::to_string(limit) + " (" + format_bytes(limit) +
                      "), more than memory_budget " + std::to_string(setup.budget) + " (" + format_bytes(setup.budget) +
                      "); resident weights must fit inside the budget");
  const std::uint64_t asked = setup.step.prefetch_n_ahead;
  std::uint64_t depth = asked;
  for (; depth > 0; --depth) {
    Baseline trial = b;
    TierLedger room = ledger;
    if (offload_to_ram_limit(graph, setup, limit, depth, trial, room, nullptr) <= limit) break;
  }
  if (depth < asked) {
    log.trace.push_back("prefetch window: offload.ram_bytes " + format_bytes(limit) + " cannot hold " +
                        std::to_string(asked) + " layer(s) ahead beside the weights that stay resident; the memory "
                        "model counts " + std::to_string(depth) +
                        " and the pager prefetches only where ram_bytes has room");
    setup.step.prefetch_n_ahead = depth;
  }
  const std::uint64_t resident = offload_to_ram_limit(graph, setup, limit, depth, b, ledger, &log);
  if (resident > limit) {
    std::uint64_t hot = 0, kept = 0, largest = 0;
    std::string largest_name;
    for (std::size_t l = 0; l < graph.layers.size(); ++l) {
      const std::uint64_t w = graph.layers[l].param_bytes;
      if (b.states[l].offload_weights) {
        if (largest_name.empty() || w > largest) largest = w, largest_name = graph.layers[l].name;
      } else {
        (setup.pinned[l].empty() ? kept : hot) += w;
      }
    }
    throw ConfigError("offload.ram_bytes: got " + std::to_string(limit) + " (" + format_bytes(limit) +
                      "), smaller than the " + std::to_string(resident) + " (" + format_bytes(resident) +
                      ") of weights that stay resident: the pinned hot set " + format_bytes(hot) +
                      (kept ? ", layers left on the device " + format_bytes(kept) +
                                  " (offload_weights \"off\", or no room below the device: " + ledger.describe() + ")"
                            : std::string()) +
                      (largest_name.empty() ? std::string()
                                            : ", and the largest paged layer \"" + largest_name + "\" (" +
                                                  format_bytes(largest) + ") while it computes") +
                      "; raise ram_bytes to at least " + std::to_string(resident) +
                      " or pin less (pin_embeddings, pin_output_head, pin_last_n_layers)");
  }
  log.trace.push_back("offload.ram_bytes " + format_bytes(limit) + ": resident weights " + format_bytes(resident) +
                      ", prefetch " + std::to_string(depth) + " layer(s) ahead");
}

/// Inference: Config.tiers fixes the split of weights or KV cache; realise it per layer
/// (cheapest layers leave the device first; host gets the cpu share, disk the rest) and
/// let no rule move that tensor type further.
inline void apply_fixed_tiers(const ModelGraph& graph, const Setup& setup, const Config& config, Baseline& b,
                              DecisionLog& log, TierLedger& ledger) {
  if (config.tiers.empty()) return;
  b.anything_forced = true;
  if (setup.step.training) {
    log.trace.push_back("tiers: applies to inference plans; ignored for this training graph");
    return;
  }
  for (const auto& [type, split] : config.tiers) {
    if (type == "activations") continue;  // on the device (make_setup refuses any other split)
    const Technique t = type == "weights" ? Technique::offload_weights : Technique::offload_activations;
    auto bytes_of = [&](std::size_t l) {
      const Layer& layer = graph.layers[l];
      return type == "weights" ? layer.param_bytes + layer.buffer_bytes : layer.kv_cache_bytes;
    };
    auto offloaded = [&](std::size_t l) {
      return t == Technique::offload_weights ? b.states[l].offload_weights : b.states[l].offload_activations;
    };
    std::uint64_t total = 0, resident = 0;
    for (std::size_t l = 0; l < graph.layers.size(); ++l) {
      total += bytes_of(l);
      if (!offloaded(l)) resident += bytes_of(l);
    }
    // On a CPU-only machine host RAM is the device: the gpu and cpu shares both stay there.
    const double device_share = setup.rates.gpu ? split.gpu : split.gpu + split.cpu;
    const auto target = static_cast<std::uint64_t>(std::floor(static_cast<double>(total) * device_share / 100.0));
    const auto host_target = static_cast<std::uint64_t>(std::floor(static_cast<double>(total) * split.cpu / 100.0));
    std::uint64_t host_used = 0;
    const std::string source = "tiers." + type;
    for (std::size_t l : weight_offload_order(graph, setup, b, t)) {
      if (resident <= target) break;
      const std::uint64_t bytes = bytes_of(l);
      std::string tier = setup.rates.gpu && host_used + bytes <= host_target && ledger.host_used + bytes <= ledger.host_capacity
                             ? "host"
                             : "disk";
      if (tier == "disk" && ledger.disk_used + bytes > ledger.disk_capacity)
        throw ConfigError(source + ": the disk share needs more than the " + ledger.describe());
      ledger.take(tier, bytes);
      if (tier == "host") host_used += bytes;
      (t == Technique::offload_weights ? b.states[l].offload_weights : b.states[l].offload_activations) = true;
      (t == Technique::offload_weights ? log.weight_tier : log.activation_tier)[l] = tier;
      resident -= bytes;
      log.decide(l, "tiers.user_split", source + " keeps " + json_fields::format_number(split.gpu) + "% on the device; " +
                                            format_bytes(bytes) + " to " + tier);
    }
    if (resident > target)
      throw ConfigError(source + ": gpu " + json_fields::format_number(split.gpu) + "% allows " + format_bytes(target) +
                        " on the device, but " + format_bytes(resident) +
                        " must stay (pinned layers or overrides set to \"off\")");
    for (std::size_t l = 0; l < graph.layers.size(); ++l) {
      bool& allowed = b.allowed[l][static_cast<int>(t)];
      if (allowed && !offloaded(l) && bytes_of(l) > 0)
        log.reject(graph.layers[l], t, "tiers.user_split", source + " fixes this tensor type's split; the layer stays");
      allowed = false;
    }
  }
}

}  // namespace memscale::engine_detail

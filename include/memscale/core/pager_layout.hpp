// What the weight pager pages: the layers, their sizes, their home tier, and which of
// them the weight residency policy pins. Pure functions, no threads: the pager and the
// Python wrapper both call them, and the wrapper calls them *before* writing any file so
// a budget that cannot work is refused with nothing written.
#pragma once

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "memscale/core/errors.hpp"
#include "memscale/core/offload_policy.hpp"
#include "memscale/core/sizes.hpp"

namespace memscale {

/// Where a layer's weights live. `device` = resident where compute runs (GPU, or RAM on
/// a CPU-only machine); `host` = pinned host RAM (CUDA machines only); `disk` = a file.
enum class WeightTier { device, host, disk };

inline const char* to_string(WeightTier tier) {
  return tier == WeightTier::device ? "device" : tier == WeightTier::host ? "host" : "disk";
}

/// "device" | "host" | "disk"; anything else is a ConfigError naming `path`.
inline WeightTier weight_tier_from_string(const std::string& text, const std::string& path) {
  if (text == "device") return WeightTier::device;
  if (text == "host") return WeightTier::host;
  if (text == "disk") return WeightTier::disk;
  throw ConfigError(path + ": got \"" + text + "\", expected \"device\", \"host\" or \"disk\"");
}

/// One paging unit (a block, an embedding, the head, ...).
struct PagedLayer {
  std::string name;
  /// ModelGraph kind: embedding|attention|mlp|block|norm|lm_head|conv|recurrent|other.
  /// The hot set is derived from it.
  std::string kind = "other";
  std::uint64_t bytes = 0;
  /// Tier holding the layer's weights while it is not resident (host or disk).
  WeightTier home = WeightTier::disk;
  /// Never evicted whatever the policy: the plan keeps its weights on the device
  /// (LayerPlan::weight_tier "device"), FlexGen's always-resident share of the weights.
  bool pinned = false;
};

/// The pinned hot set of a policy, with the byte figures error messages quote.
struct HotSet {
  std::vector<bool> pinned;  ///< per layer
  std::uint64_t pinned_bytes = 0;
  std::uint64_t embedding_bytes = 0, head_bytes = 0, last_layers_bytes = 0;
  std::uint64_t planned_bytes = 0;  ///< layers pinned by the plan (PagedLayer::pinned) and not by the policy
  std::uint64_t largest_unpinned_bytes = 0;
  std::string largest_unpinned_name;
  std::size_t pinned_count() const { return static_cast<std::size_t>(std::count(pinned.begin(), pinned.end(), true)); }
};

/// Layers the pinned_hot_set policy counts as "attention layers" for pin_last_n_layers: blocks (or bare
/// attention layers when the model has no block wrapper).
inline bool is_depth_layer(const PagedLayer& l) { return l.kind == "block" || l.kind == "attention"; }

/// Pinned layers under `policy`:
/// - none: every layer (nothing is paged);
/// - budget: none;
/// - pinned_hot_set: embeddings (pin_embeddings), the output head (pin_output_head) and the
///   last `pin_last_n_layers` blocks in execution order;
/// and, under every policy, the layers marked PagedLayer::pinned.
inline HotSet hot_set(const std::vector<PagedLayer>& layers, const OffloadPolicy& policy) {
  HotSet h;
  h.pinned.assign(layers.size(), false);
  if (policy.kind == OffloadPolicy::Kind::none) {
    std::fill(h.pinned.begin(), h.pinned.end(), true);
  } else if (policy.kind == OffloadPolicy::Kind::pinned_hot_set) {
    std::vector<std::size_t> depth;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      if (policy.pin_embeddings && layers[i].kind == "embedding") h.pinned[i] = true, h.embedding_bytes += layers[i].bytes;
      if (policy.pin_output_head && layers[i].kind == "lm_head") h.pinned[i] = true, h.head_bytes += layers[i].bytes;
      if (is_depth_layer(layers[i])) depth.push_back(i);
    }
    const std::size_t n = std::min<std::size_t>(depth.size(), policy.pin_last_n_layers);
    for (std::size_t k = depth.size() - n; k < depth.size(); ++k) {
      h.pinned[depth[k]] = true;
      h.last_layers_bytes += layers[depth[k]].bytes;
    }
  }
  for (std::size_t i = 0; i < layers.size(); ++i)
    if (layers[i].pinned && !h.pinned[i]) h.pinned[i] = true, h.planned_bytes += layers[i].bytes;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (h.pinned[i]) {
      h.pinned_bytes += layers[i].bytes;
    } else if (h.largest_unpinned_name.empty() || layers[i].bytes > h.largest_unpinned_bytes) {
      h.largest_unpinned_bytes = layers[i].bytes;
      h.largest_unpinned_name = layers[i].name;
    }
  }
  return h;
}

/// Smallest ram_bytes with which every layer can run: the hot set plus the largest
/// unpinned layer (one layer must be resident while it computes).
inline std::uint64_t min_ram_bytes(const HotSet& h) { return h.pinned_bytes + h.largest_unpinned_bytes; }

/// Refuses layer lists and budgets the pager cannot serve, with messages that say what
/// was given, what it must be, and how big the hot set is. Throws ConfigError.
inline void validate_pager_layout(const std::vector<PagedLayer>& layers, const OffloadPolicy& policy) {
  std::set<std::string> names;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (!names.insert(layers[i].name).second)
      throw ConfigError("pager layers[" + std::to_string(i) + "].name: \"" + layers[i].name +
                        "\" appears twice; layer names must be unique");
    if (layers[i].home == WeightTier::device)
      throw ConfigError("pager layers[" + std::to_string(i) + "].home: got \"device\" for \"" + layers[i].name +
                        "\"; the home tier of a paged layer is \"host\" or \"disk\"");
  }
  if (policy.kind == OffloadPolicy::Kind::none) return;
  const std::uint64_t budget = policy.ram_bytes;
  const HotSet h = hot_set(layers, policy);
  if (h.pinned_bytes > budget)
    throw ConfigError("offload.ram_bytes: got " + std::to_string(budget) + " (" + format_bytes(budget) +
                      "), smaller than the pinned hot set of " + std::to_string(h.pinned_bytes) + " (" +
                      format_bytes(h.pinned_bytes) + ": embeddings " + format_bytes(h.embedding_bytes) +
                      ", output head " + format_bytes(h.head_bytes) + ", last " +
                      std::to_string(policy.pin_last_n_layers) + " layers " + format_bytes(h.last_layers_bytes) +
                      (h.planned_bytes ? ", kept on the device by the plan " + format_bytes(h.planned_bytes) : std::string()) +
                      "); raise ram_bytes to at least " + std::to_string(min_ram_bytes(h)) +
                      " or pin less (pin_embeddings, pin_output_head, pin_last_n_layers)");
  const PagedLayer* largest = nullptr;
  for (const auto& l : layers)
    if (!largest || l.bytes > largest->bytes) largest = &l;
  if (largest && largest->bytes > budget) {
    const PagedLayer& l = *largest;
    throw ConfigError("offload.ram_bytes: got " + std::to_string(budget) + " (" + format_bytes(budget) +
                      "), smaller than the single layer \"" + l.name + "\" of " + std::to_string(l.bytes) + " (" +
                      format_bytes(l.bytes) + "); a layer is paged whole, so ram_bytes must be at least " +
                      std::to_string(l.bytes));
  }
  if (min_ram_bytes(h) > budget)
    throw ConfigError("offload.ram_bytes: got " + std::to_string(budget) + " (" + format_bytes(budget) +
                      "), but the pinned hot set (" + format_bytes(h.pinned_bytes) + ") plus the largest paged layer \"" +
                      h.largest_unpinned_name + "\" (" + format_bytes(h.largest_unpinned_bytes) + ") need " +
                      std::to_string(min_ram_bytes(h)) + " (" + format_bytes(min_ram_bytes(h)) +
                      "); raise ram_bytes to at least that or pin less");
}

}  // namespace memscale

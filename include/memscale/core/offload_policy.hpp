// Weight residency policy: which layer weights stay resident and which are
// paged to the next tier by an LRU pager with a background prefetch.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace memscale {

struct OffloadPolicy {
  enum class Kind { none, budget, pinned_hot_set };

  Kind kind = Kind::none;
  /// Maximum bytes of layer weights resident at once (budget, pinned_hot_set).
  std::uint64_t ram_bytes = 0;
  /// pinned_hot_set only: never evict the token embeddings / the output head.
  bool pin_embeddings = true;
  bool pin_output_head = true;
  /// pinned_hot_set only: number of trailing (deepest) layers always resident.
  std::uint64_t pin_last_n_layers = 0;
  /// Layers the background thread loads ahead of the one computing (budget, pinned_hot_set).
  std::uint64_t prefetch_n_ahead = 1;
  /// Directory of the disk tier ("" = a private directory under the system temp dir).
  std::string disk_dir;

  bool operator==(const OffloadPolicy&) const = default;

  /// The resident-weight limit, none for Kind::none (unlimited).
  std::optional<std::uint64_t> ram_budget_bytes() const {
    if (kind == Kind::none) return std::nullopt;
    return ram_bytes;
  }
  bool is_disabled() const { return kind == Kind::none; }
};

inline const char* to_string(OffloadPolicy::Kind kind) {
  switch (kind) {
    case OffloadPolicy::Kind::budget: return "budget";
    case OffloadPolicy::Kind::pinned_hot_set: return "pinned_hot_set";
    default: return "none";
  }
}

}  // namespace memscale

// Per-tensor-type placement over GPU / CPU / disk (seed 004): disk is the remainder.
#pragma once

#include <string>

namespace memscale {

/// Share of one tensor type on each tier, in percent. disk = 100 - gpu - cpu.
struct TierSplit {
  double gpu = 100.0;
  double cpu = 0.0;
  double disk() const { return 100.0 - gpu - cpu; }
  bool operator==(const TierSplit&) const = default;
};

/// Placement of all three tensor types.
struct TierPolicy {
  TierSplit weights, kv_cache, activations;
  bool operator==(const TierPolicy&) const = default;
};

inline const char* tier_tensor_types[] = {"weights", "kv_cache", "activations"};

}  // namespace memscale

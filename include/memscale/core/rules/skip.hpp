// Rules that decide to plan nothing: the tiny-model skip (a tiny model on a big device
// is left unoptimized unless force_optimize=True) and mode "off".
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "memscale/core/sizes.hpp"

namespace memscale::rules {

/// A model is tiny when its unoptimized peak needs at most this share of the device ...
inline constexpr double kTinyDeviceShare = 0.10;
/// ... and the budget leaves at least 2x headroom (pressure at most this).
inline constexpr double kTinyMaxPressure = 0.5;

struct SkipDecision {
  bool skip = false;
  std::string rule, reason;
};

/// skip.tiny_model | skip.forced (force_optimize or an explicit "on" keeps planning)
inline SkipDecision tiny_model_rule(std::uint64_t unoptimized_peak, std::uint64_t device_bytes, double pressure,
                                    bool force_optimize, bool anything_forced) {
  SkipDecision d;
  const bool tiny = static_cast<double>(unoptimized_peak) <= kTinyDeviceShare * static_cast<double>(device_bytes) &&
                    pressure <= kTinyMaxPressure;
  if (!tiny) return d;
  char share[64];
  std::snprintf(share, sizeof share, "%.1f%%", 100.0 * static_cast<double>(unoptimized_peak) /
                                                  static_cast<double>(device_bytes == 0 ? 1 : device_bytes));
  char p[32];
  std::snprintf(p, sizeof p, "%.2f", pressure);
  const std::string facts = "tiny model: unoptimized peak " + format_bytes(unoptimized_peak) + " is " + share +
                            " of the device (threshold 10%) at pressure " + p + " (threshold 0.50)";
  if (force_optimize || anything_forced) {
    d.rule = "skip.forced";
    d.reason = facts + "; planned anyway because " +
               (force_optimize ? std::string("force_optimize is set") : std::string("a technique is forced on"));
    return d;
  }
  d.skip = true;
  d.rule = "skip.tiny_model";
  d.reason = facts + "; nothing to do (set force_optimize=True to plan anyway)";
  return d;
}

/// mode.off
inline SkipDecision mode_off_rule(bool anything_forced) {
  SkipDecision d;
  d.rule = "mode.off";
  d.skip = !anything_forced;
  d.reason = anything_forced ? "mode is \"off\": only techniques forced \"on\" by the Config are applied"
                             : "mode is \"off\": no technique is applied";
  return d;
}

}  // namespace memscale::rules

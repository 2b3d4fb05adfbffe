// Plan.summary(): the table wrap() logs — one row per layer (techniques, bytes before ->
// after) and the totals.
#pragma once

#include <algorithm>
#include <cstdio>
#include <string>

#include "memscale/core/plan.hpp"
#include "memscale/core/sizes.hpp"

namespace memscale {

namespace summary_detail {

inline std::string pad(std::string s, std::size_t width) {
  if (s.size() > width) s = s.substr(0, width - 3) + "...";
  s.resize(width, ' ');
  return s;
}

inline std::string pad_left(const std::string& s, std::size_t width) {
  return s.size() >= width ? s : std::string(width - s.size(), ' ') + s;
}

inline std::string techniques_of(const LayerPlan& l) {
  std::string t;
  for (const auto& x : l.techniques) {
    std::string item = x;
    if (x == "tile") item += "x" + std::to_string(l.tile_chunks);
    if (x == "offload_weights") item += "->" + l.weight_tier;
    // An inference layer's offload_activations is its KV cache.
    if (x == "offload_activations") item = l.kv_tier != "none" ? "kv_cache->" + l.kv_tier : item + "->" + l.activation_tier;
    t += (t.empty() ? "" : ", ") + item;
  }
  if (l.pinned) t += std::string(t.empty() ? "" : ", ") + "pinned";
  return t.empty() ? "-" : t;
}

}  // namespace summary_detail

/// Human-readable table of `plan`.
inline std::string plan_summary(const Plan& plan) {
  using namespace summary_detail;
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "MemScale plan (%s, %s, %lld device%s): budget %s, unoptimized peak %s, pressure %.2f\n",
                plan.mode.c_str(), plan.training ? "training" : "inference", static_cast<long long>(plan.device_count),
                plan.device_count == 1 ? "" : "s", format_bytes(plan.budget_bytes).c_str(),
                format_bytes(plan.unoptimized_peak_bytes).c_str(), plan.pressure);
  out += line;
  if (plan.skipped) return out + "skipped: " + plan.skip_reason + "\n";
  std::size_t name_width = 5;
  for (const auto& l : plan.layers) name_width = std::max(name_width, l.name.size());
  name_width = std::min<std::size_t>(name_width, 40);
  out += pad_left("#", 5) + "  " + pad("layer", name_width) + "  " + pad("techniques", 44) + pad_left("before", 12) +
         pad_left("after", 12) + "\n";
  std::uint64_t before = 0, after = 0;
  std::size_t changed = 0;
  for (const auto& l : plan.layers) {
    before += l.bytes_before;
    after += l.bytes_after;
    changed += !l.techniques.empty();
    out += pad_left(std::to_string(l.index), 5) + "  " + pad(l.name.empty() ? "(root)" : l.name, name_width) + "  " +
           pad(techniques_of(l), 44) + pad_left(format_bytes(l.bytes_before), 12) +
           pad_left(format_bytes(l.bytes_after), 12) + "\n";
  }
  out += pad_left("", 5) + "  " + pad("total", name_width) + "  " +
         pad(std::to_string(changed) + " of " + std::to_string(plan.layers.size()) + " layers changed", 44) +
         pad_left(format_bytes(before), 12) + pad_left(format_bytes(after), 12) + "\n";
  const double saved = plan.unoptimized_peak_bytes > 0
                           ? 100.0 * (1.0 - static_cast<double>(plan.predicted_peak_bytes) /
                                                static_cast<double>(plan.unoptimized_peak_bytes))
                           : 0.0;
  // Forced techniques can cost more than they save: say "above" then, not "-x% below".
  std::snprintf(line, sizeof line, "predicted peak %s (%.1f%% %s unoptimized), %s of budget %s unused\n",
                format_bytes(plan.predicted_peak_bytes).c_str(), saved < 0 ? -saved : saved, saved < 0 ? "above" : "below",
                format_bytes(plan.budget_bytes > plan.predicted_peak_bytes ? plan.budget_bytes - plan.predicted_peak_bytes : 0)
                    .c_str(),
                format_bytes(plan.budget_bytes).c_str());
  out += line;
  if (plan.reservation.used)
    out += "activation reservation: " + format_bytes(plan.reservation.per_device_bytes) + " per device (" +
           plan.reservation.source + (plan.reservation.calibrated ? ", calibrated" : "") + ")\n";
  if (plan.offload.policy != "none") {
    out += "weight offload: policy " + plan.offload.policy + ", resident limit " + format_bytes(plan.offload.ram_bytes) +
           " (the pager holds " + format_bytes(plan.offload.predicted_resident_bytes) + " at its peak)" + ", prefetch " + std::to_string(plan.offload.prefetch_n_ahead) + " ahead, hot set " +
           std::to_string(plan.offload.hot_set.size()) + " layer" + (plan.offload.hot_set.size() == 1 ? "" : "s") + "\n";
  }
  if (plan.tier_policy.used) {
    const auto& p = plan.tier_policy.policy;
    std::snprintf(line, sizeof line,
                  "tiers (gpu/cpu/disk %%): weights %.0f/%.0f/%.0f, kv_cache %.0f/%.0f/%.0f, activations %.0f/%.0f/%.0f; "
                  "%.4f s per step (compute %.4f, io %.4f)\n",
                  p.weights.gpu, p.weights.cpu, p.weights.disk(), p.kv_cache.gpu, p.kv_cache.cpu, p.kv_cache.disk(),
                  p.activations.gpu, p.activations.cpu, p.activations.disk(), plan.tier_policy.total_s,
                  plan.tier_policy.compute_s, plan.tier_policy.io_s);
    out += line;
  }
  std::size_t kv[3] = {0, 0, 0};
  for (const auto& l : plan.layers)
    if (l.kv_tier != "none") ++kv[l.kv_tier == "device" ? 0 : l.kv_tier == "host" ? 1 : 2];
  if (kv[0] + kv[1] + kv[2] > 0)
    out += "KV cache per layer: " + std::to_string(kv[0]) + " on the device, " + std::to_string(kv[1]) + " on the host, " +
           std::to_string(kv[2]) + " on disk\n";
  if (!plan.rejected.empty()) out += std::to_string(plan.rejected.size()) + " alternatives considered and rejected (see plan.rejected)\n";
  return out;
}

}  // namespace memscale

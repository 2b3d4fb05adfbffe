// Plan: the engine's output and the executor's only input. Plain data; JSON written
// with sorted keys and rounded doubles so identical inputs give identical text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memscale/core/json_fields.hpp"
#include "memscale/core/tier_policy.hpp"

namespace memscale {

/// Techniques as the Plan names them.
inline const std::vector<std::string>& plan_techniques() {
  static const std::vector<std::string> names = {"checkpoint", "offload_activations", "offload_weights", "tile"};
  return names;
}

/// A layer's bytes on the device by kind (reports draw them as stacked bars).
struct LayerBytes {
  std::uint64_t weights = 0;      ///< parameters + buffers resident on the device
  std::uint64_t grads = 0;        ///< gradients kept once created (training)
  std::uint64_t optimizer = 0;    ///< optimizer state resident on the device (training)
  std::uint64_t activations = 0;  ///< kept from forward to backward (training)
  std::uint64_t kv_cache = 0;     ///< KV cache resident on the device (inference)
  bool operator==(const LayerBytes&) const = default;
};

struct LayerPlan {
  std::int64_t index = 0;
  std::string name, kind;
  std::vector<std::string> techniques;  ///< sorted subset of plan_techniques()
  std::int64_t tile_chunks = 1;
  std::string weight_tier = "device";      ///< device|host|disk
  std::string activation_tier = "device";  ///< device|host|disk
  std::string kv_tier = "none";            ///< inference: where the layer's KV cache lives, device|host|disk; none: it has none
  bool pinned = false;
  std::uint64_t bytes_before = 0, bytes_after = 0;
  LayerBytes before, after;  ///< the same figures by kind, without / with the techniques
  std::vector<std::string> rules, reasons;
  bool operator==(const LayerPlan&) const = default;

  bool has(const std::string& technique) const {
    for (const auto& t : techniques)
      if (t == technique) return true;
    return false;
  }
};

/// A technique the engine considered for a layer and did not apply, and why.
struct Rejection {
  std::string layer, technique, rule, reason;
  bool operator==(const Rejection&) const = default;
};

/// Inference activation reservation as computed, with its inputs.
struct Reservation {
  bool used = false;
  std::uint64_t bytes = 0;           ///< total reserved, all devices' share included
  std::uint64_t per_device_bytes = 0;
  std::uint64_t scaled_bytes = 0;    ///< the dims-based estimate before the cap
  /// The output head's logits for the step's tokens plus its input (reservation.hpp); the
  /// reservation is at least this. 0 without an lm_head layer that records a vocabulary.
  std::uint64_t output_head_bytes = 0;
  std::uint64_t flat_bytes = 0;
  std::uint64_t graph_capture_bytes = 0;
  std::int64_t tokens_per_step = 0;
  std::int64_t widest_buffer = 0;    ///< max(hidden, intermediate)
  double safety_factor = 0.0;
  bool calibrated = false;           ///< safety_factor was fitted to measured peaks
  std::int64_t calibration_samples = 0;
  std::string source;                ///< "scaled", "flat_cap", "output_head" or "flat_fallback"
  bool operator==(const Reservation&) const = default;
};

/// Chosen tier policy and its estimated cost (seconds per token).
struct TierChoice {
  bool used = false;
  TierPolicy policy;
  double compute_s = 0, io_s = 0, total_s = 0;
  std::uint64_t gpu_bytes = 0, cpu_bytes = 0, disk_bytes = 0;
  bool operator==(const TierChoice&) const = default;
};

/// Weight residency decided by the plan (residency policy, hot set, prefetch depth).
struct OffloadPlan {
  std::string policy = "none";
  std::uint64_t ram_bytes = 0;       ///< the pager's resident limit (its books: parameters)
  std::vector<std::string> hot_set;  ///< layer names pinned resident
  std::uint64_t prefetch_n_ahead = 0;
  /// The peak the pager will hold resident (its peak_physical_bytes), replayed on the
  /// plan's layers, limit and depth (pager_model.hpp); the plan's predicted peak charges
  /// it for the weights. 0 when nothing is paged.
  std::uint64_t predicted_resident_bytes = 0;
  bool operator==(const OffloadPlan&) const = default;
};

/// Optimizer offload (rules/optimizer_offload.hpp): what the step keeps on the next tier.
/// kinds "" = nothing (the state and gradients stay on the device).
struct OptimizerOffloadPlan {
  std::string kinds;  ///< "" | "state" | "state+gradients"
  std::string tier;   ///< host|disk
  std::uint64_t moved_bytes = 0, window_bytes = 0;
  std::string rule, reason;
  bool operator==(const OptimizerOffloadPlan&) const = default;
};

struct Plan {
  std::string mode = "auto";
  bool training = true;
  std::uint64_t budget_bytes = 0;
  std::int64_t device_count = 1;
  std::uint64_t unoptimized_peak_bytes = 0, predicted_peak_bytes = 0;
  double pressure = 0.0;
  bool skipped = false;
  std::string skip_reason;
  std::vector<LayerPlan> layers;
  std::vector<Rejection> rejected;
  std::vector<std::string> trace;
  Reservation reservation;
  TierChoice tier_policy;
  OffloadPlan offload;
  OptimizerOffloadPlan optimizer_offload;
  bool operator==(const Plan&) const = default;

  static Plan from_json_text(const std::string& text);
  std::string to_json_text() const;
};

inline void to_json(nlohmann::json& j, const LayerBytes& b) {
  j = {{"weights", b.weights}, {"grads", b.grads}, {"optimizer", b.optimizer}, {"activations", b.activations},
       {"kv_cache", b.kv_cache}};
}

inline LayerBytes layer_bytes_from_json(const nlohmann::json& j, const std::string& path) {
  namespace f = json_fields;
  return {f::u64(j, "weights", path), f::u64(j, "grads", path), f::u64(j, "optimizer", path),
          f::u64(j, "activations", path), f::u64(j, "kv_cache", path)};
}

inline void to_json(nlohmann::json& j, const LayerPlan& l) {
  j = {{"index", l.index},
       {"name", l.name},
       {"kind", l.kind},
       {"techniques", l.techniques},
       {"tile_chunks", l.tile_chunks},
       {"weight_tier", l.weight_tier},
       {"activation_tier", l.activation_tier},
       {"kv_tier", l.kv_tier},
       {"pinned", l.pinned},
       {"bytes_before", l.bytes_before},
       {"bytes_after", l.bytes_after},
       {"before", l.before},
       {"after", l.after},
       {"rules", l.rules},
       {"reasons", l.reasons}};
}

inline void to_json(nlohmann::json& j, const Rejection& r) {
  j = {{"layer", r.layer}, {"technique", r.technique}, {"rule", r.rule}, {"reason", r.reason}};
}

inline void to_json(nlohmann::json& j, const Reservation& r) {
  if (!r.used) {
    j = nlohmann::json::object();
    return;
  }
  j = {{"bytes", r.bytes},
       {"per_device_bytes", r.per_device_bytes},
       {"scaled_bytes", r.scaled_bytes},
       {"output_head_bytes", r.output_head_bytes},
       {"flat_bytes", r.flat_bytes},
       {"graph_capture_bytes", r.graph_capture_bytes},
       {"tokens_per_step", r.tokens_per_step},
       {"widest_buffer", r.widest_buffer},
       {"safety_factor", json_fields::round6(r.safety_factor)},
       {"calibrated", r.calibrated},
       {"calibration_samples", r.calibration_samples},
       {"source", r.source}};
}

inline nlohmann::json split_json(const TierSplit& s) {
  return {{"gpu", json_fields::round6(s.gpu)}, {"cpu", json_fields::round6(s.cpu)}, {"disk", json_fields::round6(s.disk())}};
}

inline void to_json(nlohmann::json& j, const TierChoice& t) {
  if (!t.used) {
    j = nlohmann::json::object();
    return;
  }
  j = {{"weights", split_json(t.policy.weights)},
       {"kv_cache", split_json(t.policy.kv_cache)},
       {"activations", split_json(t.policy.activations)},
       {"compute_s", json_fields::round6(t.compute_s)},
       {"io_s", json_fields::round6(t.io_s)},
       {"total_s", json_fields::round6(t.total_s)},
       {"gpu_bytes", t.gpu_bytes},
       {"cpu_bytes", t.cpu_bytes},
       {"disk_bytes", t.disk_bytes}};
}

inline void to_json(nlohmann::json& j, const OffloadPlan& o) {
  j = {{"policy", o.policy},
       {"ram_bytes", o.ram_bytes},
       {"hot_set", o.hot_set},
       {"prefetch_n_ahead", o.prefetch_n_ahead},
       {"predicted_resident_bytes", o.predicted_resident_bytes}};
}

inline void to_json(nlohmann::json& j, const Plan& p) {
  j = {{"mode", p.mode},
       {"training", p.training},
       {"budget_bytes", p.budget_bytes},
       {"device_count", p.device_count},
       {"unoptimized_peak_bytes", p.unoptimized_peak_bytes},
       {"predicted_peak_bytes", p.predicted_peak_bytes},
       {"pressure", json_fields::round6(p.pressure)},
       {"skipped", p.skipped},
       {"skip_reason", p.skip_reason},
       {"layers", p.layers},
       {"rejected", p.rejected},
       {"trace", p.trace},
       {"reservation", p.reservation},
       {"tier_policy", p.tier_policy},
       {"offload", p.offload}};
  // Written only when the plan offloads: other plans (and their golden files) unchanged.
  const OptimizerOffloadPlan& o = p.optimizer_offload;
  if (!o.kinds.empty())
    j["optimizer_offload"] = {{"kinds", o.kinds},   {"tier", o.tier}, {"moved_bytes", o.moved_bytes},
                              {"window_bytes", o.window_bytes}, {"rule", o.rule}, {"reason", o.reason}};
}

inline Plan plan_from_json(const nlohmann::json& j) {
  namespace f = json_fields;
  const std::string path = "plan";
  Plan p;
  p.mode = f::string(j, "mode", path);
  p.training = f::boolean(j, "training", path);
  p.budget_bytes = f::u64(j, "budget_bytes", path);
  p.device_count = f::i64(j, "device_count", path);
  p.unoptimized_peak_bytes = f::u64(j, "unoptimized_peak_bytes", path);
  p.predicted_peak_bytes = f::u64(j, "predicted_peak_bytes", path);
  p.pressure = f::number(j, "pressure", path);
  p.skipped = f::boolean(j, "skipped", path);
  p.skip_reason = f::string(j, "skip_reason", path);
  const auto& layers = f::require(j, "layers", path);
  if (!layers.is_array()) f::wrong_type("plan.layers", layers, "an array");
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& lj = layers[i];
    const std::string lp = "plan.layers[" + std::to_string(i) + "]";
    LayerPlan l;
    l.index = f::i64(lj, "index", lp);
    l.name = f::string(lj, "name", lp);
    l.kind = f::string(lj, "kind", lp);
    l.techniques = f::strings(lj, "techniques", lp);
    for (const auto& t : l.techniques) f::one_of(t, plan_techniques(), lp + ".techniques");
    l.tile_chunks = f::i64(lj, "tile_chunks", lp);
    l.weight_tier = f::one_of(f::string(lj, "weight_tier", lp), {"device", "host", "disk"}, lp + ".weight_tier");
    l.activation_tier = f::one_of(f::string(lj, "activation_tier", lp), {"device", "host", "disk"}, lp + ".activation_tier");
    // Optional: plans written before the per-layer KV tier existed still load (as "none").
    if (lj.contains("kv_tier"))
      l.kv_tier = f::one_of(f::string(lj, "kv_tier", lp), {"none", "device", "host", "disk"}, lp + ".kv_tier");
    l.pinned = f::boolean(lj, "pinned", lp);
    l.bytes_before = f::u64(lj, "bytes_before", lp);
    l.bytes_after = f::u64(lj, "bytes_after", lp);
    // Optional: plans written before the per-kind figures existed still load.
    if (lj.contains("before")) l.before = layer_bytes_from_json(lj.at("before"), lp + ".before");
    if (lj.contains("after")) l.after = layer_bytes_from_json(lj.at("after"), lp + ".after");
    l.rules = f::strings(lj, "rules", lp);
    l.reasons = f::strings(lj, "reasons", lp);
    p.layers.push_back(std::move(l));
  }
  const auto& rejected = f::require(j, "rejected", path);
  if (!rejected.is_array()) f::wrong_type("plan.rejected", rejected, "an array");
  for (std::size_t i = 0; i < rejected.size(); ++i) {
    const std::string rp = "plan.rejected[" + std::to_string(i) + "]";
    p.rejected.push_back({f::string(rejected[i], "layer", rp), f::string(rejected[i], "technique", rp),
                          f::string(rejected[i], "rule", rp), f::string(rejected[i], "reason", rp)});
  }
  p.trace = f::strings(j, "trace", path);
  const auto& r = f::require(j, "reservation", path);
  if (!r.empty()) {
    const std::string rp = "plan.reservation";
    p.reservation.used = true;
    p.reservation.bytes = f::u64(r, "bytes", rp);
    p.reservation.per_device_bytes = f::u64(r, "per_device_bytes", rp);
    p.reservation.scaled_bytes = f::u64(r, "scaled_bytes", rp);
    p.reservation.output_head_bytes = f::optional<std::uint64_t>(r, "output_head_bytes", rp, 0, f::as_u64);
    p.reservation.flat_bytes = f::u64(r, "flat_bytes", rp);
    p.reservation.graph_capture_bytes = f::u64(r, "graph_capture_bytes", rp);
    p.reservation.tokens_per_step = f::i64(r, "tokens_per_step", rp);
    p.reservation.widest_buffer = f::i64(r, "widest_buffer", rp);
    p.reservation.safety_factor = f::number(r, "safety_factor", rp);
    p.reservation.calibrated = f::boolean(r, "calibrated", rp);
    p.reservation.calibration_samples = f::i64(r, "calibration_samples", rp);
    p.reservation.source = f::string(r, "source", rp);
  }
  const auto& t = f::require(j, "tier_policy", path);
  if (!t.empty()) {
    const std::string tp = "plan.tier_policy";
    auto split = [&](const char* key) {
      const auto& s = f::require(t, key, tp);
      return TierSplit{f::number(s, "gpu", tp + "." + key), f::number(s, "cpu", tp + "." + key)};
    };
    p.tier_policy.used = true;
    p.tier_policy.policy = TierPolicy{split("weights"), split("kv_cache"), split("activations")};
    p.tier_policy.compute_s = f::number(t, "compute_s", tp);
    p.tier_policy.io_s = f::number(t, "io_s", tp);
    p.tier_policy.total_s = f::number(t, "total_s", tp);
    p.tier_policy.gpu_bytes = f::u64(t, "gpu_bytes", tp);
    p.tier_policy.cpu_bytes = f::u64(t, "cpu_bytes", tp);
    p.tier_policy.disk_bytes = f::u64(t, "disk_bytes", tp);
  }
  const auto& o = f::require(j, "offload", path);
  p.offload.policy = f::string(o, "policy", "plan.offload");
  p.offload.ram_bytes = f::u64(o, "ram_bytes", "plan.offload");
  p.offload.hot_set = f::strings(o, "hot_set", "plan.offload");
  p.offload.prefetch_n_ahead = f::u64(o, "prefetch_n_ahead", "plan.offload");
  // Optional: plans written before the prediction existed still load.
  p.offload.predicted_resident_bytes =
      f::optional<std::uint64_t>(o, "predicted_resident_bytes", "plan.offload", 0, f::as_u64);
  if (j.contains("optimizer_offload")) {
    const auto& oo = j.at("optimizer_offload");
    const std::string op = "plan.optimizer_offload";
    OptimizerOffloadPlan& q = p.optimizer_offload;
    q.kinds = f::one_of(f::string(oo, "kinds", op), {"state", "state+gradients"}, op + ".kinds");
    q.tier = f::one_of(f::string(oo, "tier", op), {"host", "disk"}, op + ".tier");
    q.moved_bytes = f::u64(oo, "moved_bytes", op);
    q.window_bytes = f::u64(oo, "window_bytes", op);
    q.rule = f::string(oo, "rule", op);
    q.reason = f::string(oo, "reason", op);
  }
  return p;
}

inline Plan Plan::from_json_text(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw ConfigError(std::string("plan: not valid JSON: ") + e.what());
  }
  return plan_from_json(j);
}

inline std::string Plan::to_json_text() const { return nlohmann::json(*this).dump(2); }

}  // namespace memscale

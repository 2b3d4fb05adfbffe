// Per-tensor-type placement over GPU / CPU / disk (tier placement policy): disk is the
// remainder. The split rule (shares in [0, 100], gpu + cpu at most 100, a given disk
// share equal to the remainder) lives here once: Config's `tiers` and the Python runtime
// (through `_C.TierSplit.from_dict` / `_C.parse_tier_splits`) both parse with it.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memscale/core/errors.hpp"
#include "memscale/core/json_fields.hpp"

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

namespace tier_detail {

/// A JSON value for a message; non-finite numbers (which JSON text cannot hold, but a
/// document built in memory can) as nan / inf.
inline std::string show(const nlohmann::json& value) {
  if (value.is_number_float() && !std::isfinite(value.get<double>()))
    return std::isnan(value.get<double>()) ? "nan" : value.get<double>() > 0 ? "inf" : "-inf";
  return json_fields::show(value);
}

inline double percent(const nlohmann::json& object, const char* key, double fallback, const std::string& path) {
  const auto it = object.find(key);
  if (it == object.end()) return fallback;
  if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() < 0.0 || it->get<double>() > 100.0)
    throw ConfigError(json_fields::join_path(path, key) + ": got " + show(*it) + ", expected a percentage in [0, 100]");
  return it->get<double>();
}

}  // namespace tier_detail

/// The tensor types a tier policy places: weights, kv_cache, activations.
inline std::vector<std::string> tier_tensor_type_names() { return {std::begin(tier_tensor_types), std::end(tier_tensor_types)}; }

/// One tensor type's split from `{"gpu": %, "cpu": %}` at `path` (e.g. "tiers.kv_cache").
/// gpu defaults to 100 and cpu to 0; `disk` may be given (as TierSplit's JSON writes it)
/// and must then equal 100 - gpu - cpu. Every violation is a ConfigError naming the key
/// path, the value and what is allowed:
///   tiers.kv_cache: got 3, expected an object {"gpu": percent, "cpu": percent}
///   tiers.kv_cache: unknown key "gpux"; allowed keys: gpu, cpu, disk (disk is the remainder, 100 - gpu - cpu)
///   tiers.kv_cache.gpu: got 120, expected a percentage in [0, 100]
///   tiers.kv_cache: gpu + cpu = 120 exceeds 100 (disk takes the remainder, 100 - gpu - cpu)
///   tiers.kv_cache.disk: got 10, but disk is 100 - gpu - cpu = 30
inline TierSplit parse_tier_split(const nlohmann::json& value, const std::string& path) {
  namespace f = json_fields;
  if (!value.is_object())
    throw ConfigError(path + ": got " + tier_detail::show(value) + R"(, expected an object {"gpu": percent, "cpu": percent})");
  for (auto it = value.begin(); it != value.end(); ++it)
    if (it.key() != "gpu" && it.key() != "cpu" && it.key() != "disk")
      throw ConfigError(path + ": unknown key \"" + it.key() +
                        "\"; allowed keys: gpu, cpu, disk (disk is the remainder, 100 - gpu - cpu)");
  const TierSplit split{tier_detail::percent(value, "gpu", 100.0, path), tier_detail::percent(value, "cpu", 0.0, path)};
  if (split.gpu + split.cpu > 100.0 + 1e-9)
    throw ConfigError(path + ": gpu + cpu = " + f::format_number(split.gpu + split.cpu) +
                      " exceeds 100 (disk takes the remainder, 100 - gpu - cpu)");
  if (const auto disk = value.find("disk"); disk != value.end()) {
    if (!disk->is_number() || !std::isfinite(disk->get<double>()) || std::fabs(disk->get<double>() - split.disk()) > 1e-6)
      throw ConfigError(path + ".disk: got " + tier_detail::show(*disk) + ", but disk is 100 - gpu - cpu = " +
                        f::format_number(split.disk()));
  }
  return split;
}

/// parse_tier_split of a JSON text; text that is not JSON is a ConfigError too.
inline TierSplit tier_split_from_json_text(const std::string& text, const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw ConfigError(path + ": not valid JSON: " + e.what());
  }
  return parse_tier_split(j, path);
}

/// Splits of the tensor types given in `value` (`{"kv_cache": {...}, ...}` at `path`,
/// e.g. "tiers"); a type not given is absent from the result. An unknown tensor type is
/// a ConfigError listing the allowed ones.
inline std::map<std::string, TierSplit> parse_tier_splits(const nlohmann::json& value, const std::string& path) {
  if (!value.is_object())
    throw ConfigError(path + ": got " + tier_detail::show(value) +
                      R"(, expected an object {"weights" | "kv_cache" | "activations": {"gpu": percent, "cpu": percent}})");
  const std::vector<std::string> types = tier_tensor_type_names();
  std::map<std::string, TierSplit> splits;
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (std::find(types.begin(), types.end(), it.key()) == types.end())
      throw ConfigError(path + ": unknown tensor type \"" + it.key() + "\"; allowed: weights, kv_cache, activations");
    splits[it.key()] = parse_tier_split(it.value(), json_fields::join_path(path, it.key()));
  }
  return splits;
}

/// Tier of each of `n_layers` layers when one tensor type's `split` is applied by position:
/// the first gpu% of the layers on the device, the next cpu% on the host, the rest on disk
/// (shares rounded to whole layers, halves away from zero). Without a GPU the host is RAM
/// like the device, so a host share is reported as "device". The rule of an explicit
/// per-call tier override (memscale.offload.generate(tiers=...)); a plan's layers carry
/// the engine's own per-layer decision (LayerPlan.kv_tier).
inline std::vector<std::string> split_layer_tiers(std::size_t n_layers, const TierSplit& split, bool gpu) {
  const auto n = static_cast<double>(n_layers);
  const auto on_device = static_cast<std::size_t>(std::lround(n * split.gpu / 100.0));
  const auto above_disk =
      std::min(n_layers, static_cast<std::size_t>(std::lround(n * (split.gpu + split.cpu) / 100.0)));
  std::vector<std::string> tiers(n_layers, "disk");
  for (std::size_t l = 0; l < above_disk; ++l) tiers[l] = l < on_device || !gpu ? "device" : "host";
  return tiers;
}

/// Inference keeps the activations between layers on the device: the runtime runs each
/// model's own forward, which holds its hidden state from one layer to the next, so
/// nothing can free it by moving it (only the weights and the KV cache are tiered).
/// `tiers.activations` with gpu below 100 is a ConfigError naming the value.
inline void check_inference_activation_tiers(const std::map<std::string, TierSplit>& tiers, const std::string& path) {
  const auto it = tiers.find("activations");
  if (it == tiers.end() || it->second.gpu >= 100.0) return;
  const TierSplit& s = it->second;
  throw ConfigError(path + ".activations: got {\"gpu\": " + json_fields::format_number(s.gpu) + ", \"cpu\": " +
                    json_fields::format_number(s.cpu) + "}, but inference keeps the activations between layers on the "
                    "device; allowed: gpu 100 (or leave tiers.activations out). The model runs its own forward, which "
                    "holds the hidden state between its layers, so it cannot be moved off the device; the weights and "
                    "the KV cache are tiered (tiers.weights, tiers.kv_cache)");
}

}  // namespace memscale

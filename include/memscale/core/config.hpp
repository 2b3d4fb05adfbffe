// Config: what the user asks for. Parsed strictly from JSON (Python kwargs become the
// same JSON), so every entry point shares one validator and one set of messages.
// docs/config.md documents every key.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memscale/core/json_fields.hpp"
#include "memscale/core/offload_policy.hpp"
#include "memscale/core/sizes.hpp"
#include "memscale/core/tier_policy.hpp"

namespace memscale {

enum class Mode { automatic, off, min_memory };
enum class Switch { automatic, on, off };

/// Technique names as Config spells them (the Plan calls tiling "tile").
inline const std::vector<std::string>& technique_keys() {
  static const std::vector<std::string> keys = {"checkpoint", "offload_activations", "offload_weights", "tiling"};
  return keys;
}

/// Budget as given: detected device memory (minus the safety margin), bytes, or a share.
struct MemoryBudget {
  enum class Kind { detected, bytes, fraction };
  Kind kind = Kind::detected;
  std::uint64_t bytes = 0;
  double fraction = 0.0;
  bool operator==(const MemoryBudget&) const = default;
};

/// Inference activation reservation knobs (seed 002); the engine documents the formula.
struct ReservationConfig {
  double safety_factor = 2.0;           ///< multiple of the per-step buffer estimate
  std::int64_t prefill_tokens = 8192;   ///< floor on tokens per step (prefill chunk)
  std::uint64_t flat_bytes = 4ull << 30;  ///< cap, and the fallback when dims are missing
  std::uint64_t graph_capture_bytes = 512ull << 20;  ///< CUDA-graph headroom (GPU only)
  bool operator==(const ReservationConfig&) const = default;
};

struct Config {
  Mode mode = Mode::automatic;
  MemoryBudget memory_budget;
  double safety_margin = 0.10;
  std::map<std::string, Switch> techniques = {{"checkpoint", Switch::automatic},
                                              {"offload_activations", Switch::automatic},
                                              {"offload_weights", Switch::automatic},
                                              {"tiling", Switch::automatic}};
  /// glob on layer name -> technique -> on/off (sorted by glob: deterministic).
  std::map<std::string, std::map<std::string, Switch>> layer_overrides;
  bool force_optimize = false;
  bool auto_policy = false;
  OffloadPolicy offload;
  std::map<std::string, TierSplit> tiers;  ///< only the tensor types the user fixed
  ReservationConfig reservation;
  bool operator==(const Config&) const = default;

  static Config from_json_text(const std::string& text);
  std::string to_json_text() const;

  /// Budget in bytes for a device of `device_bytes`.
  std::uint64_t resolve_budget(std::uint64_t device_bytes) const {
    switch (memory_budget.kind) {
      case MemoryBudget::Kind::bytes: return memory_budget.bytes;
      case MemoryBudget::Kind::fraction:
        return static_cast<std::uint64_t>(static_cast<double>(device_bytes) * memory_budget.fraction);
      default: return static_cast<std::uint64_t>(static_cast<double>(device_bytes) * (1.0 - safety_margin));
    }
  }
};

inline const char* to_string(Mode m) {
  return m == Mode::off ? "off" : m == Mode::min_memory ? "min_memory" : "auto";
}
inline const char* to_string(Switch s) { return s == Switch::on ? "on" : s == Switch::off ? "off" : "auto"; }

namespace config_detail {

namespace f = json_fields;
using nlohmann::json;

inline std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

/// Rejects keys of `object` not in `allowed`, suggesting the closest allowed key.
inline void check_keys(const json& object, const std::vector<std::string>& allowed, const std::string& path) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    if (std::find(allowed.begin(), allowed.end(), it.key()) != allowed.end()) continue;
    std::string best;
    std::size_t best_distance = 0;
    for (const auto& candidate : allowed) {
      const std::size_t d = edit_distance(it.key(), candidate);
      if (best.empty() || d < best_distance) best = candidate, best_distance = d;
    }
    std::string message = f::join_path(path, it.key()) + ": unknown key";
    // A close spelling, or a truncation of a longer key ("prefetch" -> "prefetch_n_ahead").
    for (const auto& candidate : allowed)
      if (best_distance > 2 && candidate.rfind(it.key(), 0) == 0 && it.key().size() >= 4) best = candidate, best_distance = 0;
    if (!best.empty() && best_distance <= std::max<std::size_t>(2, best.size() / 3))
      message += "; did you mean \"" + best + "\"?";
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    throw ConfigError(message + " Allowed keys: " + list);
  }
}

inline json require_object(const json& value, const std::string& path) {
  if (!value.is_object()) f::wrong_type(path, value, "an object");
  return value;
}

inline Switch parse_switch(const json& value, const std::string& path, bool allow_auto) {
  std::vector<std::string> allowed = allow_auto ? std::vector<std::string>{"auto", "on", "off"}
                                                : std::vector<std::string>{"on", "off"};
  if (value.is_boolean()) return value.get<bool>() ? Switch::on : Switch::off;
  const std::string s = f::one_of(f::as_string(value, path), allowed, path);
  return s == "on" ? Switch::on : s == "off" ? Switch::off : Switch::automatic;
}

/// A size field: integer bytes or a size string; zero is refused when `positive`.
inline std::uint64_t parse_size_value(const json& value, const std::string& path, bool positive) {
  std::uint64_t bytes = 0;
  if (value.is_string()) {
    bytes = parse_size(value.get<std::string>(), path);
  } else if (value.is_number_integer()) {
    if (!value.is_number_unsigned() && value.get<std::int64_t>() < 0)
      throw ConfigError(path + ": got " + f::show(value) + ", a size cannot be negative");
    bytes = value.get<std::uint64_t>();
  } else {
    f::wrong_type(path, value, "bytes as an integer or a size string such as \"512MB\" or \"6GiB\"");
  }
  if (positive && bytes == 0) throw ConfigError(path + ": got " + f::show(value) + ", must be greater than 0");
  return bytes;
}

inline MemoryBudget parse_budget(const json& value, const std::string& path) {
  MemoryBudget b;
  if (value.is_null()) return b;
  if (value.is_number_float()) {
    const double x = value.get<double>();
    if (x > 0.0 && x <= 1.0) {
      b.kind = MemoryBudget::Kind::fraction;
      b.fraction = x;
      return b;
    }
    if (x > 1.0 && x == static_cast<double>(static_cast<std::uint64_t>(x))) {
      b.kind = MemoryBudget::Kind::bytes;
      b.bytes = static_cast<std::uint64_t>(x);
      return b;
    }
    throw ConfigError(path + ": got " + f::show(value) +
                      ", expected a fraction in (0, 1] of detected device memory, whole bytes, or a size string "
                      "such as \"6GiB\"");
  }
  b.kind = MemoryBudget::Kind::bytes;
  b.bytes = parse_size_value(value, path, true);
  return b;
}

inline OffloadPolicy parse_offload(const json& value, const std::string& path) {
  require_object(value, path);
  OffloadPolicy p;
  const std::string kind = f::one_of(f::optional<std::string>(value, "policy", path, "none", f::as_string),
                                     {"none", "budget", "pinned_hot_set"}, path + ".policy");
  std::vector<std::string> allowed = {"policy", "disk_dir"};
  if (kind != "none") allowed.insert(allowed.end(), {"ram_bytes", "prefetch_n_ahead"});
  if (kind == "pinned_hot_set") allowed.insert(allowed.end(), {"pin_embeddings", "pin_output_head", "pin_last_n_layers"});
  for (auto it = value.begin(); it != value.end(); ++it) {
    const bool known = it.key() == "ram_bytes" || it.key() == "prefetch_n_ahead" || it.key() == "pin_embeddings" ||
                       it.key() == "pin_output_head" || it.key() == "pin_last_n_layers";
    if (known && std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end())
      throw ConfigError(f::join_path(path, it.key()) + ": not allowed with policy \"" + kind + "\"; it applies to " +
                        (it.key().rfind("pin_", 0) == 0 ? "policy \"pinned_hot_set\"" : "policies \"budget\" and \"pinned_hot_set\""));
  }
  check_keys(value, {"policy", "disk_dir", "ram_bytes", "prefetch_n_ahead", "pin_embeddings", "pin_output_head",
                     "pin_last_n_layers"},
             path);
  p.kind = kind == "budget" ? OffloadPolicy::Kind::budget
           : kind == "pinned_hot_set" ? OffloadPolicy::Kind::pinned_hot_set
                                      : OffloadPolicy::Kind::none;
  p.disk_dir = f::optional<std::string>(value, "disk_dir", path, "", f::as_string);
  if (kind != "none") {
    if (!value.contains("ram_bytes"))
      throw ConfigError(path + ".ram_bytes: required with policy \"" + kind + "\" (the resident weight budget, e.g. \"2GiB\")");
    p.ram_bytes = parse_size_value(value.at("ram_bytes"), path + ".ram_bytes", true);
    p.prefetch_n_ahead = f::optional<std::uint64_t>(value, "prefetch_n_ahead", path, 1, f::as_u64);
  }
  if (kind == "pinned_hot_set") {
    p.pin_embeddings = f::optional<bool>(value, "pin_embeddings", path, true, f::as_bool);
    p.pin_output_head = f::optional<bool>(value, "pin_output_head", path, true, f::as_bool);
    p.pin_last_n_layers = f::optional<std::uint64_t>(value, "pin_last_n_layers", path, 0, f::as_u64);
  }
  return p;
}

inline double parse_percent(const json& object, const std::string& key, const std::string& path) {
  const double x = f::number(object, key, path);
  if (x < 0.0 || x > 100.0)
    throw ConfigError(f::join_path(path, key) + ": got " + f::show(object.at(key)) + ", expected a percentage in [0, 100]");
  return x;
}

inline std::map<std::string, TierSplit> parse_tiers(const json& value, const std::string& path) {
  require_object(value, path);
  check_keys(value, {"weights", "kv_cache", "activations"}, path);
  std::map<std::string, TierSplit> tiers;
  for (auto it = value.begin(); it != value.end(); ++it) {
    const std::string p = path + "." + it.key();
    require_object(it.value(), p);
    check_keys(it.value(), {"gpu", "cpu"}, p);
    TierSplit split{parse_percent(it.value(), "gpu", p), parse_percent(it.value(), "cpu", p)};
    if (split.gpu + split.cpu > 100.0 + 1e-9)
      throw ConfigError(p + ": gpu + cpu = " + f::format_number(split.gpu + split.cpu) +
                        " exceeds 100 (disk takes the remainder, 100 - gpu - cpu)");
    tiers[it.key()] = split;
  }
  return tiers;
}

inline ReservationConfig parse_reservation(const json& value, const std::string& path) {
  require_object(value, path);
  check_keys(value, {"safety_factor", "prefill_tokens", "flat_bytes", "graph_capture_bytes"}, path);
  ReservationConfig r;
  r.safety_factor = f::optional<double>(value, "safety_factor", path, r.safety_factor, f::as_double);
  if (!(r.safety_factor > 0.0))
    throw ConfigError(path + ".safety_factor: got " + f::show(value.at("safety_factor")) + ", must be greater than 0");
  r.prefill_tokens = f::optional<std::int64_t>(value, "prefill_tokens", path, r.prefill_tokens, f::as_i64);
  if (r.prefill_tokens < 1)
    throw ConfigError(path + ".prefill_tokens: got " + f::show(value.at("prefill_tokens")) + ", must be at least 1");
  if (value.contains("flat_bytes")) r.flat_bytes = parse_size_value(value.at("flat_bytes"), path + ".flat_bytes", true);
  if (value.contains("graph_capture_bytes"))
    r.graph_capture_bytes = parse_size_value(value.at("graph_capture_bytes"), path + ".graph_capture_bytes", false);
  return r;
}

}  // namespace config_detail

inline Config config_from_json(const nlohmann::json& j) {
  namespace f = json_fields;
  namespace d = config_detail;
  const std::string path = "";
  if (!j.is_object()) f::wrong_type("config", j, "a JSON object");
  d::check_keys(j,
                {"mode", "memory_budget", "safety_margin", "techniques", "layer_overrides", "force_optimize",
                 "auto_policy", "offload", "tiers", "reservation"},
                path);
  Config c;
  const std::string mode =
      f::one_of(f::optional<std::string>(j, "mode", path, "auto", f::as_string), {"auto", "off", "min_memory"}, "mode");
  c.mode = mode == "off" ? Mode::off : mode == "min_memory" ? Mode::min_memory : Mode::automatic;
  if (j.contains("memory_budget")) c.memory_budget = d::parse_budget(j.at("memory_budget"), "memory_budget");
  c.safety_margin = f::optional<double>(j, "safety_margin", path, 0.10, f::as_double);
  if (c.safety_margin < 0.0 || c.safety_margin >= 1.0)
    throw ConfigError("safety_margin: got " + f::show(j.at("safety_margin")) + ", expected a fraction in [0, 1)");
  if (j.contains("techniques") && !j.at("techniques").is_null()) {
    const auto& t = d::require_object(j.at("techniques"), "techniques");
    d::check_keys(t, technique_keys(), "techniques");
    for (auto it = t.begin(); it != t.end(); ++it)
      c.techniques[it.key()] = d::parse_switch(it.value(), "techniques." + it.key(), true);
  }
  if (j.contains("layer_overrides") && !j.at("layer_overrides").is_null()) {
    const auto& o = d::require_object(j.at("layer_overrides"), "layer_overrides");
    for (auto it = o.begin(); it != o.end(); ++it) {
      const std::string p = "layer_overrides[\"" + it.key() + "\"]";
      if (it.key().empty()) throw ConfigError(p + ": the layer-name glob is empty");
      d::require_object(it.value(), p);
      if (it.value().empty()) throw ConfigError(p + ": names no technique; give e.g. {\"checkpoint\": \"on\"}");
      d::check_keys(it.value(), technique_keys(), p);
      for (auto t = it.value().begin(); t != it.value().end(); ++t)
        c.layer_overrides[it.key()][t.key()] = d::parse_switch(t.value(), p + "." + t.key(), false);
    }
  }
  c.force_optimize = f::optional<bool>(j, "force_optimize", path, false, f::as_bool);
  c.auto_policy = f::optional<bool>(j, "auto_policy", path, false, f::as_bool);
  if (j.contains("offload") && !j.at("offload").is_null()) c.offload = d::parse_offload(j.at("offload"), "offload");
  if (j.contains("tiers") && !j.at("tiers").is_null()) c.tiers = d::parse_tiers(j.at("tiers"), "tiers");
  if (j.contains("reservation") && !j.at("reservation").is_null())
    c.reservation = d::parse_reservation(j.at("reservation"), "reservation");
  return c;
}

inline void to_json(nlohmann::json& j, const Config& c) {
  using nlohmann::json;
  json budget;
  if (c.memory_budget.kind == MemoryBudget::Kind::bytes) budget = c.memory_budget.bytes;
  else if (c.memory_budget.kind == MemoryBudget::Kind::fraction) budget = c.memory_budget.fraction;
  json techniques = json::object();
  for (const auto& [name, s] : c.techniques) techniques[name] = to_string(s);
  json overrides = json::object();
  for (const auto& [glob, m] : c.layer_overrides)
    for (const auto& [name, s] : m) overrides[glob][name] = to_string(s);
  json offload = {{"policy", to_string(c.offload.kind)}, {"disk_dir", c.offload.disk_dir}};
  if (c.offload.kind != OffloadPolicy::Kind::none) {
    offload["ram_bytes"] = c.offload.ram_bytes;
    offload["prefetch_n_ahead"] = c.offload.prefetch_n_ahead;
  }
  if (c.offload.kind == OffloadPolicy::Kind::pinned_hot_set) {
    offload["pin_embeddings"] = c.offload.pin_embeddings;
    offload["pin_output_head"] = c.offload.pin_output_head;
    offload["pin_last_n_layers"] = c.offload.pin_last_n_layers;
  }
  json tiers = json::object();
  for (const auto& [type, split] : c.tiers) tiers[type] = {{"gpu", split.gpu}, {"cpu", split.cpu}};
  j = {{"mode", to_string(c.mode)},
       {"memory_budget", budget},
       {"safety_margin", c.safety_margin},
       {"techniques", techniques},
       {"layer_overrides", overrides},
       {"force_optimize", c.force_optimize},
       {"auto_policy", c.auto_policy},
       {"offload", offload},
       {"tiers", tiers},
       {"reservation",
        {{"safety_factor", c.reservation.safety_factor},
         {"prefill_tokens", c.reservation.prefill_tokens},
         {"flat_bytes", c.reservation.flat_bytes},
         {"graph_capture_bytes", c.reservation.graph_capture_bytes}}}};
}

inline Config Config::from_json_text(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw ConfigError(std::string("config: not valid JSON: ") + e.what());
  }
  return config_from_json(j);
}

inline std::string Config::to_json_text() const { return nlohmann::json(*this).dump(2); }

}  // namespace memscale

// Config: what the user asks for. Parsed strictly from JSON (Python kwargs become the
// same JSON), so every entry point shares one validator and one set of messages.
// Key sets, defaults, enumerations and offload-policy rules come from the schema in
// config_schema.hpp, from which docs/config.md is generated.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memscale/core/config_schema.hpp"
#include "memscale/core/json_fields.hpp"
#include "memscale/core/offload_policy.hpp"
#include "memscale/core/sizes.hpp"
#include "memscale/core/tier_policy.hpp"

namespace memscale {

enum class Mode { automatic, off, min_memory };
enum class Switch { automatic, on, off };
/// How a training plan is chosen: the greedy over cost per byte saved, the exact solver
/// of engine/optimal.hpp, or (automatic, the default) the exact solver where it plans in
/// milliseconds and the greedy elsewhere (rules/solver.hpp decides).
enum class Solver { automatic, greedy, optimal };

/// Technique names as Config spells them (the Plan calls tiling "tile").
inline const std::vector<std::string>& technique_keys() {
  static const std::vector<std::string> keys = config_schema_nodes::keys("techniques");
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

/// Inference activation reservation knobs; the engine documents the formula.
struct ReservationConfig {
  double safety_factor = 2.0;           ///< multiple of the per-step buffer estimate
  std::int64_t prefill_tokens = 0;      ///< tokens per step; 0 = batch x seq of the graph
  std::uint64_t flat_bytes = 4ull << 30;  ///< cap, and the fallback when dims are missing
  std::uint64_t graph_capture_bytes = 512ull << 20;  ///< CUDA-graph headroom (GPU only)
  bool operator==(const ReservationConfig&) const = default;
};

/// Member defaults mirror the schema's (config_schema.hpp); the parser reads the
/// schema's, and tests/cpp/core/test_config_schema.cpp checks Config{} equals a parse of "{}".
struct Config {
  Mode mode = Mode::automatic;
  Solver solver = Solver::automatic;
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
inline const char* to_string(Solver s) {
  return s == Solver::optimal ? "optimal" : s == Solver::greedy ? "greedy" : "auto";
}
inline const char* to_string(Switch s) { return s == Switch::on ? "on" : s == Switch::off ? "off" : "auto"; }

namespace config_detail {

namespace f = json_fields;
namespace schema = config_schema_nodes;
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

/// `object[key]`, or the schema's default for `path.key` when it is absent or null: the
/// parser takes every default from the schema. `path` is both the key's parent in
/// messages and its path in the schema.
inline json given_or_default(const json& object, const std::string& key, const std::string& path) {
  const auto it = object.find(key);
  if (it != object.end() && !it->is_null()) return *it;
  return schema::default_value(f::join_path(path, key));
}

/// A key holding an object of keys with their own defaults: absent or null reads as {}.
inline json given_or_empty(const json& object, const std::string& key) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? json::object() : *it;
}

template <typename Reader>
auto field(const json& object, const std::string& key, const std::string& path, Reader read) {
  return read(given_or_default(object, key, path), f::join_path(path, key));
}

/// `schema_path` names the switch in the schema, which says whether "auto" is allowed.
inline Switch parse_switch(const json& value, const std::string& path, const std::string& schema_path) {
  if (value.is_boolean()) return value.get<bool>() ? Switch::on : Switch::off;
  const std::string s = f::one_of(f::as_string(value, path), schema::enum_strings(schema_path), path);
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

/// `"a"`, `"a" and "b"`, `"a", "b" and "c"`: policy names in messages.
inline std::string quoted_list(const std::vector<std::string>& items) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i)
    out += (i == 0 ? "" : i + 1 == items.size() ? " and " : ", ") + ("\"" + items[i] + "\"");
  return out;
}

/// `path` is "offload" (its schema path) in every caller.
inline OffloadPolicy parse_offload(const json& value, const std::string& path) {
  require_object(value, path);
  const std::string kind =
      f::one_of(field(value, "policy", path, f::as_string), schema::enum_strings("offload.policy"), path + ".policy");
  const std::vector<std::string> known = schema::keys("offload");
  // A known key given with a policy it does not apply to (x-policies) is refused before
  // unknown keys are, so the message can say which policy it needs.
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (std::find(known.begin(), known.end(), it.key()) == known.end()) continue;
    const auto policies = schema::annotation("offload." + it.key(), "x-policies");
    if (std::find(policies.begin(), policies.end(), kind) != policies.end()) continue;
    throw ConfigError(f::join_path(path, it.key()) + ": not allowed with policy \"" + kind + "\"; it applies to " +
                      (policies.size() == 1 ? "policy " : "policies ") + quoted_list(policies));
  }
  check_keys(value, known, path);
  for (const auto& key : known) {
    const auto required = schema::annotation("offload." + key, "x-required-for-policies");
    if (std::find(required.begin(), required.end(), kind) == required.end() || value.contains(key)) continue;
    const auto& node = schema::node("offload." + key);
    throw ConfigError(path + "." + key + ": required with policy \"" + kind + "\" (" +
                      node.at("description").get<std::string>() + ", e.g. " + node.at("examples").at(0).dump() + ")");
  }
  OffloadPolicy p;
  p.kind = kind == "budget" ? OffloadPolicy::Kind::budget
           : kind == "pinned_hot_set" ? OffloadPolicy::Kind::pinned_hot_set
                                      : OffloadPolicy::Kind::none;
  p.disk_dir = field(value, "disk_dir", path, f::as_string);
  if (kind != "none") {
    p.ram_bytes = parse_size_value(value.at("ram_bytes"), path + ".ram_bytes", true);
    p.prefetch_n_ahead = field(value, "prefetch_n_ahead", path, f::as_u64);
  }
  if (kind == "pinned_hot_set") {
    p.pin_embeddings = field(value, "pin_embeddings", path, f::as_bool);
    p.pin_output_head = field(value, "pin_output_head", path, f::as_bool);
    p.pin_last_n_layers = field(value, "pin_last_n_layers", path, f::as_u64);
  }
  return p;
}

/// Config's `tiers`: the document form of the schema (each split names both gpu and cpu,
/// nothing else), its values checked by the one tier split rule, parse_tier_split().
inline std::map<std::string, TierSplit> parse_tiers(const json& value, const std::string& path) {
  require_object(value, path);
  check_keys(value, schema::keys("tiers"), path);
  for (auto it = value.begin(); it != value.end(); ++it) {
    const std::string p = path + "." + it.key();
    require_object(it.value(), p);
    check_keys(it.value(), schema::keys("tiers." + it.key()), p);
    for (const char* key : {"gpu", "cpu"}) f::require(it.value(), key, p);
  }
  return parse_tier_splits(value, path);
}

inline std::map<std::string, std::map<std::string, Switch>> parse_layer_overrides(const json& value,
                                                                                  const std::string& path) {
  require_object(value, path);
  std::map<std::string, std::map<std::string, Switch>> overrides;
  for (auto it = value.begin(); it != value.end(); ++it) {
    const std::string p = path + "[\"" + it.key() + "\"]";
    if (it.key().empty()) throw ConfigError(p + ": the layer-name glob is empty");
    require_object(it.value(), p);
    if (it.value().empty()) throw ConfigError(p + ": names no technique; give e.g. {\"checkpoint\": \"on\"}");
    check_keys(it.value(), schema::keys("layer_overrides.*"), p);
    for (auto t = it.value().begin(); t != it.value().end(); ++t)
      overrides[it.key()][t.key()] = parse_switch(t.value(), p + "." + t.key(), "layer_overrides.*." + t.key());
  }
  return overrides;
}

inline std::map<std::string, Switch> parse_techniques(const json& value, const std::string& path) {
  require_object(value, path);
  check_keys(value, technique_keys(), path);
  std::map<std::string, Switch> techniques;
  for (const auto& name : technique_keys())
    techniques[name] = parse_switch(given_or_default(value, name, path), path + "." + name, path + "." + name);
  return techniques;
}

inline ReservationConfig parse_reservation(const json& value, const std::string& path) {
  require_object(value, path);
  check_keys(value, schema::keys("reservation"), path);
  ReservationConfig r;
  r.safety_factor = field(value, "safety_factor", path, f::as_double);
  if (!(r.safety_factor > 0.0))
    throw ConfigError(path + ".safety_factor: got " + f::show(value.at("safety_factor")) + ", must be greater than 0");
  r.prefill_tokens = field(value, "prefill_tokens", path, f::as_i64);
  if (r.prefill_tokens < 0)
    throw ConfigError(path + ".prefill_tokens: got " + f::show(value.at("prefill_tokens")) +
                      ", must be 0 (tokens per step from the example inputs) or a token count of at least 1");
  const auto positive_size = [](const json& v, const std::string& p) { return parse_size_value(v, p, true); };
  const auto size = [](const json& v, const std::string& p) { return parse_size_value(v, p, false); };
  r.flat_bytes = field(value, "flat_bytes", path, positive_size);
  r.graph_capture_bytes = field(value, "graph_capture_bytes", path, size);
  return r;
}

}  // namespace config_detail

inline Config config_from_json(const nlohmann::json& j) {
  namespace f = json_fields;
  namespace d = config_detail;
  if (!j.is_object()) f::wrong_type("config", j, "a JSON object");
  d::check_keys(j, d::schema::keys(""), "");
  Config c;
  const std::string mode = f::one_of(d::field(j, "mode", "", f::as_string), d::schema::enum_strings("mode"), "mode");
  c.mode = mode == "off" ? Mode::off : mode == "min_memory" ? Mode::min_memory : Mode::automatic;
  const std::string solver = f::one_of(d::field(j, "solver", "", f::as_string), d::schema::enum_strings("solver"), "solver");
  c.solver = solver == "optimal" ? Solver::optimal : solver == "greedy" ? Solver::greedy : Solver::automatic;
  c.memory_budget = d::field(j, "memory_budget", "", d::parse_budget);
  c.safety_margin = d::field(j, "safety_margin", "", f::as_double);
  if (c.safety_margin < 0.0 || c.safety_margin >= 1.0)
    throw ConfigError("safety_margin: got " + f::show(j.at("safety_margin")) + ", expected a fraction in [0, 1)");
  c.techniques = d::parse_techniques(d::given_or_empty(j, "techniques"), "techniques");
  c.layer_overrides = d::field(j, "layer_overrides", "", d::parse_layer_overrides);
  c.force_optimize = d::field(j, "force_optimize", "", f::as_bool);
  c.auto_policy = d::field(j, "auto_policy", "", f::as_bool);
  c.offload = d::parse_offload(d::given_or_empty(j, "offload"), "offload");
  c.tiers = d::field(j, "tiers", "", d::parse_tiers);
  c.reservation = d::parse_reservation(d::given_or_empty(j, "reservation"), "reservation");
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
       {"solver", to_string(c.solver)},
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

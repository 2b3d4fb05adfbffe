// The Config schema: the one machine-readable account of every Config key (type,
// default, allowed values, the offload policies it applies to, a one-line meaning).
// The parser takes its key sets, defaults, enumerations and policy rules from here,
// docs/config.md is generated from it (`python -m memscale docs config`), and the
// tests check that parser, defaults and doc agree with it.
//
// The document is JSON Schema (draft 2020-12) plus annotations prefixed "x-":
//   x-policies              offload keys: the policies a key may be given with
//   x-required-for-policies offload keys: the policies that require it
//   x-enum-descriptions     one line per enumerated value
//   x-default-note          what the default means when the value alone does not say
// `format: "size"` marks sizes: integer bytes or a string such as "512MB" or "6GiB".
// Every leaf has `examples`, and map keys have propertyNames.examples: config_example()
// builds from them a Config that uses every key (the tests parse it).
// Keys keep their declared order (ordered_json): error messages and the doc list them so.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace memscale {

namespace config_schema_detail {

using schema_json = nlohmann::ordered_json;
using Meanings = std::vector<std::pair<std::string, std::string>>;

inline schema_json names(const std::vector<std::string>& items) {
  schema_json array = schema_json::array();
  for (const auto& item : items) array.push_back(item);
  return array;
}

/// A key of JSON `type`: its meaning, an example, its default when it has one (the
/// value an absent key takes), and `extra` keywords (bounds, enum, annotations).
inline schema_json key(schema_json type, const std::string& description, schema_json example,
                       std::optional<schema_json> fallback, schema_json extra = schema_json::object()) {
  schema_json node = {{"type", std::move(type)}, {"description", description}};
  if (fallback) node["default"] = *fallback;
  node["examples"] = schema_json::array({std::move(example)});
  node.update(extra);
  return node;
}

/// A string enumeration with one line of meaning per value.
inline schema_json choice(const Meanings& values, const std::string& fallback, const std::string& example,
                          const std::string& description) {
  schema_json extra = {{"enum", schema_json::array()}, {"x-enum-descriptions", schema_json::object()}};
  for (const auto& [value, meaning] : values) {
    extra["enum"].push_back(value);
    extra["x-enum-descriptions"][value] = meaning;
  }
  return key("string", description, example, fallback, extra);
}

inline schema_json flag(bool fallback, const std::string& description, schema_json extra = schema_json::object()) {
  return key("boolean", description, !fallback, fallback, std::move(extra));
}

/// A size in bytes: integer bytes or a size string, at least 0, or above 0 when `positive`.
inline schema_json size(bool positive, const std::string& description, schema_json example,
                        std::optional<schema_json> fallback, schema_json extra = schema_json::object()) {
  extra["format"] = "size";
  extra[positive ? "exclusiveMinimum" : "minimum"] = 0;
  return key(names({"integer", "string"}), description, std::move(example), std::move(fallback), std::move(extra));
}

/// The techniques a Config switches, in Config spelling (the Plan calls tiling "tile").
inline const Meanings& techniques() {
  static const Meanings list = {
      {"checkpoint", "recompute the layer's saved activations in backward instead of keeping them"},
      {"offload_activations",
       "keep what the layer saves for backward (inference: its KV cache) on host or disk, brought back ahead of use"},
      {"offload_weights",
       "keep the layer's weights (training: with gradients and optimizer state) off the device, paged in for its turn"},
      {"tiling", "run the layer in chunks over its sequence or batch axis so its working set shrinks"},
  };
  return list;
}

/// The switches of `techniques` ("auto" allowed, the default) or of a layer override (no default).
inline schema_json technique_switches(bool allow_auto) {
  schema_json properties = schema_json::object();
  const schema_json values =
      allow_auto ? schema_json{"auto", "on", "off", true, false} : schema_json{"on", "off", true, false};
  for (const auto& [name, meaning] : techniques())
    properties[name] = key(names({"string", "boolean"}), meaning, allow_auto ? "on" : "off",
                           allow_auto ? std::optional<schema_json>("auto") : std::nullopt, {{"enum", values}});
  return properties;
}

inline schema_json tier_split() {
  const schema_json percent = {{"minimum", 0}, {"maximum", 100}};
  schema_json p = schema_json::object();
  p["gpu"] = key("number", "percent kept on the device (on a CPU-only machine gpu and cpu both mean host RAM)", 20,
                 std::nullopt, percent);
  p["cpu"] = key("number", "percent kept in host RAM", 30, std::nullopt, percent);
  return {{"type", "object"},
          {"description", "percent of one tensor type per tier; gpu + cpu at most 100, disk takes the rest "
                          "(100 - gpu - cpu)"},
          {"required", names({"gpu", "cpu"})},
          {"additionalProperties", false},
          {"properties", p}};
}

inline schema_json offload() {
  const schema_json all = {{"x-policies", names({"none", "budget", "pinned_hot_set"})}};
  const schema_json paged = {{"x-policies", names({"budget", "pinned_hot_set"})}};
  const schema_json pinned = {{"x-policies", names({"pinned_hot_set"})}};
  schema_json p = schema_json::object();
  p["policy"] = choice({{"none", "every weight stays resident (the engine may still decide to page weights)"},
                        {"budget", "an LRU pager keeps at most `ram_bytes` of weights resident"},
                        {"pinned_hot_set", "like budget, with a hot set that is never evicted"}},
                       "none", "pinned_hot_set", "weight residency policy");
  p["policy"].update(all);
  p["ram_bytes"] = size(true, "the most bytes of layer weights resident at once", "2GiB", std::nullopt, paged);
  p["ram_bytes"]["x-required-for-policies"] = paged.at("x-policies");
  p["prefetch_n_ahead"] = key("integer", "layers the background thread loads ahead of the one computing", 2, 1,
                              {{"minimum", 0}, {"x-policies", paged.at("x-policies")}});
  p["pin_embeddings"] = flag(true, "never evict the token embeddings", pinned);
  p["pin_output_head"] = flag(true, "never evict the output head (layers of kind lm_head)", pinned);
  p["pin_last_n_layers"] = key("integer", "never evict the N deepest layers of kind block or attention", 2, 0,
                               {{"minimum", 0}, {"x-policies", pinned.at("x-policies")}});
  p["disk_dir"] = key("string", "directory of the disk tier (files mode 0600)", "/tmp/memscale-offload", "",
                      {{"x-default-note", "a private directory under the system temp dir"},
                       {"x-policies", all.at("x-policies")}});
  return {{"type", "object"},
          {"description", "weight residency policy: which layer weights stay resident and which an LRU "
                          "pager with a background prefetch moves to the next tier"},
          {"additionalProperties", false},
          {"properties", p}};
}

inline schema_json reservation() {
  schema_json p = schema_json::object();
  p["safety_factor"] = key("number", "multiple of the per-step buffer estimate (memscale.calibrate_reservation can "
                                     "fit it to measured peaks)",
                           1.5, 2.0, {{"exclusiveMinimum", 0}});
  p["prefill_tokens"] = key("integer", "tokens one step processes, when they are not the example inputs' "
                                      "(e.g. a serving prefill chunk); 0 derives them from the graph",
                            4096, 0,
                            {{"minimum", 0},
                             {"x-default-note", "batch x seq of the example inputs (their prefill), seq capped at "
                                                "the model's max positions"}});
  p["flat_bytes"] = size(true, "the cap on the reservation, and the reservation when model dims are missing", "2GiB",
                         4ull << 30);
  p["graph_capture_bytes"] = size(false, "CUDA-graph capture headroom (GPU only)", 0, 512ull << 20);
  return {{"type", "object"},
          {"description", "inference activation reservation: widest per-token buffer x tokens per step x "
                          "dtype x safety factor, capped at a flat size, plus graph-capture headroom"},
          {"additionalProperties", false},
          {"properties", p}};
}

inline schema_json build() {
  schema_json p = schema_json::object();
  p["mode"] = choice({{"auto", "apply techniques cheapest first until the predicted peak fits the budget"},
                      {"off", "apply only what the Config forces on; never raise (the trace warns when over budget)"},
                      {"min_memory", "apply every technique that still lowers the peak (fit with the most memory to "
                                     "spare)"}},
                     "auto", "min_memory", "how far the engine goes to lower the peak");
  p["memory_budget"] = key(
      names({"null", "integer", "number", "string"}),
      "memory one device may use (with several GPUs, each runs a data-parallel replica and the plan is made for the "
      "smallest)",
      "6GiB", schema_json(nullptr),
      {{"oneOf",
        {{{"type", "null"}, {"description", "detected device memory x (1 - safety_margin)"}},
         {{"type", "integer"}, {"format", "size"}, {"exclusiveMinimum", 0}},
         {{"type", "string"}, {"format", "size"}, {"description", "such as \"6GiB\" or \"512MB\" (above 0)"}},
         {{"type", "number"},
          {"exclusiveMinimum", 0},
          {"maximum", 1},
          {"description", "that share of detected device memory (a whole number above 1 is bytes)"}}}},
       {"x-default-note", "detected device memory x (1 - `safety_margin`)"}});
  p["safety_margin"] = key("number", "share of detected device memory left free when memory_budget is not given", 0.2,
                           0.1, {{"minimum", 0}, {"exclusiveMaximum", 1}});
  p["techniques"] = {{"type", "object"},
                     {"description", "a switch per technique: \"on\" always applies it, \"off\" never, \"auto\" lets "
                                     "the engine decide (true = \"on\", false = \"off\")"},
                     {"additionalProperties", false},
                     {"properties", technique_switches(true)}};
  p["layer_overrides"] = {
      {"type", "object"},
      {"description", "per-layer switches that beat `techniques`: a glob on the layer name -> {technique: \"on\" | "
                      "\"off\"}; two matching globs that disagree are an error naming both"},
      {"propertyNames",
       {{"type", "string"},
        {"minLength", 1},
        {"description", "glob on the layer name (fnmatch style)"},
        {"examples", {"blocks.1*"}}}},
      {"additionalProperties",
       {{"type", "object"},
        {"minProperties", 1},
        {"additionalProperties", false},
        {"properties", technique_switches(false)}}},
      {"default", schema_json::object()}};
  p["force_optimize"] = flag(false, "plan even a tiny model (unoptimized peak at most 10% of the device at pressure "
                                    "at most 0.5) instead of skipping it");
  p["auto_policy"] = flag(false, "the learned policy stage: a decision tree trained on measured runs narrows the "
                                 "techniques the rule engine may use for a training plan (never below the budget: "
                                 "a narrowed set with no plan falls back to the rules); docs/auto-policy.md");
  p["solver"] = choice({{"auto", "the exact solver for training plans of up to 256 layers, the greedy above (the "
                                 "trace says which and why)"},
                        {"greedy", "techniques in escalation order (recompute, then offload), cheapest per byte saved "
                                   "first, until the predicted peak fits (fast at any depth)"},
                        {"optimal", "the exact solver: the least modelled cost whose predicted peak fits, over every "
                                    "per-layer choice the greedy may make (training plans; inference plans use the "
                                    "greedy, said in the trace)"}},
                       "auto", "optimal", "how the engine chooses a training plan's techniques (docs/solver.md)");
  p["offload"] = offload();
  const auto split = [](const std::string& description) {
    return schema_json{{"$ref", "#/$defs/tier_split"}, {"description", description}};
  };
  p["tiers"] = {{"type", "object"},
                {"description", "fixed device / host / disk shares per tensor type for inference plans; "
                                "training plans ignore them (said in the trace)"},
                {"additionalProperties", false},
                {"properties",
                 {{"weights", split("share of the layer weights")},
                  {"kv_cache", split("share of the KV cache")},
                  {"activations", split("inference keeps the activations between layers on the device: gpu must be 100 "
                                         "(the model's own forward holds them)")}}},
                {"default", schema_json::object()},
                {"x-default-note", "the engine decides the tier of each layer's weights and KV cache"}};
  p["reservation"] = reservation();
  return {{"$schema", "https://json-schema.org/draft/2020-12/schema"},
          {"title", "memscale.Config"},
          {"description", "What the user asks of MemScale. Python keyword arguments of memscale.Config are these "
                          "keys; memscale::Config::from_json_text reads the same JSON."},
          {"type", "object"},
          {"additionalProperties", false},
          {"properties", p},
          {"$defs", {{"tier_split", tier_split()}}}};
}

}  // namespace config_schema_detail

/// The Config schema document (built once; keys in declared order).
inline const nlohmann::ordered_json& config_schema() {
  static const nlohmann::ordered_json schema = config_schema_detail::build();
  return schema;
}

/// Lookups of the parser into the schema, by dotted key path: "offload.ram_bytes",
/// "tiers.weights.gpu"; "*" steps into a map's values ("layer_overrides.*.checkpoint").
/// A path the schema lacks is a programming error (std::logic_error), not a ConfigError.
namespace config_schema_nodes {

using schema_json = nlohmann::ordered_json;

inline const schema_json& resolve(const schema_json& node) {
  if (!node.contains("$ref")) return node;
  const std::string ref = node.at("$ref").get<std::string>();
  const std::string prefix = "#/$defs/";
  if (ref.rfind(prefix, 0) != 0) throw std::logic_error("config schema: unsupported $ref " + ref);
  return config_schema().at("$defs").at(ref.substr(prefix.size()));
}

inline const schema_json& node(std::string_view path) {
  const schema_json* at = &config_schema();
  while (!path.empty()) {
    const std::size_t dot = path.find('.');
    const std::string key(path.substr(0, dot));
    path = dot == std::string_view::npos ? std::string_view() : path.substr(dot + 1);
    const schema_json& parent = resolve(*at);
    if (key == "*" && parent.contains("additionalProperties") && parent.at("additionalProperties").is_object())
      at = &parent.at("additionalProperties");
    else if (parent.contains("properties") && parent.at("properties").contains(key))
      at = &parent.at("properties").at(key);
    else
      throw std::logic_error("config schema: no key \"" + key + "\" on the way to the path asked for");
  }
  return resolve(*at);
}

/// Property names of the object at `path` ("" = the top level), in declared order.
inline std::vector<std::string> keys(std::string_view path) {
  std::vector<std::string> out;
  for (const auto& [key, value] : node(path).at("properties").items()) out.push_back(key);
  return out;
}

/// The string members of the enumeration at `path`, in declared order.
inline std::vector<std::string> enum_strings(std::string_view path) {
  std::vector<std::string> out;
  for (const auto& value : node(path).at("enum"))
    if (value.is_string()) out.push_back(value.get<std::string>());
  return out;
}

/// The default at `path`, as JSON: the value an absent key takes.
inline nlohmann::json default_value(std::string_view path) {
  const schema_json& n = node(path);
  if (!n.contains("default")) throw std::logic_error("config schema: " + std::string(path) + " has no default");
  return nlohmann::json::parse(n.at("default").dump());
}

/// A string-array annotation at `path` (x-policies, x-required-for-policies); empty when absent.
inline std::vector<std::string> annotation(std::string_view path, const std::string& name) {
  std::vector<std::string> out;
  const schema_json& n = node(path);
  if (n.contains(name))
    for (const auto& value : n.at(name)) out.push_back(value.get<std::string>());
  return out;
}

}  // namespace config_schema_nodes

/// A Config JSON giving every key of the schema its first example (a map one entry).
inline nlohmann::json config_example(const nlohmann::ordered_json& at = config_schema()) {
  const auto& node = config_schema_nodes::resolve(at);
  if (node.contains("examples")) return nlohmann::json::parse(node.at("examples").at(0).dump());
  nlohmann::json out = nlohmann::json::object();
  if (node.contains("properties"))
    for (const auto& [key, child] : node.at("properties").items()) out[key] = config_example(child);
  else if (node.contains("additionalProperties") && node.at("additionalProperties").is_object())
    out[node.at("propertyNames").at("examples").at(0).get<std::string>()] =
        config_example(node.at("additionalProperties"));
  return out;
}

}  // namespace memscale

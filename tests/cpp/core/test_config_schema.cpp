// The schema is the single account of Config keys: these tests fail when the parser,
// to_json or the struct defaults drift from it.
#include <functional>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "memscale/core/config.hpp"
#include "memscale/core/config_schema.hpp"

namespace memscale {
namespace {

using nlohmann::json;
using schema_json = nlohmann::ordered_json;
namespace nodes = config_schema_nodes;

std::string join(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

/// Dotted paths of the schema's leaves (and of its objects too with `objects`); a map's keys are "*".
void schema_leaves(const schema_json& raw, const std::string& path, std::set<std::string>& out, bool objects = false) {
  const auto& node = nodes::resolve(raw);
  if (node.contains("properties")) {
    for (const auto& [key, child] : node.at("properties").items()) schema_leaves(child, join(path, key), out, objects);
  } else if (node.contains("additionalProperties") && node.at("additionalProperties").is_object()) {
    schema_leaves(node.at("additionalProperties"), join(path, "*"), out, objects);
  } else {
    out.insert(path);
    return;
  }
  if (objects && !path.empty()) out.insert(path);
}

enum class Shape { leaf, record, map };

Shape shape(const std::string& path) {
  try {
    const auto& node = nodes::node(path);
    if (node.contains("properties")) return Shape::record;
    if (node.contains("additionalProperties") && node.at("additionalProperties").is_object()) return Shape::map;
  } catch (const std::logic_error&) {
    // not in the schema: a leaf here, which the comparison with the schema's leaves reports
  }
  return Shape::leaf;
}

/// Dotted paths of the leaves of a Config's JSON, keys of schema maps written "*".
void json_leaves(const json& value, const std::string& path, std::set<std::string>& out) {
  const Shape s = shape(path);
  if (!value.is_object() || s == Shape::leaf) {
    out.insert(path);
    return;
  }
  for (const auto& [key, child] : value.items()) json_leaves(child, join(path, s == Shape::map ? "*" : key), out);
}

TEST(ConfigSchema, StructDefaultsEqualTheSchemaDefaultsTheParserUses) {
  EXPECT_TRUE(Config{} == Config::from_json_text("{}"));  // the text comparison below shows the difference
  EXPECT_EQ(Config{}.to_json_text(), Config::from_json_text("{}").to_json_text());
}

TEST(ConfigSchema, EveryDefaultIsWhatToJsonWritesForAnEmptyConfig) {
  std::set<std::string> paths;
  schema_leaves(config_schema(), "", paths, true);
  // Policy-specific offload keys are written only with a policy they apply to.
  const json empty = json(Config::from_json_text("{}"));
  const json paged = json(Config::from_json_text(R"({"offload": {"policy": "pinned_hot_set", "ram_bytes": 1}})"));
  std::size_t compared = 0;
  for (const auto& path : paths) {
    if (path.find('*') != std::string::npos) continue;
    const auto& node = nodes::node(path);
    if (!node.contains("default")) continue;
    const auto policies = nodes::annotation(path, "x-policies");
    const bool with_none = policies.empty() || std::find(policies.begin(), policies.end(), "none") != policies.end();
    const json& written = with_none ? empty : paged;
    json at = written;
    for (std::size_t start = 0; start <= path.size();) {
      const std::size_t dot = std::min(path.find('.', start), path.size());
      const std::string key = path.substr(start, dot - start);
      ASSERT_TRUE(at.is_object() && at.contains(key)) << path << " is not in to_json:\n" << written.dump(2);
      at = at.at(key);
      start = dot + 1;
    }
    EXPECT_EQ(at, nodes::default_value(path)) << path;
    ++compared;
  }
  EXPECT_GE(compared, 20u);
}

TEST(ConfigSchema, ConfigOfEveryExampleParsesRoundTripsAndUsesEveryKey) {
  const json example = config_example();
  const Config parsed = config_from_json(example);
  const json written = json(parsed);
  EXPECT_EQ(Config::from_json_text(written.dump()), parsed);
  EXPECT_NE(parsed, Config{}) << "the examples should differ from the defaults";

  std::set<std::string> in_schema, in_example, in_to_json;
  schema_leaves(config_schema(), "", in_schema);
  json_leaves(example, "", in_example);
  json_leaves(written, "", in_to_json);
  EXPECT_EQ(in_example, in_schema) << "config_example() misses a key";
  // A key to_json writes but the schema lacks (or the reverse) fails here.
  EXPECT_EQ(in_to_json, in_schema) << written.dump(2);
}

/// The smallest config holding `value` at `path`: required siblings at their minimum (so
/// gpu + cpu stays within 100), and for offload keys a policy they apply to, with what
/// that policy requires.
json minimal_with(const std::string& path, const json& value) {
  json config = json::object();
  std::vector<std::string> keys;
  for (std::size_t start = 0; start <= path.size();) {
    const std::size_t dot = std::min(path.find('.', start), path.size());
    keys.push_back(path.substr(start, dot - start));
    start = dot + 1;
  }
  const std::string parent_path = path.substr(0, path.size() - keys.back().size() - (keys.size() > 1 ? 1 : 0));
  json* parent = &config;
  for (std::size_t i = 0; i + 1 < keys.size(); ++i) parent = &(*parent)[keys[i] == "*" ? "blocks.*" : keys[i]];
  (*parent)[keys.back()] = value;
  const auto& parent_node = nodes::node(parent_path);
  if (parent_node.contains("required"))
    for (const auto& sibling : parent_node.at("required"))
      if (sibling != keys.back())
        (*parent)[sibling.get<std::string>()] = nodes::node(join(parent_path, sibling)).at("minimum");
  if (parent_path == "offload") {
    const std::string policy = keys.back() == "policy" ? (value.is_string() ? value.get<std::string>() : "none")
                                                       : nodes::annotation(path, "x-policies").at(0);
    if (keys.back() != "policy") (*parent)["policy"] = policy;
    for (const auto& sibling : nodes::keys("offload")) {
      const auto required = nodes::annotation("offload." + sibling, "x-required-for-policies");
      if (sibling != keys.back() && std::find(required.begin(), required.end(), policy) != required.end())
        (*parent)[sibling] = json::parse(nodes::node("offload." + sibling).at("examples").at(0).dump());
    }
  }
  return config;
}

bool accepted(const json& config, std::string& error) {
  try {
    config_from_json(config);
    return true;
  } catch (const ConfigError& e) {
    error = e.what();
    return false;
  }
}

TEST(ConfigSchema, EnumerationsAndRangesAreTheParsers) {
  std::set<std::string> leaves;
  schema_leaves(config_schema(), "", leaves);
  std::size_t probes = 0;
  for (const auto& path : leaves) {
    const auto& node = nodes::node(path);
    const std::string key = path.substr(path.rfind('.') == std::string::npos ? 0 : path.rfind('.') + 1);
    std::string error;
    auto expect = [&](const json& value, bool ok) {
      const json config = minimal_with(path, value);
      EXPECT_EQ(accepted(config, error), ok) << config.dump() << (ok ? " refused: " + error : " accepted");
      if (!ok) EXPECT_NE(error.find(key), std::string::npos) << "the message names no key: " << error;
      ++probes;
    };
    if (node.contains("enum")) {
      for (const auto& member : node.at("enum")) expect(json::parse(member.dump()), true);
      expect("not_a_member", false);
    }
    const bool whole = node.at("type") != "number";  // integers and sizes step by one byte
    const double step = whole ? 1.0 : 0.01;
    auto number = [&](double x) { return whole ? json(static_cast<std::int64_t>(x)) : json(x); };
    if (node.contains("minimum")) {
      expect(number(node.at("minimum").get<double>()), true);
      expect(number(node.at("minimum").get<double>() - step), false);
    }
    if (node.contains("exclusiveMinimum")) {
      expect(number(node.at("exclusiveMinimum").get<double>()), false);
      expect(number(node.at("exclusiveMinimum").get<double>() + step), true);
    }
    if (node.contains("maximum")) {
      expect(number(node.at("maximum").get<double>()), true);
      expect(number(node.at("maximum").get<double>() + step), false);
    }
    if (node.contains("exclusiveMaximum")) {
      expect(number(node.at("exclusiveMaximum").get<double>()), false);
      expect(number(node.at("exclusiveMaximum").get<double>() - step), true);
    }
  }
  EXPECT_GE(probes, 40u);
}

TEST(ConfigSchema, EveryKeyIsDescribedAndEveryLeafHasAnExample) {
  std::function<void(const schema_json&, const std::string&)> check = [&](const schema_json& raw,
                                                                          const std::string& path) {
    const auto& node = nodes::resolve(raw);
    EXPECT_TRUE(raw.contains("description") || node.contains("description")) << path;
    EXPECT_TRUE(node.contains("type")) << path;
    if (node.contains("properties")) {
      for (const auto& [key, child] : node.at("properties").items()) check(child, join(path, key));
    } else if (node.contains("additionalProperties") && node.at("additionalProperties").is_object()) {
      EXPECT_TRUE(node.contains("propertyNames") && node.at("propertyNames").contains("examples")) << path;
      for (const auto& [key, child] : node.at("additionalProperties").at("properties").items())
        check(child, join(path, "*." + key));
    } else {
      EXPECT_TRUE(node.contains("examples")) << path;
    }
  };
  for (const auto& [key, child] : config_schema().at("properties").items()) check(child, key);
}

TEST(ConfigSchema, UnknownKeysSuggestFromTheSchema) {
  try {
    Config::from_json_text(R"({"reservation": {"prefil_tokens": 1}})");
    FAIL() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean \"prefill_tokens\"?"), std::string::npos) << e.what();
    std::string allowed;
    for (const auto& key : nodes::keys("reservation")) allowed += (allowed.empty() ? "" : ", ") + key;
    EXPECT_NE(std::string(e.what()).find("Allowed keys: " + allowed), std::string::npos) << e.what();
  }
}

TEST(ConfigSchema, LookupOfAPathTheSchemaLacksIsALogicError) {
  EXPECT_THROW(nodes::node("offload.no_such_key"), std::logic_error);
  EXPECT_THROW(nodes::default_value("offload.ram_bytes"), std::logic_error);
  EXPECT_EQ(nodes::keys("tiers.kv_cache"), (std::vector<std::string>{"gpu", "cpu"}));
  EXPECT_EQ(nodes::enum_strings("layer_overrides.*.tiling"), (std::vector<std::string>{"on", "off"}));
}

}  // namespace
}  // namespace memscale

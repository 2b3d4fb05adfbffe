// Strict readers for JSON fields: a missing key or a value of the wrong type is an
// error naming the full key path, the value given and the type expected.
#pragma once

#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memscale/core/errors.hpp"

namespace memscale::json_fields {

using nlohmann::json;

/// Short rendering of a JSON value for error messages.
inline std::string show(const json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

/// 110 -> "110", 0.25 -> "0.25": numbers as a person writes them.
inline std::string format_number(double value) {
  if (value == std::floor(value) && std::fabs(value) < 1e15) return std::to_string(static_cast<long long>(value));
  std::string text = json(value).dump();
  return text;
}

inline std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

inline const json& require(const json& object, const std::string& key, const std::string& path) {
  if (!object.is_object()) throw ConfigError(path + ": expected a JSON object, got " + show(object));
  auto it = object.find(key);
  if (it == object.end()) throw ConfigError(join_path(path, key) + ": required key is missing");
  return *it;
}

[[noreturn]] inline void wrong_type(const std::string& path, const json& value, const std::string& expected) {
  throw ConfigError(path + ": got " + show(value) + ", expected " + expected);
}

inline std::uint64_t as_u64(const json& value, const std::string& path) {
  if (value.is_number_unsigned()) return value.get<std::uint64_t>();
  if (value.is_number_integer()) {
    if (value.get<std::int64_t>() < 0) wrong_type(path, value, "a non-negative integer");
    return static_cast<std::uint64_t>(value.get<std::int64_t>());
  }
  wrong_type(path, value, "a non-negative integer");
}

inline std::int64_t as_i64(const json& value, const std::string& path) {
  if (value.is_number_integer()) return value.get<std::int64_t>();
  wrong_type(path, value, "an integer");
}

inline double as_double(const json& value, const std::string& path) {
  if (value.is_number()) return value.get<double>();
  wrong_type(path, value, "a number");
}

inline bool as_bool(const json& value, const std::string& path) {
  if (value.is_boolean()) return value.get<bool>();
  wrong_type(path, value, "true or false");
}

inline std::string as_string(const json& value, const std::string& path) {
  if (value.is_string()) return value.get<std::string>();
  wrong_type(path, value, "a string");
}

inline std::vector<std::string> as_strings(const json& value, const std::string& path) {
  if (!value.is_array()) wrong_type(path, value, "an array of strings");
  std::vector<std::string> out;
  for (std::size_t i = 0; i < value.size(); ++i) out.push_back(as_string(value[i], path + "[" + std::to_string(i) + "]"));
  return out;
}

inline std::uint64_t u64(const json& o, const std::string& key, const std::string& path) {
  return as_u64(require(o, key, path), join_path(path, key));
}
inline std::int64_t i64(const json& o, const std::string& key, const std::string& path) {
  return as_i64(require(o, key, path), join_path(path, key));
}
inline double number(const json& o, const std::string& key, const std::string& path) {
  return as_double(require(o, key, path), join_path(path, key));
}
inline bool boolean(const json& o, const std::string& key, const std::string& path) {
  return as_bool(require(o, key, path), join_path(path, key));
}
inline std::string string(const json& o, const std::string& key, const std::string& path) {
  return as_string(require(o, key, path), join_path(path, key));
}
inline std::vector<std::string> strings(const json& o, const std::string& key, const std::string& path) {
  return as_strings(require(o, key, path), join_path(path, key));
}

/// Optional key: the fallback when absent.
template <typename T, typename Reader>
T optional(const json& o, const std::string& key, const std::string& path, T fallback, Reader read) {
  if (!o.is_object()) return fallback;
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return fallback;
  return read(*it, join_path(path, key));
}

/// A JSON document given as text, or as the path of a file holding it: text that does
/// not start with '{' or '[' is read as a path.
inline std::string load_json_document(const std::string& text_or_path) {
  const auto first = text_or_path.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && (text_or_path[first] == '{' || text_or_path[first] == '[')) return text_or_path;
  std::ifstream in(text_or_path);
  if (!in) throw ConfigError("cannot read JSON: \"" + text_or_path + "\" is neither JSON text nor a readable file");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

/// Doubles are written rounded to 6 decimals so plan JSON is stable text.
inline double round6(double value) {
  const double r = std::round(value * 1e6) / 1e6;
  return r == 0.0 ? 0.0 : r;  // -0.0 (e.g. 100 - 96.016331 - 3.983669) would print as "-0.0" and not round-trip
}

/// Rejects `value` unless it is one of `allowed` (error lists them).
inline std::string one_of(const std::string& value, const std::vector<std::string>& allowed, const std::string& path) {
  for (const auto& a : allowed)
    if (a == value) return value;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + std::string("\"") + a + "\"";
  throw ConfigError(path + ": got \"" + value + "\", allowed: " + list);
}

}  // namespace memscale::json_fields

// Byte sizes as users write them ("6GiB", "512MB", "1.5 GB", 4096) and as we print them.
#pragma once

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "memscale/core/errors.hpp"

namespace memscale {

/// Parses a size string: a non-negative decimal number with an optional unit B, KB,
/// MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024); case-insensitive,
/// spaces allowed between number and unit. Throws ConfigError naming `path` otherwise.
inline std::uint64_t parse_size(const std::string& text, const std::string& path) {
  const std::string allowed =
      "expected a size such as 4096, \"512MB\", \"1.5 GB\" or \"6GiB\" (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)";
  std::size_t i = 0;
  auto skip_spaces = [&] {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  };
  skip_spaces();
  if (i < text.size() && text[i] == '-') throw ConfigError(path + ": got \"" + text + "\", a size cannot be negative; " + allowed);
  const std::size_t number_start = i;
  bool seen_digit = false, seen_dot = false;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || (text[i] == '.' && !seen_dot))) {
    if (text[i] == '.') seen_dot = true; else seen_digit = true;
    ++i;
  }
  if (!seen_digit) throw ConfigError(path + ": got \"" + text + "\", " + allowed);
  const double number = std::stod(text.substr(number_start, i - number_start));
  skip_spaces();
  std::string unit;
  while (i < text.size() && std::isalpha(static_cast<unsigned char>(text[i])))
    unit += static_cast<char>(std::toupper(static_cast<unsigned char>(text[i++])));
  skip_spaces();
  if (i != text.size()) throw ConfigError(path + ": got \"" + text + "\", " + allowed);
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "KB") scale = 1e3;
  else if (unit == "MB") scale = 1e6;
  else if (unit == "GB") scale = 1e9;
  else if (unit == "TB") scale = 1e12;
  else if (unit == "KIB") scale = 1024.0;
  else if (unit == "MIB") scale = 1024.0 * 1024;
  else if (unit == "GIB") scale = 1024.0 * 1024 * 1024;
  else if (unit == "TIB") scale = 1024.0 * 1024 * 1024 * 1024;
  else throw ConfigError(path + ": got \"" + text + "\", unknown unit \"" + unit + "\"; " + allowed);
  const double bytes = std::round(number * scale);
  if (bytes > 1.8e19) throw ConfigError(path + ": got \"" + text + "\", too large for a 64-bit byte count");
  if (unit.empty() && seen_dot && bytes != number)
    throw ConfigError(path + ": got \"" + text + "\", a byte count without unit must be whole; " + allowed);
  return static_cast<std::uint64_t>(bytes);
}

/// "1.50 GiB", "512.00 MiB", "900 B": binary units, two decimals, for logs and tables.
inline std::string format_bytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char buffer[48];
  if (unit == 0) std::snprintf(buffer, sizeof buffer, "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(buffer, sizeof buffer, "%.2f %s", value, units[unit]);
  return buffer;
}

}  // namespace memscale

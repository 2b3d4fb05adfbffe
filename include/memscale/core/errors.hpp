// One exception hierarchy for the whole library; the bindings map each class to a
// Python exception of the same name (ConfigError is also a ValueError there).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace memscale {

/// Base of every error MemScale raises on purpose.
class MemScaleError : public std::runtime_error {
 public:
  explicit MemScaleError(const std::string& what) : std::runtime_error(what) {}
};

/// A Config (or a JSON document of a core type) is invalid. The message names the
/// key, the value given and what is allowed.
class ConfigError : public MemScaleError {
 public:
  explicit ConfigError(const std::string& what) : MemScaleError(what) {}
};

/// No plan fits the budget. `min_budget_bytes` is the smallest budget for which a plan
/// exists under the same overrides.
class InfeasibleBudgetError : public MemScaleError {
 public:
  InfeasibleBudgetError(const std::string& what, std::uint64_t min_budget_bytes)
      : MemScaleError(what), min_budget_bytes_(min_budget_bytes) {}
  std::uint64_t min_budget_bytes() const noexcept { return min_budget_bytes_; }

 private:
  std::uint64_t min_budget_bytes_;
};

}  // namespace memscale

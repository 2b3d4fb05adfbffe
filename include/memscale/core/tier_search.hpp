// Tier-policy search (FlexGen-style): place each tensor type (weights, KV cache,
// activations) across GPU / CPU / disk in percentages on a grid, minimising the
// estimated latency of one decode step with I/O overlapped with compute, subject to each
// tier's capacity. Deterministic: candidates are compared by a total order.
//
// Cost of one step (docs/memory-model.md#tier-policy-cost-model):
//   to GPU   (PCIe, host->device):   W(1-g_W) + C(1-g_C) + A(1-g_A)   every byte not on the
//                                     GPU is read into it once per step (disk bytes pass
//                                     through host RAM)
//   to host  (PCIe, device->host):   A(1-g_A) + K(1-g_C)               activations written
//                                     back, K = KV bytes appended per step
//   disk     (one device):           (W d_W + C d_C + A d_A)/read + (A d_A + K d_C)/write
//   io       = max(to GPU, to host, disk)                              the three links overlap
//   total    = max(compute, io)                                        I/O overlaps compute
// Ties are broken by lower io, fewer disk bytes, fewer CPU bytes, then higher percentages
// on faster tiers (weights, then KV cache, then activations).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>

#include "memscale/core/errors.hpp"
#include "memscale/core/json_fields.hpp"
#include "memscale/core/sizes.hpp"
#include "memscale/core/tier_policy.hpp"

namespace memscale {

/// What the search needs to know. Sizes are bytes; rates bytes/s; compute_s seconds.
struct TierProblem {
  std::uint64_t weights_bytes = 0, kv_cache_bytes = 0, activation_bytes = 0;
  std::uint64_t kv_append_bytes = 0;  ///< KV cache bytes written per step (new tokens)
  std::uint64_t gpu_capacity = 0, cpu_capacity = 0, disk_capacity = 0;
  double host_to_device_bytes_per_s = 16e9;
  double disk_read_bytes_per_s = 2e9, disk_write_bytes_per_s = 1e9;
  double compute_s = 0.0;  ///< compute time of one step
  std::map<std::string, TierSplit> fixed;  ///< tensor types whose split the user fixed (Config.tiers)
  int step_percent = 5;                    ///< grid step; must divide 100
  bool operator==(const TierProblem&) const = default;
};

/// Time and bytes of one policy.
struct TierCost {
  double compute_s = 0, to_gpu_s = 0, to_host_s = 0, disk_s = 0, io_s = 0, total_s = 0;
  std::uint64_t gpu_bytes = 0, cpu_bytes = 0, disk_bytes = 0;
  bool operator==(const TierCost&) const = default;
};

struct TierSearchResult {
  TierPolicy policy;
  TierCost cost;
  std::uint64_t evaluated = 0;  ///< policies costed
};

namespace tier_detail {

inline std::uint64_t share(std::uint64_t bytes, double percent) {
  return static_cast<std::uint64_t>(std::ceil(static_cast<double>(bytes) * percent / 100.0));
}

/// Split of the three types, in tier_tensor_types order.
inline std::array<const TierSplit*, 3> splits(const TierPolicy& p) { return {&p.weights, &p.kv_cache, &p.activations}; }

inline std::array<std::uint64_t, 3> sizes(const TierProblem& pr) {
  return {pr.weights_bytes, pr.kv_cache_bytes, pr.activation_bytes};
}

}  // namespace tier_detail

/// Bytes and time of `policy` for `problem` (capacities not checked).
inline TierCost tier_cost(const TierProblem& problem, const TierPolicy& policy) {
  using tier_detail::share;
  TierCost c;
  const auto s = tier_detail::splits(policy);
  const auto x = tier_detail::sizes(problem);
  double to_gpu = 0, disk_read = 0;
  for (int i = 0; i < 3; ++i) {
    const std::uint64_t gpu = share(x[i], s[i]->gpu), disk = share(x[i], s[i]->disk());
    const std::uint64_t cpu = x[i] >= gpu + disk ? x[i] - gpu - disk : 0;
    c.gpu_bytes += gpu;
    c.cpu_bytes += cpu;
    c.disk_bytes += disk;
    to_gpu += static_cast<double>(x[i] - std::min(x[i], gpu));
    disk_read += static_cast<double>(disk);
  }
  const double act_off = static_cast<double>(x[2]) * (100.0 - policy.activations.gpu) / 100.0;
  const double kv_off = static_cast<double>(problem.kv_append_bytes) * (100.0 - policy.kv_cache.gpu) / 100.0;
  const double disk_write = static_cast<double>(share(x[2], policy.activations.disk())) +
                            static_cast<double>(problem.kv_append_bytes) * policy.kv_cache.disk() / 100.0;
  c.compute_s = problem.compute_s;
  c.to_gpu_s = to_gpu / problem.host_to_device_bytes_per_s;
  c.to_host_s = (act_off + kv_off) / problem.host_to_device_bytes_per_s;
  c.disk_s = disk_read / problem.disk_read_bytes_per_s + disk_write / problem.disk_write_bytes_per_s;
  c.io_s = std::max({c.to_gpu_s, c.to_host_s, c.disk_s});
  c.total_s = std::max(c.compute_s, c.io_s);
  return c;
}

/// Every tier within its capacity.
inline bool tier_feasible(const TierProblem& problem, const TierCost& cost) {
  return cost.gpu_bytes <= problem.gpu_capacity && cost.cpu_bytes <= problem.cpu_capacity &&
         cost.disk_bytes <= problem.disk_capacity;
}

/// The search's total order: true when (a, pa) is preferred to (b, pb).
inline bool tier_better(const TierCost& a, const TierPolicy& pa, const TierCost& b, const TierPolicy& pb) {
  if (a.total_s != b.total_s) return a.total_s < b.total_s;
  if (a.io_s != b.io_s) return a.io_s < b.io_s;
  if (a.disk_bytes != b.disk_bytes) return a.disk_bytes < b.disk_bytes;
  if (a.cpu_bytes != b.cpu_bytes) return a.cpu_bytes < b.cpu_bytes;
  const auto sa = tier_detail::splits(pa), sb = tier_detail::splits(pb);
  for (int i = 0; i < 3; ++i) {
    if (sa[i]->gpu != sb[i]->gpu) return sa[i]->gpu > sb[i]->gpu;
    if (sa[i]->cpu != sb[i]->cpu) return sa[i]->cpu > sb[i]->cpu;
  }
  return false;
}

/// Rejects a problem the cost model cannot evaluate, naming the field.
inline void validate_tier_problem(const TierProblem& p) {
  if (p.step_percent < 1 || p.step_percent > 50 || 100 % p.step_percent != 0)
    throw ConfigError("tier search step_percent: got " + std::to_string(p.step_percent) +
                      ", expected a divisor of 100 between 1 and 50 (e.g. 5)");
  auto positive = [](double v, const char* name) {
    if (!(v > 0.0) || !std::isfinite(v))
      throw ConfigError(std::string("tier search ") + name + ": got " + json_fields::format_number(v) + ", must be > 0");
  };
  positive(p.host_to_device_bytes_per_s, "host_to_device_bytes_per_s");
  positive(p.disk_read_bytes_per_s, "disk_read_bytes_per_s");
  positive(p.disk_write_bytes_per_s, "disk_write_bytes_per_s");
  if (!(p.compute_s >= 0.0) || !std::isfinite(p.compute_s))
    throw ConfigError("tier search compute_s: got " + json_fields::format_number(p.compute_s) + ", must be >= 0");
  for (const auto& [type, split] : p.fixed) {
    json_fields::one_of(type, {"weights", "kv_cache", "activations"}, "tiers");
    if (split.gpu < 0 || split.cpu < 0 || split.gpu + split.cpu > 100.0 + 1e-9)
      throw ConfigError("tiers." + type + ": gpu " + json_fields::format_number(split.gpu) + " + cpu " +
                        json_fields::format_number(split.cpu) + " must each be >= 0 and sum to at most 100");
  }
}

namespace tier_detail {

/// Values one type may take on the grid: its fixed split, or every (gpu, disk) pair.
struct Axis {
  bool fixed = false;
  TierSplit split;
};

inline Axis axis_of(const TierProblem& p, const char* type) {
  const auto it = p.fixed.find(type);
  if (it == p.fixed.end()) return {};
  return {true, it->second};
}

/// Calls visit(policy) for every grid policy with the given gpu percentages, choosing for
/// the activations the smallest disk share that satisfies the CPU capacity (any larger
/// one is no better on any key of tier_better).
template <typename Visit>
void for_each_disk_choice(const TierProblem& p, const std::array<Axis, 3>& axes, const std::array<double, 3>& gpu,
                          Visit&& visit) {
  const double step = p.step_percent;
  auto disk_values = [&](int i, auto&& body) {
    if (axes[i].fixed) return body(axes[i].split.disk());
    for (double d = 0; d <= 100.0 - gpu[i] + 1e-9; d += step) body(d);
  };
  disk_values(0, [&](double d0) {
    disk_values(1, [&](double d1) {
      if (axes[2].fixed) {
        TierPolicy pol{{gpu[0], 100.0 - gpu[0] - d0}, {gpu[1], 100.0 - gpu[1] - d1}, axes[2].split};
        visit(pol);
        return;
      }
      for (double d2 = 0; d2 <= 100.0 - gpu[2] + 1e-9; d2 += step) {
        TierPolicy pol{{gpu[0], 100.0 - gpu[0] - d0}, {gpu[1], 100.0 - gpu[1] - d1}, {gpu[2], 100.0 - gpu[2] - d2}};
        const TierCost c = tier_cost(p, pol);
        if (c.cpu_bytes <= p.cpu_capacity || d2 + step > 100.0 - gpu[2] + 1e-9) {
          visit(pol);
          return;
        }
      }
    });
  });
}

template <typename Visit>
void for_each_gpu_choice(const TierProblem& p, const std::array<Axis, 3>& axes, Visit&& visit) {
  const double step = p.step_percent;
  auto gpu_values = [&](int i, auto&& body) {
    if (axes[i].fixed) return body(axes[i].split.gpu);
    for (double g = 0; g <= 100.0 + 1e-9; g += step) body(g);
  };
  gpu_values(0, [&](double g0) { gpu_values(1, [&](double g1) { gpu_values(2, [&](double g2) { visit({g0, g1, g2}); }); }); });
}

}  // namespace tier_detail

/// Smallest GPU capacity (bytes) for which some grid policy fits the CPU and disk
/// capacities; throws ConfigError when none does at any GPU size (the fixed splits
/// overflow CPU or disk).
inline std::uint64_t tier_min_gpu_bytes(const TierProblem& problem) {
  validate_tier_problem(problem);
  const std::array<tier_detail::Axis, 3> axes = {tier_detail::axis_of(problem, "weights"),
                                                 tier_detail::axis_of(problem, "kv_cache"),
                                                 tier_detail::axis_of(problem, "activations")};
  bool any = false;
  std::uint64_t best = 0;
  tier_detail::for_each_gpu_choice(problem, axes, [&](const std::array<double, 3>& gpu) {
    tier_detail::for_each_disk_choice(problem, axes, gpu, [&](const TierPolicy& pol) {
      const TierCost c = tier_cost(problem, pol);
      if (c.cpu_bytes > problem.cpu_capacity || c.disk_bytes > problem.disk_capacity) return;
      if (!any || c.gpu_bytes < best) best = c.gpu_bytes, any = true;
    });
  });
  if (!any) {
    std::string fixed;
    for (const auto& [type, split] : problem.fixed) fixed += (fixed.empty() ? "" : ", ") + ("tiers." + type);
    throw ConfigError("tier policy: no placement fits CPU " + format_bytes(problem.cpu_capacity) + " and disk " +
                      format_bytes(problem.disk_capacity) + " at any GPU size" +
                      (fixed.empty() ? std::string() : " with the fixed splits " + fixed) +
                      "; lower the fixed CPU/disk shares or free host RAM / disk space");
  }
  return best;
}

/// The minimum-cost feasible policy on the problem's grid (exact: equal to trying every
/// grid policy, which the tests check). Throws InfeasibleBudgetError (min_budget_bytes =
/// the GPU capacity needed) when the tiers cannot hold the tensors.
inline TierSearchResult search_tier_policy(const TierProblem& problem) {
  validate_tier_problem(problem);
  const std::array<tier_detail::Axis, 3> axes = {tier_detail::axis_of(problem, "weights"),
                                                 tier_detail::axis_of(problem, "kv_cache"),
                                                 tier_detail::axis_of(problem, "activations")};
  TierSearchResult best;
  bool found = false;
  tier_detail::for_each_gpu_choice(problem, axes, [&](const std::array<double, 3>& gpu) {
    const std::array<std::uint64_t, 3> x = tier_detail::sizes(problem);
    std::uint64_t gpu_bytes = 0;
    for (int i = 0; i < 3; ++i) gpu_bytes += tier_detail::share(x[i], gpu[i]);
    if (gpu_bytes > problem.gpu_capacity) return;
    tier_detail::for_each_disk_choice(problem, axes, gpu, [&](const TierPolicy& pol) {
      const TierCost c = tier_cost(problem, pol);
      ++best.evaluated;
      if (!tier_feasible(problem, c)) return;
      if (!found || tier_better(c, pol, best.cost, best.policy)) best.policy = pol, best.cost = c, found = true;
    });
  });
  if (!found) {
    const std::uint64_t need = tier_min_gpu_bytes(problem);
    throw InfeasibleBudgetError(
        "tier policy: weights " + format_bytes(problem.weights_bytes) + " + KV cache " +
            format_bytes(problem.kv_cache_bytes) + " + activations " + format_bytes(problem.activation_bytes) +
            " do not fit GPU " + format_bytes(problem.gpu_capacity) + " + CPU " + format_bytes(problem.cpu_capacity) +
            " + disk " + format_bytes(problem.disk_capacity) + " in " + std::to_string(problem.step_percent) +
            "% steps; the GPU needs at least " + format_bytes(need) + " (min_budget_bytes)",
        need);
  }
  return best;
}

}  // namespace memscale

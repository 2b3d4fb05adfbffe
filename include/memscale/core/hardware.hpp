// Hardware: the machine a plan is made for. Detected by the Python/torch layer, or
// loaded from JSON to plan for a machine you are not on.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memscale/core/json_fields.hpp"

namespace memscale {

struct Device {
  std::string kind = "cuda";  ///< cpu|cuda
  std::int64_t index = 0;
  std::string name;
  std::uint64_t total_bytes = 0, free_bytes = 0;
  /// Scratch the framework takes from the device allocator once a step runs matrix
  /// products (the cuBLAS / cuBLASLt workspace of the step's stream); resident all step.
  std::uint64_t workspace_bytes = 0;
  bool operator==(const Device&) const = default;
};

struct Hardware {
  std::vector<Device> devices;  ///< accelerators; empty on a CPU-only machine
  std::uint64_t host_total_bytes = 0, host_available_bytes = 0;
  std::uint64_t pinned_limit_bytes = 0;
  std::string offload_dir;
  std::uint64_t offload_dir_free_bytes = 0;
  /// Bandwidths for the tier cost model; 0 = the engine's documented defaults.
  std::uint64_t disk_read_bytes_per_s = 0, disk_write_bytes_per_s = 0, host_to_device_bytes_per_s = 0;
  /// Sustained compute rate of one planning device (FLOP/s) for the cost models; 0 = default.
  std::uint64_t flops_per_s = 0;
  bool operator==(const Hardware&) const = default;

  /// Accelerators of kind cuda.
  std::size_t gpu_count() const {
    std::size_t n = 0;
    for (const auto& d : devices) n += d.kind == "cuda";
    return n;
  }
  /// Memory of the device a plan is made for: the first GPU, else host RAM.
  std::uint64_t planning_device_bytes() const {
    for (const auto& d : devices)
      if (d.kind == "cuda") return d.total_bytes;
    return host_available_bytes;
  }
  /// The largest framework workspace of any GPU (every replica pays its own); 0 without one.
  std::uint64_t workspace_bytes() const {
    std::uint64_t most = 0;
    for (const auto& d : devices)
      if (d.kind == "cuda") most = std::max(most, d.workspace_bytes);
    return most;
  }

  static Hardware from_json_text(const std::string& text);
  std::string to_json_text() const;
};

inline void to_json(nlohmann::json& j, const Device& d) {
  j = {{"kind", d.kind}, {"index", d.index}, {"name", d.name}, {"total_bytes", d.total_bytes}, {"free_bytes", d.free_bytes},
       {"workspace_bytes", d.workspace_bytes}};
}

inline void to_json(nlohmann::json& j, const Hardware& h) {
  j = {{"devices", h.devices},
       {"host_total_bytes", h.host_total_bytes},
       {"host_available_bytes", h.host_available_bytes},
       {"pinned_limit_bytes", h.pinned_limit_bytes},
       {"offload_dir", h.offload_dir},
       {"offload_dir_free_bytes", h.offload_dir_free_bytes},
       {"disk_read_bytes_per_s", h.disk_read_bytes_per_s},
       {"disk_write_bytes_per_s", h.disk_write_bytes_per_s},
       {"host_to_device_bytes_per_s", h.host_to_device_bytes_per_s},
       {"flops_per_s", h.flops_per_s}};
}

inline Hardware hardware_from_json(const nlohmann::json& j) {
  namespace f = json_fields;
  const std::string path = "hardware";
  Hardware h;
  const auto& devices = f::require(j, "devices", path);
  if (!devices.is_array()) f::wrong_type("hardware.devices", devices, "an array of devices");
  for (std::size_t i = 0; i < devices.size(); ++i) {
    const std::string p = "hardware.devices[" + std::to_string(i) + "]";
    Device d;
    d.kind = f::one_of(f::string(devices[i], "kind", p), {"cpu", "cuda"}, p + ".kind");
    d.index = f::i64(devices[i], "index", p);
    d.name = f::optional<std::string>(devices[i], "name", p, "", f::as_string);
    d.total_bytes = f::u64(devices[i], "total_bytes", p);
    d.free_bytes = f::optional<std::uint64_t>(devices[i], "free_bytes", p, d.total_bytes, f::as_u64);
    d.workspace_bytes = f::optional<std::uint64_t>(devices[i], "workspace_bytes", p, 0, f::as_u64);
    h.devices.push_back(d);
  }
  h.host_total_bytes = f::u64(j, "host_total_bytes", path);
  h.host_available_bytes = f::optional<std::uint64_t>(j, "host_available_bytes", path, h.host_total_bytes, f::as_u64);
  h.pinned_limit_bytes = f::optional<std::uint64_t>(j, "pinned_limit_bytes", path, 0, f::as_u64);
  h.offload_dir = f::optional<std::string>(j, "offload_dir", path, "", f::as_string);
  h.offload_dir_free_bytes = f::optional<std::uint64_t>(j, "offload_dir_free_bytes", path, 0, f::as_u64);
  h.disk_read_bytes_per_s = f::optional<std::uint64_t>(j, "disk_read_bytes_per_s", path, 0, f::as_u64);
  h.disk_write_bytes_per_s = f::optional<std::uint64_t>(j, "disk_write_bytes_per_s", path, 0, f::as_u64);
  h.host_to_device_bytes_per_s = f::optional<std::uint64_t>(j, "host_to_device_bytes_per_s", path, 0, f::as_u64);
  h.flops_per_s = f::optional<std::uint64_t>(j, "flops_per_s", path, 0, f::as_u64);
  return h;
}

inline Hardware Hardware::from_json_text(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw ConfigError(std::string("hardware: not valid JSON: ") + e.what());
  }
  return hardware_from_json(j);
}

inline std::string Hardware::to_json_text() const { return nlohmann::json(*this).dump(2); }

}  // namespace memscale

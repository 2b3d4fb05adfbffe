#include "memscale/torch/detect_hardware.hpp"

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#ifdef MEMSCALE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

#include "memscale/core/log.hpp"
#include "memscale/core/sizes.hpp"

namespace memscale {
namespace {

// "MemTotal:       24576000 kB" -> bytes; 0 when absent.
std::uint64_t meminfo_bytes(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(key.size() + 1));
    std::uint64_t kib = 0;
    fields >> kib;
    return kib * 1024;
  }
  return 0;
}

// An integer from a cgroup file; nullopt when absent, unreadable, empty or "max".
std::optional<std::uint64_t> read_cgroup_int(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text == "max") return std::nullopt;
  try {
    return std::stoull(text);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Candidate v2 and v1 memory-cgroup directories: this process's own (from
// /proc/self/cgroup), then the root of the mount (what a namespaced container sees).
std::pair<std::vector<std::filesystem::path>, std::vector<std::filesystem::path>> own_cgroup_dirs() {
  const std::filesystem::path root = "/sys/fs/cgroup";
  std::vector<std::filesystem::path> v2, v1;
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {  // "hierarchy:controllers:/relative/path"
    const auto first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string hierarchy = line.substr(0, first), controllers = line.substr(first + 1, second - first - 1);
    const std::string rel = line.substr(second + 1);
    if (rel.empty() || rel[0] != '/') continue;
    if (hierarchy == "0" && controllers.empty()) {
      v2.push_back(root / rel.substr(1));
    } else {
      std::istringstream names(controllers);
      for (std::string name; std::getline(names, name, ',');)
        if (name == "memory") v1.push_back(root / "memory" / rel.substr(1));
    }
  }
  v2.push_back(root);
  v1.push_back(root / "memory");
  return {v2, v1};
}

// cgroup v1 reports "no limit" as a huge page-aligned number (2^63 rounded down to a page).
constexpr std::uint64_t v1_unlimited = 1ull << 62;

// (limit, usage) of this process's memory cgroup; limit 0 when there is none.
std::pair<std::uint64_t, std::uint64_t> cgroup_limit_and_usage() {
  const auto [v2, v1] = own_cgroup_dirs();
  for (const auto& dir : v2)
    if (const auto limit = read_cgroup_int(dir / "memory.max"))
      return {*limit, read_cgroup_int(dir / "memory.current").value_or(0)};
  for (const auto& dir : v1)
    if (const auto limit = read_cgroup_int(dir / "memory.limit_in_bytes"); limit && *limit < v1_unlimited)
      return {*limit, read_cgroup_int(dir / "memory.usage_in_bytes").value_or(0)};
  return {0, 0};
}

// Free bytes of the filesystem holding `path` (its nearest existing ancestor: the
// offload directory need not exist yet); 0 when none can be read.
std::uint64_t disk_free_bytes(const std::filesystem::path& path) {
  std::error_code error;
  std::filesystem::path p = std::filesystem::absolute(path, error);
  if (error) return 0;
  while (!std::filesystem::exists(p, error) && p != p.parent_path()) p = p.parent_path();
  const auto space = std::filesystem::space(p, error);
  return error ? 0 : space.available;
}

}  // namespace

Hardware detect_hardware(const std::string& offload_dir) {
  Hardware hw;
  hw.host_total_bytes = meminfo_bytes("MemTotal");
  hw.host_available_bytes = meminfo_bytes("MemAvailable");
  if (const auto [limit, usage] = cgroup_limit_and_usage(); limit > 0 && limit < hw.host_total_bytes) {
    hw.host_total_bytes = limit;
    hw.host_available_bytes = std::min(hw.host_available_bytes, limit > usage ? limit - usage : 0);
  }
#ifdef MEMSCALE_WITH_CUDA
  const int count = c10::cuda::device_count();
  const c10::DeviceIndex current = count > 0 ? c10::cuda::current_device() : 0;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp props{};
    if (cudaGetDeviceProperties(&props, i) != cudaSuccess) continue;
    size_t free_bytes = 0, total_bytes = 0;
    c10::cuda::set_device(i);
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) free_bytes = total_bytes = props.totalGlobalMem;
    hw.devices.push_back({"cuda", i, props.name, total_bytes, free_bytes});
  }
  if (count > 0) c10::cuda::set_device(current);
  if (count > 0) hw.pinned_limit_bytes = hw.host_available_bytes / 2;
#endif
  std::error_code error;
  const std::filesystem::path dir =
      offload_dir.empty() ? std::filesystem::temp_directory_path(error) : std::filesystem::path(offload_dir);
  hw.offload_dir = dir.string();
  hw.offload_dir_free_bytes = disk_free_bytes(dir);
  log::debug("detected " + std::to_string(hw.devices.size()) + " CUDA device(s), host " + format_bytes(hw.host_available_bytes) +
             " available");
  return hw;
}

}  // namespace memscale

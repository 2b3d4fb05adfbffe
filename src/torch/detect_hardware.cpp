#include "memscale/torch/detect_hardware.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

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

// The container's memory limit, 0 when unlimited or unknown.
std::uint64_t cgroup_limit_bytes() {
  for (const char* path : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(path);
    std::string text;
    if (!(in >> text) || text == "max") continue;
    try {
      const std::uint64_t limit = std::stoull(text);
      if (limit > 0 && limit < (1ull << 60)) return limit;
    } catch (const std::exception&) {
    }
  }
  return 0;
}

}  // namespace

Hardware detect_hardware(const std::string& offload_dir) {
  Hardware hw;
  hw.host_total_bytes = meminfo_bytes("MemTotal");
  hw.host_available_bytes = meminfo_bytes("MemAvailable");
  if (const std::uint64_t limit = cgroup_limit_bytes()) {
    hw.host_total_bytes = std::min(hw.host_total_bytes, limit);
    hw.host_available_bytes = std::min(hw.host_available_bytes, limit);
  }
#ifdef MEMSCALE_WITH_CUDA
  const int count = c10::cuda::device_count();
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp props{};
    if (cudaGetDeviceProperties(&props, i) != cudaSuccess) continue;
    size_t free_bytes = 0, total_bytes = 0;
    c10::cuda::set_device(i);
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) free_bytes = total_bytes = props.totalGlobalMem;
    hw.devices.push_back({"cuda", i, props.name, total_bytes, free_bytes});
  }
  if (count > 0) hw.pinned_limit_bytes = hw.host_available_bytes / 2;
#endif
  std::error_code error;
  const std::filesystem::path dir =
      offload_dir.empty() ? std::filesystem::temp_directory_path(error) : std::filesystem::path(offload_dir);
  hw.offload_dir = dir.string();
  const auto space = std::filesystem::space(dir, error);
  hw.offload_dir_free_bytes = error ? 0 : space.available;
  log::debug("detected " + std::to_string(hw.devices.size()) + " CUDA device(s), host " + format_bytes(hw.host_available_bytes) +
             " available");
  return hw;
}

}  // namespace memscale

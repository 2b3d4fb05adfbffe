// Hardware detection for libtorch applications (Python code uses memscale.detect_hardware,
// which also reads NVML; both fill the same Hardware struct).
#pragma once

#include <string>

#include "memscale/core/hardware.hpp"

namespace memscale {

/// CUDA devices through c10 (only when built against a CUDA torch), host RAM from
/// /proc/meminfo capped by a cgroup v2 memory.max or v1 memory.limit_in_bytes, and the
/// free space of `offload_dir` (default: the system temp directory).
Hardware detect_hardware(const std::string& offload_dir = "");

}  // namespace memscale

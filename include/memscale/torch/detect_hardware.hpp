// Hardware detection for libtorch applications (Python code uses memscale.detect_hardware,
// which also reads NVML; both fill the same Hardware struct).
#pragma once

#include <string>

#include "memscale/core/hardware.hpp"

namespace memscale {

/// CUDA devices through c10 (only when built against a CUDA torch), host RAM from
/// /proc/meminfo (MemTotal, MemAvailable) capped by this process's memory cgroup (v2
/// memory.max, or v1 memory.limit_in_bytes; available = at most limit - usage), the
/// pinned limit (half the available host RAM when there is a GPU), and the free space of
/// `offload_dir` (default: the system temp directory; its nearest existing ancestor
/// when it does not exist yet). As memscale.hardware does in Python, except: no NVML
/// fallback, and no cuBLAS workspace measurement (Device::workspace_bytes stays 0).
Hardware detect_hardware(const std::string& offload_dir = "");

}  // namespace memscale

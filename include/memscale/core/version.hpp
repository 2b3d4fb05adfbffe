// Library version, shared by the C++ package and the Python wheel.
#pragma once

#define MEMSCALE_VERSION_STRING "0.1.0"

namespace memscale {
inline constexpr const char* version() { return MEMSCALE_VERSION_STRING; }
}  // namespace memscale

// Logging facade over the named spdlog logger "memscale".
//
// Why a facade: libtorch bundles its own {fmt} (v12) while Debian's spdlog is built
// against fmt v9; a translation unit that sees both fails to compile. Only
// src/core/log.cpp includes spdlog; every other file logs through these functions with
// ready-made strings.
#pragma once

#include <functional>
#include <string>

namespace memscale::log {

/// Levels match Python's logging numbers so the bridge needs no table.
enum class Level : int { debug = 10, info = 20, warn = 30, error = 40 };

/// Nearest level at or below a Python logging number (5 -> debug, 25 -> info, 50 -> error).
inline Level level_from_python(int level) {
  return level <= 10 ? Level::debug : level <= 20 ? Level::info : level <= 30 ? Level::warn : Level::error;
}

void emit(Level level, const std::string& message);
void debug(const std::string& message);
void info(const std::string& message);
void warn(const std::string& message);
void error(const std::string& message);

/// Routes every message to `sink` instead of stderr (the Python bridge installs one
/// that forwards to logging.getLogger("memscale")). An empty function restores stderr.
void set_sink(std::function<void(Level, const std::string&)> sink);

/// Lowest level emitted (default: info).
void set_level(Level level);

}  // namespace memscale::log

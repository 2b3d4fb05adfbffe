// The one translation unit that includes spdlog (see include/memscale/core/log.hpp).
#include "memscale/core/log.hpp"

#include <memory>
#include <mutex>

#include <spdlog/details/null_mutex.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace memscale::log {
namespace {

Level from_spdlog(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug: return Level::debug;
    case spdlog::level::info: return Level::info;
    case spdlog::level::warn: return Level::warn;
    default: return Level::error;
  }
}

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::debug: return spdlog::level::debug;
    case Level::info: return spdlog::level::info;
    case Level::warn: return spdlog::level::warn;
    default: return spdlog::level::err;
  }
}

// Sink that hands each message to a callback (the Python bridge). It uses a null
// mutex and copies the callback out under its own lock: a callback that takes the GIL
// must not hold a lock another logging thread (which may hold the GIL) waits on.
class CallbackSink : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  void set(std::function<void(Level, const std::string&)> callback) {
    std::lock_guard<std::mutex> guard(mutex_);
    callback_ = std::move(callback);
  }
  bool active() {
    std::lock_guard<std::mutex> guard(mutex_);
    return static_cast<bool>(callback_);
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::function<void(Level, const std::string&)> callback;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      callback = callback_;
    }
    if (callback) callback(from_spdlog(msg.level), std::string(msg.payload.data(), msg.payload.size()));
  }
  void flush_() override {}

 private:
  std::mutex mutex_;
  std::function<void(Level, const std::string&)> callback_;
};

struct State {
  std::shared_ptr<spdlog::sinks::stderr_color_sink_mt> console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  std::shared_ptr<CallbackSink> bridge = std::make_shared<CallbackSink>();
  std::shared_ptr<spdlog::logger> logger;
  State() {
    bridge->set_level(spdlog::level::off);
    logger = std::make_shared<spdlog::logger>("memscale", spdlog::sinks_init_list{console, bridge});
    logger->set_level(spdlog::level::info);
  }
};

State& state() {
  static State instance;
  return instance;
}

}  // namespace

void emit(Level level, const std::string& message) { state().logger->log(to_spdlog(level), message); }
void debug(const std::string& message) { state().logger->debug(message); }
void info(const std::string& message) { state().logger->info(message); }
void warn(const std::string& message) { state().logger->warn(message); }
void error(const std::string& message) { state().logger->error(message); }

void set_sink(std::function<void(Level, const std::string&)> sink) {
  State& s = state();
  const bool bridged = static_cast<bool>(sink);
  s.bridge->set(std::move(sink));
  // Exactly one of the two sinks is live, so a message is never printed twice.
  s.bridge->set_level(bridged ? spdlog::level::trace : spdlog::level::off);
  s.console->set_level(bridged ? spdlog::level::off : spdlog::level::trace);
}

void set_level(Level level) { state().logger->set_level(to_spdlog(level)); }

}  // namespace memscale::log

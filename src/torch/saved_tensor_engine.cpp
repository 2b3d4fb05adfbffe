// memscale's autograd Engine: the base engine plus default saved-tensor hooks taken from
// a thread-local scope (see saved_tensor_engine.hpp).
#include "memscale/torch/saved_tensor_engine.hpp"

#include <mutex>
#include <typeinfo>

#include <c10/util/Exception.h>
#include <torch/csrc/autograd/engine.h>

#include "memscale/core/errors.hpp"
#include "memscale/core/log.hpp"

namespace memscale {
namespace {

using torch::autograd::Engine;

thread_local const SavedTensorHooksFactory* t_factory = nullptr;

struct HookingEngine final : Engine {
  std::unique_ptr<torch::autograd::SavedVariableHooks> get_default_saved_variable_hooks() override {
    return t_factory ? (*t_factory)() : nullptr;
  }
};

// Never destroyed: Engine's destructor stops worker threads, which at process exit may
// run after torch's own statics are gone (torch keeps its engines alive the same way).
HookingEngine& hooking_engine() {
  static HookingEngine* engine = new HookingEngine();
  return *engine;
}
Engine& hooking_engine_stub() { return hooking_engine(); }

std::mutex g_mutex;
int g_leases = 0;

// Caller holds g_mutex.
std::optional<std::string> unavailable_locked() {
  Engine& current = Engine::get_default_engine();
  if (&current == &Engine::get_base_engine() || &current == &hooking_engine()) return std::nullopt;
  return std::string("another autograd engine (") + c10::demangle(typeid(current).name()) +
         ") is the default, e.g. Python's when torch._C is loaded; it owns the saved-tensor hooks";
}

}  // namespace

std::optional<std::string> saved_tensor_engine_unavailable() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return unavailable_locked();
}

EngineLease::EngineLease() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (const auto why = unavailable_locked())
    throw ConfigError("activation offload in C++: cannot install memscale's autograd engine: " + *why +
                      "; use the Python API (memscale.wrap) in a Python process");
  if (g_leases++ == 0) {
    torch::autograd::set_default_engine_stub(&hooking_engine_stub);
    log::debug("autograd: memscale's engine installed (saved-tensor hooks for activation offload)");
  }
}

EngineLease::~EngineLease() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (--g_leases > 0) return;
  // Put the base engine back unless someone replaced ours meanwhile (theirs stays).
  if (&Engine::get_default_engine() == &hooking_engine()) torch::autograd::set_default_engine_stub(&Engine::get_base_engine);
}

SavedTensorScope::SavedTensorScope(const SavedTensorHooksFactory* factory) : previous_(t_factory) { t_factory = factory; }
SavedTensorScope::~SavedTensorScope() { t_factory = previous_; }

}  // namespace memscale

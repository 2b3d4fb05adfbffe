// Default saved-tensor hooks for a pure libtorch process.
//
// PyTorch's own default hooks (at::SavedTensorDefaultHooks, torch.autograd.graph's
// saved_tensors_hooks) hold Python objects. What every SavedVariable actually asks, when
// it is created, is Engine::get_default_engine().get_default_saved_variable_hooks(), a
// virtual of the autograd Engine; the base engine answers none. While an EngineLease
// lives, memscale installs its own Engine subclass (through torch's
// set_default_engine_stub, the hook Python's engine uses when torch._C loads): it runs
// graphs exactly as the base engine does and answers the hooks of the innermost
// SavedTensorScope of the calling thread (none outside one). The last lease puts the base
// engine back. When another engine is already installed (Python's, in a process that
// loaded torch._C) the lease is refused: that engine owns the hooks.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <torch/csrc/autograd/saved_variable_hooks.h>

namespace memscale {

/// Makes the hooks of one tensor autograd saves (called once per SavedVariable).
using SavedTensorHooksFactory = std::function<std::unique_ptr<torch::autograd::SavedVariableHooks>()>;

/// Why memscale cannot install its engine now (another non-default autograd engine is
/// the default), or nullopt when it can (or already did).
std::optional<std::string> saved_tensor_engine_unavailable();

/// Holds memscale's engine installed. Throws ConfigError (before changing anything) when
/// saved_tensor_engine_unavailable() says why not.
class EngineLease {
 public:
  EngineLease();
  ~EngineLease();
  EngineLease(const EngineLease&) = delete;
  EngineLease& operator=(const EngineLease&) = delete;
};

/// While alive, tensors saved for backward on this thread get hooks from `factory`
/// (requires a live EngineLease; scopes nest, the innermost wins).
class SavedTensorScope {
 public:
  explicit SavedTensorScope(const SavedTensorHooksFactory* factory);
  ~SavedTensorScope();
  SavedTensorScope(const SavedTensorScope&) = delete;
  SavedTensorScope& operator=(const SavedTensorScope&) = delete;

 private:
  const SavedTensorHooksFactory* previous_;
};

}  // namespace memscale

// Checkpointing as a custom autograd node: the forward runs under no-grad and a
// CheckpointBackward node becomes the output's grad_fn. Its backward recomputes the
// layer with grad enabled and back-propagates through the recomputed graph
// (re-entrantly), which accumulates parameter grads and yields the input's grad.
#include "memscale/torch/checkpoint.hpp"

#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/saved_variable.h>

#ifdef MEMSCALE_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif

namespace memscale {
namespace {

using torch::autograd::variable_list;

// The default generator of the input's device: dropout draws from it.
at::Generator default_generator(const at::Tensor& like) {
#ifdef MEMSCALE_WITH_CUDA
  if (like.is_cuda()) return at::cuda::detail::getDefaultCUDAGenerator(like.device().index());
#endif
  (void)like;
  return at::detail::getDefaultCPUGenerator();
}

at::Tensor get_rng_state(at::Generator& generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void set_rng_state(at::Generator& generator, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

class CheckpointBackward : public torch::autograd::Node {
 public:
  CheckpointBackward(LayerFn fn, at::Tensor input, bool input_requires_grad, at::Tensor rng_state)
      : fn_(std::move(fn)), input_(input, /*is_output=*/false), input_requires_grad_(input_requires_grad), rng_state_(std::move(rng_state)) {}

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(!released_, "memscale checkpoint: backward ran twice through the same checkpointed layer; "
                "its saved input was released after the first (retain_graph is not supported)");
    at::Tensor x = input_.unpack().detach();
    x.requires_grad_(input_requires_grad_);
    at::Generator generator = default_generator(x);
    const at::Tensor current_state = get_rng_state(generator);
    set_rng_state(generator, rng_state_);
    at::Tensor y;
    {
      torch::autograd::AutoGradMode enable(true);
      y = fn_(x);
    }
    set_rng_state(generator, current_state);
    if (y.requires_grad()) torch::autograd::backward({y}, {grads.at(0)}, /*retain_graph=*/false, /*create_graph=*/false);
    return {input_requires_grad_ ? x.grad() : at::Tensor()};
  }

  std::string name() const override { return "memscale::CheckpointBackward"; }

  void release_variables() override {
    input_.reset_data();
    released_ = true;
    rng_state_.reset();
  }

 private:
  LayerFn fn_;
  // A SavedVariable, so default saved-tensor hooks (activation offload) move it too.
  torch::autograd::SavedVariable input_;
  bool released_ = false;
  bool input_requires_grad_;
  at::Tensor rng_state_;
};

// torch up to 2.12 owns autograd nodes through std::shared_ptr, later versions through
// c10::intrusive_ptr; the template defers the choice to the Node type torch defines.
template <class N, class... Args>
auto make_node(Args&&... args) {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, N>) {
    return c10::make_intrusive<N>(std::forward<Args>(args)...);
  } else {
    return std::make_shared<N>(std::forward<Args>(args)...);
  }
}

}  // namespace

at::Tensor checkpoint(const LayerFn& fn, const at::Tensor& input) {
  if (!torch::autograd::GradMode::is_enabled()) return fn(input);
  at::Generator generator = default_generator(input);
  at::Tensor rng_state = get_rng_state(generator);
  at::Tensor output;
  {
    torch::autograd::AutoGradMode disable(false);
    output = fn(input);
  }
  // A layer that returns its input (or a view of it) holds nothing to save.
  if (output.is_same(input) || (output.is_alias_of(input))) return fn(input);
  auto node = make_node<CheckpointBackward>(fn, input, input.requires_grad(), std::move(rng_state));
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  torch::autograd::set_history(output, node);
  return output;
}

}  // namespace memscale

#include "memscale/torch/profile.hpp"

#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/module.h>

#include "memscale/core/errors.hpp"
#include "memscale/core/log.hpp"
#include "memscale/core/sizes.hpp"
#include "memscale/torch/counting_allocator.hpp"
#include "memscale/torch/position_wise.hpp"

namespace memscale {
namespace {

std::uint64_t bytes_of(const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; }

std::string kind_of(const torch::nn::Module& m) {
  const std::string name = m.name();
  if (name.find("Embedding") != std::string::npos) return "embedding";
  if (name.find("Conv") != std::string::npos) return "conv";
  if (name.find("Norm") != std::string::npos) return "norm";
  if (name.find("LSTM") != std::string::npos || name.find("GRU") != std::string::npos || name == "torch::nn::RNNImpl")
    return "recurrent";
  if (name.find("Attention") != std::string::npos) return "attention";
  if (name == "torch::nn::SequentialImpl") return is_position_wise(m) ? "mlp" : "block";
  if (is_position_wise(m)) return "mlp";
  return "other";
}

std::string dtype_name(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    case at::kChar: return "int8";
    default: return "float32";
  }
}

}  // namespace

ModelGraph profile_sequential(torch::nn::Sequential& model, const at::Tensor& example_input, const ProfileOptions& options) {
  if (!example_input.device().is_cpu())
    log::warn("profile_sequential: measured activation figures count CPU allocations only; input is on " +
              example_input.device().str());
  const std::string optimizer = options.training ? options.optimizer : "none";
  json_fields::one_of(optimizer, optimizer_kinds(), "profile.optimizer");
  ModelGraph graph;
  graph.model_name = "torch::nn::Sequential";
  graph.training = options.training;
  graph.optimizer = optimizer;
  graph.batch = example_input.dim() > 0 ? example_input.size(0) : 0;
  graph.seq = example_input.dim() > 2 ? example_input.size(1) : 0;
  graph.input_bytes = bytes_of(example_input);
  bool dtype_set = false;

  torch::autograd::AutoGradMode grad_mode(options.training);
  at::Tensor x = example_input;
  std::int64_t index = 0;
  for (const auto& child : model->named_children()) {
    Layer layer;
    layer.index = index++;
    layer.name = child.key();
    layer.kind = kind_of(*child.value());
    for (const auto& p : child.value()->parameters()) {
      layer.param_bytes += bytes_of(p);
      if (options.training && p.requires_grad()) layer.grad_bytes += bytes_of(p);
      if (!dtype_set) graph.dtype = dtype_name(p), dtype_set = true;
    }
    layer.optimizer_bytes = optimizer_state_factor(optimizer) * layer.grad_bytes;
    for (const auto& b : child.value()->buffers()) layer.buffer_bytes += bytes_of(b);
    layer.input_bytes = bytes_of(x);
    if (chunking_is_exact(*child.value()) && x.dim() >= 2) layer.tileable = {"batch"};

    memory::CountingSession session;
    at::Tensor out = model->begin()[layer.index].forward(x);
    const memory::AllocationStats stats = session.stats();
    layer.output_bytes = bytes_of(out);
    if (options.training) {
      layer.activation_bytes = static_cast<std::uint64_t>(std::max<std::int64_t>(0, stats.current_bytes));
      // The previous output is an activation only if something saved it for backward:
      // then autograd holds a reference besides our `x`. Otherwise it is freed here.
      if (!graph.layers.empty() && x.use_count() == 1 && x.storage().use_count() == 1) {
        Layer& previous = graph.layers.back();
        previous.activation_bytes -= std::min(previous.activation_bytes, bytes_of(x));
        previous.measured_activation_bytes = previous.activation_bytes;
      }
    }
    layer.transient_bytes = static_cast<std::uint64_t>(std::max<std::int64_t>(0, stats.peak_bytes - stats.current_bytes));
    layer.measured_peak_bytes = static_cast<std::uint64_t>(std::max<std::int64_t>(0, stats.peak_bytes));
    layer.measured_activation_bytes = layer.activation_bytes;
    graph.layers.push_back(std::move(layer));
    x = std::move(out);
  }
  if (graph.layers.empty()) throw ConfigError("profile_sequential: the Sequential has no children to plan");
  log::debug("profiled Sequential: " + std::to_string(graph.layers.size()) + " layers");
  return graph;
}

}  // namespace memscale

#include "memscale/torch/wrap.hpp"

#include <ATen/ATen.h>

#include "memscale/core/engine.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/log.hpp"
#include "memscale/core/plan_summary.hpp"
#include "memscale/torch/checkpoint.hpp"
#include "memscale/torch/detect_hardware.hpp"

namespace memscale {
namespace {

// The C++ executor applies checkpoint and tile; offloading lives in the Python executor.
Config without_offload(Config config) {
  for (const char* technique : {"offload_activations", "offload_weights"}) {
    if (config.techniques.at(technique) == Switch::on)
      throw ConfigError(std::string("techniques.") + technique +
                        ": got \"on\", but the C++ wrap applies only checkpoint and tiling; use \"auto\"/\"off\" here "
                        "or the Python API (memscale.wrap) for offloading");
    config.techniques[technique] = Switch::off;
    for (auto& [glob, overrides] : config.layer_overrides) {
      auto it = overrides.find(technique);
      if (it != overrides.end() && it->second == Switch::on)
        throw ConfigError("layer_overrides[\"" + glob + "\"]." + technique +
                          ": got \"on\", but the C++ wrap applies only checkpoint and tiling");
    }
  }
  return config;
}

}  // namespace

WrappedSequentialImpl::WrappedSequentialImpl(torch::nn::Sequential inner, Plan plan)
    : inner_(std::move(inner)), plan_(std::move(plan)) {
  const auto children = inner_->named_children();
  if (children.size() != plan_.layers.size())
    throw ConfigError("plan.layers: has " + std::to_string(plan_.layers.size()) + " layers, the Sequential has " +
                      std::to_string(children.size()) + " children");
  for (const auto& child : children) register_module(child.key(), child.value());
}

at::Tensor WrappedSequentialImpl::forward(const at::Tensor& input) {
  at::Tensor x = input;
  auto module = inner_->begin();
  for (const LayerPlan& layer : plan_.layers) {
    torch::nn::AnyModule& child = *(module++);
    LayerFn run = [&child](const at::Tensor& t) { return child.forward(t); };
    if (layer.has("tile") && layer.tile_chunks > 1 && x.dim() > 0 && x.size(0) > 1) {
      // Each chunk is recomputed in backward, so only one chunk's intermediates live.
      std::vector<at::Tensor> pieces;
      for (const at::Tensor& chunk : x.chunk(layer.tile_chunks, 0)) pieces.push_back(checkpoint(run, chunk));
      x = at::cat(pieces, 0);
    } else if (layer.has("checkpoint")) {
      x = checkpoint(run, x);
    } else {
      x = run(x);
    }
  }
  return x;
}

WrappedSequential wrap(torch::nn::Sequential model, const Config& config, const at::Tensor& example_input,
                       const ProfileOptions& options, std::optional<Hardware> hardware) {
  const Config effective = without_offload(config);
  const ModelGraph graph = profile_sequential(model, example_input, options);
  const Hardware hw = hardware ? *hardware : detect_hardware();
  Plan plan = memscale::plan(graph, hw, effective);
  log::info(plan_summary(plan));
  return WrappedSequential(model, std::move(plan));
}

}  // namespace memscale

// Trains a Sequential MLP with memscale::wrap: profile -> plan -> checkpointed step.
// Checks that the wrapped step's loss and every gradient equal the plain module's, and
// exits non-zero if not (CI runs this).
#include <cstdio>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include <memscale/core.hpp>
#include <memscale/torch/wrap.hpp>

namespace {

torch::nn::Sequential make_model() {
  torch::nn::Sequential model;
  for (int i = 0; i < 4; ++i) {
    model->push_back(torch::nn::Linear(128, 512));
    model->push_back(torch::nn::GELU());
    model->push_back(torch::nn::Linear(512, 128));
  }
  return model;
}

std::vector<at::Tensor> take_grads(torch::nn::Sequential& model) {
  std::vector<at::Tensor> grads;
  for (auto& p : model->parameters()) {
    grads.push_back(p.grad().clone());
    p.mutable_grad().reset();
  }
  return grads;
}

}  // namespace

int main() {
  torch::manual_seed(0);
  torch::nn::Sequential model = make_model();
  const at::Tensor inputs = torch::randn({64, 128});
  const at::Tensor targets = torch::randn({64, 128});

  // Checkpoint every layer the engine finds worth it; a small budget would do the same.
  const memscale::Config config = memscale::Config::from_json_text(
      R"({"memory_budget": "1GiB", "force_optimize": true, "techniques": {"checkpoint": "on"}})");
  memscale::WrappedSequential wrapped = memscale::wrap(model, config, inputs, {true, "sgd"});

  std::size_t checkpointed = 0;
  for (const auto& layer : wrapped->plan().layers) checkpointed += layer.has("checkpoint");
  std::printf("plan: %zu of %zu layers checkpointed, predicted peak %s (unoptimized %s)\n", checkpointed,
              wrapped->plan().layers.size(), memscale::format_bytes(wrapped->plan().predicted_peak_bytes).c_str(),
              memscale::format_bytes(wrapped->plan().unoptimized_peak_bytes).c_str());

  const at::Tensor plain_loss = (model->forward(inputs) - targets).pow(2).mean();
  plain_loss.backward();
  const std::vector<at::Tensor> plain = take_grads(model);

  const at::Tensor wrapped_loss = (wrapped->forward(inputs) - targets).pow(2).mean();
  wrapped_loss.backward();
  const std::vector<at::Tensor> ours = take_grads(model);

  bool equal = checkpointed > 0 && at::allclose(plain_loss, wrapped_loss, 1e-5, 1e-7);
  for (std::size_t i = 0; i < plain.size(); ++i) equal = equal && at::allclose(plain[i], ours[i], 1e-5, 1e-7);
  std::printf("loss plain %.6f wrapped %.6f; gradients %s\n", plain_loss.item<float>(), wrapped_loss.item<float>(),
              equal ? "equal" : "DIFFER");

  // A few optimizer steps through the wrapped model: the loss falls.
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05));
  float first = 0, last = 0;
  for (int step = 0; step < 5; ++step) {
    optimizer.zero_grad();
    const at::Tensor loss = (wrapped->forward(inputs) - targets).pow(2).mean();
    loss.backward();
    optimizer.step();
    (step == 0 ? first : last) = loss.item<float>();
  }
  std::printf("training: loss %.6f -> %.6f\n", first, last);
  return equal && last < first ? 0 : 1;
}

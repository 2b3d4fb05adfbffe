// Trains a small GPT written as a libtorch module (embeddings, a ModuleList of blocks run
// by memscale::Blocks from the model's own forward, head) within half of its measured
// unoptimized step peak. Exits non-zero (CI runs it) unless: the planned step's loss and
// every gradient equal the plain module's (rtol 1e-5), each measured step peak (counting
// allocator) is at most 1.05x the budget, and the loss falls.
#include <cstdio>
#include <string>
#include <vector>

#include <torch/optim/adam.h>

#include <memscale/core.hpp>

#include "tiny_gpt.hpp"

int main() {
  torch::manual_seed(0);
  tiny_gpt::Gpt model(tiny_gpt::Options{/*vocab=*/256, /*max_seq=*/128, /*width=*/128, /*heads=*/4, /*blocks=*/4});
  const at::Tensor ids = at::randint(256, {8, 128}, at::kLong);
  const at::Tensor targets = at::roll(ids, -1, 1);  // learn to predict the next token of a fixed batch
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(3e-3));
  auto step = [&] {
    const at::Tensor loss = tiny_gpt::loss_of(model, ids, targets);
    loss.backward();
    optimizer.step();
    optimizer.zero_grad();
    return loss.item<float>();
  };

  // The plain module's measured step peak (Adam's state included: the first step allocates it).
  float first = 0;
  const std::uint64_t unoptimized = tiny_gpt::measured_peak(*model, [&] { first = step(); });
  const std::uint64_t budget = unoptimized / 2;

  memscale::Config config = memscale::Config::from_json_text(R"({"memory_budget": "1GiB"})");
  config.memory_budget.bytes = budget;
  const memscale::Plan plan =
      memscale::plan_blocks(*model, model->runner, config, [&](const at::Tensor& x) { return model->forward(x); }, ids,
                            {/*training=*/true, "adam", /*rows_independent=*/true});
  std::printf("unoptimized step peak %s, budget %s; plan predicts %s\n", memscale::format_bytes(unoptimized).c_str(),
              memscale::format_bytes(budget).c_str(), memscale::format_bytes(plan.predicted_peak_bytes).c_str());
  for (std::size_t i = 0; i < model->runner.size(); ++i) {
    const memscale::LayerPlan& layer = model->runner.planned(i);
    std::printf("  %s: %s%s\n", layer.name.c_str(), layer.techniques.empty() ? "plain" : "",
                [&] {
                  std::string t;
                  for (const auto& name : layer.techniques)
                    t += (t.empty() ? "" : "+") + name + (name == "tile" ? " x" + std::to_string(layer.tile_chunks) : "");
                  return t;
                }().c_str());
  }

  // Loss and gradients of the plain blocks (unwrap) and of the planned ones, at the same weights.
  model->runner.unwrap();
  const at::Tensor reference_loss = tiny_gpt::loss_of(model, ids, targets);
  reference_loss.backward();
  const std::vector<at::Tensor> reference = tiny_gpt::take_grads(*model);
  model->runner.apply(plan, "blocks");
  const at::Tensor planned_loss = tiny_gpt::loss_of(model, ids, targets);
  planned_loss.backward();
  const std::vector<at::Tensor> ours = tiny_gpt::take_grads(*model);
  bool equal = at::allclose(reference_loss, planned_loss, 1e-5, 1e-7);
  for (std::size_t i = 0; i < reference.size(); ++i) equal = equal && at::allclose(reference[i], ours[i], 1e-5, 1e-6);
  std::printf("loss plain %.6f planned %.6f; gradients %s\n", reference_loss.item<float>(), planned_loss.item<float>(),
              equal ? "equal" : "DIFFER");

  bool within = true;
  float last = first;
  for (int i = 0; i < 8; ++i) {
    const std::uint64_t peak = tiny_gpt::measured_peak(*model, [&] { last = step(); });
    within = within && static_cast<double>(peak) <= 1.05 * static_cast<double>(budget);
    std::printf("step %d: loss %.4f, measured peak %s (%.2fx the budget)\n", i + 1, last,
                memscale::format_bytes(peak).c_str(), static_cast<double>(peak) / static_cast<double>(budget));
  }
  std::printf("training: loss %.4f -> %.4f; every step within 1.05x the budget: %s\n", first, last, within ? "yes" : "NO");
  return equal && within && last < first ? 0 : 1;
}

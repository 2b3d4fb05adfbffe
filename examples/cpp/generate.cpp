// Serves the GPT of tiny_gpt.hpp with a memory budget of 1/2.5 of its weights: the engine
// plans which blocks to page, memscale::Blocks pages them through the core LayerPager and
// the torch pager storage (a safetensors file per block, prefetch on the pager's thread).
// Exits non-zero (CI runs it) unless the tokens equal the resident model's and the
// measured resident peak (weights kept resident + counting-allocator peak) is at most
// 1.05x the budget.
#include <cstdio>

#include <torch/csrc/autograd/grad_mode.h>

#include <memscale/core.hpp>

#include "tiny_gpt.hpp"

int main() {
  torch::manual_seed(0);
  tiny_gpt::Gpt model(tiny_gpt::Options{/*vocab=*/256, /*max_seq=*/64, /*width=*/256, /*heads=*/4, /*blocks=*/8});
  model->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor prompt = at::randint(256, {1, 16}, at::kLong);
  const std::int64_t new_tokens = 24;
  const at::Tensor resident = tiny_gpt::generate(model, prompt, new_tokens);

  const std::uint64_t weights = tiny_gpt::tensor_bytes(*model);
  const auto budget = static_cast<std::uint64_t>(static_cast<double>(weights) / 2.5);
  memscale::Config config = memscale::Config::from_json_text(R"({"memory_budget": "1GiB"})");
  config.memory_budget.bytes = budget;
  // Planned on the longest sequence the generation runs.
  const at::Tensor longest = at::zeros({1, prompt.size(1) + new_tokens}, at::kLong);
  const memscale::Plan plan = memscale::plan_blocks(
      *model, model->runner, config, [&](const at::Tensor& x) { return model->forward(x); }, longest,
      {/*training=*/false, "none"});
  const memscale::LayerPager* pager = model->runner.pager();
  if (!pager) {
    std::printf("the plan pages no weights (budget %s, weights %s)\n", memscale::format_bytes(budget).c_str(),
                memscale::format_bytes(weights).c_str());
    return 1;
  }
  std::size_t paged = 0;
  std::uint64_t block_bytes = 0;
  for (std::size_t i = 0; i < model->runner.size(); ++i) {
    paged += model->runner.planned(i).has("offload_weights");
    block_bytes += model->runner.storage()->layer_bytes(i);
  }
  // Resident when serving starts: the weights outside the blocks and the pinned blocks.
  const std::uint64_t resident_start = weights - block_bytes + pager->stats().physical_bytes;

  at::Tensor served;
  std::int64_t peak = 0;
  {
    memscale::memory::CountingSession session;
    served = tiny_gpt::generate(model, prompt, new_tokens);
    peak = session.stats().peak_bytes;
  }
  const std::uint64_t resident_peak = resident_start + static_cast<std::uint64_t>(peak);
  const bool same = at::equal(resident, served);
  const bool within = static_cast<double>(resident_peak) <= 1.05 * static_cast<double>(budget);
  const memscale::PagerStats stats = pager->stats();
  std::printf("weights %s (%.2fx the budget %s); %zu of %zu blocks paged, ram_bytes %s, prefetch %llu ahead\n",
              memscale::format_bytes(weights).c_str(), static_cast<double>(weights) / static_cast<double>(budget),
              memscale::format_bytes(budget).c_str(), paged, model->runner.size(),
              memscale::format_bytes(plan.offload.ram_bytes).c_str(),
              static_cast<unsigned long long>(plan.offload.prefetch_n_ahead));
  std::printf("pager: %llu loads (%llu by prefetch), %llu evictions, load time hidden %.0f%%\n",
              static_cast<unsigned long long>(stats.loads), static_cast<unsigned long long>(stats.prefetch_loads),
              static_cast<unsigned long long>(stats.evictions), 100.0 * stats.hidden_fraction());
  std::printf("resident peak %s (%.2fx the budget); tokens %s the resident model's\n",
              memscale::format_bytes(resident_peak).c_str(), static_cast<double>(resident_peak) / static_cast<double>(budget),
              same ? "equal" : "DIFFER from");
  model->runner.unwrap();
  const bool restored = at::equal(resident, tiny_gpt::generate(model, prompt, new_tokens));
  std::printf("after unwrap: tokens %s\n", restored ? "equal" : "DIFFER");
  return same && within && restored && paged > 0 ? 0 : 1;
}

// Random training chains for the exact solver's tests: mixed layer sizes (log-uniform over
// three to four orders of magnitude), tileable MLPs and output heads, frozen and retained
// bytes, layers the runtime cannot apply some technique to, and Configs that force or
// forbid techniques on some layers. Seeded by the caller: the engine stays deterministic.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>

#include "engine_fixtures.hpp"

namespace memscale::test {

struct RandomCase {
  ModelGraph graph;
  Hardware hardware;
  std::string config_extra;  ///< Config JSON keys besides memory_budget (force_optimize included)
};

inline std::uint64_t log_uniform(std::mt19937& rng, double lo, double hi) {
  std::uniform_real_distribution<double> u(std::log(lo), std::log(hi));
  return static_cast<std::uint64_t>(std::exp(u(rng)));
}

inline bool chance(std::mt19937& rng, double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

inline RandomCase random_case(std::mt19937& rng, std::size_t n) {
  RandomCase c;
  c.hardware = fixture_hardware(chance(rng, 0.5) ? "gpu_24gib.json" : "cpu_24gib.json");
  ModelGraph& g = c.graph;
  g.model_name = "RandomChain";
  g.batch = 2;
  g.seq = 128;
  g.training = true;
  g.optimizer = chance(rng, 0.7) ? "adamw" : "sgd";
  g.optimizer_impl = chance(rng, 0.5) ? "foreach" : "fused";
  g.input_bytes = log_uniform(rng, 1e3, 1e6);
  const bool weights_capable = chance(rng, 0.5);  // profiled training graphs cannot offload weights
  std::string overrides;
  for (std::size_t i = 0; i < n; ++i) {
    Layer l;
    l.index = static_cast<std::int64_t>(i);
    const bool head = i + 1 == n && n > 1 && chance(rng, 0.5);
    const int pick = static_cast<int>(rng() % 4);
    l.kind = head ? "lm_head" : i == 0 ? "embedding" : pick == 0 ? "mlp" : pick == 1 ? "attention" : pick == 2 ? "norm" : "block";
    l.name = "L" + std::to_string(i);
    const std::uint64_t scale = log_uniform(rng, 1e5, 3e8);  // this layer's size class
    l.param_bytes = l.kind == "norm" ? log_uniform(rng, 1e2, 1e4) : log_uniform(rng, 1e4, 6e7);
    const bool frozen = chance(rng, 0.15);
    l.grad_bytes = frozen ? 0 : l.param_bytes;
    l.optimizer_bytes = frozen ? 0 : (g.optimizer == "adamw" ? 2 * l.param_bytes : 0);
    l.buffer_bytes = chance(rng, 0.2) ? log_uniform(rng, 1e2, 1e5) : 0;
    l.activation_bytes = scale;
    l.input_bytes = static_cast<std::uint64_t>(static_cast<double>(scale) * std::uniform_real_distribution<double>(0.05, 1.3)(rng));
    l.output_bytes = static_cast<std::uint64_t>(static_cast<double>(scale) * std::uniform_real_distribution<double>(0.05, 1.0)(rng));
    l.transient_bytes = static_cast<std::uint64_t>(static_cast<double>(scale) * std::uniform_real_distribution<double>(0.0, 2.0)(rng));
    l.retained_bytes = chance(rng, 0.15) ? log_uniform(rng, 1e3, 1e6) : 0;
    l.receives_grad = !(i == 0 && chance(rng, 0.5));
    l.flops = chance(rng, 0.1) ? 0 : log_uniform(rng, 1e8, 3e12);
    if (head) {
      const std::int64_t seq = 128, vocab = static_cast<std::int64_t>(log_uniform(rng, 500, 30000)), hidden = 256;
      l.dims = {hidden, 0, 0, vocab, seq, 2};
      l.output_bytes = static_cast<std::uint64_t>(2 * seq * vocab * 4);
      l.input_bytes = static_cast<std::uint64_t>(2 * seq * hidden * 4);
      l.activation_bytes = l.output_bytes + l.input_bytes;
      l.transient_bytes = 2 * l.output_bytes;
      l.param_bytes = static_cast<std::uint64_t>(vocab * hidden * 4);
      l.grad_bytes = l.param_bytes;
      l.optimizer_bytes = g.optimizer == "adamw" ? 2 * l.param_bytes : 0;
      l.tileable = {"seq"};
    } else if (l.kind == "mlp" && chance(rng, 0.7)) {
      const std::int64_t seqs[] = {4, 16, 128, 1024};
      l.dims.seq = seqs[rng() % 4];
      l.tileable = {"seq"};
    }
    if (!weights_capable) l.cannot["offload_weights"] = "no training weight executor";
    if (chance(rng, 0.12)) l.cannot["checkpoint"] = "in-place module";
    if (chance(rng, 0.08)) l.cannot["offload_activations"] = "not supported here";
    if (chance(rng, 0.05) && !l.tileable.empty()) l.cannot["tile"] = "not position-wise";
    if (chance(rng, 0.08) && !l.cannot.count("checkpoint"))
      overrides += std::string(overrides.empty() ? "" : ", ") + "\"" + l.name + "\": {\"checkpoint\": \"" +
                   (chance(rng, 0.5) ? "on" : "off") + "\"}";
    else if (chance(rng, 0.05))
      overrides += std::string(overrides.empty() ? "" : ", ") + "\"" + l.name + "\": {\"offload_activations\": \"off\"}";
    g.layers.push_back(l);
  }
  c.config_extra = "\"force_optimize\": true";
  if (!overrides.empty()) c.config_extra += ", \"layer_overrides\": {" + overrides + "}";
  if (chance(rng, 0.15)) c.config_extra += ", \"techniques\": {\"tiling\": \"off\"}";
  return c;
}

}  // namespace memscale::test

// Shared helpers of the engine tests: fixture loading and plan shortcuts.
#pragma once

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "memscale/core/engine.hpp"

namespace memscale::test {

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline ModelGraph fixture_graph(const std::string& name) {
  return ModelGraph::from_json_text(read_text(std::string(MEMSCALE_TEST_DATA_DIR) + "/graphs/" + name));
}

inline Hardware fixture_hardware(const std::string& name) {
  return Hardware::from_json_text(read_text(std::string(MEMSCALE_TEST_DATA_DIR) + "/hardware/" + name));
}

inline const std::vector<std::string>& graph_fixtures() {
  static const std::vector<std::string> names = {"gpt2_small_train.json", "llama7b_train.json", "llama7b_infer.json",
                                                 "vit_b16_train.json",    "resnet50_train.json", "t5_base_train.json"};
  return names;
}

/// Config JSON with an explicit byte budget plus `extra` keys (a JSON object body).
inline Config budget_config(std::uint64_t budget, const std::string& extra = "") {
  return Config::from_json_text("{\"memory_budget\": " + std::to_string(budget) + (extra.empty() ? "" : ", " + extra) + "}");
}

/// min_budget_bytes reported for an impossible budget.
inline std::uint64_t min_budget(const ModelGraph& g, const Hardware& hw, const std::string& extra = "") {
  try {
    plan(g, hw, budget_config(1, extra));
  } catch (const InfeasibleBudgetError& e) {
    return e.min_budget_bytes();
  }
  ADD_FAILURE() << "a 1-byte budget was accepted";
  return 0;
}

inline std::uint64_t unoptimized_peak(const ModelGraph& g, const Hardware& hw) {
  return plan(g, hw, budget_config(~0ull >> 2, "\"force_optimize\": true")).unoptimized_peak_bytes;
}

/// An inference decoder on a machine without a GPU: embedding and head of `edge_bytes` each
/// (no KV cache), `blocks` blocks of `block_bytes` of weights with `block_kv_bytes` of KV
/// cache each; hidden 64, intermediate 256, batch 2 x 16 tokens.
inline ModelGraph inference_decoder(int blocks, std::uint64_t edge_bytes, std::uint64_t block_bytes,
                                    std::uint64_t block_kv_bytes) {
  ModelGraph g;
  g.training = false;
  g.optimizer = "none";
  g.batch = 2;
  g.seq = 16;
  auto add = [&](const std::string& name, const std::string& kind, std::uint64_t bytes, std::uint64_t kv) {
    Layer l;
    l.index = static_cast<std::int64_t>(g.layers.size());
    l.name = name;
    l.kind = kind;
    l.param_bytes = bytes;
    l.kv_cache_bytes = kv;
    l.dims.hidden = 64;
    l.dims.intermediate = 256;
    g.layers.push_back(l);
  };
  add("embed", "embedding", edge_bytes, 0);
  for (int i = 0; i < blocks; ++i) add("blocks." + std::to_string(i), "block", block_bytes, block_kv_bytes);
  add("head", "lm_head", edge_bytes, 0);
  return g;
}

/// A CPU-only machine: 64 GiB of host RAM, 1 TiB free in the offload directory.
inline Hardware cpu_only_hardware() {
  Hardware hw;
  hw.host_total_bytes = hw.host_available_bytes = 64ull << 30;
  hw.offload_dir_free_bytes = 1ull << 40;
  return hw;
}

}  // namespace memscale::test

namespace memscale::test {

/// A decoder-like graph of `n` layers (embedding, repeated attention/mlp/norm, head):
/// the planning-speed and tracker tests use it at sizes the fixtures do not reach.
inline ModelGraph synthetic_graph(std::size_t n, bool training = true) {
  ModelGraph g;
  g.model_name = "Synthetic" + std::to_string(n);
  g.batch = 4;
  g.seq = 1024;
  g.training = training;
  g.optimizer = training ? "adamw" : "none";
  g.input_bytes = 4 * 1024 * 8;
  const std::uint64_t T = 4 * 1024, h = 1024, e = 2;
  for (std::size_t i = 0; i < n; ++i) {
    Layer l;
    l.index = static_cast<std::int64_t>(i);
    const std::size_t r = i % 3;
    if (i == 0) l.kind = "embedding";
    else if (i + 1 == n) l.kind = "lm_head";
    else l.kind = r == 0 ? "norm" : r == 1 ? "attention" : "mlp";
    l.name = "model.layers." + std::to_string(i) + "." + l.kind;
    const std::uint64_t params = l.kind == "norm" ? h : l.kind == "attention" ? 4 * h * h : l.kind == "mlp" ? 8 * h * h
                                                                                           : 32000 * h;
    // Vary sizes a little with the index so ties do not hide ordering bugs.
    const std::uint64_t wobble = 1 + (i * 7919) % 5;
    l.param_bytes = params * e;
    l.grad_bytes = training ? l.param_bytes : 0;
    l.optimizer_bytes = training ? 2 * l.param_bytes : 0;
    l.activation_bytes = training ? (l.kind == "mlp" ? 5 * T * h * e : 3 * T * h * e) * wobble / 3 : 0;
    l.transient_bytes = (l.kind == "lm_head" ? 2 * T * 32000 * e : 2 * T * h * e) + l.param_bytes;
    l.input_bytes = T * h * e;
    l.output_bytes = l.kind == "lm_head" ? T * 32000 * e : T * h * e;
    l.kv_cache_bytes = (!training && l.kind == "attention") ? 2 * T * h * e : 0;
    l.flops = 2 * T * params * wobble;
    l.dims.hidden = static_cast<std::int64_t>(h);
    l.dims.intermediate = l.kind == "mlp" ? 4 * static_cast<std::int64_t>(h) : 0;
    l.dims.seq = 1024;
    l.dims.batch = 4;
    if (l.kind == "mlp" || l.kind == "lm_head") l.tileable = {"seq", "batch"};
    g.layers.push_back(l);
  }
  return g;
}

}  // namespace memscale::test

// A small GPT written as a plain libtorch module (token and position embeddings, a
// ModuleList of pre-norm transformer blocks, final norm, head) whose forward runs its
// blocks through memscale::Blocks. The examples train and serve it; the C++ tests use it.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <memscale/torch/blocks.hpp>

namespace tiny_gpt {

struct Options {
  std::int64_t vocab = 256, max_seq = 128, width = 128, heads = 4, blocks = 4;
};

/// Causal self-attention and an MLP, each with a residual around a LayerNorm'ed input.
/// Every batch row is computed on its own (no dropout, no batch statistics).
struct BlockImpl : torch::nn::Module {
  BlockImpl(std::int64_t width, std::int64_t heads)
      : heads(heads),
        ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})))),
        qkv(register_module("qkv", torch::nn::Linear(width, 3 * width))),
        proj(register_module("proj", torch::nn::Linear(width, width))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})))),
        fc1(register_module("fc1", torch::nn::Linear(width, 4 * width))),
        fc2(register_module("fc2", torch::nn::Linear(4 * width, width))) {}

  at::Tensor forward(const at::Tensor& x) {
    const std::int64_t b = x.size(0), t = x.size(1), c = x.size(2), d = c / heads;
    const at::Tensor qkv_out = qkv(ln1(x)).view({b, t, 3, heads, d}).permute({2, 0, 3, 1, 4});
    const at::Tensor q = qkv_out[0], k = qkv_out[1], v = qkv_out[2];
    const at::Tensor future = at::ones({t, t}, x.options().dtype(at::kBool)).triu(1);
    const at::Tensor scores = at::matmul(q, k.transpose(-2, -1)).div(std::sqrt(static_cast<double>(d)));
    const at::Tensor attention = at::softmax(scores.masked_fill(future, -INFINITY), -1);
    const at::Tensor y = at::matmul(attention, v).transpose(1, 2).reshape({b, t, c});
    const at::Tensor h = x + proj(y);
    return h + fc2(at::gelu(fc1(ln2(h))));
  }

  std::int64_t heads;
  torch::nn::LayerNorm ln1;
  torch::nn::Linear qkv, proj;
  torch::nn::LayerNorm ln2;
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(Block);

struct GptImpl : torch::nn::Module {
  explicit GptImpl(const Options& o)
      : tokens(register_module("tokens", torch::nn::Embedding(o.vocab, o.width))),
        positions(register_module("positions", torch::nn::Embedding(o.max_seq, o.width))),
        blocks(register_module("blocks", torch::nn::ModuleList())),
        ln_f(register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.width})))),
        head(register_module("head", torch::nn::Linear(torch::nn::LinearOptions(o.width, o.vocab).bias(false)))) {
    for (std::int64_t i = 0; i < o.blocks; ++i) blocks->push_back(Block(o.width, o.heads));
    runner = memscale::Blocks::of<BlockImpl>(blocks);
  }

  /// Logits [batch, seq, vocab] of token ids [batch, seq].
  at::Tensor forward(const at::Tensor& ids) {
    const at::Tensor where = at::arange(ids.size(1), ids.options());
    return head(ln_f(runner.run(tokens(ids) + positions(where))));
  }

  torch::nn::Embedding tokens, positions;
  torch::nn::ModuleList blocks;
  torch::nn::LayerNorm ln_f;
  torch::nn::Linear head;
  memscale::Blocks runner;  ///< runs `blocks` as memscale planned them
};
TORCH_MODULE(Gpt);

/// Next-token cross-entropy of the logits of `ids` against `targets` (both [batch, seq]).
inline at::Tensor loss_of(Gpt& model, const at::Tensor& ids, const at::Tensor& targets) {
  const at::Tensor logits = model->forward(ids);
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

/// Every parameter's gradient, moved out (the parameters are left without one).
inline std::vector<at::Tensor> take_grads(torch::nn::Module& m) {
  std::vector<at::Tensor> grads;
  for (auto& p : m.parameters()) grads.push_back(std::exchange(p.mutable_grad(), at::Tensor()));
  return grads;
}

/// Bytes of the model's parameters and buffers (what stays resident).
inline std::uint64_t tensor_bytes(torch::nn::Module& m) {
  std::uint64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel() * p.element_size();
  for (const auto& b : m.buffers()) n += b.numel() * b.element_size();
  return n;
}

/// Measured peak of `work` (counting allocator): the model's resident tensors before it
/// plus the highest count of what `work` allocated (gradients, optimizer state, activations).
template <class Work>
std::uint64_t measured_peak(torch::nn::Module& m, Work&& work) {
  const std::uint64_t resident = tensor_bytes(m);
  memscale::memory::CountingSession session;
  work();
  return resident + static_cast<std::uint64_t>(session.stats().peak_bytes);
}

/// Greedy decoding without a KV cache: each step runs the whole sequence.
inline at::Tensor generate(Gpt& model, at::Tensor ids, std::int64_t new_tokens) {
  for (std::int64_t i = 0; i < new_tokens; ++i) {
    const at::Tensor next = model->forward(ids).select(1, ids.size(1) - 1).argmax(-1, /*keepdim=*/true);
    ids = at::cat({ids, next}, 1);
  }
  return ids;
}

}  // namespace tiny_gpt

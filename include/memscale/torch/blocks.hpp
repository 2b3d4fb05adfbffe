// memscale::Blocks: the planned execution of a libtorch model's ModuleList of blocks,
// for models with a custom forward (embeddings, blocks, head, written by the user).
//
// libtorch has no forward hooks, so the model's forward calls the blocks through a
// Blocks object instead of calling them itself:
//
//   struct GptImpl : torch::nn::Module {
//     torch::nn::ModuleList blocks{...};
//     memscale::Blocks runner = memscale::Blocks::of<BlockImpl>(blocks);
//     GptImpl() { register_module("blocks", blocks); ... }
//     at::Tensor forward(const at::Tensor& ids) { return head(runner.run(embed(ids))); }
//   };
//   memscale::plan_blocks(*model, model->runner, config, example_ids, forward_fn);
//
// Blocks registers no module and owns no parameter: names, parameters and serialization
// keys are the model's own. Until a plan is applied (and after unwrap) every block is a
// plain call. A plan applies per block: checkpoint (memscale::checkpoint), tile (batch
// chunks, each checkpointed; only blocks declared rows-independent are ever tileable),
// offload_activations for training (what autograd saves during the block's forward goes
// to disk or pinned host memory through memscale's autograd engine: activation_store.hpp,
// saved_tensor_engine.hpp) and, for inference, offload_weights (the blocks' parameters
// paged through the core LayerPager and TorchPagerStorage, prefetched on the pager's
// thread). Where another autograd engine is installed (Python's), activation offload
// cannot be applied: plan_blocks tells the engine so (Layer::cannot) and apply refuses.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include "memscale/core/config.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/pager.hpp"
#include "memscale/core/plan.hpp"
#include "memscale/torch/activation_store.hpp"
#include "memscale/torch/counting_allocator.hpp"
#include "memscale/torch/pager_storage.hpp"

namespace memscale {

/// Runs block `i` of the list on `x` (the block's own forward).
using BlockCall = std::function<at::Tensor(std::size_t, const at::Tensor&)>;

/// What a profiling forward records (see profile_blocks).
struct BlockRecording;

class Blocks {
 public:
  Blocks() = default;
  /// `call(i, x)` must run `list[i]` on `x`.
  Blocks(torch::nn::ModuleList list, BlockCall call);
  /// Blocks whose type is `Impl` (a `torch::nn::Module` with `at::Tensor forward(const at::Tensor&)`).
  template <class Impl>
  static Blocks of(torch::nn::ModuleList list) {
    return Blocks(list, [list](std::size_t i, const at::Tensor& x) { return list->ptr(i)->template as<Impl>()->forward(x); });
  }

  std::size_t size() const;
  torch::nn::ModuleList list() const;

  /// Block `i` on `x`, as the applied plan says (a plain call when none is applied).
  at::Tensor forward(std::size_t i, const at::Tensor& x) const;
  /// Every block in order: `forward(size()-1, ... forward(0, x))`.
  at::Tensor run(const at::Tensor& x) const;

  /// Applies the plan's layers named `<name>.<i>` to block i (`name`: where the model
  /// registered the list, e.g. "blocks"). Layers of other names must carry no technique.
  /// A technique the C++ runtime cannot apply (offload_weights while training;
  /// offload_activations for inference, or under another autograd engine) is a
  /// ConfigError naming the layer, raised before anything changes. offload_weights pages
  /// the blocks under the plan's `offload` section with `disk` (its `dir` must exist; "" =
  /// a private temporary directory, removed by unwrap); prefetch runs on the pager's
  /// thread. offload_activations on the disk tier writes in a private subdirectory of
  /// `disk.dir` (the system temporary directory when ""), checked first (check_disk_dir:
  /// it must exist, be writable and hold the planned bytes).
  void apply(const Plan& plan, const std::string& name, const DiskTierOptions& disk = {});
  /// Plain calls again; paged weights are read back and the files removed.
  void unwrap();

  /// The plan applied to block i (default LayerPlan when none).
  const LayerPlan& planned(std::size_t i) const;
  bool applied() const;
  /// The pager serving the blocks' weights, null unless offload_weights was applied.
  const LayerPager* pager() const;
  const TorchPagerStorage* storage() const;
  /// The store of offloaded activations, null unless offload_activations was applied.
  const ActivationStore* activations() const;

  /// Profiling (profile_blocks): while set, forward() runs plain calls and records each
  /// block's measurement into `out` (null: stop recording).
  void record_into(BlockRecording* out) const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

/// What the planner needs besides the model.
struct BlockPlanOptions {
  bool training = true;
  std::string optimizer = "adamw";  ///< none|sgd|sgd_momentum|adam|adamw (ignored unless training)
  /// Each block computes every batch row on its own (attention within a sequence,
  /// no BatchNorm): the engine may tile it over the batch axis. Blocks holding a Dropout
  /// that draws a mask are never tileable (chunks would draw other masks).
  bool rows_independent = false;
};

/// The measured ModelGraph of `model` whose forward (`forward(example_input)`) runs
/// `blocks`: layers `<name>.<i>` (kind "block") with the bytes each block's forward left
/// allocated (counting allocator: activations, and its output when something saved it),
/// transient = its forward peak above that, and two layers for the model's own code,
/// "<name>:before" and "<name>:after" (kind "other"; every parameter outside the blocks
/// is counted in the latter; no technique is planned on them). `name`: where the model
/// registered the list (found by identity among its submodules when empty).
/// `forward_peak_bytes` (when given) receives the peak the whole forward allocated: inference
/// plans calibrate the engine's activation reservation on it.
ModelGraph profile_blocks(torch::nn::Module& model, const Blocks& blocks,
                          const std::function<at::Tensor(const at::Tensor&)>& forward, const at::Tensor& example_input,
                          const BlockPlanOptions& options = {}, std::string name = "",
                          std::uint64_t* forward_peak_bytes = nullptr);

/// profile_blocks -> memscale::plan against `hardware` (detected when absent; inference
/// plans with the reservation's safety factor calibrated on the measured forward peak) ->
/// logs the plan summary -> blocks.apply. Returns the plan (its JSON is Python's). Training plans
/// consider checkpoint and tile; inference plans consider offload_weights (the blocks'
/// parameters, paged with `disk`).
Plan plan_blocks(torch::nn::Module& model, Blocks& blocks, const Config& config,
                 const std::function<at::Tensor(const at::Tensor&)>& forward, const at::Tensor& example_input,
                 const BlockPlanOptions& options = {}, std::optional<Hardware> hardware = std::nullopt,
                 const DiskTierOptions& disk = {});

/// The name under which `model` registered `list` (a dotted path), or ConfigError.
std::string module_list_name(torch::nn::Module& model, const torch::nn::ModuleList& list);

struct BlockMeasurement {
  std::int64_t current_bytes = 0, peak_bytes = 0;  ///< of the block's forward, relative to its start
  std::int64_t outer_start_bytes = 0;              ///< the whole forward's count when the block started
  std::uint64_t input_bytes = 0, output_bytes = 0;
  std::int64_t output_width = 0;  ///< the output's last dimension
  /// The block's output storage, to find after the forward whether anything saved it.
  c10::weak_intrusive_ptr<c10::StorageImpl> output_storage{c10::intrusive_ptr<c10::StorageImpl>()};
};

struct BlockRecording {
  memory::CountingSession* outer = nullptr;  ///< the whole forward's session (its peak is reset after each block)
  std::int64_t before_first_bytes = -1;             ///< its current bytes when block 0 started
  std::int64_t before_first_peak = -1;              ///< its peak then
  std::int64_t after_last_bytes = -1;               ///< its current bytes when the last block ended
  std::vector<BlockMeasurement> blocks;
  /// Training: the backward's session, and (current, peak) at each gradient hook on the
  /// last block's output and on every block's input, in the order they fire (the peak is
  /// reset at each): the backward of the code after the blocks, then blocks N-1 .. 0.
  memory::CountingSession* backward = nullptr;
  std::vector<std::pair<std::int64_t, std::int64_t>> backward_marks;
};

}  // namespace memscale

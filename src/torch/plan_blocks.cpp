// profile_blocks / plan_blocks: one measured forward of the user's model, its blocks
// recorded one by one under the counting allocator, planned by the core engine.
#include <set>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/modules/dropout.h>

#include "memscale/core/engine.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/log.hpp"
#include "memscale/core/plan_summary.hpp"
#include "memscale/core/reservation.hpp"
#include "memscale/torch/blocks.hpp"
#include "memscale/torch/detect_hardware.hpp"
#include "memscale/torch/saved_tensor_engine.hpp"

namespace memscale {
namespace {

std::uint64_t bytes_of(const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; }
std::uint64_t nonneg(std::int64_t v) { return static_cast<std::uint64_t>(std::max<std::int64_t>(0, v)); }

std::string dtype_name(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    default: return "float32";
  }
}

// A Dropout inside draws a mask now: batch chunks would draw other masks than the whole batch.
bool draws_masks(const torch::nn::Module& block) {
  for (const auto& m : block.modules(/*include_self=*/true)) {
    const auto* d = m->as<torch::nn::DropoutImpl>();
    if (d && m->is_training() && d->options.p() > 0.0) return true;
  }
  return false;
}

void count_tensors(Layer& layer, const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& buffers,
                   const std::string& optimizer, bool training) {
  for (const auto& p : params) {
    layer.param_bytes += bytes_of(p);
    if (training && p.requires_grad()) layer.grad_bytes += bytes_of(p);
  }
  layer.optimizer_bytes = optimizer_state_factor(optimizer) * layer.grad_bytes;
  for (const auto& b : buffers) layer.buffer_bytes += bytes_of(b);
}

// What the C++ runtime cannot do, so the engine never plans it.
void mark_incapable(Layer& layer, bool training, bool in_blocks) {
  const char* outside = "the model's own code outside memscale::Blocks: the C++ runtime applies plans to blocks only";
  if (!in_blocks) {
    for (const auto& technique : plan_techniques()) layer.cannot[technique] = outside;
    return;
  }
  if (!training) {
    layer.cannot["offload_activations"] = "the C++ runtime keeps no KV cache";
  } else if (const auto why = saved_tensor_engine_unavailable()) {
    layer.cannot["offload_activations"] = "the C++ runtime cannot hook saved tensors here: " + *why;
  }
  if (training) layer.cannot["offload_weights"] = "the C++ runtime pages weights for inference only";
}

// Runs out.backward(ones) and returns each segment's peak above its start (see above), or
// nothing when the hooks did not fire as expected. Gradients it creates are removed.
std::vector<std::uint64_t> measure_backward(torch::nn::Module& model, BlockRecording& rec, const at::Tensor& out,
                                            std::size_t n) {
  std::vector<at::Tensor> params;
  for (const auto& p : model.parameters())
    if (!p.grad().defined()) params.push_back(p);
  std::vector<std::pair<std::int64_t, std::int64_t>> bounds;  // (start current, peak) per segment
  {
    memory::CountingSession session;
    const at::Tensor seed = at::ones_like(out);
    const std::int64_t start = session.stats().current_bytes;
    session.reset_peak();
    rec.backward = &session;
    try {
      torch::autograd::backward({out}, {seed});
    } catch (...) {
      rec.backward = nullptr;
      throw;
    }
    rec.backward = nullptr;
    std::int64_t from = start;
    for (const auto& [current, peak] : rec.backward_marks) {
      bounds.emplace_back(from, peak);
      from = current;
    }
    bounds.emplace_back(from, session.stats().peak_bytes);
  }
  for (auto& p : params) p.mutable_grad().reset();
  // n + 2 segments, or n + 1 when nothing before the blocks needs a gradient (no hook on block 0's input).
  if (bounds.size() == n + 1) bounds.emplace_back(bounds.back().second, bounds.back().second);
  if (bounds.size() != n + 2) {
    log::warn("profile_blocks: " + std::to_string(rec.backward_marks.size()) + " gradient hooks fired for " +
              std::to_string(n) + " blocks; backward scratch not measured");
    return {};
  }
  std::vector<std::uint64_t> scratch;
  for (const auto& [from, peak] : bounds) scratch.push_back(nonneg(peak - from));
  return scratch;
}

}  // namespace

std::string module_list_name(torch::nn::Module& model, const torch::nn::ModuleList& list) {
  if (!list) throw ConfigError("blocks: the ModuleList is null");
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    if (item.value().get() == list.ptr().get()) return item.key();
  throw ConfigError("blocks: the ModuleList is not a registered submodule of the model (" + model.name() +
                    "); register it with register_module(\"blocks\", list) so its parameters are the model's");
}

ModelGraph profile_blocks(torch::nn::Module& model, const Blocks& blocks,
                          const std::function<at::Tensor(const at::Tensor&)>& forward, const at::Tensor& example_input,
                          const BlockPlanOptions& options, std::string name, std::uint64_t* forward_peak_bytes) {
  if (blocks.applied())
    throw ConfigError("profile_blocks: a plan is applied to the blocks; unwrap() them first to profile plain calls");
  if (name.empty()) name = module_list_name(model, blocks.list());
  const std::string optimizer = options.training ? options.optimizer : "none";
  json_fields::one_of(optimizer, optimizer_kinds(), "profile.optimizer");
  if (!example_input.device().is_cpu())
    log::warn("profile_blocks: measured figures count CPU allocations only; the input is on " + example_input.device().str());

  BlockRecording rec;
  at::Tensor out;
  memory::AllocationStats total;
  {
    torch::autograd::AutoGradMode grad_mode(options.training);
    memory::CountingSession session;
    rec.outer = &session;
    blocks.record_into(&rec);
    try {
      out = forward(example_input);
    } catch (...) {
      blocks.record_into(nullptr);
      throw;
    }
    blocks.record_into(nullptr);
    total = session.stats();
  }
  if (rec.blocks.size() != blocks.size())
    throw ConfigError("profile_blocks: the model's forward made " + std::to_string(rec.blocks.size()) +
                      " block calls, \"" + name + "\" has " + std::to_string(blocks.size()) +
                      " blocks; forward must call each block once, through Blocks::forward(i, x) or Blocks::run(x)");

  if (forward_peak_bytes) {
    std::int64_t peak = std::max(rec.before_first_peak, total.peak_bytes);
    for (const auto& m : rec.blocks) peak = std::max(peak, m.outer_start_bytes + m.peak_bytes);
    *forward_peak_bytes = nonneg(peak);
  }
  // Which block outputs something saved for backward (they outlive the forward).
  std::vector<bool> output_saved;
  for (const auto& m : rec.blocks) output_saved.push_back(m.output_storage.use_count() > 0);
  // Training: one backward, its scratch timed per block by the gradient hooks. Segments in
  // backward order: the code after the blocks, blocks N-1 .. 0, the code before them.
  std::vector<std::uint64_t> backward_scratch;
  if (options.training && out.requires_grad()) backward_scratch = measure_backward(model, rec, out, blocks.size());
  out = out.detach();

  ModelGraph graph;
  graph.model_name = model.name();
  graph.training = options.training;
  graph.optimizer = optimizer;
  graph.batch = example_input.dim() > 0 ? example_input.size(0) : 0;
  graph.seq = example_input.dim() > 1 ? example_input.size(1) : 0;
  graph.input_bytes = bytes_of(example_input);
  for (const auto& p : model.parameters()) {
    if (graph.trainable_param_bytes.empty() && graph.largest_param_bytes == 0) graph.dtype = dtype_name(p);
    if (!options.training || !p.requires_grad()) continue;
    graph.trainable_param_bytes.push_back(bytes_of(p));
    graph.largest_param_bytes = std::max(graph.largest_param_bytes, bytes_of(p));
  }

  Layer before;
  before.name = name + ":before";
  before.output_bytes = rec.blocks.front().input_bytes;
  if (options.training) before.activation_bytes = nonneg(rec.before_first_bytes);
  before.transient_bytes = nonneg(rec.before_first_peak - rec.before_first_bytes);
  if (!backward_scratch.empty()) before.transient_bytes = std::max(before.transient_bytes, backward_scratch.back());
  before.input_bytes = graph.input_bytes;
  mark_incapable(before, options.training, false);
  graph.layers.push_back(std::move(before));

  std::set<const c10::TensorImpl*> in_blocks;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const auto module = blocks.list()[i];
    const BlockMeasurement& m = rec.blocks[i];
    Layer layer;
    layer.name = name + "." + std::to_string(i);
    layer.kind = "block";
    const auto params = module->parameters(), buffers = module->buffers();
    for (const auto& t : params) in_blocks.insert(t.unsafeGetTensorImpl());
    for (const auto& t : buffers) in_blocks.insert(t.unsafeGetTensorImpl());
    count_tensors(layer, params, buffers, optimizer, options.training);
    layer.input_bytes = m.input_bytes;
    layer.output_bytes = m.output_bytes;
    // Its output is an activation only if something saved it: then it outlives the forward.
    if (options.training)
      layer.activation_bytes = nonneg(m.current_bytes - (output_saved[i] ? 0 : static_cast<std::int64_t>(m.output_bytes)));
    // Scratch: the larger of its forward's (above what it keeps) and its backward's
    // (parameter gradients included, as the Python profiler counts it).
    layer.transient_bytes = nonneg(m.peak_bytes - m.current_bytes);
    if (!backward_scratch.empty()) layer.transient_bytes = std::max(layer.transient_bytes, backward_scratch[blocks.size() - i]);
    layer.measured_peak_bytes = nonneg(m.peak_bytes);
    layer.measured_activation_bytes = layer.activation_bytes;
    // Inference: the reservation scales with the width of what flows between blocks.
    if (!options.training && m.output_width > 0) {
      layer.dims.hidden = m.output_width;
      layer.dims.batch = graph.batch;
      layer.dims.seq = graph.seq;
    }
    if (options.rows_independent && !draws_masks(*module) && m.input_bytes > 0) layer.tileable = {"batch"};
    mark_incapable(layer, options.training, true);
    graph.layers.push_back(std::move(layer));
  }

  Layer after;
  after.name = name + ":after";
  std::vector<at::Tensor> params, buffers;
  for (const auto& p : model.parameters())
    if (!in_blocks.count(p.unsafeGetTensorImpl())) params.push_back(p);
  for (const auto& b : model.buffers())
    if (!in_blocks.count(b.unsafeGetTensorImpl())) buffers.push_back(b);
  count_tensors(after, params, buffers, optimizer, options.training);
  after.input_bytes = rec.blocks.back().output_bytes;
  after.output_bytes = bytes_of(out);
  const std::int64_t after_current = total.current_bytes - rec.after_last_bytes;
  if (options.training) after.activation_bytes = nonneg(after_current);
  after.transient_bytes = nonneg(total.peak_bytes - total.current_bytes);  // its peak: the session's since the last block
  if (!backward_scratch.empty()) after.transient_bytes = std::max(after.transient_bytes, backward_scratch.front());
  mark_incapable(after, options.training, false);
  graph.layers.push_back(std::move(after));
  for (std::size_t i = 0; i < graph.layers.size(); ++i) graph.layers[i].index = static_cast<std::int64_t>(i);
  log::debug("profiled " + graph.model_name + ": " + std::to_string(blocks.size()) + " blocks in \"" + name + "\"");
  return graph;
}

Plan plan_blocks(torch::nn::Module& model, Blocks& blocks, const Config& config,
                 const std::function<at::Tensor(const at::Tensor&)>& forward, const at::Tensor& example_input,
                 const BlockPlanOptions& options, std::optional<Hardware> hardware, const DiskTierOptions& disk) {
  const std::string name = module_list_name(model, blocks.list());
  blocks.unwrap();
  std::uint64_t forward_peak = 0;
  const ModelGraph graph = profile_blocks(model, blocks, forward, example_input, options, name, &forward_peak);
  const Hardware hw = hardware ? *hardware : detect_hardware(disk.dir);
  PlanOptions plan_options;
  if (!options.training && forward_peak > 0 && widest_buffer(graph) > 0 && graph.batch > 0)
    plan_options.calibration = calibrate_safety_factor(
        {{widest_buffer(graph), graph.batch * std::max<std::int64_t>(graph.seq, 1), cost::dtype_bytes(graph.dtype), forward_peak}});
  Plan plan = memscale::plan(graph, hw, config, plan_options);
  log::info(plan_summary(plan));
  blocks.apply(plan, name, disk);
  return plan;
}

}  // namespace memscale

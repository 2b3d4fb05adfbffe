// Blocks: runs a model's ModuleList of blocks as an applied plan says (checkpoint, batch
// tiling, activation offload, weights paged through the LayerPager), or records each block's memory while
// profile_blocks runs the model's forward.
#include "memscale/torch/blocks.hpp"

#include <stdlib.h>

#include <filesystem>

#include <ATen/ATen.h>

#include "memscale/core/errors.hpp"
#include "memscale/core/log.hpp"
#include "memscale/torch/checkpoint.hpp"
#include "memscale/torch/saved_tensor_engine.hpp"

namespace memscale {
namespace {

std::uint64_t bytes_of(const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; }

OffloadPolicy::Kind policy_kind(const std::string& text) {
  if (text == "none") return OffloadPolicy::Kind::none;
  if (text == "budget") return OffloadPolicy::Kind::budget;
  if (text == "pinned_hot_set") return OffloadPolicy::Kind::pinned_hot_set;
  throw ConfigError("plan.offload.policy: got \"" + text + "\", expected \"none\", \"budget\" or \"pinned_hot_set\"");
}

// Block index of a plan layer named "<name>.<i>", or nullopt for another name.
std::optional<std::size_t> block_index(const std::string& layer, const std::string& name) {
  const std::string prefix = name + ".";
  if (layer.rfind(prefix, 0) != 0 || layer.size() == prefix.size()) return std::nullopt;
  const std::string rest = layer.substr(prefix.size());
  if (rest.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return static_cast<std::size_t>(std::stoull(rest));
}

// Releases a pager layer when the block's forward ends, exceptions included.
struct Held {
  LayerPager* pager;
  std::size_t layer;
  ~Held() {
    if (pager) pager->release(layer);
  }
};

}  // namespace

struct Blocks::State {
  torch::nn::ModuleList list;
  BlockCall call;
  std::vector<LayerPlan> plans;  // one per block once a plan is applied
  std::shared_ptr<TorchPagerStorage> storage;
  std::unique_ptr<LayerPager> pager;
  std::vector<std::optional<std::size_t>> paged_as;  // block -> pager layer
  std::string private_dir;
  // Activation offload: the store, memscale's autograd engine held installed, and each
  // block's parameter and buffer storages (never offloaded).
  std::unique_ptr<ActivationStore> activations;
  std::unique_ptr<EngineLease> engine;
  std::vector<std::vector<c10::Storage>> resident;
  BlockRecording* recording = nullptr;

  void stop_offloading() {
    activations.reset();  // its files go when autograd releases the last saved tensor
    engine.reset();
    resident.clear();
  }

  void stop_paging() {
    pager.reset();  // joins the prefetch thread
    if (storage) storage->restore_all();
    storage.reset();
    paged_as.clear();
    if (!private_dir.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(private_dir, ec);
      private_dir.clear();
    }
  }
  ~State() {
    stop_paging();
    stop_offloading();
  }
};

Blocks::Blocks(torch::nn::ModuleList list, BlockCall call) : state_(std::make_shared<State>()) {
  if (!list) throw ConfigError("Blocks: the ModuleList is empty (null)");
  if (!call) throw ConfigError("Blocks: the block call is empty");
  state_->list = std::move(list);
  state_->call = std::move(call);
}

std::size_t Blocks::size() const { return state_ ? state_->list->size() : 0; }
torch::nn::ModuleList Blocks::list() const { return state_ ? state_->list : torch::nn::ModuleList(nullptr); }
bool Blocks::applied() const { return state_ && !state_->plans.empty(); }
const LayerPager* Blocks::pager() const { return state_ ? state_->pager.get() : nullptr; }
const TorchPagerStorage* Blocks::storage() const { return state_ ? state_->storage.get() : nullptr; }
const ActivationStore* Blocks::activations() const { return state_ ? state_->activations.get() : nullptr; }
void Blocks::record_into(BlockRecording* out) const {
  if (!state_) throw ConfigError("Blocks: default-constructed (no ModuleList)");
  state_->recording = out;
}

const LayerPlan& Blocks::planned(std::size_t i) const {
  static const LayerPlan plain;
  return applied() && i < state_->plans.size() ? state_->plans[i] : plain;
}

at::Tensor Blocks::forward(std::size_t i, const at::Tensor& x) const {
  if (!state_) throw ConfigError("Blocks: default-constructed (no ModuleList)");
  State& s = *state_;
  if (i >= s.list->size())
    throw ConfigError("Blocks::forward: block " + std::to_string(i) + ", the list has " + std::to_string(s.list->size()));
  if (s.recording) {
    BlockRecording& r = *s.recording;
    if (r.blocks.empty() && r.outer) {
      r.before_first_bytes = r.outer->stats().current_bytes;
      r.before_first_peak = r.outer->stats().peak_bytes;
    }
    // Gradient hooks time each block's backward (they keep no tensor alive).
    auto mark = [&r](const at::Tensor&) {
      if (!r.backward) return;
      const memory::AllocationStats now = r.backward->stats();
      r.backward_marks.emplace_back(now.current_bytes, now.peak_bytes);
      r.backward->reset_peak();
    };
    if (x.requires_grad()) x.register_hook(mark);
    const std::int64_t outer_start = r.outer ? r.outer->stats().current_bytes : 0;
    memory::CountingSession session;
    at::Tensor out = s.call(i, x);
    if (i + 1 == s.list->size() && out.requires_grad()) out.register_hook(mark);
    const memory::AllocationStats stats = session.stats();
    BlockMeasurement m;
    m.current_bytes = stats.current_bytes;
    m.peak_bytes = stats.peak_bytes;
    m.outer_start_bytes = outer_start;
    m.input_bytes = bytes_of(x);
    m.output_bytes = bytes_of(out);
    m.output_width = out.defined() && out.dim() > 0 ? out.size(-1) : 0;
    if (out.defined() && out.has_storage()) m.output_storage = out.storage().getWeakStorageImpl();
    r.blocks.push_back(std::move(m));
    if (r.outer) {
      // From here on the outer session's peak is that of the code after this block.
      r.after_last_bytes = r.outer->stats().current_bytes;
      r.outer->reset_peak();
    }
    return out;
  }
  LayerPager* pager = s.pager && s.paged_as[i] ? s.pager.get() : nullptr;
  if (pager) pager->acquire(*s.paged_as[i]);
  const Held held{pager, pager ? *s.paged_as[i] : 0};
  if (s.plans.empty()) return s.call(i, x);
  const LayerPlan& plan = s.plans[i];
  // While this block's forward runs, what autograd saves goes to the plan's tier.
  std::optional<ActivationStore::Call> offloaded;
  if (plan.has("offload_activations") && s.activations) offloaded.emplace(*s.activations, plan.activation_tier, s.resident[i]);
  LayerFn block = [&s, i](const at::Tensor& t) { return s.call(i, t); };
  if (plan.has("tile") && plan.tile_chunks > 1 && x.dim() > 0 && x.size(0) > 1) {
    // Each chunk is recomputed in backward, so only one chunk's intermediates live.
    std::vector<at::Tensor> pieces;
    for (const at::Tensor& chunk : x.chunk(plan.tile_chunks, 0)) pieces.push_back(checkpoint(block, chunk));
    return at::cat(pieces, 0);
  }
  if (plan.has("checkpoint")) return checkpoint(block, x);
  return s.call(i, x);
}

at::Tensor Blocks::run(const at::Tensor& x) const {
  at::Tensor h = x;
  for (std::size_t i = 0; i < size(); ++i) h = forward(i, h);
  return h;
}

void Blocks::unwrap() {
  if (!state_) return;
  state_->stop_paging();
  state_->stop_offloading();
  state_->plans.clear();
}

void Blocks::apply(const Plan& plan, const std::string& name, const DiskTierOptions& disk) {
  if (!state_) throw ConfigError("Blocks: default-constructed (no ModuleList)");
  State& s = *state_;
  const std::size_t n = s.list->size();
  std::vector<std::optional<LayerPlan>> found(n);
  std::uint64_t outside_weights = 0;  // what the plan keeps resident outside the blocks
  for (std::size_t k = 0; k < plan.layers.size(); ++k) {
    const LayerPlan& layer = plan.layers[k];
    const std::string path = "plan.layers[" + std::to_string(k) + "] (\"" + layer.name + "\")";
    if (layer.has("offload_activations") && !plan.training)
      throw ConfigError(path + ".techniques: offload_activations is planned for inference (a KV cache); the C++ "
                        "runtime keeps no KV cache");
    if (layer.has("offload_activations") && layer.activation_tier != "disk" && layer.activation_tier != "host")
      throw ConfigError(path + ".activation_tier: got \"" + layer.activation_tier + "\" with offload_activations, "
                        "expected \"disk\" or \"host\"");
    if (layer.has("offload_weights") && plan.training)
      throw ConfigError(path + ".techniques: offload_weights is planned for training; the C++ runtime pages weights "
                        "for inference only");
    const auto index = block_index(layer.name, name);
    if (!index) {
      outside_weights += layer.before.weights;
      if (!layer.techniques.empty())
        throw ConfigError(path + ".techniques: got " + std::to_string(layer.techniques.size()) + " technique(s) on a "
                          "layer outside the Blocks \"" + name + "\"; the C++ runtime applies a plan to its blocks only");
      continue;
    }
    if (*index >= n)
      throw ConfigError(path + ": block " + std::to_string(*index) + ", but \"" + name + "\" has " + std::to_string(n) +
                        " blocks; the plan was made for another model");
    found[*index] = layer;
  }
  std::vector<LayerPlan> plans;
  for (std::size_t i = 0; i < n; ++i) {
    if (!found[i])
      throw ConfigError("plan.layers: no layer named \"" + name + "." + std::to_string(i) +
                        "\"; the plan was made for another model (plan it with plan_blocks)");
    plans.push_back(*found[i]);
  }
  // Activation offload: every check before anything changes (the engine, the directory).
  std::uint64_t offloaded_bytes = 0;
  bool offloads = false, to_disk = false;
  for (const auto& p : plans) {
    if (!p.has("offload_activations")) continue;
    offloads = true;
    if (p.activation_tier == "disk") {
      to_disk = true;
      offloaded_bytes += p.before.activations;
    }
  }
  std::unique_ptr<EngineLease> engine;
  std::unique_ptr<ActivationStore> activations;
  if (offloads) {
    engine = std::make_unique<EngineLease>();  // ConfigError under a foreign engine
    std::string dir = disk.dir;
    if (dir.empty()) dir = std::filesystem::temp_directory_path().string();
    if (to_disk) check_disk_dir(dir, offloaded_bytes);
    activations = std::make_unique<ActivationStore>(dir);
  }
  unwrap();
  if (offloads) {
    s.engine = std::move(engine);
    s.activations = std::move(activations);
    for (std::size_t i = 0; i < n; ++i) {
      std::vector<c10::Storage> storages;
      for (const auto& p : s.list[i]->parameters()) storages.push_back(p.storage());
      for (const auto& b : s.list[i]->buffers()) storages.push_back(b.storage());
      s.resident.push_back(std::move(storages));
    }
  }
  bool paged = false;
  for (const auto& p : plans) paged = paged || p.has("offload_weights");
  if (paged) {
    // Every block is a pager layer (those the plan keeps are pinned). The plan's ram_bytes
    // also counts the weights outside the blocks, which stay resident outside the pager:
    // the pager gets ram_bytes less those.
    DiskTierOptions options = disk;
    if (options.dir.empty()) {
      std::string tmpl = (std::filesystem::temp_directory_path() / "memscale-weights-XXXXXX").string();
      if (!::mkdtemp(tmpl.data())) throw MemScaleError("Blocks: cannot create a temporary directory for the weights");
      options.dir = s.private_dir = tmpl;
    }
    try {
      s.storage = std::make_shared<TorchPagerStorage>(options);
      std::vector<PagedLayer> specs;
      std::vector<bool> pinned;
      for (std::size_t i = 0; i < n; ++i) {
        const std::string block = name + "." + std::to_string(i);
        std::vector<std::string> names;
        std::vector<at::Tensor> tensors;
        for (const auto& p : s.list[i]->named_parameters()) {
          names.push_back(block + "." + p.key());
          tensors.push_back(p.value().detach());
        }
        const bool keep = !plans[i].has("offload_weights");
        const WeightTier home = keep ? WeightTier::disk : weight_tier_from_string(plans[i].weight_tier, "plan.layers[\"" + block + "\"].weight_tier");
        s.storage->add_layer(block, names, tensors, home);
        specs.push_back({block, plans[i].kind, s.storage->layer_bytes(i), home, keep});
        pinned.push_back(keep);
      }
      OffloadPolicy policy;
      policy.kind = policy_kind(plan.offload.policy);
      if (policy.kind == OffloadPolicy::Kind::pinned_hot_set) policy.kind = OffloadPolicy::Kind::budget;  // hot set: pinned below
      policy.ram_bytes = plan.offload.ram_bytes > outside_weights ? plan.offload.ram_bytes - outside_weights : 0;
      policy.prefetch_n_ahead = plan.offload.prefetch_n_ahead;
      policy.disk_dir = options.dir;
      for (auto& spec : specs)
        for (const auto& hot : plan.offload.hot_set) spec.pinned = spec.pinned || hot == spec.name;
      for (std::size_t i = 0; i < n; ++i) pinned[i] = specs[i].pinned;
      if (policy.kind != OffloadPolicy::Kind::none) {
        validate_pager_layout(specs, policy);
        s.storage->write_home_copies(pinned);
        PagerOptions pager_options;
        pager_options.cyclic = true;
        s.pager = std::make_unique<LayerPager>(specs, policy, s.storage, pager_options);
        for (std::size_t i = 0; i < n; ++i) s.paged_as.push_back(i);
      }
    } catch (...) {
      s.stop_paging();
      throw;
    }
  }
  s.plans = std::move(plans);
}

}  // namespace memscale

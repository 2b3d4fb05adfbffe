// The distributed setting a graph was profiled in (docs/distributed.md): which
// torch.distributed engine holds the model (DDP replicas or FSDP2 shards), over how many
// ranks, and per layer the bytes FSDP2 gathers and scatters around its compute. The
// profiler records these facts from the model it is given; the memory model charges them
// (memory_model.hpp, train_terms) so the engine plans one rank against its own budget.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memscale/core/errors.hpp"
#include "memscale/core/json_fields.hpp"

namespace memscale {

/// Graph-level: the engine the model runs under. Layer figures (param/grad/optimizer bytes)
/// are then one rank's: its shards under FSDP2, a full replica under DDP.
struct Distributed {
  std::string engine = "none";  ///< none|ddp|fsdp2
  std::int64_t world_size = 1;  ///< ranks in the process group
  /// Ranks sharing this host: on a CPU-only machine they share host RAM, so each rank's
  /// device is its share of it (engine/setup.hpp).
  std::int64_t local_world_size = 1;
  /// DDP: gradients are views into its buckets (no second copy); false (DDP's default):
  /// the buckets are a flattened copy of every gradient, resident for the whole step.
  bool gradient_as_bucket_view = false;
  std::uint64_t bucket_cap_bytes = 0;  ///< DDP's bucket_cap_mb in bytes (0 = unknown)
  bool operator==(const Distributed&) const = default;
  bool active() const { return engine != "none"; }
};

/// Per layer, FSDP2 only (all zero otherwise): bytes of unsharded parameters and gradients
/// that exist around the layer's compute on one rank.
struct LayerSharding {
  /// Unsharded parameters of the layer's FSDP group while the layer computes (forward, and
  /// backward, where the recompute of a checkpointed layer uses the same gathered copy);
  /// 0 for a group kept unsharded through the step or a layer that is not sharded.
  std::uint64_t gathered_bytes = 0;
  /// Unsharded bytes of the layer's parameters in a group that is not resharded after
  /// forward (the root group, reshard_after_forward=False): gathered from the first
  /// forward to the end of backward.
  std::uint64_t kept_gathered_bytes = 0;
  /// Unsharded parameters of the group FSDP2 all-gathers ahead while this layer runs
  /// backward (its backward prefetch: the group before it in forward order).
  std::uint64_t prefetch_bytes = 0;
  /// Full-size gradients of the layer's group the reduce-scatter copies into its input
  /// buffer once the layer's backward made them.
  std::uint64_t reduce_scatter_bytes = 0;
  bool operator==(const LayerSharding&) const = default;
  bool any() const { return gathered_bytes || kept_gathered_bytes || prefetch_bytes || reduce_scatter_bytes; }
};

inline const std::vector<std::string>& distributed_engines() {
  static const std::vector<std::string> engines = {"none", "ddp", "fsdp2"};
  return engines;
}

inline void to_json(nlohmann::json& j, const Distributed& d) {
  j = {{"engine", d.engine},
       {"world_size", d.world_size},
       {"local_world_size", d.local_world_size},
       {"gradient_as_bucket_view", d.gradient_as_bucket_view},
       {"bucket_cap_bytes", d.bucket_cap_bytes}};
}

inline Distributed distributed_from_json(const nlohmann::json& j, const std::string& path) {
  namespace f = json_fields;
  if (!j.is_object()) f::wrong_type(path, j, "an object {engine, world_size, ...}");
  Distributed d;
  d.engine = f::one_of(f::optional<std::string>(j, "engine", path, "none", f::as_string), distributed_engines(),
                       path + ".engine");
  d.world_size = f::optional<std::int64_t>(j, "world_size", path, 1, f::as_i64);
  d.local_world_size = f::optional<std::int64_t>(j, "local_world_size", path, 1, f::as_i64);
  if (d.world_size < 1)
    throw ConfigError(path + ".world_size: got " + std::to_string(d.world_size) + ", expected at least 1");
  if (d.local_world_size < 1 || d.local_world_size > d.world_size)
    throw ConfigError(path + ".local_world_size: got " + std::to_string(d.local_world_size) +
                      ", expected 1 .. world_size (" + std::to_string(d.world_size) + ")");
  d.gradient_as_bucket_view = f::optional<bool>(j, "gradient_as_bucket_view", path, false, f::as_bool);
  d.bucket_cap_bytes = f::optional<std::uint64_t>(j, "bucket_cap_bytes", path, 0, f::as_u64);
  return d;
}

inline void to_json(nlohmann::json& j, const LayerSharding& s) {
  j = {{"gathered_bytes", s.gathered_bytes},
       {"kept_gathered_bytes", s.kept_gathered_bytes},
       {"prefetch_bytes", s.prefetch_bytes},
       {"reduce_scatter_bytes", s.reduce_scatter_bytes}};
}

inline LayerSharding sharding_from_json(const nlohmann::json& j, const std::string& path) {
  namespace f = json_fields;
  if (!j.is_object()) f::wrong_type(path, j, "an object of byte counts");
  auto read = [&](const char* key) { return f::optional<std::uint64_t>(j, key, path, 0, f::as_u64); };
  return LayerSharding{read("gathered_bytes"), read("kept_gathered_bytes"), read("prefetch_bytes"),
                       read("reduce_scatter_bytes")};
}

}  // namespace memscale

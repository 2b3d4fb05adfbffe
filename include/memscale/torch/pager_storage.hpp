// TorchPagerStorage: the PagerStorage that moves a layer's parameter tensors between
// residency and its home tier.
//
// - Resident: the parameter storages own memory from the current allocator of their
//   device (RAM on a CPU-only machine, GPU memory on CUDA), so memory tracking sees them.
// - Home "disk": one file per layer, written before the first step in safetensors (or
//   raw) format, never pickle, mode 0600, in the configured directory; read back with
//   large sequential pread()s. Training updates it in place after the optimizer step
//   (store()). While a CPU layer is evicted its storages point into a
//   private read-only-backed mmap of that file: the allocation is freed, yet reading an
//   evicted parameter outside a forward (state_dict(), printing) still gives its values
//   instead of crashing. On CUDA an evicted storage has no memory (FSDP-style): the
//   hooks make it resident before any kernel reads it.
// - Home "host" (CUDA only): a pinned host copy; load = one host-to-device copy.
//
// Parameters keep their identity (same Parameter, same TensorImpl): only the storage's
// data pointer changes, so hooks, optimizers and state_dict keys are unaffected.
// Thread-safety: load/evict of different layers may run concurrently (the pager never
// moves one layer from two threads).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <ATen/Tensor.h>
#include <c10/core/Allocator.h>

#include "memscale/core/pager.hpp"

namespace memscale {

struct DiskTierOptions {
  /// Directory of the layer files. It must exist and be writable (it is not created:
  /// a missing directory is a configuration error).
  std::string dir;
  /// "safetensors" (default: a standard file any safetensors reader opens) or "raw".
  std::string format = "safetensors";
  /// Bytes per pread()/pwrite() call.
  std::size_t io_chunk_bytes = 16u << 20;
  /// Drop a file's pages from the OS page cache after writing and after each read, so
  /// the RAM budget is not quietly spent on cached copies of evicted layers.
  bool drop_page_cache = true;
};

/// I/O done by the storage; times are wall seconds inside the calls.
struct StorageIoStats {
  std::uint64_t bytes_written = 0, bytes_read = 0, files_written = 0, reads = 0, host_copies = 0;
  double write_seconds = 0, read_seconds = 0, host_copy_seconds = 0;
};

/// Result of checking the disk tier's directory before anything is written.
struct DiskDirCheck {
  std::string dir;
  std::uint64_t free_bytes = 0, required_bytes = 0;
};

/// Checks that `dir` exists, is a directory, is writable (a directory with no write bit
/// counts as read-only even for root) and has `required_bytes` free. `free_bytes`: the
/// caller's figure (Python passes shutil.disk_usage so tests can mock a full disk);
/// nullopt = statvfs. Throws ConfigError naming offload.disk_dir. Writes nothing except
/// a probe file it removes at once.
DiskDirCheck check_disk_dir(const std::string& dir, std::uint64_t required_bytes,
                            std::optional<std::uint64_t> free_bytes = std::nullopt);

class TorchPagerStorage final : public PagerStorage {
 public:
  explicit TorchPagerStorage(DiskTierOptions disk);
  /// Removes the files it wrote. It does not restore evicted weights: call restore_all()
  /// first to keep the model usable.
  ~TorchPagerStorage() override;

  TorchPagerStorage(const TorchPagerStorage&) = delete;
  TorchPagerStorage& operator=(const TorchPagerStorage&) = delete;

  /// Registers one layer's tensors (its parameters; storages shared inside the layer
  /// count once). Returns its index, which is the pager's index. A storage registered by
  /// another layer (tied weights) is refused: group tied modules into one layer.
  std::size_t add_layer(const std::string& name, const std::vector<std::string>& tensor_names,
                        const std::vector<at::Tensor>& tensors, WeightTier home);

  std::size_t size() const { return layers_.size(); }
  /// Bytes of the distinct storages of layer `i` (what residency costs).
  std::uint64_t layer_bytes(std::size_t i) const;
  /// Bytes the files will take for the layers not pinned.
  std::uint64_t disk_bytes_required(const std::vector<bool>& pinned) const;

  /// Writes the home copy of every unpinned layer: a file (home disk) or a pinned host
  /// copy (home host). Checks the directory and free space first; on any failure removes
  /// what it wrote and throws, leaving nothing behind.
  void write_home_copies(const std::vector<bool>& pinned, std::optional<std::uint64_t> free_bytes = std::nullopt);

  /// Writes resident layer `layer`'s current values over its home copy (the file's data
  /// section in place, or the pinned host copy): the training pager calls it after the
  /// optimizer step updated the weights, so the next load reads the updated values. Throws
  /// MemScaleError when the layer is not resident or has no home copy yet.
  void store(std::size_t layer);

  void load(std::size_t layer) override;
  void evict(std::size_t layer) override;
  /// Evicts `victims` and loads `layer` into their memory where sizes match (CPU layers
  /// on disk); the rest of the victims' memory is freed before anything is allocated.
  void move(const std::vector<std::size_t>& victims, std::size_t layer) override;

  /// Gives every layer its own resident memory again (reading what is evicted), then
  /// removes the files and host copies. Used by unwrap: the model is as before wrap.
  void restore_all();
  /// Deletes the files now (idempotent).
  void remove_files();

  std::vector<std::string> files() const;
  StorageIoStats io_stats() const;
  const DiskTierOptions& disk_options() const { return disk_; }

 private:
  struct Region;  // one storage of a layer
  struct Layer;
  void write_file(Layer& layer);
  void read_file(Layer& layer, std::vector<c10::DataPtr> reuse = {});
  void add_io(const StorageIoStats& delta);

  DiskTierOptions disk_;
  std::vector<std::unique_ptr<Layer>> layers_;
  mutable std::mutex stats_mutex_;
  StorageIoStats stats_;
  std::string file_prefix_;
};

}  // namespace memscale

// Activation offload of one block call: the tensors autograd saves while an offloaded
// block's forward runs leave memory and come back when backward needs them.
//
// * disk tier (CPU-only machines, or activation_tier "disk"): the raw bytes of each saved
//   storage are written to a file (mode 0600) in a private subdirectory of the store's
//   directory during the forward, and read back when a backward node unpacks them.
// * host tier (CUDA tensors): copied to pinned host memory and back to the device.
//
// Kept as they are: the block's own parameters and buffers (resident anyway; offloading
// would add a second copy in backward), tensors without strided storage, conjugate or
// negative views, empty tensors, and CPU tensors on the host tier (already in host memory).
// Saved tensors sharing a storage are moved once per block call and come back as views of
// one reloaded storage while any of them is in use; a tensor viewing less than half of
// its storage is moved alone. A file is removed when autograd releases the saved tensor
// (after its backward node ran, or when the graph is freed); the subdirectory when the
// store and every saved tensor are gone. Transfers are synchronous: on a CPU-only machine
// the copies run on the cores the step computes on, so overlapping them would hide nothing.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/Storage.h>

#include "memscale/torch/saved_tensor_engine.hpp"

namespace memscale {

struct ActivationStoreStats {
  std::uint64_t bytes_moved = 0;     ///< total bytes sent to the tier
  std::uint64_t tensors_kept = 0;    ///< saved tensors left in memory (parameters, ...)
  std::uint64_t tensors_moved = 0;   ///< saved tensors offloaded
  std::uint64_t records_live = 0;    ///< offloaded storages not yet released by autograd
  std::uint64_t bytes_reloaded = 0;  ///< total bytes read back
};

class ActivationStore {
 public:
  /// `dir`: where the disk tier writes (it must exist and be writable: check_disk_dir);
  /// the store works in a private subdirectory of it.
  explicit ActivationStore(const std::string& dir);
  ~ActivationStore();
  ActivationStore(const ActivationStore&) = delete;
  ActivationStore& operator=(const ActivationStore&) = delete;

  /// One block call's hooks: the tensors saved while it is in scope go to `tier` ("disk"
  /// or "host"), except those sharing a storage with `resident` (the block's parameters
  /// and buffers).
  class Call {
   public:
    Call(ActivationStore& store, const std::string& tier, const std::vector<c10::Storage>& resident);
    ~Call();
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;
    struct Group;

   private:
    std::shared_ptr<Group> group_;
    SavedTensorHooksFactory factory_;
    std::unique_ptr<SavedTensorScope> scope_;
  };

  ActivationStoreStats stats() const;
  /// The private subdirectory (removed when the store and its saved tensors are gone).
  const std::string& directory() const;

  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
};

}  // namespace memscale

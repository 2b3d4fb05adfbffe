// Pack/unpack hooks that move a block call's saved tensors to disk or pinned host memory
// (see activation_store.hpp).
#include "memscale/torch/activation_store.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>

#include "memscale/core/errors.hpp"

namespace memscale {

struct ActivationStore::Shared {
  std::string dir;
  std::atomic<std::uint64_t> counter{0}, bytes_moved{0}, tensors_kept{0}, tensors_moved{0}, records_live{0},
      bytes_reloaded{0};
  ~Shared() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

namespace {

std::string errno_text(int err) { return std::string(std::strerror(err)); }

// A 1-D uint8 tensor over a whole storage (no copy).
at::Tensor storage_bytes(const c10::Storage& storage) {
  return at::empty({0}, at::TensorOptions().dtype(at::kByte).device(storage.device())).set_(storage);
}

// One offloaded storage (or a standalone copy of a small view) on the disk or host tier.
class Record {
 public:
  Record(std::shared_ptr<ActivationStore::Shared> shared, const at::Tensor& bytes, bool disk)
      : shared_(std::move(shared)), device_(bytes.device()), nbytes_(static_cast<std::uint64_t>(bytes.numel())) {
    if (disk) {
      char name[32];
      std::snprintf(name, sizeof name, "%08llu.bin", static_cast<unsigned long long>(shared_->counter++));
      path_ = (std::filesystem::path(shared_->dir) / name).string();
      write_file(bytes.is_cpu() ? bytes : bytes.to(at::kCPU));
    } else {
      host_ = at::empty({bytes.numel()}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
      host_.copy_(bytes);
    }
    shared_->bytes_moved += nbytes_;
    ++shared_->records_live;
  }
  ~Record() {
    if (!path_.empty()) ::unlink(path_.c_str());
    --shared_->records_live;
  }
  Record(const Record&) = delete;
  Record& operator=(const Record&) = delete;

  // The storage back on its device; one reloaded copy serves every view while any is alive.
  c10::Storage load() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (c10::intrusive_ptr<c10::StorageImpl> alive = loaded_.lock()) return c10::Storage(std::move(alive));
    at::Tensor bytes = path_.empty() ? host_.to(device_) : read_file();
    if (!path_.empty() && !device_.is_cpu()) bytes = bytes.to(device_);
    shared_->bytes_reloaded += nbytes_;
    c10::Storage storage = bytes.storage();
    loaded_ = storage.getWeakStorageImpl();
    return storage;
  }

 private:
  void write_file(const at::Tensor& cpu) {
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) throw MemScaleError("activation offload: cannot create " + path_ + ": " + errno_text(errno));
    const auto* data = static_cast<const char*>(cpu.data_ptr());
    std::uint64_t done = 0;
    while (done < nbytes_) {
      const ssize_t n = ::write(fd, data + done, nbytes_ - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = errno;
        ::close(fd);
        ::unlink(path_.c_str());
        throw MemScaleError("activation offload: writing " + std::to_string(nbytes_) + " bytes to " + path_ +
                            " failed: " + errno_text(err));
      }
      done += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
  }

  at::Tensor read_file() const {
    at::Tensor bytes = at::empty({static_cast<std::int64_t>(nbytes_)}, at::TensorOptions().dtype(at::kByte));
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw MemScaleError("activation offload: cannot open " + path_ + ": " + errno_text(errno));
    auto* data = static_cast<char*>(bytes.data_ptr());
    std::uint64_t done = 0;
    while (done < nbytes_) {
      const ssize_t n = ::pread(fd, data + done, nbytes_ - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = n == 0 ? EIO : errno;
        ::close(fd);
        throw MemScaleError("activation offload: reading " + path_ + " failed after " + std::to_string(done) + " of " +
                            std::to_string(nbytes_) + " bytes: " + errno_text(err));
      }
      done += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
    return bytes;
  }

  std::shared_ptr<ActivationStore::Shared> shared_;
  c10::Device device_;
  std::uint64_t nbytes_;
  std::string path_;  // disk tier
  at::Tensor host_;   // host tier
  std::mutex mutex_;
  c10::weak_intrusive_ptr<c10::StorageImpl> loaded_{c10::intrusive_ptr<c10::StorageImpl>()};
};

}  // namespace

// The tensors saved by one block call.
struct ActivationStore::Call::Group {
  std::shared_ptr<Shared> shared;
  bool disk = true;
  std::vector<const c10::StorageImpl*> resident;
  // Storages moved during this call. The weak references keep each StorageImpl object
  // (not its data) allocated, so an address cannot be reused for another storage while
  // the call runs.
  std::map<const c10::StorageImpl*, std::pair<c10::weak_intrusive_ptr<c10::StorageImpl>, std::weak_ptr<Record>>> moved;
};

namespace {

class OffloadHooks final : public torch::autograd::SavedVariableHooks {
 public:
  explicit OffloadHooks(ActivationStore::Call::Group* group) : group_(group) {}

  void call_pack_hook(const at::Tensor& tensor) override {
    ActivationStore::Call::Group& g = *group_;
    group_ = nullptr;  // valid only while the call that made these hooks runs
    const at::Tensor t = tensor.detach();  // holds no grad_fn: no reference cycle through the node
    if (!movable(g, t)) {
      kept_ = t;
      ++g.shared->tensors_kept;
      return;
    }
    dtype_ = t.scalar_type();
    sizes_ = t.sizes().vec();
    const c10::Storage& storage = t.storage();
    const std::uint64_t view_bytes = static_cast<std::uint64_t>(t.numel()) * t.element_size();
    if (2 * view_bytes < storage.nbytes()) {
      // A small view of a large storage: moving the whole storage would bring it all back.
      const at::Tensor alone = t.contiguous().clone();
      strides_ = alone.strides().vec();
      offset_ = 0;
      record_ = std::make_shared<Record>(g.shared, storage_bytes(alone.storage()), g.disk);
    } else {
      strides_ = t.strides().vec();
      offset_ = t.storage_offset();
      const c10::StorageImpl* key = storage.unsafeGetStorageImpl();
      auto it = g.moved.find(key);
      if (it != g.moved.end() && !it->second.first.expired()) record_ = it->second.second.lock();
      if (!record_) {
        record_ = std::make_shared<Record>(g.shared, storage_bytes(storage), g.disk);
        g.moved.insert_or_assign(key, std::make_pair(storage.getWeakStorageImpl(), std::weak_ptr<Record>(record_)));
      }
    }
    ++g.shared->tensors_moved;
  }

  at::Tensor call_unpack_hook() override {
    if (!record_) return kept_;
    const c10::Storage storage = record_->load();
    c10::NoGradGuard no_grad;
    return at::empty({0}, at::TensorOptions().dtype(dtype_).device(storage.device())).set_(storage, offset_, sizes_, strides_);
  }

 private:
  static bool movable(const ActivationStore::Call::Group& g, const at::Tensor& t) {
    if (!t.defined() || !t.has_storage() || t.layout() != at::kStrided || t.is_conj() || t.is_neg() || t.numel() == 0)
      return false;
    if (!g.disk && t.is_cpu()) return false;  // host tier: already in host memory
    const c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
    for (const auto* r : g.resident)
      if (r == impl) return false;
    return t.storage().nbytes() > 0;
  }

  ActivationStore::Call::Group* group_;
  at::Tensor kept_;
  std::shared_ptr<Record> record_;
  at::ScalarType dtype_ = at::kByte;
  std::vector<std::int64_t> sizes_, strides_;
  std::int64_t offset_ = 0;
};

}  // namespace

ActivationStore::ActivationStore(const std::string& dir) : shared_(std::make_shared<Shared>()) {
  std::string tmpl = (std::filesystem::path(dir) / "memscale-activations-XXXXXX").string();
  if (!::mkdtemp(tmpl.data()))
    throw ConfigError("offload.disk_dir: cannot create a subdirectory in \"" + dir + "\": " + errno_text(errno));
  shared_->dir = tmpl;
}

ActivationStore::~ActivationStore() = default;

const std::string& ActivationStore::directory() const { return shared_->dir; }

ActivationStoreStats ActivationStore::stats() const {
  return {shared_->bytes_moved.load(), shared_->tensors_kept.load(), shared_->tensors_moved.load(),
          shared_->records_live.load(), shared_->bytes_reloaded.load()};
}

ActivationStore::Call::Call(ActivationStore& store, const std::string& tier, const std::vector<c10::Storage>& resident)
    : group_(std::make_shared<Group>()) {
  if (tier != "disk" && tier != "host")
    throw ConfigError("activation_tier: got \"" + tier + "\", expected \"disk\" or \"host\"");
  group_->shared = store.shared_;
  group_->disk = tier == "disk";
  for (const auto& s : resident) group_->resident.push_back(s.unsafeGetStorageImpl());
  Group* group = group_.get();
  factory_ = [group]() -> std::unique_ptr<torch::autograd::SavedVariableHooks> { return std::make_unique<OffloadHooks>(group); };
  scope_ = std::make_unique<SavedTensorScope>(&factory_);
}

ActivationStore::Call::~Call() = default;

}  // namespace memscale

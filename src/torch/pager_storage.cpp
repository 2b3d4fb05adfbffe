// Storage backends of the weight pager: resident memory <-> disk files / pinned host.
// See include/memscale/torch/pager_storage.hpp for the contract.
#include "memscale/torch/pager_storage.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>
#include <c10/core/DeviceGuard.h>
#include <nlohmann/json.hpp>

#include "memscale/core/errors.hpp"
#include "memscale/core/log.hpp"
#include "memscale/core/sizes.hpp"
#include "memscale/torch/counted_allocate.hpp"

namespace memscale {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string errno_text(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

/// safetensors dtype names; "" = not representable (the storage is written as U8 bytes).
std::string safetensors_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return "F64";
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: return "";
  }
}

void write_all(int fd, const char* data, std::uint64_t n, std::uint64_t offset, std::size_t chunk, const std::string& path) {
  std::uint64_t done = 0;
  while (done < n) {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, n - done));
    const ssize_t got = ::pwrite(fd, data + done, want, static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const int err = got < 0 ? errno : ENOSPC;
      throw MemScaleError("pager: writing " + path + " failed after " + std::to_string(done) + " of " + std::to_string(n) +
                          " bytes: " + errno_text(err) + (err == ENOSPC ? "; the disk tier's directory is full" : ""));
    }
    done += static_cast<std::uint64_t>(got);
  }
}

void read_all(int fd, char* data, std::uint64_t n, std::uint64_t offset, std::size_t chunk, const std::string& path) {
  std::uint64_t done = 0;
  while (done < n) {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, n - done));
    const ssize_t got = ::pread(fd, data + done, want, static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      throw MemScaleError("pager: reading " + path + " failed after " + std::to_string(done) + " of " + std::to_string(n) +
                          " bytes: " + (got < 0 ? errno_text(errno) : std::string("unexpected end of file")));
    done += static_cast<std::uint64_t>(got);
  }
}

constexpr std::size_t kHugePage = 2u << 20;

/// Memory of resident CPU layers: one private anonymous mapping per storage, unmapped
/// when the storage lets go of it (eviction). Through malloc, a paged layer's memory
/// stays in the process after eviction: glibc keeps freed heap chunks (its mmap threshold
/// rises to the size of the blocks freed at wrap), and loads of other sizes fragment
/// them, so the resident set grew 2.5x past the counted tensor peak (HF Llama at 0.25x
/// of its weights). A mapping goes back to the OS at once; the pager's books are the
/// process's. Mappings of 2 MiB and more are 2 MiB aligned and ask for transparent huge
/// pages: faulting in a 50 MB layer 4 KiB at a time costs as much as reading it from disk.
class PageMappedAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &unmap, cpu};
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t bytes = (n + page - 1) / page * page;
    const bool huge = bytes >= kHugePage;
    const std::size_t reserve = huge ? bytes + kHugePage : bytes;
    void* raw = ::mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
      throw MemScaleError("pager: cannot map " + std::to_string(n) + " bytes for a layer: " + errno_text(errno));
    char* start = static_cast<char*>(raw);
    if (huge) {  // keep the 2 MiB aligned part, give back the slack on both sides
      const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(raw);
      char* aligned = reinterpret_cast<char*>((at + kHugePage - 1) / kHugePage * kHugePage);
      if (aligned > start) ::munmap(start, static_cast<std::size_t>(aligned - start));
      const std::size_t tail = reserve - static_cast<std::size_t>(aligned - start) - bytes;
      if (tail > 0) ::munmap(aligned + bytes, tail);
      start = aligned;
#ifdef MADV_HUGEPAGE
      ::madvise(start, bytes, MADV_HUGEPAGE);
#endif
    }
    return {start, new Mapping{start, bytes}, &unmap, cpu};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  static PageMappedAllocator& instance() {
    static auto* allocator = new PageMappedAllocator();  // never destroyed: blocks outlive statics
    return *allocator;
  }

 private:
  struct Mapping {
    void* start;
    std::size_t bytes;
  };
  static void unmap(void* context) {
    auto* m = static_cast<Mapping*>(context);
    if (m == nullptr) return;
    ::munmap(m->start, m->bytes);
    delete m;
  }
};

at::Tensor byte_view(void* ptr, std::uint64_t n, c10::Device device) {
  return at::from_blob(ptr, {static_cast<std::int64_t>(n)}, at::TensorOptions().dtype(at::kByte).device(device));
}

std::atomic<std::uint64_t> g_storage_counter{0};

}  // namespace

DiskDirCheck check_disk_dir(const std::string& dir, std::uint64_t required_bytes, std::optional<std::uint64_t> free_bytes) {
  const std::string key = "offload.disk_dir";
  if (dir.empty()) throw ConfigError(key + ": empty; give an existing writable directory");
  std::error_code ec;
  const fs::path path = fs::absolute(dir, ec);
  const std::string shown = "\"" + path.string() + "\"";
  if (!fs::exists(path, ec))
    throw ConfigError(key + ": " + shown + " does not exist; create it (mode 0700) or choose another directory");
  if (!fs::is_directory(path, ec)) throw ConfigError(key + ": " + shown + " exists but is not a directory");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw ConfigError(key + ": " + shown + " cannot be examined: " + errno_text(errno));
  const mode_t mode = st.st_mode & 07777;
  // Root passes access(W_OK) on a 0555 directory; the mode bits say what the owner meant.
  if ((mode & (S_IWUSR | S_IWGRP | S_IWOTH)) == 0 || ::access(path.c_str(), W_OK | X_OK) != 0) {
    char octal[8];
    std::snprintf(octal, sizeof octal, "%04o", static_cast<unsigned>(mode));
    throw ConfigError(key + ": " + shown + " is not writable (mode " + octal +
                      "); make it writable or choose another directory");
  }
  std::string probe = (path / ".memscale-probe-XXXXXX").string();
  const int fd = ::mkstemp(probe.data());
  if (fd < 0) throw ConfigError(key + ": " + shown + " is not writable: " + errno_text(errno));
  ::close(fd);
  ::unlink(probe.c_str());
  DiskDirCheck check{path.string(), 0, required_bytes};
  if (free_bytes) {
    check.free_bytes = *free_bytes;
  } else {
    struct statvfs vfs {};
    if (::statvfs(path.c_str(), &vfs) != 0) throw ConfigError(key + ": " + shown + " free space unknown: " + errno_text(errno));
    check.free_bytes = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  }
  if (check.free_bytes < required_bytes)
    throw ConfigError(key + ": " + shown + " has " + format_bytes(check.free_bytes) + " free but the offloaded weights need " +
                      std::to_string(required_bytes) + " bytes (" + format_bytes(required_bytes) +
                      "); free space or choose another directory");
  return check;
}

namespace {

/// Writes each region of a layer at its offset in the file's data section: CPU storages
/// directly, CUDA ones through a pinned staging buffer. (A template: Region is private.)
template <class Regions>
void write_regions(int fd, const Regions& regions, std::uint64_t data_start, std::size_t chunk, const std::string& path) {
  for (const auto& r : regions) {
    if (r.device.is_cpu()) {
      write_all(fd, static_cast<const char*>(r.storage.data()), r.nbytes, data_start + r.file_offset, chunk, path);
    } else {
      at::Tensor staging = at::empty({static_cast<std::int64_t>(r.nbytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
      staging.copy_(byte_view(r.storage.mutable_data(), r.nbytes, r.device));
      write_all(fd, static_cast<const char*>(staging.const_data_ptr()), r.nbytes, data_start + r.file_offset, chunk, path);
    }
  }
}

}  // namespace

struct TorchPagerStorage::Region {
  c10::Storage storage;  ///< a reference: the parameter keeps using the same StorageImpl
  std::uint64_t nbytes = 0;
  c10::Device device{c10::kCPU};
  std::size_t alignment = 1;    ///< largest element size of the tensors viewing it
  std::string entry, dtype;     ///< safetensors entry name and dtype
  std::vector<std::int64_t> shape;
  std::uint64_t file_offset = 0;  ///< from the start of the data section
  at::Tensor host_copy;           ///< home host: pinned copy
};

struct TorchPagerStorage::Layer {
  std::string name;
  WeightTier home = WeightTier::disk;
  std::vector<Region> regions;
  std::uint64_t bytes = 0;
  nlohmann::json tensors = nlohmann::json::object();  ///< name -> {entry, offset, shape, stride, dtype}
  bool home_written = false, resident = true;
  std::string path;
  int fd = -1;
  void* map = nullptr;
  std::size_t map_bytes = 0;
  std::uint64_t data_start = 0;
};

TorchPagerStorage::TorchPagerStorage(DiskTierOptions disk) : disk_(std::move(disk)) {
  if (disk_.format != "safetensors" && disk_.format != "raw")
    throw ConfigError("offload format: got \"" + disk_.format + "\", expected \"safetensors\" or \"raw\"");
  if (disk_.io_chunk_bytes == 0) throw ConfigError("offload io_chunk_bytes: must be greater than 0");
  file_prefix_ = "memscale-" + std::to_string(::getpid()) + "-" + std::to_string(g_storage_counter++) + "-";
}

TorchPagerStorage::~TorchPagerStorage() {
  try {
    remove_files();
  } catch (...) {
  }
  // Mappings of resident layers go; an evicted layer's parameters still point into its
  // mapping, which must outlive them (the file itself is already unlinked).
  for (auto& l : layers_)
    if (l->map && l->resident) ::munmap(l->map, l->map_bytes);
}

std::size_t TorchPagerStorage::add_layer(const std::string& name, const std::vector<std::string>& tensor_names,
                                         const std::vector<at::Tensor>& tensors, WeightTier home) {
  if (tensor_names.size() != tensors.size())
    throw ConfigError("pager layer \"" + name + "\": " + std::to_string(tensor_names.size()) + " names for " +
                      std::to_string(tensors.size()) + " tensors");
  if (home == WeightTier::device) throw ConfigError("pager layer \"" + name + "\": home tier must be host or disk");
  auto layer = std::make_unique<Layer>();
  layer->name = name;
  layer->home = home;
  std::map<const c10::StorageImpl*, std::size_t> index;
  std::map<const c10::StorageImpl*, int> views;
  for (const auto& t : tensors)
    if (t.defined()) ++views[t.storage().unsafeGetStorageImpl()];
  for (std::size_t k = 0; k < tensors.size(); ++k) {
    const at::Tensor& t = tensors[k];
    const std::string& tname = tensor_names[k];
    if (!t.defined()) continue;
    if (t.layout() != at::kStrided)
      throw ConfigError("pager layer \"" + name + "\": tensor \"" + tname + "\" is not a dense strided tensor");
    const c10::Device dev = t.device();
    if (!dev.is_cpu() && !dev.is_cuda())
      throw ConfigError("pager layer \"" + name + "\": tensor \"" + tname + "\" is on " + dev.str() + "; only cpu and cuda are paged");
    if (home == WeightTier::host && dev.is_cpu())
      throw ConfigError("pager layer \"" + name + "\": home tier \"host\" needs CUDA tensors; \"" + tname +
                        "\" is on the CPU (on a CPU-only machine the tier below RAM is disk)");
    const c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
    for (const auto& other : layers_)
      for (const auto& r : other->regions)
        if (r.storage.unsafeGetStorageImpl() == impl)
          throw ConfigError("pager layer \"" + name + "\": tensor \"" + tname + "\" shares its storage with layer \"" +
                            other->name + "\" (tied weights); page tied modules as one layer");
    auto [it, fresh] = index.try_emplace(impl, layer->regions.size());
    if (fresh) {
      Region r;
      r.storage = t.storage();
      r.nbytes = t.storage().nbytes();
      r.device = dev;
      const std::string dtype = safetensors_dtype(t.scalar_type());
      const bool whole = views[impl] == 1 && t.is_contiguous() && t.storage_offset() == 0 &&
                         static_cast<std::uint64_t>(t.numel()) * t.element_size() == r.nbytes && !dtype.empty();
      r.entry = whole ? tname : "__storage." + std::to_string(layer->regions.size());
      r.dtype = whole ? dtype : "U8";
      r.shape = whole ? t.sizes().vec() : std::vector<std::int64_t>{static_cast<std::int64_t>(r.nbytes)};
      layer->regions.push_back(std::move(r));
    }
    Region& r = layer->regions[it->second];
    r.alignment = std::max<std::size_t>(r.alignment, t.element_size());
    layer->tensors[tname] = {{"entry", r.entry},
                             {"offset", t.storage_offset()},
                             {"shape", t.sizes().vec()},
                             {"stride", t.strides().vec()},
                             {"dtype", std::string(c10::toString(t.scalar_type()))}};
  }
  // Empty storages have nothing to page.
  layer->regions.erase(std::remove_if(layer->regions.begin(), layer->regions.end(), [](const Region& r) { return r.nbytes == 0; }),
                       layer->regions.end());
  // Largest element size first: every region then starts at a multiple of its own element
  // size (sizes are powers of two), so the mmap views of evicted layers stay aligned.
  std::stable_sort(layer->regions.begin(), layer->regions.end(),
                   [](const Region& a, const Region& b) { return a.alignment > b.alignment; });
  std::uint64_t offset = 0;
  for (auto& r : layer->regions) {
    r.file_offset = offset;
    offset += r.nbytes;
  }
  layer->bytes = offset;
  layers_.push_back(std::move(layer));
  return layers_.size() - 1;
}

std::uint64_t TorchPagerStorage::layer_bytes(std::size_t i) const { return layers_.at(i)->bytes; }

std::uint64_t TorchPagerStorage::disk_bytes_required(const std::vector<bool>& pinned) const {
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < layers_.size(); ++i)
    if (!(i < pinned.size() && pinned[i]) && layers_[i]->home == WeightTier::disk && layers_[i]->bytes > 0)
      total += layers_[i]->bytes + 64 * 1024;  // + the safetensors header, generously
  return total;
}

void TorchPagerStorage::write_home_copies(const std::vector<bool>& pinned, std::optional<std::uint64_t> free_bytes) {
  if (pinned.size() != layers_.size())
    throw ConfigError("pager: pinned mask has " + std::to_string(pinned.size()) + " entries for " +
                      std::to_string(layers_.size()) + " layers");
  const std::uint64_t need = disk_bytes_required(pinned);
  if (need > 0) disk_.dir = check_disk_dir(disk_.dir, need, free_bytes).dir;
  try {
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      Layer& l = *layers_[i];
      if (pinned[i] || l.home_written || l.bytes == 0) continue;
      if (l.home == WeightTier::disk) {
        write_file(l);
      } else {
        const auto start = Clock::now();
        for (auto& r : l.regions) {
          r.host_copy = at::empty({static_cast<std::int64_t>(r.nbytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
          r.host_copy.copy_(byte_view(r.storage.mutable_data(), r.nbytes, r.device));
        }
        add_io({0, 0, 0, 0, l.regions.size(), 0, 0, since(start)});
      }
      l.home_written = true;
    }
  } catch (...) {
    for (auto& l : layers_)
      for (auto& r : l->regions) r.host_copy = at::Tensor();
    remove_files();
    for (auto& l : layers_) {
      if (l->map) ::munmap(l->map, l->map_bytes);
      l->map = nullptr;
      l->home_written = false;
    }
    throw;
  }
  std::uint64_t written = 0;
  for (auto& l : layers_)
    if (l->home_written) written += l->bytes;
  log::info("pager: wrote the home copies of the paged layers (" + format_bytes(written) + ")" +
            (need > 0 ? " to " + disk_.dir : std::string()));
}

void TorchPagerStorage::write_file(Layer& l) {
  std::string header;
  if (disk_.format == "safetensors") {
    nlohmann::json h = nlohmann::json::object();
    for (const auto& r : l.regions)
      h[r.entry] = {{"dtype", r.dtype}, {"shape", r.shape}, {"data_offsets", {r.file_offset, r.file_offset + r.nbytes}}};
    h["__metadata__"] = {{"format", "pt"}, {"memscale.layer", l.name}, {"memscale.tensors", l.tensors.dump()}};
    header = h.dump();
    // Pad with spaces (allowed by the format) so the data section is 64-byte aligned.
    while ((8 + header.size()) % 64 != 0) header.push_back(' ');
  }
  std::size_t n = 0;
  for (const auto& other : layers_) {
    if (other.get() == &l) break;
    ++n;
  }
  l.path = (fs::path(disk_.dir) / (file_prefix_ + std::to_string(n) + (disk_.format == "raw" ? ".bin" : ".safetensors"))).string();
  const auto start = Clock::now();
  const int fd = ::open(l.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw MemScaleError("pager: cannot create " + l.path + ": " + errno_text(errno));
  try {
    if (::fchmod(fd, 0600) != 0) throw MemScaleError("pager: cannot set mode 0600 on " + l.path + ": " + errno_text(errno));
    l.data_start = 0;
    if (!header.empty()) {
      char len[8];
      std::uint64_t size = header.size();
      for (int b = 0; b < 8; ++b) len[b] = static_cast<char>((size >> (8 * b)) & 0xff);  // little-endian u64
      write_all(fd, len, 8, 0, disk_.io_chunk_bytes, l.path);
      write_all(fd, header.data(), header.size(), 8, disk_.io_chunk_bytes, l.path);
      l.data_start = 8 + header.size();
    }
    write_regions(fd, l.regions, l.data_start, disk_.io_chunk_bytes, l.path);
    if (::fsync(fd) != 0) throw MemScaleError("pager: fsync of " + l.path + " failed: " + errno_text(errno));
    if (disk_.drop_page_cache) ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  } catch (...) {
    ::close(fd);
    ::unlink(l.path.c_str());
    l.path.clear();
    throw;
  }
  ::close(fd);
  l.fd = ::open(l.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (l.fd < 0) throw MemScaleError("pager: cannot reopen " + l.path + ": " + errno_text(errno));
  ::posix_fadvise(l.fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  const bool cpu = !l.regions.empty() && l.regions.front().device.is_cpu();
  if (cpu) {
    // Private mapping: an evicted parameter reads its values from the file; a stray write
    // lands in a private page and never reaches the file.
    l.map_bytes = static_cast<std::size_t>(l.data_start + l.bytes);
    l.map = ::mmap(nullptr, l.map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, l.fd, 0);
    if (l.map == MAP_FAILED) {
      l.map = nullptr;
      throw MemScaleError("pager: cannot map " + l.path + ": " + errno_text(errno));
    }
  }
  add_io({l.data_start + l.bytes, 0, 1, 0, 0, since(start), 0, 0});
}

void TorchPagerStorage::read_file(Layer& l, std::vector<c10::DataPtr> reuse) {
  const auto start = Clock::now();
  reuse.resize(l.regions.size());
  std::vector<c10::DataPtr> fresh;
  fresh.reserve(l.regions.size());
  for (std::size_t k = 0; k < l.regions.size(); ++k) {
    const Region& r = l.regions[k];
    c10::DeviceGuard guard(r.device);
    c10::DataPtr ptr = std::move(reuse[k]);
    if (!ptr) {
      // CPU: a page mapping of its own, counted by track_memory's live sessions. CUDA: the
      // device's current allocator.
      ptr = r.device.is_cpu() ? memory::allocate_counted(PageMappedAllocator::instance(), r.nbytes)
                              : c10::GetAllocator(r.device.type())->allocate(r.nbytes);
    }
    if (r.device.is_cpu()) {
      read_all(l.fd, static_cast<char*>(ptr.get()), r.nbytes, l.data_start + r.file_offset, disk_.io_chunk_bytes, l.path);
    } else {
      at::Tensor staging = at::empty({static_cast<std::int64_t>(r.nbytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
      read_all(l.fd, static_cast<char*>(staging.mutable_data_ptr()), r.nbytes, l.data_start + r.file_offset,
               disk_.io_chunk_bytes, l.path);
      byte_view(ptr.get(), r.nbytes, r.device).copy_(staging);
    }
    fresh.push_back(std::move(ptr));
  }
  if (disk_.drop_page_cache) ::posix_fadvise(l.fd, 0, 0, POSIX_FADV_DONTNEED);
  for (std::size_t k = 0; k < l.regions.size(); ++k) l.regions[k].storage.set_data_ptr_noswap(std::move(fresh[k]));
  add_io({0, l.bytes, 0, 1, 0, 0, since(start), 0});
}

void TorchPagerStorage::store(std::size_t i) {
  Layer& l = *layers_.at(i);
  if (l.bytes == 0) return;
  if (!l.home_written)
    throw MemScaleError("pager: layer \"" + l.name + "\" has no home copy to update (write_home_copies first)");
  if (!l.resident)
    throw MemScaleError("pager: layer \"" + l.name + "\" is not resident; its updated weights are stored while it is held");
  const auto start = Clock::now();
  if (l.home == WeightTier::host) {
    for (auto& r : l.regions) r.host_copy.copy_(byte_view(r.storage.mutable_data(), r.nbytes, r.device));
    add_io({0, 0, 0, 0, l.regions.size(), 0, 0, since(start)});
    return;
  }
  // The data section in place: same offsets, same header (shapes and dtypes do not change).
  const int fd = ::open(l.path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw MemScaleError("pager: cannot reopen " + l.path + " for writing: " + errno_text(errno));
  try {
    write_regions(fd, l.regions, l.data_start, disk_.io_chunk_bytes, l.path);
    // Dirty pages cannot be dropped: written back first, so the page cache stays out of RAM.
    if (disk_.drop_page_cache) {
      if (::fdatasync(fd) != 0) throw MemScaleError("pager: fdatasync of " + l.path + " failed: " + errno_text(errno));
      ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  add_io({l.bytes, 0, 0, 0, 0, since(start), 0, 0});
}

void TorchPagerStorage::load(std::size_t i) {
  Layer& l = *layers_.at(i);
  if (l.resident) return;
  if (l.home == WeightTier::disk) {
    if (l.fd < 0) throw MemScaleError("pager: layer \"" + l.name + "\" has no file to load from");
    read_file(l);
  } else {
    const auto start = Clock::now();
    std::vector<c10::DataPtr> fresh;
    for (const auto& r : l.regions) {
      c10::DeviceGuard guard(r.device);
      c10::DataPtr ptr = c10::GetAllocator(r.device.type())->allocate(r.nbytes);
      byte_view(ptr.get(), r.nbytes, r.device).copy_(r.host_copy);
      fresh.push_back(std::move(ptr));
    }
    for (std::size_t k = 0; k < l.regions.size(); ++k) l.regions[k].storage.set_data_ptr_noswap(std::move(fresh[k]));
    add_io({0, 0, 0, 0, l.regions.size(), 0, 0, since(start)});
  }
  l.resident = true;
}

void TorchPagerStorage::move(const std::vector<std::size_t>& victims, std::size_t layer) {
  Layer& l = *layers_.at(layer);
  const bool cpu_file = l.home == WeightTier::disk && l.fd >= 0 && !l.regions.empty() && l.regions.front().device.is_cpu();
  if (l.resident || !cpu_file) {
    PagerStorage::move(victims, layer);
    return;
  }
  // Victims' buffers, by size: a block of a transformer replaces another of the same shape,
  // so its memory is reused as is (no free, no fresh pages to fault in).
  std::multimap<std::uint64_t, c10::DataPtr> pool;
  for (std::size_t v : victims) {
    Layer& vl = *layers_.at(v);
    if (!vl.resident) continue;
    if (!vl.map) {
      evict(v);
      continue;
    }
    for (auto& r : vl.regions)
      pool.emplace(r.nbytes, r.storage.set_data_ptr(c10::DataPtr(static_cast<char*>(vl.map) + vl.data_start + r.file_offset, r.device)));
    vl.resident = false;
  }
  std::vector<c10::DataPtr> reuse(l.regions.size());
  for (std::size_t k = 0; k < l.regions.size(); ++k) {
    auto it = pool.find(l.regions[k].nbytes);
    if (it == pool.end()) continue;
    reuse[k] = std::move(it->second);
    pool.erase(it);
  }
  pool.clear();  // what cannot be reused is freed before anything new is allocated
  read_file(l, std::move(reuse));
  l.resident = true;
}

void TorchPagerStorage::evict(std::size_t i) {
  Layer& l = *layers_.at(i);
  if (!l.resident) return;
  if (!l.home_written && l.bytes > 0)
    throw MemScaleError("pager: layer \"" + l.name + "\" cannot be evicted before its home copy is written");
  for (auto& r : l.regions) {
    // Replacing the DataPtr frees the allocation (its deleter runs here).
    if (l.map)
      r.storage.set_data_ptr_noswap(c10::DataPtr(static_cast<char*>(l.map) + l.data_start + r.file_offset, r.device));
    else
      r.storage.set_data_ptr_noswap(c10::DataPtr(nullptr, r.device));
  }
  l.resident = false;
}

void TorchPagerStorage::restore_all() {
  for (std::size_t i = 0; i < layers_.size(); ++i) load(i);
  for (auto& l : layers_) {
    for (auto& r : l->regions) r.host_copy = at::Tensor();
    if (l->map) ::munmap(l->map, l->map_bytes);
    l->map = nullptr;
    l->home_written = false;
  }
  remove_files();
}

void TorchPagerStorage::remove_files() {
  for (auto& l : layers_) {
    if (l->fd >= 0) ::close(l->fd);
    l->fd = -1;
    if (!l->path.empty()) ::unlink(l->path.c_str());
    l->path.clear();
  }
}

std::vector<std::string> TorchPagerStorage::files() const {
  std::vector<std::string> out;
  for (const auto& l : layers_)
    if (!l->path.empty()) out.push_back(l->path);
  return out;
}

StorageIoStats TorchPagerStorage::io_stats() const {
  std::lock_guard lock(stats_mutex_);
  return stats_;
}

void TorchPagerStorage::add_io(const StorageIoStats& d) {
  std::lock_guard lock(stats_mutex_);
  stats_.bytes_written += d.bytes_written;
  stats_.bytes_read += d.bytes_read;
  stats_.files_written += d.files_written;
  stats_.reads += d.reads;
  stats_.host_copies += d.host_copies;
  stats_.write_seconds += d.write_seconds;
  stats_.read_seconds += d.read_seconds;
  stats_.host_copy_seconds += d.host_copy_seconds;
}

}  // namespace memscale

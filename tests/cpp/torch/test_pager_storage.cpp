// TorchPagerStorage with the LayerPager on real CPU tensors: files (safetensors header,
// mode 0600), freed memory while evicted (measured by the counting allocator), exact
// bytes after reload and restore, and directory errors before anything is written.
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "memscale/core/pager.hpp"
#include "memscale/torch/counting_allocator.hpp"
#include "memscale/torch/pager_storage.hpp"
#include "temp_dir.hpp"

namespace memscale {
namespace {

namespace fs = std::filesystem;

using test_util::TempDir;

struct Model {
  std::vector<std::vector<at::Tensor>> layers;
  std::vector<std::vector<at::Tensor>> copies;
};

Model make_model(int n, std::int64_t width) {
  at::manual_seed(0);
  Model m;
  for (int i = 0; i < n; ++i) {
    m.layers.push_back({at::randn({width, width}), at::randn({width})});
    m.copies.push_back({m.layers.back()[0].clone(), m.layers.back()[1].clone()});
  }
  return m;
}

std::shared_ptr<TorchPagerStorage> register_all(Model& m, const std::string& dir, const std::string& format = "safetensors") {
  auto storage = std::make_shared<TorchPagerStorage>(DiskTierOptions{dir, format});
  for (std::size_t i = 0; i < m.layers.size(); ++i)
    storage->add_layer("blocks." + std::to_string(i), {"blocks." + std::to_string(i) + ".weight", "blocks." + std::to_string(i) + ".bias"},
                       m.layers[i], WeightTier::disk);
  return storage;
}

std::vector<PagedLayer> specs(const TorchPagerStorage& s) {
  std::vector<PagedLayer> out;
  for (std::size_t i = 0; i < s.size(); ++i) out.push_back({"blocks." + std::to_string(i), "block", s.layer_bytes(i), WeightTier::disk});
  return out;
}

TEST(PagerStorage, FilesAreSafetensorsWithMode0600AndEvictionFreesMemory) {
  TempDir dir;
  Model m = make_model(6, 256);
  auto storage = register_all(m, dir.path.string());
  const std::uint64_t layer = storage->layer_bytes(0);
  EXPECT_EQ(layer, (256u * 256u + 256u) * 4u);
  storage->write_home_copies(std::vector<bool>(6, false));
  ASSERT_EQ(storage->files().size(), 6u);
  for (const auto& f : storage->files()) {
    struct stat st {};
    ASSERT_EQ(::stat(f.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u) << f;
    std::ifstream in(f, std::ios::binary);
    std::uint64_t n = 0;
    in.read(reinterpret_cast<char*>(&n), 8);
    std::string header(n, ' ');
    in.read(header.data(), static_cast<std::streamsize>(n));
    const auto h = nlohmann::json::parse(header);
    EXPECT_TRUE(h.contains("__metadata__"));
    EXPECT_EQ((8 + n) % 64, 0u) << "data section aligned";
    for (auto it = h.begin(); it != h.end(); ++it)
      if (it.key() != "__metadata__") EXPECT_EQ(it.value()["dtype"], "F32");
  }

  OffloadPolicy policy;
  policy.kind = OffloadPolicy::Kind::budget;
  policy.ram_bytes = 2 * layer;
  policy.prefetch_n_ahead = 1;
  memory::CountingSession counting;
  {
    LayerPager pager(specs(*storage), policy, storage);
    // The initial allocations predate the session: evicting them cannot lower its count,
    // so the count starts at zero and rises only by what the pager loads.
    for (int pass = 0; pass < 3; ++pass)
      for (std::size_t i = 0; i < 6; ++i) {
        pager.acquire(i);
        EXPECT_TRUE(at::equal(m.layers[i][0], m.copies[i][0])) << i;
        EXPECT_TRUE(at::equal(m.layers[i][1], m.copies[i][1])) << i;
        EXPECT_LE(counting.stats().current_bytes, static_cast<std::int64_t>(policy.ram_bytes));
        pager.release(i);
      }
    pager.wait_idle();
    EXPECT_LE(counting.stats().peak_bytes, static_cast<std::int64_t>(policy.ram_bytes));
    // The loads' page mappings are counted like the CPU allocator's blocks.
    EXPECT_GE(counting.stats().peak_bytes, static_cast<std::int64_t>(layer));
    EXPECT_GT(pager.stats().evictions, 0u);
    // 18 loads of 2 storages each, yet only the first layers allocate: later loads reuse
    // the memory of the layers they replace (PagerStorage::move).
    EXPECT_GE(pager.stats().loads, 15u);
    EXPECT_LE(counting.stats().allocations, 8) << "allocations: " << counting.stats().allocations;
    EXPECT_GT(storage->io_stats().bytes_read, 0u);
    // Evicted layers stay readable (their storages point into the file mapping).
    for (std::size_t i = 0; i < 6; ++i) EXPECT_TRUE(at::equal(m.layers[i][0], m.copies[i][0])) << i;
  }
  storage->restore_all();
  EXPECT_EQ(dir.entries(), 0u);
  for (std::size_t i = 0; i < 6; ++i) {
    EXPECT_TRUE(at::equal(m.layers[i][0], m.copies[i][0]));
    m.layers[i][0].add_(1.0);  // owns ordinary memory again: writable
  }
}

TEST(PagerStorage, RawFormatRoundTripsNonContiguousAndSharedStorages) {
  TempDir dir;
  at::manual_seed(1);
  at::Tensor base = at::randn({64, 32});
  at::Tensor view = base.t();             // non-contiguous view of the same storage
  at::Tensor half = at::randn({16}).to(at::kHalf);
  const at::Tensor base_copy = base.clone(), half_copy = half.clone();
  TorchPagerStorage storage(DiskTierOptions{dir.path.string(), "raw"});
  storage.add_layer("a", {"a.w", "a.wt", "a.h"}, {base, view, half}, WeightTier::disk);
  EXPECT_EQ(storage.layer_bytes(0), 64u * 32u * 4u + 16u * 2u);
  storage.write_home_copies({false});
  ASSERT_EQ(storage.files().size(), 1u);
  EXPECT_EQ(fs::file_size(storage.files()[0]), storage.layer_bytes(0));
  storage.evict(0);
  EXPECT_TRUE(at::equal(view, base_copy.t()));
  storage.load(0);
  EXPECT_TRUE(at::equal(base, base_copy));
  EXPECT_TRUE(at::equal(half, half_copy));
  storage.restore_all();
  EXPECT_EQ(dir.entries(), 0u);
}

TEST(PagerStorage, TiedStorageAcrossLayersIsRefused) {
  TempDir dir;
  at::Tensor shared = at::randn({8, 8});
  TorchPagerStorage storage(DiskTierOptions{dir.path.string()});
  storage.add_layer("wte", {"wte.weight"}, {shared}, WeightTier::disk);
  try {
    storage.add_layer("head", {"head.weight"}, {shared}, WeightTier::disk);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("shares its storage with layer \"wte\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(storage.add_layer("cpu", {"w"}, {at::randn({2})}, WeightTier::host), ConfigError);
}

TEST(PagerStorage, DirectoryProblemsAreConfigErrorsBeforeAnyWrite) {
  TempDir dir;
  Model m = make_model(2, 32);
  {
    auto storage = register_all(m, (dir.path / "missing").string());
    EXPECT_THROW(storage->write_home_copies({false, false}), ConfigError);
    EXPECT_FALSE(fs::exists(dir.path / "missing"));
  }
  {
    auto storage = register_all(m, dir.path.string());
    try {
      storage->write_home_copies({false, false}, std::uint64_t{100});
      FAIL() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("has 100 B free"), std::string::npos) << e.what();
    }
    EXPECT_EQ(dir.entries(), 0u);
  }
  {
    fs::permissions(dir.path, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                                  fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
    auto storage = register_all(m, dir.path.string());
    try {
      storage->write_home_copies({false, false});
      FAIL() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("not writable (mode 0555)"), std::string::npos) << e.what();
    }
    fs::permissions(dir.path, fs::perms::owner_all);
    EXPECT_EQ(dir.entries(), 0u);
  }
  // Pinned layers need no file: nothing is written and no directory is needed.
  auto storage = register_all(m, (dir.path / "missing").string());
  EXPECT_NO_THROW(storage->write_home_copies({true, true}));
  EXPECT_TRUE(storage->files().empty());
}

}  // namespace
}  // namespace memscale

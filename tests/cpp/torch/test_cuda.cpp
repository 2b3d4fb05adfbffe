// The CUDA branches of the torch layer, run only where torch sees a GPU (skipped elsewhere):
// checkpoint's RNG replay with the CUDA generator, and pager storages whose home copy is
// pinned host memory or a file while the working copy lives on the device.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include "memscale/torch/checkpoint.hpp"
#include "memscale/torch/pager_storage.hpp"

namespace memscale {
namespace {

namespace fs = std::filesystem;

#define MEMSCALE_REQUIRE_CUDA() \
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device"

TEST(Cuda, CheckpointReplaysTheCudaRngSoDropoutMatches) {
  MEMSCALE_REQUIRE_CUDA();
  torch::manual_seed(0);
  torch::nn::Sequential block(torch::nn::Linear(64, 128), torch::nn::GELU(), torch::nn::Dropout(0.3),
                              torch::nn::Linear(128, 64));
  block->to(at::kCUDA);
  block->train();
  const at::Tensor input = at::randn({8, 64}, at::device(at::kCUDA));

  auto grads = [&] {
    std::vector<at::Tensor> out;
    for (auto& p : block->parameters()) {
      out.push_back(p.grad().clone());
      p.mutable_grad().reset();
    }
    return out;
  };
  torch::manual_seed(42);
  at::Tensor x1 = input.clone().requires_grad_(true);
  at::Tensor plain = block->forward(x1).pow(2).sum();
  plain.backward();
  const auto plain_grads = grads();

  torch::manual_seed(42);
  at::Tensor x2 = input.clone().requires_grad_(true);
  at::Tensor ck = checkpoint([&](const at::Tensor& t) { return block->forward(t); }, x2).pow(2).sum();
  ck.backward();
  const auto ck_grads = grads();

  EXPECT_TRUE(at::allclose(plain, ck, 1e-5, 1e-6));
  for (std::size_t i = 0; i < plain_grads.size(); ++i)
    EXPECT_TRUE(at::allclose(plain_grads[i], ck_grads[i], 1e-5, 1e-6)) << "parameter " << i;
  EXPECT_TRUE(at::allclose(x1.grad(), x2.grad(), 1e-5, 1e-6));
}

TEST(Cuda, PagerStorageRoundTripsDeviceTensorsThroughHostAndDiskHomes) {
  MEMSCALE_REQUIRE_CUDA();
  std::string tmpl = (fs::temp_directory_path() / "memscale-cuda-XXXXXX").string();
  const fs::path dir = ::mkdtemp(tmpl.data());
  at::manual_seed(3);
  std::vector<std::vector<at::Tensor>> layers, copies;
  for (int i = 0; i < 4; ++i) {
    layers.push_back({at::randn({256, 256}, at::device(at::kCUDA)), at::randn({256}, at::device(at::kCUDA))});
    copies.push_back({layers.back()[0].clone(), layers.back()[1].clone()});
  }
  {
    TorchPagerStorage storage(DiskTierOptions{dir.string(), "safetensors"});
    for (int i = 0; i < 4; ++i) {
      const std::string name = "blocks." + std::to_string(i);
      storage.add_layer(name, {name + ".weight", name + ".bias"}, layers[i], i % 2 ? WeightTier::host : WeightTier::disk);
    }
    storage.write_home_copies(std::vector<bool>(4, false));
    EXPECT_EQ(storage.files().size(), 2u) << "disk homes only";
    EXPECT_EQ(storage.io_stats().host_copies, 4u) << "two storages in each of two host-home layers";
    for (int i = 0; i < 4; ++i) storage.evict(i);
    for (int pass = 0; pass < 2; ++pass)
      for (int i = 0; i < 4; ++i) {
        storage.load(i);
        EXPECT_TRUE(layers[i][0].is_cuda());
        EXPECT_TRUE(at::equal(layers[i][0], copies[i][0])) << "layer " << i << " pass " << pass;
        EXPECT_TRUE(at::equal(layers[i][1], copies[i][1])) << "layer " << i << " pass " << pass;
        storage.evict(i);
      }
    EXPECT_GT(storage.io_stats().bytes_read, 0u);
    storage.restore_all();
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(at::equal(layers[i][0], copies[i][0]));
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), {}), 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace memscale

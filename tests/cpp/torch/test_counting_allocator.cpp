#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>

#include <thread>

#include "memscale/torch/counting_allocator.hpp"

namespace memscale::memory {
namespace {

TEST(CountingAllocator, ExactCurrentAndPeakOfKnownTensors) {
  CountingSession session;
  at::Tensor a = at::empty({1000}, at::kByte);
  at::Tensor b = at::empty({256}, at::kFloat);
  EXPECT_EQ(session.stats().current_bytes, 2024);
  EXPECT_EQ(session.stats().peak_bytes, 2024);
  a.reset();
  EXPECT_EQ(session.stats().current_bytes, 1024);
  EXPECT_EQ(session.stats().peak_bytes, 2024);
  EXPECT_EQ(session.stats().allocations, 2);
  EXPECT_EQ(session.stats().frees, 1);
  session.reset_peak();
  EXPECT_EQ(session.stats().peak_bytes, 1024);
}

TEST(CountingAllocator, InstallsAndRestoresThePreviousAllocatorWithNesting) {
  c10::Allocator* before = c10::GetAllocator(c10::DeviceType::CPU);
  EXPECT_FALSE(counting_allocator_installed());
  {
    CountingSession outer;
    EXPECT_TRUE(counting_allocator_installed());
    at::Tensor keep = at::empty({100}, at::kByte);
    {
      CountingSession inner;
      at::Tensor tmp = at::empty({300}, at::kByte);
      tmp.reset();
      EXPECT_EQ(inner.stats().peak_bytes, 300);
      EXPECT_EQ(inner.stats().current_bytes, 0);
    }
    EXPECT_TRUE(counting_allocator_installed());
    EXPECT_EQ(outer.stats().peak_bytes, 400);
    EXPECT_EQ(outer.stats().current_bytes, 100);
  }
  EXPECT_EQ(c10::GetAllocator(c10::DeviceType::CPU), before);
}

TEST(CountingAllocator, OlderBlocksNeverUnderflowANewerSession) {
  at::Tensor before_install = at::empty({4096}, at::kByte);
  at::Tensor counted_earlier;
  {
    CountingSession first;
    counted_earlier = at::empty({512}, at::kByte);
  }
  CountingSession session;
  before_install.reset();
  counted_earlier.reset();  // freed through the counting deleter after re-installation
  EXPECT_EQ(session.stats().current_bytes, 0);
  EXPECT_EQ(session.stats().frees, 0);
  session.close();
  EXPECT_TRUE(session.closed());
  EXPECT_THROW(session.stats(), c10::Error);
}

TEST(CountingAllocator, RawAllocateRoundTripsAndOtherThreadsAreCounted) {
  CountingSession session;
  c10::Allocator* alloc = c10::GetAllocator(c10::DeviceType::CPU);
  void* p = alloc->raw_allocate(64);
  EXPECT_EQ(session.stats().current_bytes, 64);
  alloc->raw_deallocate(p);
  EXPECT_EQ(session.stats().current_bytes, 0);
  at::Tensor from_thread;
  std::thread([&] { from_thread = at::empty({77}, at::kByte); }).join();
  EXPECT_EQ(session.stats().current_bytes, 77);
}

}  // namespace
}  // namespace memscale::memory

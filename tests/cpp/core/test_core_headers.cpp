// The core must stay torch-free: it builds and is tested on machines without torch.
#include <filesystem>
#include <fstream>
#include <regex>

#include <gtest/gtest.h>

namespace {

TEST(CoreHeaders, IncludeNoTorchC10AtenOrCuda) {
  const std::filesystem::path root = std::filesystem::path(MEMSCALE_SOURCE_DIR) / "include" / "memscale" / "core";
  const std::regex forbidden(R"(^\s*#\s*include\s*[<"](torch|c10|ATen|cuda|cuda_runtime|cublas|caffe2|nvml)[/._>"])");
  std::size_t checked = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path());
    std::string line;
    int number = 0;
    while (std::getline(in, line)) {
      ++number;
      EXPECT_FALSE(std::regex_search(line, forbidden)) << entry.path() << ":" << number << ": " << line;
    }
    ++checked;
  }
  EXPECT_GE(checked, 8u) << "expected the core headers under " << root;
}

}  // namespace

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "memscale/core/config.hpp"

namespace memscale {
namespace {

nlohmann::json load(const std::string& name) {
  std::ifstream in(std::string(MEMSCALE_TEST_DATA_DIR) + "/" + name);
  EXPECT_TRUE(in.good()) << name;
  return nlohmann::json::parse(in);
}

TEST(Config, DefaultsMatchTheDesign) {
  const Config c = Config::from_json_text("{}");
  EXPECT_EQ(c.mode, Mode::automatic);
  EXPECT_EQ(c.memory_budget.kind, MemoryBudget::Kind::detected);
  EXPECT_DOUBLE_EQ(c.safety_margin, 0.10);
  EXPECT_EQ(c.techniques.size(), 4u);
  for (const auto& [name, s] : c.techniques) EXPECT_EQ(s, Switch::automatic) << name;
  EXPECT_FALSE(c.force_optimize);
  EXPECT_FALSE(c.auto_policy);
  EXPECT_TRUE(c.offload.is_disabled());
  EXPECT_EQ(c.resolve_budget(1000), 900u);
}

TEST(Config, SizesInEveryAcceptedForm) {
  EXPECT_EQ(Config::from_json_text(R"({"memory_budget": 4096})").resolve_budget(1), 4096u);
  EXPECT_EQ(Config::from_json_text(R"({"memory_budget": "6GiB"})").resolve_budget(1), 6ull << 30);
  EXPECT_EQ(Config::from_json_text(R"({"memory_budget": "512MB"})").resolve_budget(1), 512000000u);
  EXPECT_EQ(Config::from_json_text(R"({"memory_budget": "1.5 GB"})").resolve_budget(1), 1500000000u);
  EXPECT_EQ(Config::from_json_text(R"({"memory_budget": "2kib"})").resolve_budget(1), 2048u);
  const Config fraction = Config::from_json_text(R"({"memory_budget": 0.8})");
  EXPECT_EQ(fraction.memory_budget.kind, MemoryBudget::Kind::fraction);
  EXPECT_EQ(fraction.resolve_budget(1000), 800u);
  EXPECT_EQ(Config::from_json_text(R"({"memory_budget": 1.0})").resolve_budget(1000), 1000u);
}

TEST(Config, JsonRoundTripIsIdentity) {
  const char* full = R"({
    "mode": "min_memory", "memory_budget": "3GiB", "safety_margin": 0.2,
    "techniques": {"checkpoint": "on", "tiling": "off"},
    "layer_overrides": {"blocks.1*": {"checkpoint": "off"}, "head": {"tiling": "on"}},
    "force_optimize": true, "auto_policy": true,
    "offload": {"policy": "pinned_hot_set", "ram_bytes": "1GiB", "pin_embeddings": false,
                "pin_output_head": true, "pin_last_n_layers": 2, "prefetch_n_ahead": 3, "disk_dir": "/tmp/x"},
    "tiers": {"weights": {"gpu": 20, "cpu": 30}, "kv_cache": {"gpu": 100, "cpu": 0}},
    "reservation": {"safety_factor": 1.5, "prefill_tokens": 4096, "flat_bytes": "2GiB", "graph_capture_bytes": 0}
  })";
  for (const char* text : {"{}", R"({"memory_budget": 0.5})", R"({"offload": {"policy": "budget", "ram_bytes": 10}})", full}) {
    const Config once = Config::from_json_text(text);
    const std::string json_once = once.to_json_text();
    const Config twice = Config::from_json_text(json_once);
    EXPECT_EQ(once, twice) << text;
    EXPECT_EQ(json_once, twice.to_json_text()) << text;
  }
  const Config c = Config::from_json_text(full);
  EXPECT_EQ(c.offload.kind, OffloadPolicy::Kind::pinned_hot_set);
  EXPECT_EQ(c.offload.ram_budget_bytes(), std::optional<std::uint64_t>(1ull << 30));
  EXPECT_EQ(c.offload.pin_last_n_layers, 2u);
  EXPECT_DOUBLE_EQ(c.tiers.at("weights").disk(), 50.0);
  EXPECT_EQ(c.layer_overrides.at("blocks.1*").at("checkpoint"), Switch::off);
}

TEST(Config, BadInputsGiveTheDocumentedMessage) {
  const nlohmann::json table = load("bad_configs.json");
  ASSERT_GE(table.size(), 30u);
  for (const auto& row : table) {
    const std::string text = row.at("config").dump();
    const std::string expected = row.at("error").get<std::string>();
    try {
      Config::from_json_text(text);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos)
          << "input " << text << "\n  message  " << e.what() << "\n  expected " << expected;
    }
  }
}

TEST(Config, WeightResidencyPolicyVariants) {
  EXPECT_FALSE(Config::from_json_text("{}").offload.ram_budget_bytes().has_value());
  const Config budget = Config::from_json_text(R"({"offload": {"policy": "budget", "ram_bytes": 1073741824}})");
  EXPECT_EQ(budget.offload.kind, OffloadPolicy::Kind::budget);
  EXPECT_EQ(*budget.offload.ram_budget_bytes(), 1073741824u);
  EXPECT_FALSE(budget.offload.is_disabled());
  const Config hot = Config::from_json_text(R"({"offload": {"policy": "pinned_hot_set", "ram_bytes": "512MiB"}})");
  EXPECT_TRUE(hot.offload.pin_embeddings);
  EXPECT_TRUE(hot.offload.pin_output_head);
  EXPECT_EQ(hot.offload.prefetch_n_ahead, 1u);
}

TEST(Sizes, FormatBytes) {
  EXPECT_EQ(format_bytes(900), "900 B");
  EXPECT_EQ(format_bytes(1536ull << 20), "1.50 GiB");
}

}  // namespace
}  // namespace memscale

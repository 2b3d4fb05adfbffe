// Rules both languages read from core through the bindings: optimizer-state factors and
// master weights, the position-wise leaf kinds, and the tier split rule.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "memscale/core/config.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/position_wise_kinds.hpp"
#include "memscale/core/tier_policy.hpp"

namespace memscale {
namespace {

using nlohmann::json;

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError";
  return "";
}

TEST(OptimizerState, FactorPerKind) {
  EXPECT_EQ(optimizer_state_factor("none"), 0u);
  EXPECT_EQ(optimizer_state_factor("sgd"), 0u);
  EXPECT_EQ(optimizer_state_factor("sgd_momentum"), 1u);
  EXPECT_EQ(optimizer_state_factor("adam"), 2u);
  EXPECT_EQ(optimizer_state_factor("adamw"), 2u);
  EXPECT_EQ(optimizer_kinds(), (std::vector<std::string>{"none", "sgd", "sgd_momentum", "adam", "adamw"}));
}

TEST(OptimizerState, UnknownKindNamesTheValueAndTheAllowedOnes) {
  const std::string m = message_of([] { optimizer_state_factor("lion"); });
  EXPECT_NE(m.find("\"lion\""), std::string::npos) << m;
  for (const auto& kind : optimizer_kinds()) EXPECT_NE(m.find("\"" + kind + "\""), std::string::npos) << m;
  EXPECT_THROW(optimizer_state_factor("AdamW"), ConfigError);  // names are exact
}

TEST(OptimizerState, MasterWeightsAddFourBytesPerElement) {
  EXPECT_EQ(master_weight_bytes_per_element, 4u);
  // bf16 parameters: 1000 elements, 2000 bytes.
  EXPECT_EQ(optimizer_state_bytes("adamw", 2000, 1000, false), 4000u);
  EXPECT_EQ(optimizer_state_bytes("adamw", 2000, 1000, true), 4000u + 4000u);
  EXPECT_EQ(optimizer_state_bytes("sgd", 2000, 1000, true), 4000u);
  EXPECT_EQ(optimizer_state_bytes("none", 2000, 1000, false), 0u);
}

TEST(PositionWiseKinds, OneListWithDropoutAndTheAxisKinds) {
  const auto& kinds = position_wise_leaf_kinds();
  EXPECT_EQ(std::set<std::string>(kinds.begin(), kinds.end()).size(), kinds.size()) << "duplicates";
  for (const char* k : {"Linear", "LayerNorm", "RMSNorm", "Identity", "ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "Mish",
                        "LeakyReLU", "ELU", "Softplus", "Hardswish", "GLU", "ReLU6", "SELU", "CELU", "Softmax",
                        "LogSoftmax", "Dropout"})
    EXPECT_TRUE(is_position_wise_leaf_kind(k)) << k;
  for (const char* k : {"Conv1d", "BatchNorm1d", "GroupNorm", "MultiheadAttention", "Embedding", "linear", ""})
    EXPECT_FALSE(is_position_wise_leaf_kind(k)) << k;
  for (const auto& k : feature_axis_kinds()) EXPECT_TRUE(is_position_wise_leaf_kind(k)) << k;
  for (const auto& k : random_mask_kinds()) EXPECT_TRUE(is_position_wise_leaf_kind(k)) << k;
  EXPECT_TRUE(is_feature_axis_kind("Softmax"));
  EXPECT_FALSE(is_feature_axis_kind("Linear"));
  EXPECT_TRUE(is_random_mask_kind("Dropout"));
  EXPECT_FALSE(is_random_mask_kind("GELU"));
}

TEST(PositionWiseKinds, LibtorchNamesFollowOneRule) {
  for (const auto& kind : position_wise_leaf_kinds()) {
    EXPECT_EQ(libtorch_module_name(kind), "torch::nn::" + kind + "Impl");
    EXPECT_EQ(kind_of_libtorch_module_name(libtorch_module_name(kind)), kind);
  }
  EXPECT_EQ(kind_of_libtorch_module_name("torch::nn::SequentialImpl"), "Sequential");
  EXPECT_EQ(kind_of_libtorch_module_name("torch::nn::Linear"), "");
  EXPECT_EQ(kind_of_libtorch_module_name("torch::nn::Impl"), "");
  EXPECT_EQ(kind_of_libtorch_module_name("my::LinearImpl"), "");
  EXPECT_EQ(kind_of_libtorch_module_name("torch::nn::detail::LinearImpl"), "");
}

TierSplit split(const std::string& text) { return parse_tier_split(json::parse(text), "tiers.kv_cache"); }
std::string split_error(const std::string& text) {
  return message_of([&] { split(text); });
}

TEST(TierSplitRule, DefaultsDiskAndBounds) {
  EXPECT_EQ(split("{}"), (TierSplit{100.0, 0.0}));
  EXPECT_EQ(split(R"({"gpu": 50})"), (TierSplit{50.0, 0.0}));
  EXPECT_EQ(split(R"({"cpu": 0})"), (TierSplit{100.0, 0.0}));
  EXPECT_DOUBLE_EQ(split(R"({"gpu": 20, "cpu": 30})").disk(), 50.0);
  // Both ends of each bound are accepted.
  EXPECT_EQ(split(R"({"gpu": 0, "cpu": 0})"), (TierSplit{0.0, 0.0}));
  EXPECT_EQ(split(R"({"gpu": 100, "cpu": 0})"), (TierSplit{100.0, 0.0}));
  EXPECT_EQ(split(R"({"gpu": 0, "cpu": 100})"), (TierSplit{0.0, 100.0}));
  EXPECT_EQ(split(R"({"gpu": 60, "cpu": 40})"), (TierSplit{60.0, 40.0}));
  EXPECT_EQ(split(R"({"gpu": 20, "cpu": 30, "disk": 50})"), (TierSplit{20.0, 30.0}));
  EXPECT_EQ(split(R"({"gpu": 20, "cpu": 30, "disk": 50.0000001})"), (TierSplit{20.0, 30.0}));
}

TEST(TierSplitRule, EachViolationNamesThePathTheValueAndWhatIsAllowed) {
  EXPECT_EQ(split_error("3"), R"(tiers.kv_cache: got 3, expected an object {"gpu": percent, "cpu": percent})");
  EXPECT_EQ(split_error(R"({"gpux": 1})"),
            R"(tiers.kv_cache: unknown key "gpux"; allowed keys: gpu, cpu, disk (disk is the remainder, 100 - gpu - cpu))");
  EXPECT_EQ(split_error(R"({"gpu": 120})"), "tiers.kv_cache.gpu: got 120, expected a percentage in [0, 100]");
  EXPECT_EQ(split_error(R"({"gpu": 100.5})"), "tiers.kv_cache.gpu: got 100.5, expected a percentage in [0, 100]");
  EXPECT_EQ(split_error(R"({"cpu": -0.5})"), "tiers.kv_cache.cpu: got -0.5, expected a percentage in [0, 100]");
  EXPECT_EQ(split_error(R"({"gpu": "50"})"), R"(tiers.kv_cache.gpu: got "50", expected a percentage in [0, 100])");
  EXPECT_EQ(split_error(R"({"gpu": true})"), "tiers.kv_cache.gpu: got true, expected a percentage in [0, 100]");
  EXPECT_EQ(split_error(R"({"gpu": null})"), "tiers.kv_cache.gpu: got null, expected a percentage in [0, 100]");
  EXPECT_EQ(split_error(R"({"gpu": 70, "cpu": 50})"),
            "tiers.kv_cache: gpu + cpu = 120 exceeds 100 (disk takes the remainder, 100 - gpu - cpu)");
  EXPECT_EQ(split_error(R"({"gpu": 100, "cpu": 0.5})"),
            "tiers.kv_cache: gpu + cpu = 100.5 exceeds 100 (disk takes the remainder, 100 - gpu - cpu)");
  EXPECT_EQ(split_error(R"({"gpu": 20, "cpu": 30, "disk": 10})"),
            "tiers.kv_cache.disk: got 10, but disk is 100 - gpu - cpu = 50");
  EXPECT_EQ(split_error(R"({"gpu": 20, "cpu": 30, "disk": "x"})"),
            R"(tiers.kv_cache.disk: got "x", but disk is 100 - gpu - cpu = 50)");
  json nan = {{"gpu", std::numeric_limits<double>::quiet_NaN()}};
  EXPECT_EQ(message_of([&] { parse_tier_split(nan, "tiers.weights"); }),
            "tiers.weights.gpu: got nan, expected a percentage in [0, 100]");
  json inf = {{"cpu", std::numeric_limits<double>::infinity()}};
  EXPECT_EQ(message_of([&] { parse_tier_split(inf, "tiers.weights"); }),
            "tiers.weights.cpu: got inf, expected a percentage in [0, 100]");
  EXPECT_NE(message_of([] { tier_split_from_json_text("{gpu", "tiers.x"); }).find("tiers.x: not valid JSON"),
            std::string::npos);
}

TEST(TierSplitRule, TensorTypes) {
  const auto splits = parse_tier_splits(json::parse(R"({"weights": {"gpu": 50, "cpu": 50}, "kv_cache": {}})"), "tiers");
  ASSERT_EQ(splits.size(), 2u);
  EXPECT_EQ(splits.at("weights"), (TierSplit{50.0, 50.0}));
  EXPECT_EQ(splits.at("kv_cache"), (TierSplit{100.0, 0.0}));
  EXPECT_EQ(message_of([] { parse_tier_splits(json::parse(R"({"weight": {}})"), "tiers"); }),
            R"(tiers: unknown tensor type "weight"; allowed: weights, kv_cache, activations)");
  EXPECT_EQ(message_of([] { parse_tier_splits(json::parse(R"({"activations": {"gpu": 101}})"), "tiers"); }),
            "tiers.activations.gpu: got 101, expected a percentage in [0, 100]");
  EXPECT_EQ(tier_tensor_type_names(), (std::vector<std::string>{"weights", "kv_cache", "activations"}));
}

TEST(TierSplitRule, ConfigTiersUseTheSameRuleOnTheSchemaForm) {
  EXPECT_EQ(message_of([] { Config::from_json_text(R"({"tiers": {"kv_cache": {"gpu": 70, "cpu": 50}}})"); }),
            "tiers.kv_cache: gpu + cpu = 120 exceeds 100 (disk takes the remainder, 100 - gpu - cpu)");
  EXPECT_EQ(message_of([] { Config::from_json_text(R"({"tiers": {"kv_cache": {"gpu": 120, "cpu": 0}}})"); }),
            split_error(R"({"gpu": 120, "cpu": 0})"));
  // The Config document is the schema's form: both shares named, no disk key.
  EXPECT_NE(message_of([] { Config::from_json_text(R"({"tiers": {"kv_cache": {"gpu": 50}}})"); })
                .find("tiers.kv_cache.cpu: required key is missing"),
            std::string::npos);
  const Config c = Config::from_json_text(R"({"tiers": {"weights": {"gpu": 20, "cpu": 30}}})");
  EXPECT_EQ(c.tiers.at("weights"), (TierSplit{20.0, 30.0}));
}

}  // namespace
}  // namespace memscale

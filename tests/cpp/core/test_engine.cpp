// Decision engine: determinism, modes, skip, multi-device, errors, plan contents.
#include <random>
#include <regex>
#include <set>

#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

TEST(Engine, IdenticalInputsGiveByteIdenticalJson) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  for (const auto& name : graph_fixtures()) {
    const ModelGraph g = fixture_graph(name);
    const Config c = budget_config(unoptimized_peak(g, hw) / 2);
    const std::string first = plan(g, hw, c).to_json_text();
    for (int i = 0; i < 3; ++i) EXPECT_EQ(plan(g, hw, c).to_json_text(), first) << name;
    // A copy of every input (no shared state between calls) plans the same.
    const ModelGraph g2 = ModelGraph::from_json_text(g.to_json_text());
    EXPECT_EQ(plan(g2, Hardware::from_json_text(hw.to_json_text()), Config::from_json_text(c.to_json_text())).to_json_text(),
              first)
        << name;
    EXPECT_EQ(Plan::from_json_text(first).to_json_text(), first) << name;  // the plan round-trips
  }
}

TEST(Engine, IncrementalTrackerAgreesWithFullEvaluation) {
  std::mt19937 rng(1234);  // the test may be random; the engine may not
  for (const bool training : {true, false}) {
    ModelGraph g = synthetic_graph(60, training);
    // some layers' forward leaves tensors held outside autograd (a KV cache object)
    if (training)
      for (std::size_t l = 1; l < g.layers.size(); l += 4) g.layers[l].retained_bytes = 1000 * (l + 1);
    model::StepContext ctx;
    ctx.training = training;
    ctx.optimizer_transient = training ? 1.0 : 0.0;
    ctx.input_bytes = g.input_bytes;
    ctx.reservation_bytes = training ? 0 : 12345;
    ctx.prefetch_n_ahead = 2;
    ctx.data_parallel = training;
    std::vector<model::LayerState> states(g.layers.size());
    model::TrainingTracker train(g, ctx, states);
    model::InferenceTracker infer(g, ctx, states);
    for (int step = 0; step < 400; ++step) {
      const std::size_t l = rng() % g.layers.size();
      model::LayerState s;
      s.checkpoint = rng() % 2;
      s.offload_activations = rng() % 3 == 0;
      s.offload_weights = rng() % 4 == 0;
      s.chunks = g.layers[l].tileable.empty() ? 1 : std::int64_t{1} << (rng() % 4);
      states[l] = s;
      const std::uint64_t expected = model::evaluate(g, states, ctx).peak;
      if (training) {
        train.set(l, s);
        ASSERT_EQ(static_cast<std::uint64_t>(train.peak().value), expected) << "step " << step;
      } else {
        infer.set(l, s);
        ASSERT_EQ(static_cast<std::uint64_t>(infer.peak().value), expected) << "step " << step;
      }
    }
  }
}

TEST(Engine, PredictedPeakIsTheMemoryModelOfTheReturnedStates) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  const Plan p = plan(g, hw, budget_config(unoptimized_peak(g, hw) * 4 / 10));
  std::vector<model::LayerState> states;
  for (const auto& l : p.layers)
    states.push_back({l.has("checkpoint"), l.has("offload_activations"), l.has("offload_weights"), l.tile_chunks});
  model::StepContext ctx;
  ctx.optimizer_transient = 1.0;
  ctx.input_bytes = g.input_bytes;
  EXPECT_EQ(model::evaluate(g, states, ctx).peak, p.predicted_peak_bytes);
  EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
  EXPECT_GT(p.pressure, 2.4);
}

TEST(Engine, EveryLayerCarriesRulesAndReasonsAndTheRulesAreDocumented) {
  const std::string doc = read_text(std::string(MEMSCALE_SOURCE_DIR) + "/docs/rules.md");
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  std::set<std::string> seen;
  for (const auto& name : graph_fixtures()) {
    const ModelGraph g = fixture_graph(name);
    const std::uint64_t u = unoptimized_peak(g, hw), m = min_budget(g, hw);
    for (const std::uint64_t budget : {u, (u + m) / 2, m}) {
      const Plan p = plan(g, hw, budget_config(budget));
      ASSERT_EQ(p.layers.size(), g.layers.size());
      for (const auto& l : p.layers) {
        ASSERT_FALSE(l.rules.empty()) << l.name;
        ASSERT_EQ(l.rules.size(), l.reasons.size()) << l.name;
        for (const auto& r : l.reasons) EXPECT_FALSE(r.empty()) << l.name;
        seen.insert(l.rules.begin(), l.rules.end());
      }
      for (const auto& r : p.rejected) {
        EXPECT_FALSE(r.reason.empty());
        seen.insert(r.rule);
      }
      if (budget < u) EXPECT_FALSE(p.rejected.empty()) << name;
    }
  }
  for (const auto& rule : seen) EXPECT_NE(doc.find("`" + rule + "`"), std::string::npos) << rule << " is not in docs/rules.md";
  EXPECT_GT(seen.size(), 8u);
}

TEST(Engine, ModeOffPlansNothingButHonoursForcedTechniques) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  const std::uint64_t u = unoptimized_peak(g, hw);
  const Plan off = plan(g, hw, budget_config(u / 2, R"("mode": "off")"));
  EXPECT_TRUE(off.skipped);
  EXPECT_NE(off.skip_reason.find("off"), std::string::npos);
  for (const auto& l : off.layers) EXPECT_TRUE(l.techniques.empty());
  EXPECT_EQ(off.predicted_peak_bytes, u);  // over budget, said so in the trace, not raised
  EXPECT_NE(off.trace.back().find("exceeds the budget"), std::string::npos);
  const Plan forced = plan(g, hw, budget_config(u, R"("mode": "off", "layer_overrides": {"transformer.h.1": {"checkpoint": "on"}})"));
  EXPECT_FALSE(forced.skipped);
  for (const auto& l : forced.layers) EXPECT_EQ(l.has("checkpoint"), l.name == "transformer.h.1") << l.name;
}

TEST(Engine, TinyModelIsSkippedUnlessForced) {
  const Hardware big = fixture_hardware("gpu_80gib_x8.json");
  const ModelGraph g = fixture_graph("resnet50_train.json");  // ~5.5 GiB on an 80 GiB device
  const Plan skipped = plan(g, big, Config::from_json_text("{}"));
  EXPECT_TRUE(skipped.skipped);
  EXPECT_NE(skipped.skip_reason.find("tiny model"), std::string::npos);
  for (const auto& l : skipped.layers) EXPECT_EQ(l.rules, std::vector<std::string>{"skip.tiny_model"});
  const Plan forced = plan(g, big, Config::from_json_text(R"({"force_optimize": true})"));
  EXPECT_FALSE(forced.skipped);
  EXPECT_EQ(forced.predicted_peak_bytes, forced.unoptimized_peak_bytes);  // fits: nothing needed
  // The same model under pressure on the same device is planned.
  const Plan pressured = plan(g, big, budget_config(skipped.unoptimized_peak_bytes / 2));
  EXPECT_FALSE(pressured.skipped);
  EXPECT_LE(pressured.predicted_peak_bytes, pressured.budget_bytes);
}

TEST(Engine, MinMemoryReachesTheMinimumBudget) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  for (const auto& name : graph_fixtures()) {
    const ModelGraph g = fixture_graph(name);
    const std::uint64_t m = min_budget(g, hw);
    const Plan p = plan(g, hw, budget_config(unoptimized_peak(g, hw), R"("mode": "min_memory")"));
    EXPECT_EQ(p.predicted_peak_bytes, m) << name;
    EXPECT_EQ(p.mode, "min_memory");
  }
}

TEST(Engine, InfeasibleBudgetNamesTheMinimumAndWhatDominates) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  try {
    plan(g, hw, budget_config(1ull << 20, R"("techniques": {"offload_weights": "off"})"));
    FAIL() << "1 MiB was accepted";
  } catch (const InfeasibleBudgetError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("min_budget_bytes = " + std::to_string(e.min_budget_bytes())), std::string::npos) << what;
    EXPECT_NE(what.find("dominated by"), std::string::npos) << what;
    EXPECT_NE(what.find("techniques.offload_weights"), std::string::npos) << what;
    // Disallowing a technique can only raise the minimum.
    EXPECT_GE(e.min_budget_bytes(), min_budget(g, hw));
  }
}

TEST(Engine, DataParallelPlansOneReplicaPerDeviceWithGradientBuckets) {
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  Hardware one = fixture_hardware("gpu_80gib_x8.json");
  one.devices.resize(1);
  const Hardware eight = fixture_hardware("gpu_80gib_x8.json");
  const Config c = budget_config(16ull << 30);
  const Plan p1 = plan(g, one, c), p8 = plan(g, eight, c);
  EXPECT_EQ(p1.device_count, 1);
  EXPECT_EQ(p8.device_count, 8);
  std::uint64_t grads = 0;
  for (const auto& l : g.layers) grads += l.grad_bytes;
  EXPECT_EQ(p8.unoptimized_peak_bytes - p1.unoptimized_peak_bytes, grads);  // DDP buckets
  EXPECT_LE(p8.predicted_peak_bytes, p8.budget_bytes);
  // The detected budget follows the smallest GPU.
  Hardware mixed = eight;
  mixed.devices[3].total_bytes = 40ull << 30;
  const Plan pm = plan(g, mixed, Config::from_json_text(R"({"force_optimize": true})"));
  EXPECT_EQ(pm.budget_bytes, static_cast<std::uint64_t>(static_cast<double>(40ull << 30) * 0.9));
}

TEST(Engine, LowerPressureAppliesFewerTechniques) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("t5_base_train.json");
  const std::uint64_t u = unoptimized_peak(g, hw), m = min_budget(g, hw);
  auto count = [&](std::uint64_t b) {
    std::size_t n = 0;
    for (const auto& l : plan(g, hw, budget_config(b)).layers) n += l.techniques.size();
    return n;
  };
  EXPECT_EQ(count(u), 0u);
  EXPECT_LT(count(u * 9 / 10), count((u + m) / 2));
  EXPECT_LE(count((u + m) / 2), count(m));
}

TEST(Engine, PinnedHotSetAndPrefetchDepthFollowTheOffloadPolicy) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("llama7b_infer.json");
  const Config c = budget_config(
      20ull << 30,
      R"("offload": {"policy": "pinned_hot_set", "ram_bytes": "6GiB", "pin_embeddings": true, "pin_output_head": true, "pin_last_n_layers": 2, "prefetch_n_ahead": 3})");
  const Plan p = plan(g, hw, c);
  EXPECT_EQ(p.offload.policy, "pinned_hot_set");
  EXPECT_EQ(p.offload.prefetch_n_ahead, 3u);
  // The user's 6 GiB as far as the budget's headroom over the counted peak allows (the
  // reservation, 2 GB of logits of the example's 8 x 4096 tokens among it, leaves less).
  EXPECT_LE(p.offload.ram_bytes, 6ull << 30);
  EXPECT_LE(p.offload.predicted_resident_bytes, p.offload.ram_bytes);
  const std::vector<std::string> hot = {"model.embed_tokens", "model.layers.30.self_attn", "model.layers.31.self_attn",
                                        "lm_head"};
  EXPECT_EQ(p.offload.hot_set, hot);
  std::uint64_t resident = 0, largest = 0, paged = 0;
  for (std::size_t i = 0; i < p.layers.size(); ++i) {
    const auto& l = p.layers[i];
    const bool is_hot = std::find(hot.begin(), hot.end(), l.name) != hot.end();
    EXPECT_EQ(l.pinned, is_hot) << l.name;
    if (is_hot) EXPECT_FALSE(l.has("offload_weights")) << l.name;
    const std::uint64_t w = g.layers[i].param_bytes + g.layers[i].buffer_bytes;
    if (l.has("offload_weights")) {
      EXPECT_NE(l.weight_tier, "device");
      largest = std::max(largest, w), paged += w;
    } else {
      resident += w;
    }
  }
  EXPECT_LE(resident + std::min(paged, 4 * largest), p.offload.ram_bytes);  // window = 1 + prefetch 3
  // ram_bytes below what the hot set alone needs is a clear ConfigError.
  try {
    plan(g, hw, budget_config(20ull << 30, R"("offload": {"policy": "pinned_hot_set", "ram_bytes": "100MiB"})"));
    FAIL();
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("offload.ram_bytes: got 104857600 (100.00 MiB), smaller than"), std::string::npos) << what;
    EXPECT_NE(what.find("the pinned hot set 500.00 MiB"), std::string::npos) << what;
  }
}

TEST(Engine, OverridesThatCannotBeHonouredAreConfigErrors) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  try {
    plan(g, hw, budget_config(8ull << 30, R"("layer_overrides": {"transformer.h.*": {"checkpoint": "on"}, "transformer.h.1*": {"checkpoint": "off"}})"));
    FAIL();
  } catch (const ConfigError& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("layer_overrides[\"transformer.h.*\"]"), std::string::npos) << w;
    EXPECT_NE(w.find("layer_overrides[\"transformer.h.1*\"]"), std::string::npos) << w;
    EXPECT_NE(w.find("transformer.h.1"), std::string::npos) << w;
  }
  try {
    plan(g, hw, budget_config(8ull << 30, R"("layer_overrides": {"transformer.h.0": {"tiling": "on"}})"));
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("no tileable axis"), std::string::npos) << e.what();
  }
  // Agreeing overlapping globs are fine; a glob matching nothing is reported in the trace.
  const Plan p = plan(g, hw, budget_config(30ull << 30, R"("layer_overrides": {"transformer.h.*": {"checkpoint": "on"}, "transformer.h.1*": {"checkpoint": "on"}, "nope.*": {"tiling": "off"}})"));
  bool reported = false;
  for (const auto& t : p.trace) reported |= t.find("\"nope.*\"] matches no layer") != std::string::npos;
  EXPECT_TRUE(reported);
}

TEST(Engine, CpuOnlyMachineOffloadsToDisk) {
  const Hardware cpu = fixture_hardware("cpu_24gib.json");
  const ModelGraph g = fixture_graph("llama7b_train.json");
  const Plan p = plan(g, cpu, Config::from_json_text("{}"));  // budget = 90% of available host RAM
  EXPECT_EQ(p.budget_bytes, static_cast<std::uint64_t>(static_cast<double>(cpu.host_available_bytes) * 0.9));
  EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
  bool any = false;
  for (const auto& l : p.layers) {
    if (l.has("offload_weights")) {
      EXPECT_EQ(l.weight_tier, "disk") << l.name;
      any = true;
    }
    if (l.has("offload_activations")) EXPECT_EQ(l.activation_tier, "disk") << l.name;
  }
  EXPECT_TRUE(any);
}

TEST(Engine, ForcedActivationOffloadKeepsTheTierItWasPlacedOn) {
  // The exact solver re-places only the offloads it chose; forced ones keep the baseline's
  // tier (they came out as "device", which no runtime applies).
  for (const char* machine : {"cpu_24gib.json", "gpu_24gib.json"}) {
    const Hardware hw = fixture_hardware(machine);
    const Plan p = plan(fixture_graph("llama7b_train.json"), hw,
                        Config::from_json_text(R"({"force_optimize": true, "techniques": {"offload_activations": "on"}})"));
    std::size_t offloaded = 0;
    for (const auto& l : p.layers) {
      if (!l.has("offload_activations")) continue;
      ++offloaded;
      EXPECT_NE(l.activation_tier, "device") << machine << " " << l.name;
      if (hw.devices.empty()) EXPECT_EQ(l.activation_tier, "disk") << machine << " " << l.name;
    }
    EXPECT_GT(offloaded, 0u) << machine;
  }
}

TEST(Engine, InferencePlanReservesActivationsAndReportsTiers) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("llama7b_infer.json");
  const Plan p = plan(g, hw, Config::from_json_text("{}"));
  EXPECT_FALSE(p.training);
  EXPECT_TRUE(p.reservation.used);
  // 8 x 4096 tokens over a vocabulary of 32000: the head's logits (2 GB in bfloat16) and its
  // input outgrow the widest buffer's scaled figure.
  EXPECT_EQ(p.reservation.source, "output_head");
  EXPECT_EQ(p.reservation.output_head_bytes, 8ull * 4096 * (32000 + 4096) * 2);
  EXPECT_GT(p.reservation.output_head_bytes, p.reservation.scaled_bytes);
  EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
  ASSERT_TRUE(p.tier_policy.used);
  EXPECT_LT(p.tier_policy.policy.kv_cache.gpu + p.tier_policy.policy.weights.gpu, 200.0);
  EXPECT_GT(p.tier_policy.total_s, 0.0);
  for (const auto& l : p.layers) {
    EXPECT_FALSE(l.has("checkpoint"));
    EXPECT_FALSE(l.has("tile"));
  }
  // A split fixed in Config.tiers is realised per layer.
  const Plan fixed = plan(g, hw, budget_config(22ull << 30, R"("tiers": {"kv_cache": {"gpu": 25, "cpu": 75}})"));
  std::uint64_t kv = 0, kv_resident = 0;
  for (std::size_t i = 0; i < g.layers.size(); ++i) {
    kv += g.layers[i].kv_cache_bytes;
    if (!fixed.layers[i].has("offload_activations")) kv_resident += g.layers[i].kv_cache_bytes;
  }
  EXPECT_LE(kv_resident, kv / 4);
  EXPECT_GE(kv_resident + 512ull * 1024 * 1024, kv / 4);  // within one layer's cache
  EXPECT_NEAR(fixed.tier_policy.policy.kv_cache.gpu, 100.0 * static_cast<double>(kv_resident) / static_cast<double>(kv), 1e-9);
}

TEST(Engine, SummaryListsEveryLayerAndTheTotals) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("vit_b16_train.json");
  const Plan p = plan(g, hw, budget_config(unoptimized_peak(g, hw) / 2));
  const std::string s = plan_summary(p);
  for (const auto& l : p.layers) EXPECT_NE(s.find(l.name), std::string::npos) << l.name;
  EXPECT_NE(s.find("predicted peak " + format_bytes(p.predicted_peak_bytes)), std::string::npos) << s;
  EXPECT_NE(s.find("checkpoint"), std::string::npos);
  EXPECT_NE(s.find("total"), std::string::npos);
}

TEST(Engine, BadInputIsAClearError) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  ModelGraph empty;
  EXPECT_THROW(plan(empty, hw, Config::from_json_text("{}")), ConfigError);
  Hardware blank;
  try {
    plan(fixture_graph("gpt2_small_train.json"), blank, Config::from_json_text("{}"));
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("memory_budget"), std::string::npos) << e.what();
  }
}

// A tiled output head runs fused with its loss (memscale.nn.linear_cross_entropy): the
// logits never exist, the loss's gradient buffers (input-sized + float32 weight gradient)
// are held from forward to backward instead, and nothing is recomputed.
Layer head_layer(const std::string& kind) {
  Layer l;
  l.name = "head";
  l.kind = kind;
  l.param_bytes = l.grad_bytes = 12 << 20;
  l.activation_bytes = 67 << 20;
  l.transient_bytes = 128 << 20;
  l.input_bytes = 3 << 20;
  l.output_bytes = 64 << 20;
  l.flops = 12'880'000'000;
  l.tileable = {"seq", "batch"};
  return l;
}

TEST(Engine, RetainedBytesStayFromTheirForwardUntilBackwardEnds) {
  // Three blocks; block 1's forward leaves R bytes referenced outside autograd (its keys and
  // values in a cache object). Checkpointing or offloading block 1 frees its saved bytes,
  // never R; R is live in every later forward, in every backward, not in the optimizer step.
  constexpr std::int64_t A = 1 << 20, IN = 1 << 12, T = 1 << 16, R = 1 << 18;
  ModelGraph g;
  for (int i = 0; i < 3; ++i) {
    Layer l;
    l.index = i;
    l.name = "blocks." + std::to_string(i);
    l.kind = "block";
    l.activation_bytes = A;
    l.transient_bytes = T;
    l.input_bytes = l.output_bytes = IN;
    l.retained_bytes = i == 1 ? R : 0;
    g.layers.push_back(l);
  }
  model::StepContext ctx;
  const model::LayerState plain;
  model::LayerState ckpt;
  ckpt.checkpoint = true;
  model::LayerState offload;
  offload.offload_activations = true;
  const model::TrainTerms p = model::train_terms(g.layers[1], plain, ctx);
  EXPECT_EQ(p.saved, A);
  EXPECT_EQ(p.retained, R);
  EXPECT_EQ(p.forward_local, IN + A + T + R);  // allocated by its forward
  EXPECT_EQ(p.backward_local, IN + A + T);      // still held: counted with every layer's backward
  const model::TrainTerms c = model::train_terms(g.layers[1], ckpt, ctx);
  EXPECT_EQ(c.saved, IN);
  EXPECT_EQ(c.retained, R);
  EXPECT_EQ(c.backward_local, IN + IN + A + T + R);  // the recompute makes them once more
  EXPECT_EQ(model::train_terms(g.layers[1], offload, ctx).retained, R);
  EXPECT_EQ(model::train_terms(g.layers[1], offload, ctx).activation_window, A);  // only the saved bytes move

  // Every block checkpointed: R is live in block 2's backward (before block 1's) and in
  // block 0's (after it); block 1's own backward holds R and recomputes it beside.
  const std::vector<model::LayerState> all(3, ckpt);
  const model::PeakReport r = model::evaluate(g, all, ctx);
  const std::int64_t b0 = R + (IN + IN + A + T), b1 = IN + R + (IN + IN + A + T + R),
                     b2 = 2 * IN + R + (IN + IN + A + T);
  EXPECT_EQ(static_cast<std::int64_t>(r.peak), b1);
  EXPECT_EQ(r.phase, "backward");
  EXPECT_EQ(r.layer, 1);
  EXPECT_GT(b1, std::max(b0, b2));
  // Without the retained bytes the same plan peaks at block 2's backward, R below b2.
  g.layers[1].retained_bytes = 0;
  EXPECT_EQ(static_cast<std::int64_t>(model::evaluate(g, all, ctx).peak), b2 - R);
  g.layers[1].retained_bytes = R;
  // The incremental tracker and the plan's resident bytes agree.
  model::TrainingTracker tracker(g, ctx, std::vector<model::LayerState>(3));
  for (std::size_t l = 0; l < 3; ++l) tracker.set(l, ckpt);
  EXPECT_EQ(tracker.peak().value, static_cast<std::int64_t>(r.peak));
  EXPECT_EQ(model::layer_resident_bytes(g.layers[1], ckpt, ctx), static_cast<std::uint64_t>(IN + R));
}

TEST(Engine, ALayerNoGradientReachesHasNoIncomingGradient) {
  // A frozen embedding under LoRA: nothing before it trains, so backward never reaches it.
  Layer l;
  l.kind = "embedding";
  l.input_bytes = 1 << 10;
  l.output_bytes = 1 << 20;
  l.transient_bytes = 1 << 12;
  model::StepContext ctx;
  EXPECT_EQ(model::train_terms(l, model::LayerState{}, ctx).backward_local, (1 << 20) + (1 << 12));
  l.receives_grad = false;
  EXPECT_EQ(model::train_terms(l, model::LayerState{}, ctx).backward_local, 1 << 12);
  EXPECT_FALSE(ModelGraph::from_json_text(R"({"layers": [{"index": 0, "name": "e", "kind": "embedding",
      "param_bytes": 0, "activation_bytes": 0, "receives_grad": false}]})").layers[0].receives_grad);
  EXPECT_TRUE(ModelGraph::from_json_text(R"({"layers": [{"index": 0, "name": "e", "kind": "embedding",
      "param_bytes": 0, "activation_bytes": 0}]})").layers[0].receives_grad);  // absent: a gradient arrives
}

TEST(Engine, TiledOutputHeadIsFusedWithItsLoss) {
  const Layer head = head_layer("lm_head"), mlp = head_layer("mlp");
  model::StepContext ctx;
  model::LayerState tiled;
  tiled.chunks = 8;
  // working set: one slice's float32 logits and a copy of the input
  const std::int64_t held = (3 << 20) + (12 << 20), body = (3 << 20) + (64 << 20) / 8;
  const model::TrainTerms fused = model::train_terms(head, tiled, ctx);
  EXPECT_EQ(fused.saved, held);
  EXPECT_EQ(fused.forward_local, (3 << 20) + held + body);
  EXPECT_EQ(fused.backward_local, held + (3 << 20) + body);
  // An MLP tiled the same way accumulates its whole output and keeps its input.
  const model::TrainTerms plain = model::train_terms(mlp, tiled, ctx);
  EXPECT_EQ(plain.saved, 3 << 20);
  EXPECT_EQ(plain.forward_local, (3 << 20) + (64 << 20) + ((67 + 128) << 20) / 8);
  // Half precision: the weight gradient is accumulated in float32 (twice its bytes), and a
  // slice's logits exist in float32 and in half at once, beside its input in float32.
  ctx.element_bytes = 2;
  EXPECT_EQ(model::train_terms(head, tiled, ctx).saved, (3 << 20) + (24 << 20));
  EXPECT_EQ(model::train_terms(head, tiled, ctx).forward_local,
            (3 << 20) + (3 << 20) + (24 << 20) + (3 << 20) + ((128 + 64 + 6) << 20) / 8);
  ctx.element_bytes = 4;
  // Logits below the parameters' dtype (autocast) are told by their bytes per element.
  Layer autocast = head;
  autocast.dims.batch = 8, autocast.dims.seq = 256, autocast.dims.vocab = 16384;  // 2 bytes each
  EXPECT_EQ(model::train_terms(autocast, tiled, ctx).forward_local,
            (3 << 20) + held + (3 << 20) + ((128 + 64 + 6) << 20) / 8);
  // A head tied to the embedding (its parameters counted there) still fills a
  // vocab x hidden float32 gradient.
  Layer tied = head;
  tied.param_bytes = tied.grad_bytes = 0;
  tied.dims.vocab = 8192;
  tied.dims.hidden = 384;
  EXPECT_EQ(model::train_terms(tied, tiled, ctx).saved, (3 << 20) + 8192 * 384 * 4);
  // The fused loss's buffers are not saved tensors: activation offload cannot move them.
  model::LayerState offloaded = tiled;
  offloaded.offload_activations = true;
  EXPECT_EQ(model::train_terms(head, offloaded, ctx).saved, held);
  EXPECT_EQ(model::train_terms(head, offloaded, ctx).activation_window, 0);

  // Its first tiling costs only one more chunk (latency + weight and gradient traffic);
  // an MLP's also pays one recompute.
  ModelGraph g;
  g.layers = {head};
  g.batch = 8;
  g.seq = 256;
  const cost::Rates rates;
  const rules::RuleContext rc{g, ctx, rates};
  const rules::Candidate head_tile = rules::tile_rule(head, model::LayerState{}, rc);
  const rules::Candidate mlp_tile = rules::tile_rule(mlp, model::LayerState{}, rc);
  ASSERT_TRUE(head_tile.eligible);
  ASSERT_TRUE(mlp_tile.eligible);
  // bytes it saves: saved 67 -> 15 MiB; own peak 259 MiB (backward: logits gradient +
  // saved + transient) -> 53 MiB (input + buffers + input copy + a 32 MiB slice)
  const double head_cost = head_tile.cost_per_byte * (67 - 15 + 259 - 53) * (1 << 20);
  EXPECT_NEAR(head_cost, rules::kTileChunkLatencyS + 2.0 * (24 << 20) / rates.memory, 1e-9);
  EXPECT_GT(mlp_tile.cost_per_byte, 20 * head_tile.cost_per_byte);
  EXPECT_NE(head_tile.reason.find("head + loss fused"), std::string::npos) << head_tile.reason;
  EXPECT_FALSE(rules::activation_offload_rule(head, tiled, rc).eligible);
  // A tied head reads and accumulates the same weight: each chunk costs the same.
  EXPECT_DOUBLE_EQ(rules::tile_chunk_seconds(tied, rc), rules::tile_chunk_seconds(head, rc));
}

}  // namespace
}  // namespace memscale::test

namespace memscale {
namespace {

TEST(EngineLayerBytes, ByKindAddsUpToTheLayerTotalsAndShowsTheTechnique) {
  ModelGraph g;
  for (int i = 0; i < 4; ++i) {
    Layer l;
    l.index = i;
    l.name = "blocks." + std::to_string(i);
    l.kind = "block";
    l.param_bytes = 1000;
    l.grad_bytes = 1000;
    l.optimizer_bytes = 2000;
    l.activation_bytes = 50000;
    l.input_bytes = l.output_bytes = 1000;
    g.layers.push_back(l);
  }
  Hardware hw;
  hw.host_total_bytes = hw.host_available_bytes = 1ull << 30;
  const Plan p = plan(g, hw, Config::from_json_text(R"({"memory_budget": 150000, "techniques": {"offload_activations": "off", "offload_weights": "off"}})"));
  bool checkpointed = false;
  for (const auto& l : p.layers) {
    EXPECT_EQ(l.before.weights + l.before.optimizer + l.before.activations, l.bytes_before) << l.name;
    EXPECT_EQ(l.after.weights + l.after.optimizer + l.after.activations, l.bytes_after) << l.name;
    EXPECT_EQ(l.before.grads, 1000u);
    if (l.has("checkpoint")) {
      checkpointed = true;
      EXPECT_EQ(l.before.activations, 50000u);
      EXPECT_EQ(l.after.activations, 1000u);  // only the input is kept as the recompute boundary
    }
  }
  EXPECT_TRUE(checkpointed);
}

}  // namespace
}  // namespace memscale

namespace memscale {
namespace {
using namespace memscale::test;

TEST(Engine, GpuBlasWorkspaceIsResidentThroughTheStep) {
  Hardware hw = fixture_hardware("gpu_24gib.json");
  const ModelGraph g = fixture_graph("gpt2_small_train.json");
  const std::uint64_t without = unoptimized_peak(g, hw);
  const std::uint64_t workspace = 65u << 20;
  hw.devices.at(0).workspace_bytes = workspace;
  ASSERT_TRUE(g.training);
  EXPECT_EQ(unoptimized_peak(g, hw), without + 2 * workspace) << "forward's thread and autograd's thread";
  const Plan p = plan(g, hw, budget_config(without));
  EXPECT_LE(p.predicted_peak_bytes, without) << "the plan makes room for the workspace";
  EXPECT_GT(p.layers.size(), 0u);
  const Hardware back = Hardware::from_json_text(hw.to_json_text());
  EXPECT_EQ(back.devices.at(0).workspace_bytes, workspace);
}

}  // namespace
}  // namespace memscale

namespace memscale {
namespace {
using namespace memscale::test;

/// A graph whose step peaks at the optimizer step: weights dominate, activations are small.
ModelGraph weight_heavy_graph(const std::string& impl) {
  ModelGraph g;
  g.model_name = "WeightHeavy";
  g.optimizer = "adamw";
  g.optimizer_impl = impl;
  g.largest_param_bytes = 1u << 20;
  for (int i = 0; i < 4; ++i) {
    Layer l;
    l.index = i;
    l.name = "blocks." + std::to_string(i);
    l.kind = "block";
    l.param_bytes = l.grad_bytes = 1u << 20;
    l.optimizer_bytes = 2u << 20;
    l.activation_bytes = l.input_bytes = l.output_bytes = 1024;
    g.layers.push_back(l);
  }
  return g;
}

TEST(Engine, OptimizerStepTemporariesFollowHowItSteps) {
  const Hardware cpu = fixture_hardware("cpu_24gib.json"), gpu = fixture_hardware("gpu_24gib.json");
  const std::uint64_t grads = 4u << 20, largest = 1u << 20;
  const std::uint64_t fused = unoptimized_peak(weight_heavy_graph("fused"), cpu);
  EXPECT_EQ(unoptimized_peak(weight_heavy_graph("foreach"), cpu), fused + grads) << "one copy of the parameters";
  EXPECT_EQ(unoptimized_peak(weight_heavy_graph("per_tensor"), cpu), fused + 3 * largest) << "3 x the largest tensor";
  EXPECT_EQ(unoptimized_peak(weight_heavy_graph("default"), cpu), fused + 3 * largest) << "torch's CPU default";
  // with the order the step visits the tensors: the previous denominator + two of the current
  ModelGraph ordered = weight_heavy_graph("per_tensor");
  ordered.trainable_param_bytes = {largest, 1u << 16, largest, 1u << 16};
  EXPECT_EQ(unoptimized_peak(ordered, cpu), fused + (1u << 16) + 2 * largest) << "previous + 2 x current";
  EXPECT_EQ(ModelGraph::from_json_text(ordered.to_json_text()).trainable_param_bytes, ordered.trainable_param_bytes);
  EXPECT_EQ(unoptimized_peak(weight_heavy_graph("default"), gpu), unoptimized_peak(weight_heavy_graph("foreach"), gpu))
      << "torch's CUDA default";
  nlohmann::json j = nlohmann::json::parse(weight_heavy_graph("foreach").to_json_text());
  EXPECT_EQ(j.at("optimizer_impl"), "foreach");
  j["optimizer_impl"] = "vectorised";
  try {
    ModelGraph::from_json_text(j.dump());
    ADD_FAILURE() << "an unknown optimizer_impl was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("graph.optimizer_impl"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace memscale

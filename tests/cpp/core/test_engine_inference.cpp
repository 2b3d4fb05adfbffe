// Inference plans the pager runs as they are: the prefetch window the memory model counts,
// the resident limit, and the refusals that leave the pager nothing to run.
#include "engine_fixtures.hpp"
#include "memscale/core/pager.hpp"

namespace memscale::test {
namespace {

/// A CPU-only decoder: embedding and head of 4 MB, `blocks` blocks of 1 MB, a small KV cache.
ModelGraph decoder(int blocks) { return inference_decoder(blocks, 4'000'000, 1'000'000, 4096); }

Hardware cpu() { return cpu_only_hardware(); }

bool traced(const Plan& p, const std::string& text) {
  for (const auto& t : p.trace)
    if (t.find(text) != std::string::npos) return true;
  return false;
}

TEST(InferencePlan, CountsAShallowerPrefetchWindowRatherThanRefuse) {
  const ModelGraph g = decoder(8);
  // 6 MB: no plan holds the 4 MB embedding with one 4 MB layer prefetched behind it, but the
  // embedding alone (the pager prefetches only where its resident limit has room) fits.
  const Plan p = plan(g, cpu(), budget_config(6'000'000));
  EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
  EXPECT_EQ(p.offload.policy, "budget");
  EXPECT_EQ(p.offload.prefetch_n_ahead, 1u);  // what the pager runs, as far as ram_bytes has room
  EXPECT_TRUE(traced(p, "the memory model counts 0")) << p.to_json_text();
  std::uint64_t resident = 0, largest = 0;
  for (std::size_t l = 0; l < g.layers.size(); ++l) {
    if (p.layers[l].has("offload_weights")) largest = std::max(largest, g.layers[l].param_bytes);
    else resident += g.layers[l].param_bytes;
  }
  EXPECT_EQ(p.offload.ram_bytes, resident + largest);  // the window counted: the layer computing alone
  // A roomier budget keeps the configured window.
  const Plan roomy = plan(g, cpu(), budget_config(12'000'000));
  EXPECT_FALSE(traced(roomy, "the memory model counts"));
  // Refused only when even the layer computing alone does not fit; the minimum is that plan's.
  try {
    plan(g, cpu(), budget_config(3'000'000));
    FAIL();
  } catch (const InfeasibleBudgetError& e) {
    EXPECT_LT(e.min_budget_bytes(), 6'000'000u);
    EXPECT_LE(plan(g, cpu(), budget_config(e.min_budget_bytes())).predicted_peak_bytes, e.min_budget_bytes());
  }
}

TEST(InferencePlan, AnExplicitRamLimitTooSmallForThePrefetchWindowIsPlannedNotRefused) {
  const ModelGraph g = decoder(8);
  // 6 MB of ram_bytes: the 4 MB head and embedding cannot each have a 4 MB layer behind them.
  const Plan p = plan(g, cpu(), budget_config(20'000'000, R"("offload": {"policy": "budget", "ram_bytes": 6000000, "prefetch_n_ahead": 2})"));
  EXPECT_EQ(p.offload.prefetch_n_ahead, 2u);
  EXPECT_LE(p.offload.ram_bytes, 6'000'000u);
  EXPECT_TRUE(traced(p, "offload.ram_bytes 5.72 MiB cannot hold 2 layer(s) ahead")) << p.to_json_text();
  // Below the layer computing alone it is the pager's own refusal, from the engine.
  try {
    plan(g, cpu(), budget_config(20'000'000, R"("offload": {"policy": "budget", "ram_bytes": 3000000})"));
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("the largest paged layer \"embed\""), std::string::npos) << e.what();
  }
  // ram_bytes above the budget cannot be a resident limit inside it.
  try {
    plan(g, cpu(), budget_config(5'000'000, R"("offload": {"policy": "budget", "ram_bytes": 6000000})"));
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("offload.ram_bytes: got 6000000 (5.72 MiB), more than memory_budget 5000000"),
              std::string::npos)
        << e.what();
  }
}

TEST(InferencePlan, AnExplicitRamLimitIsUsedOnlyAsFarAsTheBudgetHasRoom) {
  const ModelGraph g = decoder(8);
  const Plan p = plan(g, cpu(), budget_config(10'000'000, R"("offload": {"policy": "budget", "ram_bytes": 10000000})"));
  EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
  // The pager may hold what the plan counted plus the budget's headroom over the counted
  // peak, never ram_bytes itself.
  std::uint64_t resident = 0, largest = 0, paged = 0;
  for (std::size_t l = 0; l < g.layers.size(); ++l) {
    const std::uint64_t w = g.layers[l].param_bytes;
    if (p.layers[l].has("offload_weights")) largest = std::max(largest, w), paged += w;
    else resident += w;
  }
  const std::uint64_t counted = resident + std::min(paged, 2 * largest);  // the default prefetch of 1
  const std::uint64_t counted_peak = p.predicted_peak_bytes - p.offload.predicted_resident_bytes + counted;
  ASSERT_LT(counted_peak, p.budget_bytes);
  EXPECT_EQ(p.offload.ram_bytes, counted + (p.budget_bytes - counted_peak));
  EXPECT_LT(p.offload.ram_bytes, 10'000'000u);
  EXPECT_LE(p.offload.predicted_resident_bytes, p.offload.ram_bytes);
}

/// Storage that moves nothing: the pager's books are what these tests read.
class NullStorage : public PagerStorage {
 public:
  void load(std::size_t) override {}
  void evict(std::size_t) override {}
};

enum class Timing { prefetch_done_before_next_acquire, no_prefetch, concurrent };

/// The real LayerPager's peak_physical_bytes serving `forwards` forwards of `in.accesses`.
std::uint64_t pager_peak(const PagerModelInput& in, Timing timing, int forwards = 3) {
  std::vector<PagedLayer> layers;
  for (std::size_t i = 0; i < in.layers.size(); ++i)
    layers.push_back({"u" + std::to_string(i), "block", in.layers[i].bytes, WeightTier::disk, in.layers[i].pinned});
  OffloadPolicy policy;
  policy.kind = OffloadPolicy::Kind::budget;
  policy.ram_bytes = in.ram_bytes;
  policy.prefetch_n_ahead = in.prefetch_n_ahead;
  PagerOptions options;
  options.initially_resident = false;
  options.prefetch_thread = timing != Timing::no_prefetch;
  LayerPager pager(layers, policy, std::make_shared<NullStorage>(), options);
  for (int f = 0; f < forwards; ++f)
    for (std::size_t unit : in.accesses) {
      pager.acquire(unit);
      if (timing == Timing::prefetch_done_before_next_acquire) pager.wait_idle();
      pager.release(unit);
    }
  if (timing != Timing::no_prefetch) pager.wait_idle();  // without the thread the queue is never served
  return pager.stats().peak_physical_bytes;
}

/// The engine's replay of the pager (pager_model.hpp) against the pager itself: units of
/// uneven sizes, pinned or not, a tied unit acquired twice per forward, every resident
/// limit from the smallest the pager accepts to all of it, depths 0-3. The replay is the
/// pager's peak in both timing extremes, and bounds it when prefetch runs concurrently.
TEST(PagerModel, TheReplayedPeakIsWhatTheLayerPagerHolds) {
  for (bool tied : {false, true}) {
    // Embedding, blocks, norm, head; a tied head has no unit of its own.
    std::vector<std::uint64_t> sizes = {400, 100, 130, 100, 100, 170, 100, 3, 400};
    if (tied) sizes.pop_back();
    for (int pin : {-1, 0, 5}) {
      PagerModelInput in;
      for (std::size_t i = 0; i < sizes.size(); ++i) in.layers.push_back({sizes[i], static_cast<int>(i) == pin});
      for (std::size_t i = 0; i < sizes.size(); ++i) in.accesses.push_back(i);
      if (tied) in.accesses.push_back(0);  // the head's call acquires the embedding's unit again
      std::uint64_t pinned = 0, largest = 0, total = 0;
      for (const auto& l : in.layers) {
        total += l.bytes;
        if (l.pinned) pinned += l.bytes;
        else largest = std::max(largest, l.bytes);
      }
      for (std::uint64_t ram = pinned + largest; ram <= total + 50; ram += 37) {
        for (std::uint64_t depth = 0; depth <= 3; ++depth) {
          in.ram_bytes = ram;
          in.prefetch_n_ahead = depth;
          const std::uint64_t predicted = predicted_resident_peak(in);
          const std::uint64_t fast = pager_peak(in, Timing::prefetch_done_before_next_acquire);
          const std::uint64_t slow = pager_peak(in, Timing::no_prefetch);
          SCOPED_TRACE("tied " + std::to_string(tied) + " pin " + std::to_string(pin) + " ram " + std::to_string(ram) +
                       " depth " + std::to_string(depth));
          EXPECT_EQ(predicted, std::max(fast, slow));
          EXPECT_LE(predicted, ram);
          EXPECT_LE(pager_peak(in, Timing::concurrent), predicted);
        }
      }
    }
  }
}

TEST(PagerModel, AnLruPagerFillsItsLimitWhateverTheDepth) {
  // Eight units of 100 and a limit of 450: the pager keeps released units until a load
  // needs their room, so it holds four units at any depth, not "the one computing + n ahead".
  PagerModelInput in;
  for (std::size_t i = 0; i < 8; ++i) in.layers.push_back({100, false}), in.accesses.push_back(i);
  in.ram_bytes = 450;
  for (std::uint64_t depth = 0; depth <= 3; ++depth) {
    in.prefetch_n_ahead = depth;
    EXPECT_EQ(predicted_resident_peak(in), 400u) << depth;
  }
  in.ram_bytes = 50;
  EXPECT_THROW(predicted_resident_peak(in), MemScaleError);
}

/// The pager a plan describes, replayed on the real LayerPager.
PagerModelInput pager_of(const ModelGraph& g, const Plan& p) {
  std::vector<model::LayerState> states(g.layers.size());
  for (std::size_t l = 0; l < g.layers.size(); ++l) states[l].offload_weights = p.layers[l].has("offload_weights");
  return engine_detail::pager_model_input(g, states, p.offload.ram_bytes, p.offload.prefetch_n_ahead);
}

TEST(InferencePlan, ThePredictedResidentPeakIsWhatThePagerHoldsAndWhatThePlanCharges) {
  ModelGraph g = decoder(8);
  for (auto& l : g.layers) l.kv_cache_bytes = 0;  // weights and the reservation alone: the peak is their sum
  std::uint64_t weights = 0;
  for (const auto& l : g.layers) weights += l.param_bytes;
  for (int percent = 30; percent <= 95; percent += 5) {
    for (int depth : {1, 2, 3}) {
      const auto budget = weights * static_cast<std::uint64_t>(percent) / 100;
      // Policy none (the engine decides to page) prefetches 1 ahead; the user's policy any depth.
      for (bool explicit_policy : {false, true}) {
        if (!explicit_policy && depth != 1) continue;
        const std::string offload = explicit_policy ? R"("offload": {"policy": "budget", "ram_bytes": )" +
                                                          std::to_string(budget) + R"(, "prefetch_n_ahead": )" +
                                                          std::to_string(depth) + "}"
                                                    : R"("offload": {"disk_dir": ""})";
        SCOPED_TRACE(std::to_string(percent) + "% of the weights, " + offload);
        const Plan p = plan(g, cpu(), budget_config(budget, offload));
        ASSERT_EQ(p.offload.policy, "budget");
        EXPECT_EQ(p.offload.prefetch_n_ahead, static_cast<std::uint64_t>(depth));
        const PagerModelInput in = pager_of(g, p);
        const std::uint64_t held = std::max(pager_peak(in, Timing::prefetch_done_before_next_acquire),
                                            pager_peak(in, Timing::no_prefetch));
        EXPECT_EQ(p.offload.predicted_resident_bytes, held);
        EXPECT_LE(p.offload.predicted_resident_bytes, p.offload.ram_bytes);
        // The plan's peak charges the replayed weights beside the reservation.
        EXPECT_EQ(p.predicted_peak_bytes, p.offload.predicted_resident_bytes + p.reservation.per_device_bytes);
        EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
      }
    }
  }
}

/// Parameters kept on the device + the window of `depth` paged layers ahead: what the
/// memory model counted before the replay.
std::uint64_t counted_window(const ModelGraph& g, const Plan& p, std::uint64_t depth) {
  std::uint64_t kept = 0, largest = 0, paged = 0;
  for (std::size_t l = 0; l < g.layers.size(); ++l) {
    const std::uint64_t w = g.layers[l].param_bytes;
    if (p.layers[l].has("offload_weights")) largest = std::max(largest, w), paged += w;
    else kept += w;
  }
  return kept + std::min(paged, (1 + depth) * largest);
}

TEST(InferencePlan, WhereTheLimitHasRoomBeyondTheCountedWindowThePlanChargesWhatThePagerHolds) {
  // Blocks of 1 MB and 0.3 MB: a user's ram_bytes granted the budget's headroom over the
  // counted peak can hold a small block beyond the counted window, and the LRU keeps it.
  ModelGraph g = decoder(8);
  for (auto& l : g.layers) {
    l.kv_cache_bytes = 0;
    if (l.kind == "block" && l.index % 2 == 0) l.param_bytes = 300'000;
  }
  int above = 0;
  for (int percent = 25; percent <= 100; ++percent) {
    for (std::uint64_t depth = 1; depth <= 3; ++depth) {
      const std::uint64_t budget = 16'000'000ull * static_cast<std::uint64_t>(percent) / 100;
      SCOPED_TRACE(std::to_string(budget) + " bytes, depth " + std::to_string(depth));
      Plan p;
      try {
        p = plan(g, cpu(), budget_config(budget, R"("offload": {"policy": "budget", "ram_bytes": )" + std::to_string(budget) +
                                                     R"(, "prefetch_n_ahead": )" + std::to_string(depth) + "}"));
      } catch (const InfeasibleBudgetError&) {
        continue;
      }
      const PagerModelInput in = pager_of(g, p);
      EXPECT_EQ(p.offload.predicted_resident_bytes, std::max(pager_peak(in, Timing::prefetch_done_before_next_acquire),
                                                             pager_peak(in, Timing::no_prefetch)));
      EXPECT_EQ(p.predicted_peak_bytes, p.offload.predicted_resident_bytes + p.reservation.per_device_bytes);
      EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
      above += p.offload.predicted_resident_bytes > counted_window(g, p, depth);
    }
  }
  EXPECT_GT(above, 0) << "no plan where the pager holds more than the counted window";
}

TEST(InferencePlan, ATiedHeadAcquiresItsEmbeddingsUnitAgain) {
  ModelGraph g = decoder(3);
  Layer& head = g.layers.back();
  head.param_bytes = 0;  // tied: its weight is the embedding's (model::layer_weights)
  head.dims.vocab = g.layers.front().dims.vocab = 1000;
  head.dims.hidden = g.layers.front().dims.hidden = 4000;
  std::vector<model::LayerState> states(g.layers.size());
  for (auto& s : states) s.offload_weights = true;
  const PagerModelInput in = engine_detail::pager_model_input(g, states, 6'000'000, 1);
  ASSERT_EQ(in.layers.size(), 4u);  // the head has no unit of its own
  EXPECT_EQ(in.accesses, (std::vector<std::size_t>{0, 1, 2, 3, 0}));
  // A head of another vocabulary is not the embedding's.
  head.dims.vocab = 999;
  EXPECT_EQ(engine_detail::pager_model_input(g, states, 6'000'000, 1).accesses, (std::vector<std::size_t>{0, 1, 2, 3}));
}

TEST(InferencePlan, ThePredictedResidentPeakRoundTripsThroughThePlanJson) {
  const Plan p = plan(decoder(8), cpu(), budget_config(8'000'000));
  ASSERT_GT(p.offload.predicted_resident_bytes, 0u);
  const Plan back = Plan::from_json_text(p.to_json_text());
  EXPECT_EQ(back.offload, p.offload);
  EXPECT_EQ(back.to_json_text(), p.to_json_text());
  EXPECT_NE(plan_summary(p).find("the pager holds " + format_bytes(p.offload.predicted_resident_bytes)), std::string::npos)
      << plan_summary(p);
}

TEST(InferencePlan, MaxPositionsRoundTripsThroughTheGraphJson) {
  ModelGraph g = decoder(1);
  g.max_positions = 2048;
  EXPECT_EQ(ModelGraph::from_json_text(g.to_json_text()).max_positions, 2048);
  g.max_positions = 0;
  EXPECT_EQ(ModelGraph::from_json_text(g.to_json_text()), g);
}

}  // namespace
}  // namespace memscale::test

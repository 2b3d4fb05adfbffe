// LayerPager under concurrent prefetch and seeded random access: the budget holds at
// every transition (in the pager's books and in the storage's own count), pinned layers
// are never evicted, and evictions follow LRU order.
#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "memscale/core/pager.hpp"

namespace memscale {
namespace {

using Kind = PagerEvent::Kind;

/// Storage that only counts: it checks, independently of the pager's books, that the
/// bytes it holds never exceed the budget and that no layer is moved by two threads at once.
class CountingStorage : public PagerStorage {
 public:
  CountingStorage(std::vector<PagedLayer> layers, std::uint64_t budget, std::uint32_t seed, int max_delay_us)
      : layers_(std::move(layers)), budget_(budget), held_(layers_.size()), busy_(layers_.size()), rng_(seed),
        max_delay_us_(max_delay_us) {}

  void load(std::size_t i) override {
    enter(i);
    if (held_[i]) violate("load of a layer already held: " + layers_[i].name);
    const std::uint64_t now = bytes_ += layers_[i].bytes;
    if (now > budget_) violate("storage holds " + std::to_string(now) + " > budget " + std::to_string(budget_));
    held_[i] = true;
    delay();
    leave(i);
  }

  /// With `reuse`, behaves like a storage that hands the victims' memory to the layer:
  /// it holds max(victims, layer) bytes for the pair while moving.
  void move(const std::vector<std::size_t>& victims, std::size_t layer) override {
    if (!reuse) return PagerStorage::move(victims, layer);
    std::uint64_t vb = 0;
    for (std::size_t v : victims) {
      enter(v);
      if (!held_[v]) violate("move of a victim not held: " + layers_[v].name);
      vb += layers_[v].bytes;
    }
    enter(layer);
    const std::uint64_t b = layers_[layer].bytes;
    const std::uint64_t during = (bytes_ += (b > vb ? b - vb : 0));
    if (during > budget_) violate("storage holds " + std::to_string(during) + " > budget while moving");
    ++moves;
    delay();
    bytes_ -= (b > vb ? b - vb : 0);
    for (std::size_t v : victims) {
      held_[v] = false;
      bytes_ -= layers_[v].bytes;
      leave(v);
    }
    bytes_ += b;
    held_[layer] = true;
    leave(layer);
  }

  void evict(std::size_t i) override {
    enter(i);
    if (held_[i]) bytes_ -= layers_[i].bytes;
    held_[i] = false;
    delay();
    leave(i);
  }

  void mark_held(std::size_t i) {
    held_[i] = true;
    bytes_ += layers_[i].bytes;
  }
  bool held(std::size_t i) const { return held_[i]; }
  bool reuse = false;
  std::atomic<int> moves{0};
  std::vector<std::string> violations() {
    std::lock_guard g(mutex_);
    return violations_;
  }

 private:
  void enter(std::size_t i) {
    if (busy_[i].exchange(true)) violate("two threads move layer " + layers_[i].name + " at once");
  }
  void violate(const std::string& what) {
    std::lock_guard g(mutex_);
    violations_.push_back(what);
  }
  void leave(std::size_t i) { busy_[i] = false; }
  void delay() {
    if (max_delay_us_ <= 0) return;
    int us;
    {
      std::lock_guard g(mutex_);
      us = std::uniform_int_distribution<int>(0, max_delay_us_)(rng_);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(us));
  }

  std::vector<PagedLayer> layers_;
  std::uint64_t budget_;
  std::vector<std::atomic<bool>> held_;
  std::vector<std::atomic<bool>> busy_;
  std::atomic<std::uint64_t> bytes_{0};
  std::mutex mutex_;
  std::mt19937 rng_;
  int max_delay_us_;
  std::vector<std::string> violations_;
};

/// A GPT-like stack: embedding, n blocks of varying size, final norm, head.
std::vector<PagedLayer> gpt_layers(std::size_t blocks, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<PagedLayer> layers = {{"wte", "embedding", 400, WeightTier::disk}};
  for (std::size_t i = 0; i < blocks; ++i)
    layers.push_back({"blocks." + std::to_string(i), "block", std::uniform_int_distribution<std::uint64_t>(600, 1000)(rng),
                      WeightTier::disk});
  layers.push_back({"ln_f", "norm", 8, WeightTier::disk});
  layers.push_back({"head", "lm_head", 400, WeightTier::disk});
  return layers;
}

OffloadPolicy hot_policy(std::uint64_t ram, std::uint64_t last_n, std::uint64_t ahead) {
  OffloadPolicy p;
  p.kind = OffloadPolicy::Kind::pinned_hot_set;
  p.ram_bytes = ram;
  p.pin_embeddings = true;
  p.pin_output_head = true;
  p.pin_last_n_layers = last_n;
  p.prefetch_n_ahead = ahead;
  return p;
}

/// Checks the invariants on every event and keeps its own LRU ticks from the events.
class Checker {
 public:
  Checker(const std::vector<PagedLayer>& layers, const HotSet& hot, std::size_t ahead)
      : layers_(layers), hot_(hot), ahead_(ahead), last_use_(layers.size(), 0), unused_prefetch_(layers.size(), false),
        last_acquired_(layers.size()) {}

  void operator()(const PagerEvent& e) {
    ++events_;
    if (e.physical_bytes > e.budget_bytes) fail("physical " + std::to_string(e.physical_bytes) + " > budget");
    if (e.committed_bytes > e.budget_bytes) fail("committed " + std::to_string(e.committed_bytes) + " > budget");
    std::uint64_t physical = 0;
    for (std::size_t i = 0; i < e.states.size(); ++i) {
      const PageState s = e.states[i];
      if (s == PageState::loading || s == PageState::resident || s == PageState::evicting) physical += layers_[i].bytes;
      if (hot_.pinned[i] && s != PageState::resident) fail("pinned layer " + layers_[i].name + " is " + to_string(s));
      if (e.in_use[i] > 0 && s != PageState::resident) fail("held layer " + layers_[i].name + " is " + to_string(s));
    }
    if (physical - e.moving_bytes != e.physical_bytes) fail("books disagree with the states");
    switch (e.kind) {
      case Kind::acquire:
        last_use_[e.layer] = ++tick_;
        unused_prefetch_[e.layer] = false;
        if (!hot_.pinned[e.layer]) last_acquired_ = e.layer;
        break;
      case Kind::release: last_use_[e.layer] = ++tick_; break;
      case Kind::load_done: unused_prefetch_[e.layer] = e.by_prefetch; break;
      case Kind::evict_start: check_lru(e); ++evictions_; break;
      default: break;
    }
  }

  std::vector<std::string> failures;
  std::size_t events_ = 0, evictions_ = 0;

 private:
  void fail(const std::string& what) {
    if (failures.size() < 20) failures.push_back(what);
  }

  std::vector<bool> upcoming() const {
    std::vector<bool> up(layers_.size(), false);
    if (last_acquired_ >= layers_.size()) return up;
    std::size_t taken = 0;
    for (std::size_t step = 1; step < layers_.size() && taken < ahead_; ++step) {
      const std::size_t next = (last_acquired_ + step) % layers_.size();
      if (hot_.pinned[next]) continue;
      up[next] = true;
      ++taken;
    }
    return up;
  }

  void check_lru(const PagerEvent& e) {
    const std::size_t v = e.layer;
    if (hot_.pinned[v]) fail("evicting pinned layer " + layers_[v].name);
    if (e.in_use[v] > 0) fail("evicting held layer " + layers_[v].name);
    const auto up = upcoming();
    auto cls = [&](std::size_t i) { return (unused_prefetch_[i] || up[i]) ? 1 : 0; };
    if (e.by_prefetch && cls(v) != 0) fail("a prefetch evicted " + layers_[v].name + ", loaded ahead or upcoming");
    for (std::size_t j = 0; j < layers_.size(); ++j) {
      if (j == v || hot_.pinned[j] || e.states[j] != PageState::resident || e.in_use[j] > 0) continue;
      if (e.by_prefetch && cls(j) != 0) continue;
      const bool older = cls(j) < cls(v) || (cls(j) == cls(v) && last_use_[j] < last_use_[v]);
      if (older) fail("LRU: evicted " + layers_[v].name + " (tick " + std::to_string(last_use_[v]) + ") before " +
                      layers_[j].name + " (tick " + std::to_string(last_use_[j]) + ")");
    }
  }

  std::vector<PagedLayer> layers_;
  HotSet hot_;
  std::size_t ahead_;
  std::uint64_t tick_ = 0;
  std::vector<std::uint64_t> last_use_;
  std::vector<bool> unused_prefetch_;
  std::size_t last_acquired_;
};

struct Scenario {
  std::uint32_t seed;
  std::size_t blocks, ahead, last_n, threads;
  double budget_scale;  ///< budget = hot set + this many average blocks
  bool reuse = false;   ///< the storage moves victims' memory to the loaded layer
};

void run_scenario(const Scenario& sc) {
  SCOPED_TRACE("seed " + std::to_string(sc.seed) + " ahead " + std::to_string(sc.ahead) + " threads " +
               std::to_string(sc.threads));
  const auto layers = gpt_layers(sc.blocks, sc.seed);
  OffloadPolicy policy = hot_policy(0, sc.last_n, sc.ahead);
  const HotSet probe = hot_set(layers, policy);
  policy.ram_bytes = probe.pinned_bytes + static_cast<std::uint64_t>(sc.budget_scale * 1000.0);
  const HotSet hot = hot_set(layers, policy);
  auto storage = std::make_shared<CountingStorage>(layers, policy.ram_bytes, sc.seed, 300);
  storage->reuse = sc.reuse;
  for (std::size_t i = 0; i < layers.size(); ++i)
    if (hot.pinned[i]) storage->mark_held(i);
  Checker checker(layers, hot, sc.ahead);
  PagerOptions options;
  options.initially_resident = false;
  options.observer = [&](const PagerEvent& e) { checker(e); };
  std::vector<std::vector<bool>> held_while_computing;
  {
    LayerPager pager(layers, policy, storage, options);
    std::vector<std::thread> threads;
    std::mutex failures_mutex;
    std::vector<std::string> access_failures;
    for (std::size_t t = 0; t < sc.threads; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937 rng(sc.seed * 31 + static_cast<std::uint32_t>(t));
        std::size_t at = 0;
        for (int step = 0; step < 400; ++step) {
          // Mostly the next layer (a forward pass / decoding loop), sometimes a jump.
          const int dice = std::uniform_int_distribution<int>(0, 9)(rng);
          at = dice < 7 ? (at + 1) % layers.size() : std::uniform_int_distribution<std::size_t>(0, layers.size() - 1)(rng);
          pager.acquire(at);
          if (!storage->held(at)) {
            std::lock_guard g(failures_mutex);
            access_failures.push_back("acquired layer " + layers[at].name + " is not held by the storage");
          }
          std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 200)(rng)));
          pager.release(at);
        }
      });
    }
    for (auto& th : threads) th.join();
    pager.wait_idle();
    const PagerStats s = pager.stats();
    EXPECT_LE(s.peak_physical_bytes, policy.ram_bytes);
    EXPECT_GT(s.evictions, 0u) << "the budget should force evictions";
    if (sc.ahead > 0) EXPECT_GT(s.prefetch_loads, 0u);
    EXPECT_EQ(s.acquires, 400u * sc.threads);
    EXPECT_TRUE(access_failures.empty()) << access_failures.front();
  }
  EXPECT_GT(checker.evictions_, 0u);
  if (sc.reuse) EXPECT_GT(storage->moves.load(), 0);
  for (const auto& f : storage->violations()) ADD_FAILURE() << f;
  for (const auto& f : checker.failures) ADD_FAILURE() << f;
}

TEST(Pager, RandomAccessWithPrefetchKeepsEveryInvariant) {
  for (std::uint32_t seed : {1u, 2u, 3u}) run_scenario({seed, 10, 2, 1, 1, 2.5});
}

TEST(Pager, TightBudgetAndDeepPrefetch) {
  for (std::uint32_t seed : {4u, 5u}) run_scenario({seed, 12, 4, 2, 1, 1.05});
}

TEST(Pager, TwoAcquiringThreadsAndPrefetch) {
  for (std::uint32_t seed : {6u, 7u}) run_scenario({seed, 8, 2, 0, 2, 3.0});
}

TEST(Pager, StorageThatReusesVictimMemoryStaysWithinBudget) {
  for (std::uint32_t seed : {11u, 12u}) run_scenario({seed, 10, 2, 1, 1, 2.2, true});
  run_scenario({13u, 8, 2, 0, 2, 3.0, true});
}

TEST(Pager, NoPrefetchEvictionsMatchAReferenceLru) {
  std::mt19937 rng(42);
  const auto layers = gpt_layers(9, 42);
  OffloadPolicy policy;
  policy.kind = OffloadPolicy::Kind::budget;
  policy.ram_bytes = 2600;
  policy.prefetch_n_ahead = 0;
  auto storage = std::make_shared<CountingStorage>(layers, policy.ram_bytes, 42, 0);
  std::vector<std::size_t> evicted;
  PagerOptions options;
  options.initially_resident = false;
  options.prefetch_thread = false;
  options.observer = [&](const PagerEvent& e) {
    if (e.kind == Kind::evict_start) evicted.push_back(e.layer);
  };
  LayerPager pager(layers, policy, storage, options);

  // Reference: ticks on acquire and release; evict least recent until the layer fits.
  std::vector<std::uint64_t> tick(layers.size(), 0);
  std::vector<bool> resident(layers.size(), false);
  std::uint64_t now = 0, bytes = 0;
  std::vector<std::size_t> expected;
  for (int step = 0; step < 500; ++step) {
    const std::size_t at = std::uniform_int_distribution<std::size_t>(0, layers.size() - 1)(rng);
    if (!resident[at]) {
      while (bytes + layers[at].bytes > policy.ram_bytes) {
        std::size_t victim = layers.size();
        for (std::size_t j = 0; j < layers.size(); ++j)
          if (resident[j] && (victim == layers.size() || tick[j] < tick[victim])) victim = j;
        resident[victim] = false;
        bytes -= layers[victim].bytes;
        expected.push_back(victim);
      }
      resident[at] = true;
      bytes += layers[at].bytes;
    }
    tick[at] = ++now;
    pager.acquire(at);
    tick[at] = ++now;
    pager.release(at);
    auto lru = pager.lru_order();
    ASSERT_FALSE(lru.empty());
    EXPECT_EQ(lru.back(), at) << "the layer just released is the most recently used";
  }
  EXPECT_GT(expected.size(), 100u);
  EXPECT_EQ(evicted, expected);
  EXPECT_EQ(pager.stats().demand_loads, pager.stats().loads);
}

TEST(Pager, PrefetchHidesLoadsBehindCompute) {
  const auto layers = gpt_layers(8, 9);
  OffloadPolicy policy = hot_policy(0, 0, 2);
  policy.ram_bytes = hot_set(layers, policy).pinned_bytes + 3000;
  // Loads take 2 ms, compute 6 ms: with two layers prefetched ahead almost nothing waits.
  class SlowStorage : public PagerStorage {
   public:
    void load(std::size_t) override { std::this_thread::sleep_for(std::chrono::milliseconds(2)); }
    void evict(std::size_t) override {}
  };
  PagerOptions options;
  options.initially_resident = false;
  LayerPager pager(layers, policy, std::make_shared<SlowStorage>(), options);
  for (int pass = 0; pass < 4; ++pass)
    for (std::size_t i = 0; i < layers.size(); ++i) {
      pager.acquire(i);
      std::this_thread::sleep_for(std::chrono::milliseconds(6));
      pager.release(i);
    }
  const PagerStats s = pager.stats();
  EXPECT_GT(s.prefetch_loads, s.demand_loads);
  EXPECT_GT(s.prefetch_hits, 0u);
  EXPECT_GT(s.hidden_fraction(), 0.5) << "waited " << s.acquire_wait_seconds << " s of " << s.load_seconds << " s loading";
}

TEST(Pager, PinnedLayersStayResidentAndAreNeverLoaded) {
  const auto layers = gpt_layers(6, 3);
  OffloadPolicy policy = hot_policy(0, 2, 1);
  const HotSet hot = hot_set(layers, policy);
  EXPECT_TRUE(hot.pinned.front());                // embedding
  EXPECT_TRUE(hot.pinned.back());                 // head
  EXPECT_TRUE(hot.pinned[layers.size() - 3]);     // blocks.5
  EXPECT_TRUE(hot.pinned[layers.size() - 4]);     // blocks.4
  EXPECT_FALSE(hot.pinned[layers.size() - 5]);    // blocks.3
  EXPECT_FALSE(hot.pinned[layers.size() - 2]);    // ln_f is not a block
  policy.ram_bytes = min_ram_bytes(hot);
  auto storage = std::make_shared<CountingStorage>(layers, policy.ram_bytes, 3, 0);
  std::vector<std::size_t> loaded;
  PagerOptions options;
  options.initially_resident = false;
  options.observer = [&](const PagerEvent& e) {
    if (e.kind == Kind::load_start) loaded.push_back(e.layer);
  };
  LayerPager pager(layers, policy, storage, options);
  for (int pass = 0; pass < 3; ++pass)
    for (std::size_t i = 0; i < layers.size(); ++i) {
      pager.acquire(i);
      EXPECT_EQ(pager.tier(i), WeightTier::device);
      pager.release(i);
    }
  pager.wait_idle();
  for (std::size_t i : loaded) EXPECT_FALSE(hot.pinned[i]) << layers[i].name;
  for (std::size_t i = 0; i < layers.size(); ++i)
    if (hot.pinned[i]) EXPECT_EQ(pager.state(i), PageState::resident);
}

TEST(Pager, InitiallyResidentModelIsEvictedDownToTheHotSet) {
  const auto layers = gpt_layers(4, 5);
  OffloadPolicy policy = hot_policy(0, 1, 1);
  const HotSet hot = hot_set(layers, policy);
  policy.ram_bytes = min_ram_bytes(hot) + 100;
  auto storage = std::make_shared<CountingStorage>(layers, 1u << 30, 5, 0);
  for (std::size_t i = 0; i < layers.size(); ++i) storage->mark_held(i);
  PagerOptions options;
  options.prefetch_thread = false;
  LayerPager pager(layers, policy, storage, options);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    EXPECT_EQ(storage->held(i), hot.pinned[i]) << layers[i].name;
    EXPECT_EQ(pager.tier(i), hot.pinned[i] ? WeightTier::device : WeightTier::disk);
  }
  EXPECT_EQ(pager.stats().physical_bytes, hot.pinned_bytes);
}

TEST(Pager, BudgetSmallerThanTheHotSetNamesItsSize) {
  const auto layers = gpt_layers(4, 8);
  OffloadPolicy policy = hot_policy(0, 2, 1);
  const HotSet hot = hot_set(layers, policy);
  policy.ram_bytes = hot.pinned_bytes - 1;
  try {
    validate_pager_layout(layers, policy);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("offload.ram_bytes"), std::string::npos) << m;
    EXPECT_NE(m.find("pinned hot set of " + std::to_string(hot.pinned_bytes)), std::string::npos) << m;
    EXPECT_NE(m.find("at least " + std::to_string(min_ram_bytes(hot))), std::string::npos) << m;
  }
  // Hot set fits but no unpinned layer can join it.
  policy.ram_bytes = hot.pinned_bytes + hot.largest_unpinned_bytes - 1;
  EXPECT_THROW(validate_pager_layout(layers, policy), ConfigError);
  policy.ram_bytes = hot.pinned_bytes + hot.largest_unpinned_bytes;
  EXPECT_NO_THROW(validate_pager_layout(layers, policy));
}

TEST(Pager, LayerLargerThanTheBudgetIsRefusedByName) {
  std::vector<PagedLayer> layers = {{"a", "block", 100, WeightTier::disk}, {"big", "block", 5000, WeightTier::disk}};
  OffloadPolicy policy;
  policy.kind = OffloadPolicy::Kind::budget;
  policy.ram_bytes = 4999;
  try {
    LayerPager pager(layers, policy, std::make_shared<CountingStorage>(layers, 4999, 1, 0));
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("\"big\" of 5000"), std::string::npos) << e.what();
  }
}

TEST(Pager, MalformedLayoutsAreRefused) {
  OffloadPolicy policy;
  policy.kind = OffloadPolicy::Kind::budget;
  policy.ram_bytes = 1000;
  std::vector<PagedLayer> twice = {{"a", "block", 1, WeightTier::disk}, {"a", "block", 1, WeightTier::disk}};
  EXPECT_THROW(validate_pager_layout(twice, policy), ConfigError);
  std::vector<PagedLayer> device_home = {{"a", "block", 1, WeightTier::device}};
  EXPECT_THROW(validate_pager_layout(device_home, policy), ConfigError);
  std::vector<PagedLayer> ok = {{"a", "block", 1, WeightTier::disk}, {"b", "block", 1, WeightTier::host}};
  PagerOptions options;
  options.order = {1, 1};
  EXPECT_THROW(LayerPager(ok, policy, std::make_shared<CountingStorage>(ok, 1000, 1, 0), options), ConfigError);
}

TEST(Pager, HoldingTooMuchOnOneThreadIsAnErrorNotAHang) {
  std::vector<PagedLayer> layers = {{"a", "block", 600, WeightTier::disk}, {"b", "block", 600, WeightTier::disk}};
  OffloadPolicy policy;
  policy.kind = OffloadPolicy::Kind::budget;
  policy.ram_bytes = 1000;
  PagerOptions options;
  options.initially_resident = false;
  LayerPager pager(layers, policy, std::make_shared<CountingStorage>(layers, 1000, 1, 0), options);
  pager.acquire(0);
  try {
    pager.acquire(1);
    FAIL() << "expected MemScaleError";
  } catch (const MemScaleError& e) {
    EXPECT_NE(std::string(e.what()).find("held by this thread"), std::string::npos) << e.what();
  }
  pager.release(0);
  EXPECT_NO_THROW(pager.acquire(1));
  pager.release(1);
  EXPECT_THROW(pager.release(1), MemScaleError);
}

TEST(Pager, ALoadFailureLeavesTheBooksClean) {
  std::vector<PagedLayer> layers = {{"a", "block", 100, WeightTier::disk}, {"b", "block", 100, WeightTier::disk}};
  class Failing : public PagerStorage {
   public:
    std::atomic<bool> fail{true};
    void load(std::size_t i) override {
      if (fail && i == 1) throw MemScaleError("disk read failed");
    }
    void evict(std::size_t) override {}
  };
  auto storage = std::make_shared<Failing>();
  OffloadPolicy policy;
  policy.kind = OffloadPolicy::Kind::budget;
  policy.ram_bytes = 150;
  PagerOptions options;
  options.initially_resident = false;
  LayerPager pager(layers, policy, storage, options);
  pager.acquire(0);
  pager.release(0);
  EXPECT_THROW(pager.acquire(1), MemScaleError);
  EXPECT_EQ(pager.state(1), PageState::absent);
  EXPECT_LE(pager.stats().physical_bytes, 150u);
  storage->fail = false;
  pager.acquire(1);
  EXPECT_EQ(pager.state(1), PageState::resident);
  pager.release(1);
}

}  // namespace
}  // namespace memscale

// LayerPager: residency of each layer's weights under an OffloadPolicy (weight residency policy), with
// LRU eviction of unpinned layers and a real background prefetch thread.
//
// The pager only keeps books and decides; a PagerStorage moves bytes (the torch layer
// implements it for CPU RAM / CUDA / pinned host / disk files, tests use a mock).
//
// Memory accounting: every layer is in one state.
//
//   absent ──► pending ──► loading ──► resident ──► evicting ──► absent
//              (room made,  (storage    (usable)     (storage
//               nothing     allocates                 frees)
//               allocated)  and reads)
//
//   physical  = bytes of loading + resident + evicting layers: what the storage holds.
//   committed = bytes of pending + loading + resident layers: what it will hold.
//
// A load is admitted (absent -> pending) only if committed + its bytes <= ram_bytes
// after choosing victims, and it starts allocating (pending -> loading) only once
// physical + its bytes <= ram_bytes, i.e. after the victims' memory is really freed. So
// physical never exceeds ram_bytes, prefetches in flight included. Tests check this at
// every transition through PagerOptions::observer.
//
// Evict-and-load in one call (PagerStorage::move): when the layer's bytes fit next to
// what is resident with its victims' memory counted only once (physical - victims +
// max(victims, layer) <= ram_bytes), the storage may reuse the victims' memory for the
// layer; the books count max(victims, layer) bytes for the pair while it runs. Otherwise
// the victims are evicted first and the load waits as above.
//
// Threading: one mutex guards the books; storage calls run outside it. Never log while
// holding it: the Python log sink takes the GIL, and a Python thread may hold the GIL
// while it waits for this mutex.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "memscale/core/errors.hpp"
#include "memscale/core/log.hpp"
#include "memscale/core/offload_policy.hpp"
#include "memscale/core/pager_layout.hpp"
#include "memscale/core/sizes.hpp"

namespace memscale {

/// Moves one layer's weights between its home tier and residency. Called outside the
/// pager's lock from the prefetch thread or an acquiring thread; never concurrently for
/// the same layer. When `load` is called the layer's bytes are already counted against
/// the budget. `evict` must free the resident copy (the home copy stays).
class PagerStorage {
 public:
  virtual ~PagerStorage() = default;
  virtual void load(std::size_t layer) = 0;
  virtual void evict(std::size_t layer) = 0;
  /// Evicts `victims` and loads `layer`, never holding more than the victims' bytes or
  /// the layer's bytes at once beyond what it held before (the pager counts the larger
  /// of the two while it runs). A storage may hand a victim's memory straight to the
  /// layer (no free, no fresh allocation to fault in). On failure the victims must be
  /// evicted and the layer not loaded. Default: evict all, then load.
  virtual void move(const std::vector<std::size_t>& victims, std::size_t layer) {
    for (std::size_t v : victims) evict(v);
    load(layer);
  }
};

enum class PageState { absent, pending, loading, resident, evicting };

inline const char* to_string(PageState s) {
  switch (s) {
    case PageState::pending: return "pending";
    case PageState::loading: return "loading";
    case PageState::resident: return "resident";
    case PageState::evicting: return "evicting";
    default: return "absent";
  }
}

/// One state transition, as the observer sees it (under the pager's lock).
struct PagerEvent {
  enum class Kind { acquire, release, evict_start, evict_done, pending, load_start, load_done, load_failed };
  Kind kind = Kind::acquire;
  std::size_t layer = 0;
  bool by_prefetch = false;  ///< load events: started by the prefetch thread
  std::uint64_t physical_bytes = 0, committed_bytes = 0, budget_bytes = 0;
  /// Bytes shared by victims and the layer replacing them during PagerStorage::move:
  /// physical_bytes = bytes of loading/resident/evicting layers - moving_bytes.
  std::uint64_t moving_bytes = 0;
  std::vector<PageState> states;  ///< every layer's state after the transition
  std::vector<int> in_use;        ///< every layer's acquire count after the transition
};

/// Counters since construction (or reset_stats). Times are wall seconds.
struct PagerStats {
  std::uint64_t budget_bytes = 0, pinned_bytes = 0;
  std::uint64_t physical_bytes = 0, peak_physical_bytes = 0;
  std::uint64_t acquires = 0, hits = 0, prefetch_hits = 0, late_prefetches = 0;
  std::uint64_t loads = 0, prefetch_loads = 0, demand_loads = 0, evictions = 0;
  std::uint64_t prefetch_dropped = 0, load_failures = 0, bytes_loaded = 0;
  double load_seconds = 0;          ///< inside PagerStorage::load, both threads
  double prefetch_load_seconds = 0;  ///< of which on the prefetch thread
  double acquire_wait_seconds = 0;   ///< acquire() blocked: waiting for a load or loading itself

  /// Share of load time the acquirers did not wait for (1 = fully hidden by prefetch).
  double hidden_fraction() const {
    if (load_seconds <= 0) return 1.0;
    return std::clamp(1.0 - acquire_wait_seconds / load_seconds, 0.0, 1.0);
  }
};

struct PagerOptions {
  /// Execution order of the layers (indices); empty = 0..n-1. Prefetch follows it.
  std::vector<std::size_t> order;
  /// After the last layer of `order` comes the first again (a decoding loop).
  bool cyclic = true;
  /// Layers start resident (the model was loaded in RAM): unpinned ones are evicted
  /// during construction. False: they start absent (the storage holds nothing yet).
  bool initially_resident = true;
  /// Start the prefetch thread (false: acquires load on demand only).
  bool prefetch_thread = true;
  /// Called under the lock after every transition (tests); leave empty in production.
  std::function<void(const PagerEvent&)> observer;
};

class LayerPager {
 public:
  /// Throws ConfigError (see validate_pager_layout) for budgets that cannot work.
  LayerPager(std::vector<PagedLayer> layers, OffloadPolicy policy, std::shared_ptr<PagerStorage> storage,
             PagerOptions options = {})
      : policy_(std::move(policy)), storage_(std::move(storage)), options_(std::move(options)) {
    if (!storage_) throw ConfigError("pager: storage is null");
    validate_pager_layout(layers, policy_);
    const HotSet hot = hot_set(layers, policy_);
    budget_ = policy_.kind == OffloadPolicy::Kind::none ? std::numeric_limits<std::uint64_t>::max() : policy_.ram_bytes;
    slots_.resize(layers.size());
    for (std::size_t i = 0; i < layers.size(); ++i) {
      slots_[i].info = std::move(layers[i]);
      slots_[i].pinned = hot.pinned[i];
    }
    pinned_bytes_ = hot.pinned_bytes;
    set_order_locked(options_.order);
    // Pinned layers are resident from the start; the others are evicted now when the
    // model arrived fully loaded.
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i].pinned) {
        slots_[i].state = PageState::resident;
        physical_ += slots_[i].info.bytes;
        committed_ += slots_[i].info.bytes;
      } else if (options_.initially_resident) {
        storage_->evict(i);
      }
    }
    stats_.peak_physical_bytes = physical_;
    log::info("pager: " + std::to_string(slots_.size()) + " layers, " + std::to_string(hot.pinned_count()) +
              " pinned (" + format_bytes(pinned_bytes_) + "), budget " +
              (policy_.kind == OffloadPolicy::Kind::none ? std::string("unlimited") : format_bytes(budget_)) +
              ", prefetch " + std::to_string(policy_.prefetch_n_ahead) + " ahead");
    if (options_.prefetch_thread) worker_ = std::thread([this] { prefetch_loop(); });
  }

  LayerPager(const LayerPager&) = delete;
  LayerPager& operator=(const LayerPager&) = delete;

  ~LayerPager() { stop(); }

  /// Blocks until `layer` is resident, then holds it (it cannot be evicted) until the
  /// matching release(). Queues a prefetch of the next prefetch_n_ahead layers.
  /// Throws MemScaleError when the layer cannot fit because this thread itself holds
  /// the layers that would have to go (waiting would never end).
  void acquire(std::size_t layer) {
    std::unique_lock lock(mutex_);
    check_index(layer, "acquire");
    Slot& slot = slots_[layer];
    ++stats_.acquires;
    if (slot.pinned) {
      hold(layer);
      return;
    }
    const auto start = Clock::now();
    bool waited = slot.state != PageState::resident;
    if (!waited) ++stats_.hits;
    if (!waited && slot.unused_prefetch) ++stats_.prefetch_hits;
    if (slot.state == PageState::pending || slot.state == PageState::loading) ++stats_.late_prefetches;
    while (slot.state != PageState::resident) {
      if (slot.state == PageState::absent) {
        remove_from_queue(layer);
        if (start_load(lock, layer, /*by_prefetch=*/false)) continue;
        if (!can_progress()) throw stuck_error(layer);
      }
      cv_.wait(lock);
    }
    if (waited) stats_.acquire_wait_seconds += seconds_since(start);
    hold(layer);
    slot.unused_prefetch = false;
    schedule_prefetch(layer);
  }

  /// Ends one acquire() of `layer`: it becomes evictable (most recently used).
  void release(std::size_t layer) {
    std::unique_lock lock(mutex_);
    check_index(layer, "release");
    Slot& slot = slots_[layer];
    if (slot.in_use == 0)
      throw MemScaleError("pager: release of layer \"" + slot.info.name + "\" that is not acquired");
    --slot.in_use;
    auto mine = std::find(slot.holders.begin(), slot.holders.end(), std::this_thread::get_id());
    slot.holders.erase(mine != slot.holders.end() ? mine : slot.holders.begin());
    slot.last_use = ++tick_;
    emit(PagerEvent::Kind::release, layer, false);
    cv_.notify_all();
  }

  /// Asks the prefetch thread to load `layer` (a hint: dropped if it cannot fit without
  /// evicting layers needed sooner).
  void prefetch(std::size_t layer) {
    std::unique_lock lock(mutex_);
    check_index(layer, "prefetch");
    if (slots_[layer].pinned || slots_[layer].state != PageState::absent) return;
    queue_.push_back(layer);
    cv_.notify_all();
  }

  /// Replaces the execution order prefetch follows.
  void set_order(const std::vector<std::size_t>& order) {
    std::unique_lock lock(mutex_);
    set_order_locked(order);
  }

  /// Waits until the prefetch queue is empty and nothing is loading or evicting.
  void wait_idle() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return (queue_.empty() || stopping_) && !worker_busy_ && !in_flight(); });
  }

  /// Stops the prefetch thread (after its current load). Later acquires load on demand.
  void stop() {
    {
      std::unique_lock lock(mutex_);
      stopping_ = true;
      queue_.clear();
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  std::size_t size() const { return slots_.size(); }
  const PagedLayer& layer(std::size_t i) const { return slots_.at(i).info; }
  bool pinned(std::size_t i) const { return slots_.at(i).pinned; }
  std::uint64_t budget_bytes() const { return budget_; }
  const OffloadPolicy& policy() const { return policy_; }

  std::size_t index_of(const std::string& name) const {
    for (std::size_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].info.name == name) return i;
    throw MemScaleError("pager: no layer named \"" + name + "\"");
  }

  PageState state(std::size_t i) const {
    std::unique_lock lock(mutex_);
    return slots_.at(i).state;
  }

  /// device while resident, else the layer's home tier.
  WeightTier tier(std::size_t i) const {
    std::unique_lock lock(mutex_);
    const Slot& s = slots_.at(i);
    return s.state == PageState::resident || s.state == PageState::evicting ? WeightTier::device : s.info.home;
  }

  /// Resident, unpinned layers, least recently used first (the eviction order).
  std::vector<std::size_t> lru_order() const {
    std::unique_lock lock(mutex_);
    std::vector<std::size_t> out;
    for (std::size_t i = 0; i < slots_.size(); ++i)
      if (!slots_[i].pinned && slots_[i].state == PageState::resident) out.push_back(i);
    std::sort(out.begin(), out.end(), [&](std::size_t a, std::size_t b) { return slots_[a].last_use < slots_[b].last_use; });
    return out;
  }

  PagerStats stats() const {
    std::unique_lock lock(mutex_);
    PagerStats s = stats_;
    s.budget_bytes = policy_.kind == OffloadPolicy::Kind::none ? 0 : budget_;
    s.pinned_bytes = pinned_bytes_;
    s.physical_bytes = physical_;
    return s;
  }

  /// Zeroes the counters; the peak restarts from the bytes resident now.
  void reset_stats() {
    std::unique_lock lock(mutex_);
    stats_ = PagerStats{};
    stats_.peak_physical_bytes = physical_;
  }

 private:
  using Clock = std::chrono::steady_clock;

  struct Slot {
    PagedLayer info;
    bool pinned = false;
    PageState state = PageState::absent;
    int in_use = 0;
    std::vector<std::thread::id> holders;
    std::uint64_t last_use = 0;   ///< LRU tick of the last acquire/release
    bool unused_prefetch = false;  ///< loaded by prefetch, not acquired since
  };

  static double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

  void check_index(std::size_t i, const char* what) const {
    if (i >= slots_.size())
      throw MemScaleError(std::string("pager: ") + what + " of layer index " + std::to_string(i) + ", but there are " +
                          std::to_string(slots_.size()) + " layers");
  }

  void set_order_locked(const std::vector<std::size_t>& order) {
    std::vector<std::size_t> o = order;
    if (o.empty())
      for (std::size_t i = 0; i < slots_.size(); ++i) o.push_back(i);
    std::vector<bool> seen(slots_.size(), false);
    for (std::size_t k = 0; k < o.size(); ++k) {
      if (o[k] >= slots_.size())
        throw ConfigError("pager order[" + std::to_string(k) + "]: got " + std::to_string(o[k]) + ", expected a layer index below " +
                          std::to_string(slots_.size()));
      if (seen[o[k]]) throw ConfigError("pager order[" + std::to_string(k) + "]: layer " + std::to_string(o[k]) + " appears twice");
      seen[o[k]] = true;
    }
    order_ = std::move(o);
    position_.assign(slots_.size(), npos);
    for (std::size_t k = 0; k < order_.size(); ++k) position_[order_[k]] = k;
    upcoming_.assign(slots_.size(), false);
  }

  void hold(std::size_t layer) {
    Slot& slot = slots_[layer];
    ++slot.in_use;
    slot.holders.push_back(std::this_thread::get_id());
    slot.last_use = ++tick_;
    emit(PagerEvent::Kind::acquire, layer, false);
  }

  /// The next prefetch_n_ahead unpinned layers after `layer` in execution order become
  /// the prefetch queue (stale entries dropped) and are protected from prefetch evictions.
  void schedule_prefetch(std::size_t layer) {
    std::fill(upcoming_.begin(), upcoming_.end(), false);
    queue_.clear();
    const std::size_t p = position_[layer];
    if (p == npos || order_.empty()) return;
    std::size_t taken = 0;
    for (std::size_t step = 1; step < order_.size() + 1 && taken < policy_.prefetch_n_ahead; ++step) {
      const std::size_t k = p + step;
      if (k >= order_.size() && !options_.cyclic) break;
      const std::size_t next = order_[k % order_.size()];
      if (next == layer) break;
      if (slots_[next].pinned) continue;
      ++taken;
      upcoming_[next] = true;
      if (slots_[next].state == PageState::absent) queue_.push_back(next);
    }
    if (!queue_.empty()) cv_.notify_all();
  }

  void remove_from_queue(std::size_t layer) { queue_.erase(std::remove(queue_.begin(), queue_.end(), layer), queue_.end()); }

  bool in_flight() const {
    for (const Slot& s : slots_)
      if (s.state == PageState::pending || s.state == PageState::loading || s.state == PageState::evicting) return true;
    return false;
  }

  /// Whether waiting can help: a transition is in flight, or another thread holds a layer.
  bool can_progress() const {
    if (in_flight() || worker_busy_) return true;
    const auto me = std::this_thread::get_id();
    for (const Slot& s : slots_)
      if (!s.pinned)
        for (const auto& h : s.holders)
          if (h != me) return true;
    return false;
  }

  MemScaleError stuck_error(std::size_t layer) const {
    std::string held;
    std::uint64_t held_bytes = 0;
    for (const Slot& s : slots_)
      if (!s.pinned && s.in_use > 0) {
        held += (held.empty() ? "" : ", ") + s.info.name;
        held_bytes += s.info.bytes;
      }
    return MemScaleError("pager: layer \"" + slots_[layer].info.name + "\" (" + format_bytes(slots_[layer].info.bytes) +
                         ") cannot become resident within offload.ram_bytes " + format_bytes(budget_) + ": pinned " +
                         format_bytes(pinned_bytes_) + ", held by this thread " + format_bytes(held_bytes) + " [" + held +
                         "]; release layers before acquiring more, or raise offload.ram_bytes");
  }

  /// Victims (resident, unpinned, not held) whose eviction lets `layer` be admitted,
  /// least recently used first. A prefetch never evicts a layer loaded ahead and not
  /// used yet, nor one of the upcoming window: it would evict what is needed sooner
  /// than what it loads. A demand load takes those last. nullopt: no room can be made.
  std::optional<std::vector<std::size_t>> choose_victims(std::size_t layer, bool by_prefetch) const {
    const std::uint64_t need = slots_[layer].info.bytes;
    std::vector<std::size_t> victims;
    if (committed_ + need <= budget_) return victims;
    std::vector<std::size_t> candidates;
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const Slot& s = slots_[i];
      if (i == layer || s.pinned || s.state != PageState::resident || s.in_use > 0) continue;
      if (by_prefetch && (s.unused_prefetch || upcoming_[i])) continue;
      candidates.push_back(i);
    }
    auto later = [&](std::size_t i) { return slots_[i].unused_prefetch || upcoming_[i]; };
    std::sort(candidates.begin(), candidates.end(), [&](std::size_t a, std::size_t b) {
      if (later(a) != later(b)) return !later(a);
      return slots_[a].last_use < slots_[b].last_use;
    });
    std::uint64_t freed = 0;
    for (std::size_t i : candidates) {
      if (committed_ - freed + need <= budget_) break;
      victims.push_back(i);
      freed += slots_[i].info.bytes;
    }
    if (committed_ - freed + need > budget_) return std::nullopt;
    return victims;
  }

  void transition(std::size_t i, PageState to) {
    Slot& s = slots_[i];
    const std::uint64_t b = s.info.bytes;
    auto counted_physical = [](PageState x) {
      return x == PageState::loading || x == PageState::resident || x == PageState::evicting;
    };
    auto counted_committed = [](PageState x) {
      return x == PageState::pending || x == PageState::loading || x == PageState::resident;
    };
    physical_ = physical_ - (counted_physical(s.state) ? b : 0) + (counted_physical(to) ? b : 0);
    committed_ = committed_ - (counted_committed(s.state) ? b : 0) + (counted_committed(to) ? b : 0);
    s.state = to;
    stats_.peak_physical_bytes = std::max(stats_.peak_physical_bytes, physical_);
  }

  /// Makes room for `layer` and loads it; returns with the lock held. false: no room
  /// could be made now (nothing changed). Rethrows a storage error after restoring the
  /// books.
  bool start_load(std::unique_lock<std::mutex>& lock, std::size_t layer, bool by_prefetch) {
    auto victims = choose_victims(layer, by_prefetch);
    if (!victims) return false;
    for (std::size_t v : *victims) {
      transition(v, PageState::evicting);
      emit(PagerEvent::Kind::evict_start, v, by_prefetch);
    }
    transition(layer, PageState::pending);
    emit(PagerEvent::Kind::pending, layer, by_prefetch);
    std::uint64_t victim_bytes = 0;
    for (std::size_t v : *victims) victim_bytes += slots_[v].info.bytes;
    const std::uint64_t bytes = slots_[layer].info.bytes;
    if (!victims->empty() && physical_ - victim_bytes + std::max(victim_bytes, bytes) <= budget_)
      return move_in(lock, *victims, victim_bytes, layer, by_prefetch);
    std::exception_ptr evict_error;
    std::vector<bool> evicted(victims->size(), false);
    lock.unlock();
    for (std::size_t k = 0; k < victims->size(); ++k) {
      try {
        storage_->evict((*victims)[k]);
        evicted[k] = true;
      } catch (...) {
        evict_error = std::current_exception();
      }
    }
    lock.lock();
    for (std::size_t k = 0; k < victims->size(); ++k) {
      const std::size_t v = (*victims)[k];
      transition(v, evicted[k] ? PageState::absent : PageState::resident);
      if (evicted[k]) ++stats_.evictions;
      emit(PagerEvent::Kind::evict_done, v, by_prefetch);
    }
    if (evict_error) {
      transition(layer, PageState::absent);
      cv_.notify_all();
      std::rethrow_exception(evict_error);
    }
    cv_.notify_all();
    // Other threads' victims may still be mid-eviction: allocate only once the bytes
    // physically fit. Terminates because committed <= budget (see the header comment).
    cv_.wait(lock, [&] { return physical_ + slots_[layer].info.bytes <= budget_; });
    transition(layer, PageState::loading);
    emit(PagerEvent::Kind::load_start, layer, by_prefetch);
    lock.unlock();
    const auto start = Clock::now();
    try {
      storage_->load(layer);
    } catch (...) {
      lock.lock();
      transition(layer, PageState::absent);
      ++stats_.load_failures;
      emit(PagerEvent::Kind::load_failed, layer, by_prefetch);
      cv_.notify_all();
      throw;
    }
    const double took = seconds_since(start);
    lock.lock();
    finish_load(lock, layer, by_prefetch, took);
    return true;
  }

  /// The PagerStorage::move path of start_load: victims are evicting, `layer` pending.
  bool move_in(std::unique_lock<std::mutex>& lock, const std::vector<std::size_t>& victims, std::uint64_t victim_bytes,
               std::size_t layer, bool by_prefetch) {
    // The pair counts max(victims, layer): the victims' bytes stay counted (evicting) and
    // the layer adds only what exceeds them.
    const std::uint64_t shared = std::min(victim_bytes, slots_[layer].info.bytes);
    physical_ -= shared;
    moving_ += shared;
    transition(layer, PageState::loading);
    emit(PagerEvent::Kind::load_start, layer, by_prefetch);
    lock.unlock();
    const auto start = Clock::now();
    std::exception_ptr error;
    try {
      storage_->move(victims, layer);
    } catch (...) {
      error = std::current_exception();
    }
    const double took = seconds_since(start);
    lock.lock();
    for (std::size_t v : victims) {
      transition(v, PageState::absent);
      ++stats_.evictions;
      emit(PagerEvent::Kind::evict_done, v, by_prefetch);
    }
    physical_ += shared;
    moving_ -= shared;
    if (error) {
      transition(layer, PageState::absent);
      ++stats_.load_failures;
      emit(PagerEvent::Kind::load_failed, layer, by_prefetch);
      cv_.notify_all();
      std::rethrow_exception(error);
    }
    finish_load(lock, layer, by_prefetch, took);
    return true;
  }

  void finish_load(std::unique_lock<std::mutex>&, std::size_t layer, bool by_prefetch, double took) {
    transition(layer, PageState::resident);
    Slot& slot = slots_[layer];
    slot.unused_prefetch = by_prefetch;
    ++stats_.loads;
    ++(by_prefetch ? stats_.prefetch_loads : stats_.demand_loads);
    stats_.bytes_loaded += slot.info.bytes;
    stats_.load_seconds += took;
    if (by_prefetch) stats_.prefetch_load_seconds += took;
    emit(PagerEvent::Kind::load_done, layer, by_prefetch);
    cv_.notify_all();
  }

  void prefetch_loop() {
    std::unique_lock lock(mutex_);
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) break;
      const std::size_t layer = queue_.front();
      queue_.pop_front();
      if (slots_[layer].state != PageState::absent) continue;
      worker_busy_ = true;
      std::string failure;
      try {
        if (!start_load(lock, layer, /*by_prefetch=*/true)) {
          // No room without evicting what is needed sooner: the rest of the window,
          // further ahead still, waits for the next acquire.
          queue_.clear();
          ++stats_.prefetch_dropped;
        }
      } catch (const std::exception& e) {
        failure = e.what();
      } catch (...) {
        failure = "unknown error";
      }
      worker_busy_ = false;
      cv_.notify_all();
      if (!failure.empty()) {
        // The acquire of this layer will load it on demand and report the error itself.
        const std::string name = slots_[layer].info.name;
        lock.unlock();
        log::warn("pager: prefetch of layer \"" + name + "\" failed: " + failure);
        lock.lock();
      }
    }
  }

  void emit(PagerEvent::Kind kind, std::size_t layer, bool by_prefetch) {
    if (!options_.observer) return;
    PagerEvent e;
    e.kind = kind;
    e.layer = layer;
    e.by_prefetch = by_prefetch;
    e.physical_bytes = physical_;
    e.committed_bytes = committed_;
    e.budget_bytes = budget_;
    e.moving_bytes = moving_;
    e.states.reserve(slots_.size());
    e.in_use.reserve(slots_.size());
    for (const Slot& s : slots_) {
      e.states.push_back(s.state);
      e.in_use.push_back(s.in_use);
    }
    options_.observer(e);
  }

  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();

  OffloadPolicy policy_;
  std::shared_ptr<PagerStorage> storage_;
  PagerOptions options_;
  std::uint64_t budget_ = 0, pinned_bytes_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable cv_;  ///< every transition, queue change and stop
  std::vector<Slot> slots_;
  std::vector<std::size_t> order_, position_;
  std::vector<bool> upcoming_;
  std::deque<std::size_t> queue_;
  std::uint64_t physical_ = 0, committed_ = 0, tick_ = 0;
  std::uint64_t moving_ = 0;  ///< bytes counted once for victim/layer pairs being moved
  bool stopping_ = false, worker_busy_ = false;
  PagerStats stats_;
  std::thread worker_;
};

}  // namespace memscale

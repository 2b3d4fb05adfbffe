// What the weight pager (pager.hpp) will hold: the peak of its resident bytes, predicted by
// replaying its books on the model's execution order, without threads or storage.
//
// Why a replay and not a window formula: the pager is LRU and evicts only to make room, so a
// released layer stays resident until a load needs its bytes. Once a cycle has run it holds
// the pinned layers plus a run of recently used and prefetched layers that fills ram_bytes
// as far as whole layers do: more than "the layer computing + n ahead" where ram_bytes has
// room for more, less than ram_bytes by what no whole layer fills. The depth matters only
// through what a prefetch may not evict (the upcoming window): with uneven layers a deeper
// window drops more prefetches, so the replay runs the depth the pager runs.
//
// The replay applies the pager's own rules: an acquire of an absent layer loads it on
// demand, evicting the least recently used unheld layers (those loaded ahead and not used
// yet, or of the upcoming window, last); an acquire of an unpinned layer makes the next
// prefetch_n_ahead unpinned layers in pager order (cyclic) the prefetch window; a prefetch
// never evicts a layer of that window, one loaded ahead and not used yet, or a held one,
// and when it cannot make room the rest of the window is dropped. It runs in the two
// timing extremes: every prefetch finishing before the next acquire (a fast tier), and no
// prefetch at all (a slow tier: every load on demand). Between them the pager loads the
// same layers in the same order and evicts the least recently used first, so it reaches
// the same resident sets; the prediction is the larger of the two peaks.
//
// Pure and deterministic: the engine calls it on the plan it made (finalize.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "memscale/core/errors.hpp"

namespace memscale {

/// One paging unit as the replay sees it.
struct PagerModelLayer {
  std::uint64_t bytes = 0;
  bool pinned = false;  ///< never evicted (the hot set and the layers the plan keeps)
};

/// The pager's input: its units in pager order (the order its prefetch follows), the unit
/// each hooked call acquires during one forward in execution order (a unit whose modules
/// run twice, a tied embedding and head, appears twice), the resident limit and the depth.
struct PagerModelInput {
  std::vector<PagerModelLayer> layers;
  std::vector<std::size_t> accesses;
  std::uint64_t ram_bytes = 0;
  std::uint64_t prefetch_n_ahead = 1;
};

namespace pager_model_detail {

/// Forwards replayed: the first fills the pager from the pinned layers alone, the second
/// runs from the state a forward leaves (the cyclic prefetch has already wrapped into it),
/// the third repeats the second (LRU over a fixed cyclic order is periodic from there).
inline constexpr int kCycles = 3;

class Replay {
 public:
  Replay(const PagerModelInput& in, bool prefetch) : in_(in), prefetch_(prefetch), slots_(in.layers.size()) {
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      if (!in.layers[i].pinned) continue;
      slots_[i].resident = true;
      physical_ += in.layers[i].bytes;
    }
    peak_ = physical_;
  }

  std::uint64_t run() {
    for (int cycle = 0; cycle < kCycles; ++cycle)
      for (std::size_t unit : in_.accesses) {
        acquire(unit);
        release(unit);
      }
    return peak_;
  }

 private:
  struct Slot {
    bool resident = false, held = false, unused_prefetch = false, upcoming = false;
    std::uint64_t last_use = 0;
  };
  // Eviction order of the pager's choose_victims: layers needed later last, then least
  // recently used first, then index (ties cannot happen: every use takes a fresh tick).
  using Key = std::tuple<bool, std::uint64_t, std::size_t>;

  Key key(std::size_t i) const {
    const Slot& s = slots_[i];
    return {s.unused_prefetch || s.upcoming, s.last_use, i};
  }
  bool evictable(std::size_t i) const {
    return !in_.layers[i].pinned && slots_[i].resident;
  }
  /// Changes slot i's fields through `change`, keeping the ordered set of evictable layers.
  template <class F>
  void update(std::size_t i, F change) {
    const bool was = evictable(i);
    if (was) order_.erase(key(i));
    change(slots_[i]);
    if (evictable(i)) order_.insert(key(i));
  }

  void acquire(std::size_t unit) {
    if (unit >= slots_.size())
      throw MemScaleError("pager model: access of unit " + std::to_string(unit) + ", but there are " +
                          std::to_string(slots_.size()) + " units");
    if (in_.layers[unit].pinned) {
      update(unit, [&](Slot& s) { s.held = true, s.last_use = ++tick_; });
      return;
    }
    if (!slots_[unit].resident && !load(unit, /*by_prefetch=*/false))
      throw MemScaleError("pager model: unit " + std::to_string(unit) + " cannot become resident within ram_bytes " +
                          std::to_string(in_.ram_bytes) + " (the engine never plans that)");
    update(unit, [&](Slot& s) { s.held = true, s.last_use = ++tick_, s.unused_prefetch = false; });
    schedule_prefetch(unit);
  }

  void release(std::size_t unit) {
    update(unit, [&](Slot& s) { s.held = false, s.last_use = ++tick_; });
  }

  void schedule_prefetch(std::size_t unit) {
    for (std::size_t i : window_) update(i, [](Slot& s) { s.upcoming = false; });
    window_.clear();
    const std::size_t n = slots_.size();
    for (std::size_t step = 1; step <= n && window_.size() < in_.prefetch_n_ahead; ++step) {
      const std::size_t next = (unit + step) % n;
      if (next == unit) break;
      if (in_.layers[next].pinned) continue;
      window_.push_back(next);
      update(next, [](Slot& s) { s.upcoming = true; });
    }
    if (!prefetch_) return;
    for (std::size_t next : window_) {
      if (slots_[next].resident) continue;
      if (!load(next, /*by_prefetch=*/true)) break;  // no room: the rest waits for the next acquire
    }
  }

  /// Evicts the pager's victims and loads `unit`; false (nothing changed) when no room can
  /// be made under the pager's rules.
  bool load(std::size_t unit, bool by_prefetch) {
    const std::uint64_t need = in_.layers[unit].bytes;
    std::vector<std::size_t> victims;
    std::uint64_t freed = 0;
    for (const Key& k : order_) {
      if (physical_ - freed + need <= in_.ram_bytes) break;
      const std::size_t i = std::get<2>(k);
      if (slots_[i].held) continue;
      if (by_prefetch && (slots_[i].unused_prefetch || slots_[i].upcoming)) break;  // sorted last
      victims.push_back(i);
      freed += in_.layers[i].bytes;
    }
    if (physical_ - freed + need > in_.ram_bytes) return false;
    for (std::size_t v : victims) update(v, [](Slot& s) { s.resident = false, s.unused_prefetch = false; });
    physical_ = physical_ - freed + need;
    // Evicting before loading, or moving the victims' memory into the layer: the pager's
    // books count the larger of the two states, both of which are states here.
    peak_ = std::max(peak_, physical_);
    update(unit, [&](Slot& s) { s.resident = true, s.unused_prefetch = by_prefetch; });
    return true;
  }

  const PagerModelInput& in_;
  bool prefetch_;
  std::vector<Slot> slots_;
  std::set<Key> order_;  ///< evictable layers (resident, unpinned) in eviction order
  std::vector<std::size_t> window_;
  std::uint64_t physical_ = 0, peak_ = 0, tick_ = 0;
};

}  // namespace pager_model_detail

/// Peak bytes the pager holds resident (its `peak_physical_bytes`) serving forwards of
/// `in.accesses`, starting with only the pinned layers resident. Never above ram_bytes
/// where ram_bytes holds the pinned layers (the pager refuses less). MemScaleError when a
/// layer cannot fit beside the pinned ones.
inline std::uint64_t predicted_resident_peak(const PagerModelInput& in) {
  std::uint64_t pinned = 0;
  for (const auto& l : in.layers) pinned += l.pinned ? l.bytes : 0;
  if (pinned > in.ram_bytes)
    throw MemScaleError("pager model: pinned layers " + std::to_string(pinned) + " exceed ram_bytes " +
                        std::to_string(in.ram_bytes));
  const std::uint64_t fast = pager_model_detail::Replay(in, /*prefetch=*/true).run();
  const std::uint64_t slow = pager_model_detail::Replay(in, /*prefetch=*/false).run();
  return std::max(fast, slow);
}

}  // namespace memscale

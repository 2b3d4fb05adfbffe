// Actions the greedy loop deferred because they did not lower the peak, indexed by the
// places they can lower (peak_tracker.hpp's Reach), so that when the peak moves the
// cheapest action that can lower the new place is found in O(log n) instead of retrying
// every deferred action (which made planning quadratic when the peak alternates, e.g.
// between the LM head's forward and the optimizer step).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <set>
#include <vector>

#include "memscale/core/peak_tracker.hpp"
#include "memscale/core/rules/rule.hpp"

namespace memscale::engine_detail {

struct Action {
  rules::Phase phase = rules::Phase::recompute;
  double cost_per_byte = 0.0;
  std::int64_t layer = 0;
  rules::Technique technique = rules::Technique::checkpoint;
  std::int64_t chunks = 1;
};

/// Total order of actions; `a` comes first when it is cheaper.
inline bool action_before(const Action& a, const Action& b) {
  if (a.phase != b.phase) return a.phase < b.phase;
  if (a.cost_per_byte != b.cost_per_byte) return a.cost_per_byte < b.cost_per_byte;
  if (a.layer != b.layer) return a.layer < b.layer;
  if (a.technique != b.technique) return a.technique < b.technique;
  return a.chunks < b.chunks;
}

inline const std::optional<Action>& cheaper(const std::optional<Action>& a, const std::optional<Action>& b) {
  if (!a) return b;
  if (!b) return a;
  return action_before(*b, *a) ? b : a;
}

/// Range minimum (by action_before) over per-layer slots.
class ActionMinTree {
 public:
  explicit ActionMinTree(std::size_t n) : size_(1) {
    while (size_ < std::max<std::size_t>(n, 1)) size_ *= 2;
    nodes_.assign(2 * size_, std::nullopt);
  }
  void set(std::size_t i, const std::optional<Action>& a) {
    std::size_t p = i + size_;
    nodes_[p] = a;
    for (p /= 2; p >= 1; p /= 2) nodes_[p] = cheaper(nodes_[2 * p], nodes_[2 * p + 1]);
  }
  /// Cheapest over [lo, hi] (inclusive); none for an empty range.
  std::optional<Action> query(std::size_t lo, std::size_t hi) const {
    std::optional<Action> best;
    if (lo > hi) return best;
    for (std::size_t l = lo + size_, r = hi + size_ + 1; l < r; l /= 2, r /= 2) {
      if (l & 1) best = cheaper(best, nodes_[l++]);
      if (r & 1) best = cheaper(best, nodes_[--r]);
    }
    return best;
  }

 private:
  std::size_t size_;
  std::vector<std::optional<Action>> nodes_;
};

class DeferredPool {
 public:
  struct Entry {
    Action action;
    model::Peak peak;  ///< the peak it did not lower, for the plan's rejection reason
    model::Reach reach;
  };

  explicit DeferredPool(std::size_t n) : n_(n), slots_(n), later_(n), earlier_(n) {}

  void add(const Entry& e) {
    const auto l = static_cast<std::size_t>(e.action.layer);
    slots_[l][static_cast<int>(e.action.technique)] = e;
    if (e.reach.everywhere) everywhere_.insert(e.action);
    refresh(l);
    ++count_;
  }

  void remove(const Action& a) {
    const auto l = static_cast<std::size_t>(a.layer);
    auto& slot = slots_[l][static_cast<int>(a.technique)];
    if (!slot) return;
    if (slot->reach.everywhere) everywhere_.erase(slot->action);
    slot.reset();
    refresh(l);
    --count_;
  }

  /// The cheapest deferred action that can lower place `where`.
  std::optional<Action> best_for(std::int64_t where) const {
    std::optional<Action> best;
    if (!everywhere_.empty()) best = *everywhere_.begin();
    const auto n = static_cast<std::int64_t>(n_);
    if (where >= 2 * n) return cheaper(best, earlier_.query(0, n_ - 1));
    const auto at = static_cast<std::size_t>(where % n);
    const bool backward = where >= n;
    if (at > 0) best = cheaper(best, later_.query(0, at - 1));
    for (const auto& slot : slots_[at])
      if (slot && (backward ? slot->reach.own_backward : slot->reach.own_forward)) best = cheaper(best, slot->action);
    if (backward && at + 1 < n_) best = cheaper(best, earlier_.query(at + 1, n_ - 1));
    return best;
  }

  /// Every entry, in layer then technique order.
  std::vector<Entry> entries() const {
    std::vector<Entry> out;
    for (const auto& layer : slots_)
      for (const auto& slot : layer)
        if (slot) out.push_back(*slot);
    return out;
  }
  std::size_t size() const { return count_; }

 private:
  void refresh(std::size_t l) {
    std::optional<Action> later, earlier;
    for (const auto& slot : slots_[l]) {
      if (!slot) continue;
      if (slot->reach.later) later = cheaper(later, slot->action);
      if (slot->reach.earlier_backward) earlier = cheaper(earlier, slot->action);
    }
    later_.set(l, later);
    earlier_.set(l, earlier);
  }

  struct Before {
    bool operator()(const Action& a, const Action& b) const { return action_before(a, b); }
  };

  std::size_t n_;
  std::vector<std::array<std::optional<Entry>, 4>> slots_;
  ActionMinTree later_, earlier_;
  std::set<Action, Before> everywhere_;
  std::size_t count_ = 0;
};

}  // namespace memscale::engine_detail

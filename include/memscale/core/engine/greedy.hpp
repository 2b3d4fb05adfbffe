// The engine's loop: candidates from the rules, ordered by (escalation phase, cost per
// byte saved, layer index), applied one at a time while each lowers the predicted peak.
//
// Properties the tests rely on:
// * The sequence of applied actions does not depend on the budget; the budget only says
//   where to stop (auto: at the first state within budget; min_memory: at the end). Every
//   applied action lowers (peak, number of places at the peak) lexicographically, so the
//   peak never rises along the sequence. Hence a lower budget never yields less saving,
//   and the final peak of the full sequence is exactly the smallest budget that has a plan
//   (min_budget_bytes).
// * An action that does not lower the peak is deferred. Once an applied action moves the
//   peak to another place, deferred actions that can lower the new place compete again
//   with the queue, cheapest first (what did not help at the LM head's backward may help
//   once the optimizer step dominates, and vice versa); deferred_pool.hpp finds them.
// * Offload pays a window before it saves anything (the layer computing plus the ones
//   fetched ahead are resident); when a single offload does not lower the peak, the next
//   ones of the same technique in order are tried together, up to prefetch_n_ahead + 2.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "memscale/core/engine/decisions.hpp"
#include "memscale/core/engine/deferred_pool.hpp"
#include "memscale/core/engine/setup.hpp"
#include "memscale/core/peak_tracker.hpp"
#include "memscale/core/rules/checkpoint.hpp"
#include "memscale/core/rules/offload.hpp"
#include "memscale/core/rules/tiling.hpp"

namespace memscale::engine_detail {

using rules::Candidate;
using rules::Technique;

/// Human name of a tracker position.
inline std::string describe_where(const ModelGraph& graph, bool training, std::int64_t where) {
  if (!training) return "the inference step";
  const auto n = static_cast<std::int64_t>(graph.layers.size());
  if (where >= 2 * n) return "the optimizer step";
  const auto& name = graph.layers[static_cast<std::size_t>(where % n)].name;
  return std::string(where < n ? "the forward of " : "the backward of ") + "\"" + name + "\"";
}

template <class Tracker>
class Greedy {
 public:
  /// allowed[l][t]: the rules may decide technique t for layer l (Config says auto).
  Greedy(const ModelGraph& graph, const Setup& setup, Tracker& tracker, DecisionLog& log, TierLedger& ledger,
         std::vector<std::array<bool, 4>> allowed)
      : graph_(graph), setup_(setup), tracker_(tracker), log_(log), ledger_(ledger), allowed_(std::move(allowed)),
        ctx_{graph, setup.step, setup.rates}, pool_(graph.layers.size()) {}

  /// Runs the loop. `stop_at` = the budget (auto mode) or none (min_memory / min-budget
  /// search). Returns the number of actions applied.
  std::size_t run(std::optional<std::int64_t> stop_at) {
    seed();
    std::size_t applied = 0;
    while (true) {
      const model::Peak current = tracker_.peak();
      if (stop_at && current.value <= *stop_at) break;
      const std::optional<Action> next = peek(current.where);
      if (!next) break;
      const Action a = take(*next);
      const Candidate c = candidate(a.layer, a.technique, false);
      if (!c.eligible) {
        reject(a, candidate(a.layer, a.technique, true));
        continue;
      }
      const Action fresh = action_of(a.layer, a.technique, c);
      if (fresh.cost_per_byte != a.cost_per_byte || fresh.chunks != a.chunks) {
        push(fresh);  // its cost changed with another technique on the same layer
        continue;
      }
      const auto reach = tracker_.reach(static_cast<std::size_t>(a.layer), next_state(a));
      std::vector<Action> group = {a};
      const TierLedger ledger_before = ledger_;
      std::vector<std::pair<std::size_t, model::LayerState>> undo;
      if (!try_apply(a, undo)) {
        log_.reject(layer(a), a.technique, "offload.no_room",
                    "no room below the device for " +
                        format_bytes(offloaded_bytes(layer(a), a.technique, next_state(a), setup_.step)) + " (" +
                        ledger_.describe() + ")");
        continue;
      }
      model::Peak after = tracker_.peak();
      if (!after.better_than(current) &&
          (a.technique == Technique::offload_weights || a.technique == Technique::offload_activations))
        after = extend_group(a, current, group, undo);
      if (!after.better_than(current)) {
        for (std::size_t i = undo.size(); i-- > 0;) tracker_.set(undo[i].first, undo[i].second);
        ledger_ = ledger_before;
        cold_.push_back({a, current, reach});
        continue;
      }
      for (std::size_t i = 0; i < group.size(); ++i) record(group[i], undo[i].second, current, after, group.size(), i);
      applied += group.size();
      for (const Action& b : group) follow_up(b);
      if (after.where != current.where) {  // the peak moved: what was deferred may help now
        for (const auto& d : cold_) pool_.add(d);
        cold_.clear();
      }
    }
    finish(stop_at);
    return applied;
  }

 private:
  const Layer& layer(const Action& a) const { return graph_.layers[static_cast<std::size_t>(a.layer)]; }

  static bool later(const Action& a, const Action& b) { return action_before(b, a); }
  void push(const Action& a) {
    heap_.push_back(a);
    std::push_heap(heap_.begin(), heap_.end(), later);
  }
  Action pop() {
    std::pop_heap(heap_.begin(), heap_.end(), later);
    const Action a = heap_.back();
    heap_.pop_back();
    return a;
  }

  /// The cheapest action to try at peak place `where`: from the queue, or a deferred one
  /// that can lower that place.
  std::optional<Action> peek(std::int64_t where) const {
    std::optional<Action> best = pool_.best_for(where);
    if (!heap_.empty() && (!best || action_before(heap_.front(), *best))) best = heap_.front();
    return best;
  }
  /// Removes `a` (a result of peek) from where it waits.
  Action take(const Action& a) {
    if (!heap_.empty() && !action_before(heap_.front(), a) && !action_before(a, heap_.front())) return pop();
    pool_.remove(a);
    return a;
  }

  Candidate candidate(std::int64_t l, Technique t, bool explain) const {
    return candidate_for(l, t, tracker_.state(static_cast<std::size_t>(l)), explain);
  }
  Candidate candidate_for(std::int64_t l, Technique t, const model::LayerState& state, bool explain) const {
    const auto& lay = graph_.layers[static_cast<std::size_t>(l)];
    switch (t) {
      case Technique::checkpoint: return rules::checkpoint_rule(lay, state, ctx_, explain);
      case Technique::tile: return rules::tile_rule(lay, state, ctx_, explain);
      case Technique::offload_activations: return rules::activation_offload_rule(lay, state, ctx_, explain);
      default: return rules::weight_offload_rule(lay, state, ctx_, setup_.pinned[static_cast<std::size_t>(l)], explain);
    }
  }

  void reject(const Action& a, const Candidate& explained) {
    log_.reject(layer(a), a.technique, explained.rule, explained.reason);
  }

  /// An offload alone may not pay for its window: apply the next ones of the same
  /// technique (in order) together, up to prefetch_n_ahead + 2, until the peak drops.
  /// Leaves `group`/`undo` holding what was applied; returns the resulting peak.
  model::Peak extend_group(const Action& a, const model::Peak& current, std::vector<Action>& group,
                           std::vector<std::pair<std::size_t, model::LayerState>>& undo) {
    const std::size_t limit = static_cast<std::size_t>(setup_.step.prefetch_n_ahead) + 2;
    std::vector<Action> put_back;
    model::Peak after = tracker_.peak();
    while (group.size() < limit) {
      const std::optional<Action> next = peek(current.where);
      if (!next || next->technique != a.technique) break;
      const Action b = take(*next);
      if (!candidate(b.layer, b.technique, false).eligible || !try_apply(b, undo)) {
        put_back.push_back(b);
        continue;
      }
      group.push_back(b);
      after = tracker_.peak();
      if (after.better_than(current)) break;
    }
    for (const Action& b : put_back) push(b);
    if (!after.better_than(current)) {
      for (std::size_t i = group.size(); i-- > 1;) push(group[i]);
      group.resize(1);
    }
    return after;
  }

  static Action action_of(std::int64_t l, Technique t, const Candidate& c) {
    return {c.phase, c.cost_per_byte, l, t, t == Technique::tile ? c.chunks : 1};
  }

  void seed() {
    for (std::size_t l = 0; l < graph_.layers.size(); ++l)
      for (Technique t : rules::kTechniques) {
        if (!allowed_[l][static_cast<int>(t)]) continue;
        const auto il = static_cast<std::int64_t>(l);
        const Candidate c = candidate(il, t, false);
        if (c.eligible) push(action_of(il, t, c));
        else reject({c.phase, 0.0, il, t, 1}, candidate(il, t, true));
      }
  }

  model::LayerState next_state(const Action& a) const {
    model::LayerState s = tracker_.state(static_cast<std::size_t>(a.layer));
    switch (a.technique) {
      case Technique::checkpoint: s.checkpoint = true; break;
      case Technique::tile: s.chunks = a.chunks; break;
      case Technique::offload_activations: s.offload_activations = true; break;
      default: s.offload_weights = true; break;
    }
    return s;
  }

  /// Applies `a` (taking tier room when it offloads); false when there is no room.
  bool try_apply(const Action& a, std::vector<std::pair<std::size_t, model::LayerState>>& undo) {
    const model::LayerState next = next_state(a);
    const auto l = static_cast<std::size_t>(a.layer);
    if (a.technique == Technique::offload_activations || a.technique == Technique::offload_weights) {
      const std::uint64_t bytes = offloaded_bytes(graph_.layers[l], a.technique, next, setup_.step);
      const auto tier = ledger_.place(bytes);
      if (!tier) return false;
      ledger_.take(*tier, bytes);
      pending_tier_[a.layer * 4 + static_cast<int>(a.technique)] = *tier;
    }
    undo.emplace_back(l, tracker_.state(l));
    tracker_.set(l, next);
    return true;
  }

  /// Logs an applied action; its reason is explained against the state before it.
  void record(const Action& a, const model::LayerState& before_state, const model::Peak& before,
              const model::Peak& after, std::size_t group_size, std::size_t position) {
    const auto l = static_cast<std::size_t>(a.layer);
    const Candidate c = candidate_for(a.layer, a.technique, before_state, true);
    std::string reason = c.reason;
    if (a.technique == Technique::offload_weights || a.technique == Technique::offload_activations) {
      const std::string& tier = pending_tier_[a.layer * 4 + static_cast<int>(a.technique)];
      (a.technique == Technique::offload_weights ? log_.weight_tier : log_.activation_tier)[l] = tier;
      reason += " to " + tier;
    }
    if (group_size > 1)
      reason += "; one of " + std::to_string(group_size) + " offloads applied together to cover the prefetch window";
    reason += "; peak " + format_bytes(model::u64(before.value)) + " -> " + format_bytes(model::u64(after.value));
    if (position + 1 < group_size) reason += " (as a group)";
    log_.trace.push_back(std::string(rules::plan_name(a.technique)) +
                         (a.technique == Technique::tile ? " x" + std::to_string(a.chunks) : std::string()) + " \"" +
                         graph_.layers[l].name + "\" [" + c.rule + "]: " + reason);
    log_.decide(l, c.rule, std::move(reason));
  }

  void follow_up(const Action& a) {
    if (a.technique != Technique::tile) return;
    const Candidate c = candidate(a.layer, Technique::tile, false);
    if (c.eligible) push(action_of(a.layer, Technique::tile, c));
  }

  void finish(const std::optional<std::int64_t>& stop_at) {
    std::sort(heap_.begin(), heap_.end(), action_before);
    for (const Action& a : heap_) {
      const std::string what = a.technique == Technique::tile ? " (x" + std::to_string(a.chunks) + ")" : "";
      log_.reject(layer(a), a.technique, "fit.within_budget",
                  "not needed" + what + ": the plan fits the budget of " + format_bytes(model::u64(stop_at.value_or(0))) +
                      " without it");
    }
    std::vector<DeferredPool::Entry> deferred = pool_.entries();
    deferred.insert(deferred.end(), cold_.begin(), cold_.end());
    std::sort(deferred.begin(), deferred.end(),
              [](const auto& x, const auto& y) { return action_before(x.action, y.action); });
    for (const auto& d : deferred)
      log_.reject(layer(d.action), d.action.technique, "fit.no_peak_gain",
                  "would not lower the peak at " + describe_where(graph_, setup_.step.training, d.peak.where) + " (" +
                      format_bytes(model::u64(d.peak.value)) + ")");
    heap_.clear();
    cold_.clear();
  }

  const ModelGraph& graph_;
  const Setup& setup_;
  Tracker& tracker_;
  DecisionLog& log_;
  TierLedger& ledger_;
  std::vector<std::array<bool, 4>> allowed_;
  rules::RuleContext ctx_;
  std::vector<Action> heap_;
  std::vector<DeferredPool::Entry> cold_;  ///< deferred since the peak last moved
  DeferredPool pool_;                      ///< deferred before: may compete again
  std::map<std::int64_t, std::string> pending_tier_;
};

}  // namespace memscale::engine_detail

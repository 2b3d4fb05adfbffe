// The exact solver of a training plan (Config.solver = "optimal").
//
// What it minimises, subject to what. Over every combination of per-layer choices the
// greedy may make (the baseline the Config forces, plus checkpoint, activation offload,
// weight offload and tiling at each chunk count the tile rule's doubling reaches, within
// capabilities, layer_overrides, Config.techniques and the hot set, and each rule's own
// eligibility), it finds the least modelled cost (engine/plan_cost.hpp: recompute + tiling
// + exposed offload transfer seconds, the cost_model figures the greedy orders by) whose
// predicted peak (memory_model.hpp, model::evaluate) is at most the budget, and whose
// offloaded bytes fit the room below the device (host + disk as one pool). With no such
// plan, the smallest predicted peak any combination reaches is min_budget_bytes.
//
// Why it is exact. The peak is the max of F_l, B_l (forward/backward of layer l) and O (the
// optimizer step). Every term of them is a sum of per-layer terms except the two windows,
// max_k activation_window_k and min(Σ, (1 + prefetch) x max) of the weight windows:
//  * Windows: the solver enumerates their values. For a threshold t_a on the activation
//    window (every value a choice can give it, and 0) it allows only choices with
//    activation_window <= t_a and counts the window as t_a; for the weight window either
//    as Σ of the paged weights (a per-layer term) or, for each threshold t_w, as
//    (1 + prefetch) x t_w with every paged layer <= t_w. Each subproblem counts at least
//    the true window, so its plans are feasible plans; the optimum lies in the subproblem
//    whose thresholds are its own windows (and its cheaper weight-window form), where it
//    is counted exactly. The minimum over subproblems is the optimum.
//  * With the windows fixed, a dynamic program runs over the chain in layer order. F_l and
//    B_l depend on the layers before l through one sum, Sp = Σ_{k<l}(saved_k + static_k)
//    (static plus its weight window when that window is counted as a sum),
//    on layer l's own terms, and on the layers after l only through static (weight offload)
//    and gradients. Those future terms are taken at the baseline (their largest), and what
//    the positions already passed exceed the budget by is carried as a requirement on the
//    future reductions: eF (of static), eB (of static + gradients), eO (the optimizer step,
//    of static + gradients + optimizer transient). A requirement met stays met (reductions
//    are never negative), so it is clamped at 0, and a plan is feasible iff every
//    requirement is 0 at the end. A state (Sp, eF, eB, eO, offloaded bytes, cost)
//    dominated in every component by another at the same layer cannot complete more
//    cheaply, so dropping it keeps the optimum: the DP keeps the Pareto frontier.
//  * Pruning keeps only states that can still complete: requirements no larger than the
//    most the remaining layers can reduce, Sp below what the remaining positions allow at
//    their per-layer least, and cost plus a lower bound on the rest (the remaining layers'
//    least cost, or a requirement times the least seconds per byte any later layer reduces
//    it by) within a cost bound. The bound rises in rounds (x4, from the least any plan can
//    cost to the greedy's cost when it fits): the first round that finds a plan has kept
//    every plan within its bound, so its cheapest is the optimum. All are relaxations, and
//    a dominance check that misses a beaten state (pareto() compares a window of them)
//    only costs time, so none drops the optimum.
//  * A deterministic work limit (states created) stops a search that would take too long;
//    the engine then plans with the greedy and says the plan is not proven optimal.
//  * min_budget_bytes: feasibility is monotone in the budget, so a binary search of the
//    integer budget between a lower bound and the greedy's smallest peak finds the least
//    budget with a plan, and that budget is reached by that plan's predicted peak.
//
// Deterministic: options are generated in a fixed order per layer, frontiers are sorted by
// a total order (ties by generation order: earlier layers' earlier options first), and a
// later subproblem replaces the best plan only when strictly cheaper.
//
// Cost: the frontier is exact, so its size is not bounded by a constant; repeated blocks
// keep it small (measured in tests/cpp/core/test_optimal_speed.cpp and docs/solver.md).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "memscale/core/engine/baseline.hpp"
#include "memscale/core/engine/decisions.hpp"
#include "memscale/core/engine/plan_cost.hpp"
#include "memscale/core/engine/setup.hpp"
#include "memscale/core/rules/checkpoint.hpp"
#include "memscale/core/rules/offload.hpp"
#include "memscale/core/rules/tiling.hpp"

namespace memscale::engine_detail {

/// One per-layer choice of the solver.
struct SolverOption {
  model::LayerState state;
  model::TrainTerms terms;
  double cost = 0.0;
  std::int64_t offloaded = 0;  ///< bytes it sends below the device beyond the baseline's
};

/// The solver's answer for one budget.
struct OptimalPlan {
  std::vector<model::LayerState> states;
  double cost = 0.0;
  std::size_t subproblems = 0;  ///< window thresholds solved
  std::size_t largest_frontier = 0;
};

class OptimalSolver {
 public:
  OptimalSolver(const ModelGraph& graph, const Setup& setup, const Baseline& base, const TierLedger& ledger)
      : graph_(graph), setup_(setup), base_(base), ctx_{graph, setup.step, setup.rates}, n_(graph.layers.size()) {
    const std::uint64_t host = ledger.gpu ? ledger.host_capacity - ledger.host_used : 0;
    const std::uint64_t disk = ledger.disk_capacity - ledger.disk_used;
    const std::uint64_t unlimited = std::numeric_limits<std::uint64_t>::max() / 8;
    room_ = host + disk >= unlimited ? std::numeric_limits<std::int64_t>::max() : model::s64(host + disk);
    options_.resize(n_);
    base_terms_.resize(n_);
    std::int64_t most = 0;  // the most any plan can send below the device
    for (std::size_t l = 0; l < n_; ++l) {
      base_terms_[l] = model::train_terms(graph.layers[l], base.states[l], setup.step);
      options_[l] = options_of(l);
      std::int64_t m = 0;
      for (const auto& o : options_[l]) m = std::max(m, o.offloaded);
      most += m;
    }
    if (most <= room_) {  // the room can never run out: drop it from the search
      room_ = std::numeric_limits<std::int64_t>::max();
      for (auto& layer : options_)
        for (auto& o : layer) o.offloaded = 0;
    }
    windows_ = window_choices();
  }

  /// Per-layer options (the baseline first).
  const std::vector<std::vector<SolverOption>>& options() const { return options_; }

  /// log10 of the number of plans the solver ranges over (the product of per-layer options).
  double log10_plans() const {
    double s = 0.0;
    for (const auto& o : options_) s += std::log10(static_cast<double>(o.size()));
    return s;
  }
  std::size_t window_subproblems() const { return windows_.size(); }

  /// The least-cost plan with predicted peak <= budget; none when no plan fits, or when
  /// the search went past its work limit (`exhausted` says which).
  /// `upper_bound`: the cost of a plan known to fit (the greedy's), or +inf.
  ///
  /// The search runs in rounds of a rising cost bound (x4 a round, from the least any
  /// plan can cost, ending at `upper_bound`): a round keeps only states that can still
  /// complete within its bound, so the first round that finds a plan finds every plan up
  /// to the bound and its cheapest is the optimum; cheap rounds spare the costly ones most
  /// states (a plan that needs little is found among few states).
  std::optional<OptimalPlan> minimise_cost(std::int64_t budget, double upper_bound, bool* exhausted = nullptr) const {
    Work work{work_limit()};
    if (exhausted) *exhausted = false;
    double least = std::numeric_limits<double>::infinity();  // the cheapest plan any window allows
    for (const Window& w : windows_) {
      std::vector<std::vector<int>> allowed;
      if (!filter(w, allowed)) continue;
      double c = 0.0, step = std::numeric_limits<double>::infinity();
      for (std::size_t l = 0; l < n_; ++l) {
        double lo = std::numeric_limits<double>::infinity();
        for (int i : allowed[l]) lo = std::min(lo, options_[l][static_cast<std::size_t>(i)].cost);
        c += lo;
        for (int i : allowed[l]) {
          const double d = options_[l][static_cast<std::size_t>(i)].cost - lo;
          if (d > 0) step = std::min(step, d);
        }
      }
      least = std::min(least, c + (std::isinf(step) ? 0.0 : step));
    }
    for (double bound = std::min(least, upper_bound);; bound = std::min(bound * 4.0, upper_bound)) {
      work.cost_pruned = false;
      std::optional<OptimalPlan> best;
      double cap = bound;
      std::size_t solved = 0, widest = 0;
      for (const Window& w : windows_) {
        std::vector<std::vector<int>> allowed;
        if (!filter(w, allowed) || lower_peak(w, allowed) > budget) continue;
        ++solved;
        const auto found = solve(w, allowed, budget, cap, false, widest, work);
        if (work.left < 0) {
          if (exhausted) *exhausted = true;
          return std::nullopt;
        }
        if (found && (!best || found->cost < best->cost)) {
          best = found;
          cap = std::min(cap, found->cost);
        }
      }
      if (best) {
        best->subproblems = solved, best->largest_frontier = widest;
        return best;
      }
      // No plan within this bound: a higher one can only help where the bound cut states.
      if (bound >= upper_bound || !work.cost_pruned || !(bound > 0)) return std::nullopt;
    }
  }

  /// States a search may create before it stops (deterministic: a count, not a clock):
  /// 40,000 per layer, at least 4 million (about a second on one core in either case).
  static constexpr std::int64_t kWorkPerLayer = 40'000, kMinWork = 4'000'000;
  std::int64_t work_limit() const { return std::max<std::int64_t>(kMinWork, kWorkPerLayer * static_cast<std::int64_t>(n_)); }

  /// The smallest budget with a plan (the least predicted peak over every plan), searched
  /// below `reachable`, the peak of a plan known to exist (the greedy's at its end);
  /// `at_min` receives a plan that reaches it (unchanged when only `reachable` does).
  std::int64_t min_peak(std::int64_t reachable, std::vector<model::LayerState>* at_min = nullptr) const {
    std::int64_t lo = std::numeric_limits<std::int64_t>::max();  // a lower bound on every plan's peak
    for (const Window& w : windows_) {
      std::vector<std::vector<int>> allowed;
      if (filter(w, allowed)) lo = std::min(lo, lower_peak(w, allowed));
    }
    lo = std::min(lo, reachable);
    if (feasible(lo, at_min)) return lo;
    std::int64_t hi = reachable;  // lo infeasible, hi feasible
    while (hi - lo > 1) {
      const std::int64_t mid = lo + (hi - lo) / 2;
      if (feasible(mid, at_min)) hi = mid;
      else lo = mid;
    }
    return hi;
  }

 private:
  struct Window {
    std::int64_t act = 0;        ///< activation window threshold (and its counted value)
    bool weight_sum = true;      ///< weight window counted as Σ of paged layers ...
    std::int64_t weight_max = 0;  ///< ... else (1 + prefetch) x this threshold
  };

  struct Work {
    std::int64_t left = 0;
    bool cost_pruned = false;  ///< a state was dropped by the cost bound (not by memory)
  };

  struct Node {
    std::int64_t sp = 0, ef = 0, eb = 0, eo = 0, used = 0;
    double cost = 0.0;
    std::int32_t parent = -1;
    std::int32_t option = -1;
  };

  static model::LayerState with(model::LayerState s, rules::Technique t) {
    if (t == rules::Technique::checkpoint) s.checkpoint = true;
    if (t == rules::Technique::offload_activations) s.offload_activations = true;
    if (t == rules::Technique::offload_weights) s.offload_weights = true;
    return s;
  }

  bool may(std::size_t l, rules::Technique t) const { return base_.allowed[l][static_cast<int>(t)]; }

  /// Every state the greedy can reach on layer l from the baseline, less those another
  /// option beats in every term and in cost (they cannot be in a cheapest plan).
  std::vector<SolverOption> options_of(std::size_t l) const {
    using rules::Technique;
    const Layer& layer = graph_.layers[l];
    const model::LayerState b = base_.states[l];
    std::vector<model::LayerState> recompute = {b};
    if (may(l, Technique::checkpoint) && rules::checkpoint_rule(layer, b, ctx_, false).eligible)
      recompute.push_back(with(b, Technique::checkpoint));
    if (may(l, Technique::tile)) {  // the tile rule's doubling from the baseline
      model::LayerState s = b;
      for (;;) {
        const rules::Candidate c = rules::tile_rule(layer, s, ctx_, false);
        if (!c.eligible) break;
        s.chunks = c.chunks;
        recompute.push_back(s);
      }
    }
    std::vector<model::LayerState> states;
    for (const auto& r : recompute) {
      states.push_back(r);
      if (may(l, Technique::offload_activations) && rules::activation_offload_rule(layer, r, ctx_, false).eligible)
        states.push_back(with(r, Technique::offload_activations));
    }
    if (may(l, Technique::offload_weights) &&
        rules::weight_offload_rule(layer, b, ctx_, setup_.pinned[l], false).eligible) {
      const std::size_t resident = states.size();
      for (std::size_t i = 0; i < resident; ++i) states.push_back(with(states[i], Technique::offload_weights));
    }
    const std::int64_t base_moved = model::s64(offloaded_bytes(layer, Technique::offload_activations, b, setup_.step)) +
                                    (b.offload_weights ? model::s64(offloaded_bytes(layer, Technique::offload_weights, b, setup_.step)) : 0);
    std::vector<SolverOption> all;
    for (const auto& s : states) {
      SolverOption o;
      o.state = s;
      o.terms = model::train_terms(layer, s, setup_.step);
      o.cost = layer_cost_seconds(layer, s, ctx_);
      const std::int64_t moved = o.terms.activation_window +
                                 (s.offload_weights ? model::s64(offloaded_bytes(layer, Technique::offload_weights, s, setup_.step)) : 0);
      o.offloaded = std::max<std::int64_t>(0, moved - base_moved);
      all.push_back(o);
    }
    std::vector<SolverOption> kept;
    for (std::size_t i = 0; i < all.size(); ++i) {
      bool beaten = false;
      for (std::size_t j = 0; j < all.size() && !beaten; ++j)
        if (j != i && no_worse(all[j], all[i]) && (!no_worse(all[i], all[j]) || j < i)) beaten = true;
      if (!beaten) kept.push_back(all[i]);
    }
    return kept;
  }

  static bool no_worse(const SolverOption& a, const SolverOption& b) {
    const auto& x = a.terms;
    const auto& y = b.terms;
    return x.saved <= y.saved && x.forward_local <= y.forward_local && x.backward_local <= y.backward_local &&
           x.static_bytes <= y.static_bytes && x.grad <= y.grad && x.optimizer_transient <= y.optimizer_transient &&
           x.activation_window <= y.activation_window && x.weight_window <= y.weight_window &&
           x.retained <= y.retained && a.cost <= b.cost && a.offloaded <= b.offloaded;
  }

  /// The window subproblems, in a fixed order: activation threshold ascending, weight
  /// window as a sum first, then each threshold ascending.
  std::vector<Window> window_choices() const {
    std::vector<std::int64_t> act = {0}, weight;
    for (const auto& layer : options_)
      for (const auto& o : layer) {
        act.push_back(o.terms.activation_window);
        if (o.terms.weight_window > 0) weight.push_back(o.terms.weight_window);
      }
    for (auto* v : {&act, &weight}) {
      std::sort(v->begin(), v->end());
      v->erase(std::unique(v->begin(), v->end()), v->end());
    }
    std::vector<Window> out;
    for (std::int64_t a : act) {
      out.push_back({a, true, 0});
      for (std::int64_t w : weight) out.push_back({a, false, w});
    }
    return out;
  }

  std::int64_t counted(const Window& w) const {
    return w.act + (w.weight_sum ? 0 : w.weight_max * (1 + static_cast<std::int64_t>(setup_.step.prefetch_n_ahead)));
  }

  /// Options of each layer the window allows; false when some layer has none.
  bool filter(const Window& w, std::vector<std::vector<int>>& allowed) const {
    allowed.assign(n_, {});
    for (std::size_t l = 0; l < n_; ++l) {
      for (std::size_t i = 0; i < options_[l].size(); ++i) {
        const auto& t = options_[l][i].terms;
        if (t.activation_window > w.act) continue;
        if (!w.weight_sum && t.weight_window > w.weight_max) continue;
        allowed[l].push_back(static_cast<int>(i));
      }
      if (allowed[l].empty()) return false;
    }
    return true;
  }

  /// Bytes of layer l's option at the forward and backward positions' static term (the
  /// weight window joins it when counted as a sum).
  static std::int64_t resident(const model::TrainTerms& t, const Window& w) {
    return t.static_bytes + (w.weight_sum ? t.weight_window : 0);
  }

  /// A lower bound on the peak of every plan the window allows: each position with every
  /// term at its per-layer least.
  std::int64_t lower_peak(const Window& w, const std::vector<std::vector<int>>& allowed) const {
    const std::int64_t input = model::s64(setup_.step.input_bytes), W = counted(w);
    std::vector<std::int64_t> min_res(n_), min_saved(n_), min_grad(n_), min_opt(n_);
    std::int64_t all_res = 0, all_grad = 0, all_opt = 0, retained = 0;
    for (std::size_t l = 0; l < n_; ++l) {
      min_res[l] = min_saved[l] = min_grad[l] = min_opt[l] = std::numeric_limits<std::int64_t>::max();
      for (int i : allowed[l]) {
        const auto& t = options_[l][static_cast<std::size_t>(i)].terms;
        min_res[l] = std::min(min_res[l], resident(t, w));
        min_saved[l] = std::min(min_saved[l], t.saved);
        min_grad[l] = std::min(min_grad[l], t.grad);
        min_opt[l] = std::min(min_opt[l], t.static_bytes + t.grad + t.optimizer_transient);
      }
      all_res += min_res[l];
      all_grad += min_grad[l];
      all_opt += min_opt[l];
      retained += base_terms_[l].retained;
    }
    std::int64_t best = input + all_opt + model::s64(setup_.step.optimizer_workspace_bytes);
    std::int64_t prefix = 0, prefix_retained = 0, grad_after = all_grad;
    for (std::size_t l = 0; l < n_; ++l) {
      grad_after -= min_grad[l];
      std::int64_t f = std::numeric_limits<std::int64_t>::max(), b = f;
      for (int i : allowed[l]) {
        const auto& t = options_[l][static_cast<std::size_t>(i)].terms;
        f = std::min(f, t.forward_local);
        b = std::min(b, t.backward_local);
      }
      best = std::max(best, input + W + all_res + prefix + prefix_retained + f);
      best = std::max(best, input + W + all_res + prefix + retained + grad_after + b);
      prefix += min_saved[l];
      prefix_retained += base_terms_[l].retained;
    }
    return best;
  }

  bool feasible(std::int64_t budget, std::vector<model::LayerState>* plan) const {
    std::size_t widest = 0;
    for (const Window& w : windows_) {
      std::vector<std::vector<int>> allowed;
      if (!filter(w, allowed) || lower_peak(w, allowed) > budget) continue;
      Work work{std::numeric_limits<std::int64_t>::max()};
      const auto found = solve(w, allowed, budget, std::numeric_limits<double>::infinity(), true, widest, work);
      if (!found) continue;
      if (plan) *plan = found->states;
      return true;
    }
    return false;
  }

  /// The DP of one window subproblem (see the file comment). `any`: stop at the first plan
  /// that fits, costs ignored (the min-budget search).
  std::optional<OptimalPlan> solve(const Window& w, const std::vector<std::vector<int>>& allowed, std::int64_t budget,
                                   double bound, bool any, std::size_t& widest, Work& work) const {
    constexpr std::int64_t kNone = std::numeric_limits<std::int64_t>::max() / 4;
    const std::int64_t input = model::s64(setup_.step.input_bytes), W = counted(w);
    // Baseline (largest) terms of every layer, their suffix sums, and the most each
    // layer can reduce them by.
    std::vector<std::int64_t> res_after(n_ + 1, 0), grad_after(n_ + 1, 0), retained_before(n_ + 1, 0);
    std::vector<std::int64_t> red_f(n_ + 1, 0), red_b(n_ + 1, 0), red_o(n_ + 1, 0);
    std::vector<double> least_cost(n_ + 1, 0.0);
    // Least seconds per byte of reduction any later layer offers, per requirement: a
    // requirement of e bytes costs at least e x that (a relaxation of covering it).
    std::vector<double> rate_f(n_ + 1, std::numeric_limits<double>::infinity()), rate_b = rate_f, rate_o = rate_f;
    std::vector<std::int64_t> min_step(n_), min_fwd(n_), min_bwd(n_);
    std::int64_t optimizer = input + model::s64(setup_.step.optimizer_workspace_bytes), retained = 0;
    for (std::size_t l = 0; l < n_; ++l) {
      const auto& b = base_terms_[l];
      optimizer += b.static_bytes + b.grad + b.optimizer_transient;
      retained += b.retained;
      retained_before[l + 1] = retained_before[l] + b.retained;
    }
    for (std::size_t l = n_; l-- > 0;) {
      const auto& b = base_terms_[l];
      res_after[l] = res_after[l + 1] + resident(b, w);
      grad_after[l] = grad_after[l + 1] + b.grad;
      std::int64_t rf = 0, rb = 0, ro = 0;
      double c = std::numeric_limits<double>::infinity();
      min_step[l] = min_fwd[l] = min_bwd[l] = kNone;
      for (int i : allowed[l]) {
        const SolverOption& o = options_[l][static_cast<std::size_t>(i)];
        const auto& t = o.terms;
        rf = std::max(rf, resident(b, w) - resident(t, w));
        rb = std::max(rb, resident(b, w) - resident(t, w) + b.grad - t.grad);
        ro = std::max(ro, b.static_bytes + b.grad + b.optimizer_transient - t.static_bytes - t.grad - t.optimizer_transient);
        c = std::min(c, o.cost);
        const std::int64_t df = resident(b, w) - resident(t, w), dg = b.grad - t.grad;
        const std::int64_t dopt = b.static_bytes + b.grad + b.optimizer_transient - t.static_bytes - t.grad - t.optimizer_transient;
        if (df > 0) rate_f[l] = std::min(rate_f[l], o.cost / static_cast<double>(df));
        if (df + dg > 0) rate_b[l] = std::min(rate_b[l], o.cost / static_cast<double>(df + dg));
        if (dopt > 0) rate_o[l] = std::min(rate_o[l], o.cost / static_cast<double>(dopt));
        min_step[l] = std::min(min_step[l], t.saved + resident(t, w));
        min_fwd[l] = std::min(min_fwd[l], resident(t, w) + t.forward_local);
        min_bwd[l] = std::min(min_bwd[l], resident(t, w) + t.backward_local);
      }
      red_f[l] = red_f[l + 1] + rf;
      red_b[l] = red_b[l + 1] + rb;
      red_o[l] = red_o[l + 1] + ro;
      least_cost[l] = least_cost[l + 1] + c;
      rate_f[l] = std::min(rate_f[l], rate_f[l + 1]);
      rate_b[l] = std::min(rate_b[l], rate_b[l + 1]);
      rate_o[l] = std::min(rate_o[l], rate_o[l + 1]);
    }
    // sp_max[j]: the largest Sp at boundary j from which every later position can still
    // fit, each later layer at its least.
    std::vector<std::int64_t> sp_max(n_ + 1, kNone);
    for (std::size_t l = n_; l-- > 0;) {
      const std::int64_t f = budget - (input + W + retained_before[l] + min_fwd[l] + res_after[l + 1] - red_f[l + 1]);
      const std::int64_t b =
          budget - (input + W + retained + min_bwd[l] + res_after[l + 1] + grad_after[l + 1] - red_b[l + 1]);
      sp_max[l] = std::min({f, b, sp_max[l + 1] >= kNone ? kNone : sp_max[l + 1] - min_step[l]});
    }
    const double limit = std::isinf(bound) ? bound : bound * (1.0 + 1e-12) + 1e-15;

    std::vector<std::vector<Node>> frontier(n_ + 1);
    Node start;
    start.eo = std::max<std::int64_t>(0, optimizer - budget);
    if (start.eo > red_o[0] || 0 > sp_max[0]) return std::nullopt;
    frontier[0].push_back(start);
    std::vector<Node> next;
    for (std::size_t l = 0; l < n_; ++l) {
      const auto& b = base_terms_[l];
      next.clear();
      for (std::size_t p = 0; p < frontier[l].size(); ++p) {
        const Node& s = frontier[l][p];
        for (int i : allowed[l]) {
          const SolverOption& o = options_[l][static_cast<std::size_t>(i)];
          const auto& t = o.terms;
          Node x;
          x.cost = any ? 0.0 : s.cost + o.cost;
          if (!any && x.cost + least_cost[l + 1] > limit) {
            work.cost_pruned = true;
            continue;
          }
          x.used = s.used + o.offloaded;
          if (x.used > room_) continue;
          const std::int64_t res = resident(t, w), drop = resident(b, w) - res;
          const std::int64_t fwd = input + W + s.sp + retained_before[l] + res + t.forward_local + res_after[l + 1];
          const std::int64_t bwd = input + W + s.sp + retained + res + t.backward_local + res_after[l + 1] + grad_after[l + 1];
          x.ef = std::max<std::int64_t>({0, s.ef - drop, fwd - budget});
          x.eb = std::max<std::int64_t>({0, s.eb - drop - (b.grad - t.grad), bwd - budget});
          x.eo = std::max<std::int64_t>(
              0, s.eo - (b.static_bytes + b.grad + b.optimizer_transient - t.static_bytes - t.grad - t.optimizer_transient));
          x.sp = s.sp + t.saved + res;
          if (x.ef > red_f[l + 1] || x.eb > red_b[l + 1] || x.eo > red_o[l + 1] || x.sp > sp_max[l + 1]) continue;
          if (!any) {
            const double cover = std::max({x.ef > 0 ? static_cast<double>(x.ef) * rate_f[l + 1] : 0.0,
                                           x.eb > 0 ? static_cast<double>(x.eb) * rate_b[l + 1] : 0.0,
                                           x.eo > 0 ? static_cast<double>(x.eo) * rate_o[l + 1] : 0.0});
            if (x.cost + std::max(cover, least_cost[l + 1]) > limit) {
              work.cost_pruned = true;
              continue;
            }
          }
          if (--work.left < 0) return std::nullopt;
          x.parent = static_cast<std::int32_t>(p);
          x.option = i;
          next.push_back(x);
        }
      }
      pareto(next, frontier[l + 1]);
      widest = std::max(widest, frontier[l + 1].size());
      if (frontier[l + 1].empty()) return std::nullopt;
    }
    // Every requirement is 0 here (the pruning bounds are 0 past the last layer).
    const auto& last = frontier[n_];
    std::size_t pick = 0;
    for (std::size_t i = 1; i < last.size(); ++i)
      if (last[i].cost < last[pick].cost) pick = i;
    OptimalPlan out;
    out.cost = last[pick].cost;
    out.states.resize(n_);
    std::int32_t at = static_cast<std::int32_t>(pick);
    for (std::size_t l = n_; l-- > 0;) {
      const Node& x = frontier[l + 1][static_cast<std::size_t>(at)];
      out.states[l] = options_[l][static_cast<std::size_t>(x.option)].state;
      at = x.parent;
    }
    if (!any) out.cost = plan_cost_seconds(graph_, out.states, ctx_);  // in layer order, as the greedy's is summed
    return out;
  }

  /// Keeps the candidates no other candidate beats in every component (the first of
  /// equal ones in generation order). Keeping a beaten one costs time only, never the
  /// optimum, so a candidate with requirements is compared with the cheapest kept state
  /// without any (which beats it when no dearer, Sp being sorted) and with the last
  /// kWindow kept states that have some: O(K) instead of O(K^2) on wide frontiers.
  static void pareto(std::vector<Node>& cand, std::vector<Node>& out) {
    constexpr std::size_t kWindow = 96;
    std::vector<std::uint32_t> order(cand.size());
    for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
      const Node &x = cand[a], &y = cand[b];
      if (x.sp != y.sp) return x.sp < y.sp;
      if (x.cost != y.cost) return x.cost < y.cost;
      if (x.ef != y.ef) return x.ef < y.ef;
      if (x.eb != y.eb) return x.eb < y.eb;
      if (x.eo != y.eo) return x.eo < y.eo;
      if (x.used != y.used) return x.used < y.used;
      return a < b;
    });
    out.clear();
    double free_cheapest = std::numeric_limits<double>::infinity();  // kept states without requirements
    std::vector<std::size_t> with;                                    // kept states with some, by position in out
    for (std::uint32_t i : order) {
      const Node& x = cand[i];
      if (x.cost >= free_cheapest) continue;  // a kept state with no more Sp, cost or requirement
      const bool free = x.ef == 0 && x.eb == 0 && x.eo == 0 && x.used == 0;
      if (!free) {
        bool beaten = false;
        for (std::size_t k = with.size(); k-- > 0 && with.size() - k <= kWindow;) {
          const Node& y = out[with[k]];
          if (y.cost <= x.cost && y.ef <= x.ef && y.eb <= x.eb && y.eo <= x.eo && y.used <= x.used) {
            beaten = true;
            break;
          }
        }
        if (beaten) continue;
        with.push_back(out.size());
      } else {
        free_cheapest = x.cost;
      }
      out.push_back(x);
    }
  }

  const ModelGraph& graph_;
  const Setup& setup_;
  const Baseline& base_;
  rules::RuleContext ctx_;
  std::size_t n_;
  std::int64_t room_ = 0;  ///< bytes the tiers below the device can still take
  std::vector<std::vector<SolverOption>> options_;
  std::vector<model::TrainTerms> base_terms_;  ///< each layer at its baseline: its largest terms
  std::vector<Window> windows_;
};

}  // namespace memscale::engine_detail

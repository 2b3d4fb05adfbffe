"""The optional learned policy stage (``Config(auto_policy=True)``): its dataset
(:mod:`memscale.policy.dataset`), its training (:mod:`memscale.policy.train`) and its
held-out evaluation (:mod:`memscale.policy.evaluate`). The stage itself runs in the C++
engine (include/memscale/core/engine/policy_stage.hpp) with the model file
``data/model.json`` compiled in; docs/auto-policy.md says what it decides and how."""

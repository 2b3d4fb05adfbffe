// Umbrella header of the torch-free core.
#pragma once

#include "memscale/core/config.hpp"
#include "memscale/core/engine.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/log.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/plan.hpp"
#include "memscale/core/sizes.hpp"
#include "memscale/core/version.hpp"

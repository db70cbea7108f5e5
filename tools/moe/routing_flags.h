// The routing-policy flags (moe/routing_policy.h) every model-running command shares: top-k override,
// top-p, ratio threshold, minimum weight, masks, steering, Sinkhorn, and the whole policy as JSON.
// docs/routing-lab.md documents each; errors name the flag.
#pragma once
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "moe/routing_policy.h"

namespace moe::cli {

struct RoutingFlags {
  int experts = -1;  // -1 = not given
  std::string experts_per_layer;
  double top_p = -1;
  int top_p_max_k = 0;
  std::string top_p_weights = "model";
  double ratio = 0;
  std::string ratio_layers;
  double random_drop = 0;
  uint64_t random_seed = 0;
  double min_weight = 0;
  bool min_weight_renorm = false;
  std::string mask, mask_file, force, force_file;
  std::string steer, steer_file;
  double steer_factor = 2.0;
  bool steer_force = false;
  bool sinkhorn = false;
  double sinkhorn_eps = 0.05;
  int sinkhorn_iters = 20;
  std::string policy;  // --routing-policy: a JSON file, or JSON text starting with '{'
  // C3PO re-mixing (only where the command computes re-mixed scores: `moe run`).
  std::string remix;
  int remix_layers = 0;
  int remix_neighbors = 3;
  bool any_flag = false;  // any routing flag other than --routing-policy was given
  bool remix_supported = false;  // the command computes re-mixed scores (add_remix_flags)
};

void add_routing_flags(CLI::App* sub, RoutingFlags& f);
// --remix, --remix-layers, --remix-neighbors (commands that compute re-mixed scores from a prompt).
void add_remix_flags(CLI::App* sub, RoutingFlags& f);

// The policy the flags describe (checked for ranges and contradictions; the model-dependent checks
// run when a session compiles it). skip_below: --skip-below, the same mechanism as --route-min-weight.
RoutingPolicy routing_policy_from_flags(const RoutingFlags& f, double skip_below);

// One line for --stats: experts per token overall and per layer, and evaluations saved against the
// model's k.
std::string describe_routing_use(const nlohmann::ordered_json& routing_use);

}  // namespace moe::cli

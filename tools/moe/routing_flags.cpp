#include "routing_flags.h"

#include <fmt/format.h>

#include "base/error.h"
#include "generation.h"

namespace moe::cli {

void add_routing_flags(CLI::App* sub, RoutingFlags& f) {
  auto mark = [&f](CLI::Option* o) {
    o->each([&f](const std::string&) { f.any_flag = true; });
    return o;
  };
  const std::string g = "Routing policy (docs/routing-lab.md)";
  mark(sub->add_option("--experts", f.experts, "Top-k override: K experts per token in every MoE layer (the model's gate "
                                               "with another k)"))
      ->group(g);
  mark(sub->add_option("--experts-per-layer", f.experts_per_layer,
                       "Top-k per layer, L:K,L:K,... (L may be a range A-B); overrides --experts there"))
      ->group(g);
  mark(sub->add_option("--route-top-p", f.top_p,
                       "Top-p routing: the fewest experts whose probability mass exceeds P (0 = one expert, 1 = all)"))
      ->group(g);
  mark(sub->add_option("--route-top-p-max-k", f.top_p_max_k, "Top-p: at most K experts per token"))->group(g);
  mark(sub->add_option("--route-top-p-weights", f.top_p_weights,
                       "Top-p weights: model (renormalize as the model does; default), raw (the gate's "
                       "probabilities, as the paper), renorm (always sum 1)"))
      ->check(CLI::IsMember({"model", "raw", "renorm"}))
      ->group(g);
  mark(sub->add_option("--route-ratio", f.ratio,
                       "Ratio threshold (MC-MoE online pruning): drop expert j when w_j < BETA * the token's "
                       "largest weight; the survivors keep the token's total weight"))
      ->group(g);
  mark(sub->add_option("--route-ratio-layers", f.ratio_layers, "Layers the ratio threshold applies to (1,2,5-7; "
                                                                "default: every MoE layer)"))
      ->group(g);
  mark(sub->add_option("--route-random-drop", f.random_drop,
                       "Baseline for --route-ratio: drop each selected expert but the heaviest with probability Q"))
      ->group(g);
  mark(sub->add_option("--route-seed", f.random_seed, "Seed of --route-random-drop"))->group(g);
  mark(sub->add_option("--route-min-weight", f.min_weight,
                       "Null experts / minimum weight: drop (token, expert) pairs whose weight is below W (never "
                       "computed or loaded); --skip-below is the same without renormalization"))
      ->group(g);
  mark(sub->add_flag("--route-min-weight-renorm", f.min_weight_renorm,
                     "With --route-min-weight: rescale the kept experts to the token's weight before dropping "
                     "(AdaMoE)"))
      ->group(g);
  mark(sub->add_option("--mask-experts", f.mask,
                       "Experts forced off, L:E,L:E,... (E or L may be a range A-B): as if their router rows were "
                       "removed; never loaded"))
      ->group(g);
  mark(sub->add_option("--mask-experts-file", f.mask_file, "File of L:E entries to mask (whitespace or comma "
                                                            "separated, '#' comments)"))
      ->group(g);
  mark(sub->add_option("--force-experts", f.force, "Experts forced on for every token, L:E,..."))->group(g);
  mark(sub->add_option("--force-experts-file", f.force_file, "File of L:E entries to force on"))->group(g);
  mark(sub->add_option("--steer", f.steer,
                       "Expert steering (RICE): multiply the routing weight of L:E[:F] pairs by F (default "
                       "--steer-factor)"))
      ->group(g);
  mark(sub->add_option("--steer-file", f.steer_file, "File of L:E[:F] steering entries"))->group(g);
  mark(sub->add_option("--steer-factor", f.steer_factor, "Default steering factor (default 2)"))->group(g);
  mark(sub->add_flag("--steer-force", f.steer_force, "Also force-select the steered experts"))->group(g);
  mark(sub->add_flag("--route-sinkhorn", f.sinkhorn,
                     "Sinkhorn-balanced routing over each evaluated batch (batch evaluation: logits, perplexity)"))
      ->group(g);
  mark(sub->add_option("--sinkhorn-eps", f.sinkhorn_eps, "Sinkhorn temperature (default 0.05)"))->group(g);
  mark(sub->add_option("--sinkhorn-iters", f.sinkhorn_iters, "Sinkhorn iterations at most (default 20)"))->group(g);
  sub->add_option("--routing-policy", f.policy,
                  "The whole routing policy as JSON (a file, or text starting with '{'); instead of the flags")
      ->group(g);
}

void add_remix_flags(CLI::App* sub, RoutingFlags& f) {
  f.remix_supported = true;
  auto mark = [&f](CLI::Option* o) {
    o->each([&f](const std::string&) { f.any_flag = true; });
    return o;
  };
  const std::string g = "Routing policy (docs/routing-lab.md)";
  {
    mark(sub->add_option("--remix", f.remix,
                         "C3PO re-mixing: reference routing from `moe remix-build`; the last --remix-layers MoE "
                         "layers route with the similarity-weighted average of the nearest references' routing"))
        ->group(g);
    mark(sub->add_option("--remix-layers", f.remix_layers, "Re-mix the last N MoE layers"))->group(g);
    mark(sub->add_option("--remix-neighbors", f.remix_neighbors, "Nearest references averaged (default 3)"))->group(g);
  }
}

RoutingPolicy routing_policy_from_flags(const RoutingFlags& f, double skip_below) {
  if (!f.policy.empty()) {
    if (f.any_flag)
      fail("--routing-policy gives the whole routing policy; it cannot be combined with other routing flags");
    const std::string text = !f.policy.empty() && f.policy[0] == '{' ? f.policy : read_text_file(f.policy);
    const std::string where = f.policy[0] == '{' ? "--routing-policy" : f.policy;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON: {}", where, e.what());
    }
    RoutingPolicy p;
    try {
      p = RoutingPolicy::from_json(j);
    } catch (const Error& e) {
      fail("{}: {}", where, e.what());
    }
    if (skip_below > 0) {
      if (p.min_weight > 0) fail("--skip-below and the policy's min_weight are the same setting; give one");
      p.min_weight = skip_below;
    }
    return p;
  }
  RoutingPolicy p;
  if (f.experts != -1) {
    if (f.experts < 1) fail("--experts {}: must be at least 1", f.experts);
    p.experts = f.experts;
  }
  if (!f.experts_per_layer.empty()) p.experts_per_layer = parse_layer_values(f.experts_per_layer, "--experts-per-layer");
  if (f.top_p != -1) {
    if (!(f.top_p >= 0 && f.top_p <= 1)) fail("--route-top-p {}: must be in [0, 1]", f.top_p);
    p.top_p = f.top_p;
  }
  p.top_p_max_k = f.top_p_max_k;
  p.top_p_weights = f.top_p_weights == "raw" ? TopPWeights::Raw
                    : f.top_p_weights == "renorm" ? TopPWeights::Renorm
                                                  : TopPWeights::Model;
  p.ratio_beta = f.ratio;
  if (!f.ratio_layers.empty()) p.ratio_layers = parse_int_list(f.ratio_layers, "--route-ratio-layers");
  p.random_drop = f.random_drop;
  p.random_seed = f.random_seed;
  if (skip_below > 0 && f.min_weight > 0)
    fail("--skip-below and --route-min-weight are the same setting (a minimum routing weight); give one");
  p.min_weight = f.min_weight > 0 ? f.min_weight : skip_below;
  p.min_weight_renorm = f.min_weight_renorm;
  auto append = [](std::vector<LayerExpert>& dst, const std::vector<LayerExpert>& src) {
    dst.insert(dst.end(), src.begin(), src.end());
  };
  if (!f.mask.empty()) append(p.mask_experts, parse_layer_experts(f.mask, "--mask-experts"));
  if (!f.mask_file.empty()) append(p.mask_experts, parse_layer_experts(read_text_file(f.mask_file), f.mask_file));
  if (!f.force.empty()) append(p.force_experts, parse_layer_experts(f.force, "--force-experts"));
  if (!f.force_file.empty()) append(p.force_experts, parse_layer_experts(read_text_file(f.force_file), f.force_file));
  if (!(f.steer_factor > 0) || f.steer_factor > 1e6) fail("--steer-factor {}: must be in (0, 1e6]", f.steer_factor);
  if (!f.steer.empty()) {
    auto r = parse_steer_rules(f.steer, "--steer", f.steer_factor, f.steer_force);
    p.steer.insert(p.steer.end(), r.begin(), r.end());
  }
  if (!f.steer_file.empty()) {
    auto r = parse_steer_rules(read_text_file(f.steer_file), f.steer_file, f.steer_factor, f.steer_force);
    p.steer.insert(p.steer.end(), r.begin(), r.end());
  }
  if (f.steer_force && p.steer.empty()) fail("--steer-force needs --steer or --steer-file");
  p.sinkhorn = f.sinkhorn;
  p.sinkhorn_eps = f.sinkhorn_eps;
  p.sinkhorn_iters = f.sinkhorn_iters;
  p.remix_refs = f.remix;
  p.remix_layers = f.remix_layers;
  p.remix_neighbors = f.remix_neighbors;
  p.check();
  return p;
}

std::string describe_routing_use(const nlohmann::ordered_json& j) {
  std::string layers;
  for (const auto& v : j["experts_per_token_per_layer"])
    layers += v.is_null() ? " -" : fmt::format(" {:.2f}", v.get<double>());
  return fmt::format("experts per token {:.3f} (model's k {:.3g}; per layer:{}); expert evaluations {} ({:.1f}% "
                     "saved against the model's k)",
                     j["experts_per_token"].get<double>(), j["model_experts_per_token"].get<double>(), layers,
                     j["expert_evals"].get<uint64_t>(), 100 * j["expert_evals_saved_frac"].get<double>());
}

}  // namespace moe::cli

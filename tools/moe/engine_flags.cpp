#include "engine_flags.h"

#include <cstdio>
#include <cstring>
#include <fstream>

#include "base/error.h"
#include "cli_util.h"
#include "generation.h"
#include "model/transitions.h"

namespace moe::cli {

void add_engine_flags(CLI::App* sub, EngineFlags& f) {
  sub->add_option("--mem", f.mem,
                  "Memory budget for everything the command holds: weights, KV cache, buffers, its own inputs and "
                  "outputs (e.g. 8G; a container of that size is enough). Experts stream from disk when the model "
                  "does not fit");
  sub->add_option("--cache-policy", f.cache_policy, "Expert cache policy when streaming: distance (to the executing layer; default), lru, lfu, arc, layer")
      ->check(CLI::IsMember(cache_policy_names()));
  sub->add_option("--prefetch-margin", f.prefetch_margin,
                  "Prefetch the next MoE layer's predicted top-(k + margin) experts when streaming (-1 = off)")
      ->check(CLI::Range(-1, 1024));
  sub->add_option("--predictor", f.predictor,
                  "What predicts the next layer's experts when streaming: gate (its router on this layer's input; "
                  "default), transition (a table from `moe route-stats`), none")
      ->check(CLI::IsMember({"gate", "transition", "none"}));
  sub->add_option("--transitions", f.transitions,
                  "Transition table for --predictor transition (implies it; default: the model's path + "
                  ".transitions.gguf)");
  sub->add_flag("--mmap,!--no-mmap", f.mmap,
                "Map the model file and compute from its page-cache pages instead of reading the weights into "
                "memory of our own (--no-mmap, the default): faster start, slower decode");
  sub->add_flag("--no-repack", f.no_repack,
                "Keep weights in the file's layout instead of repacking them for the AVX-512 kernels (Q4_K "
                "matrices, Q8_0 matrices but the token embedding): same results, slower; for comparisons");
  sub->add_flag("--offload-all", f.offload_all, "Stream experts from disk even if the model fits in --mem");
  sub->add_flag("--preload", f.preload,
                "When streaming, fill the expert pool in the background from the start instead of only on demand "
                "(competes with the first tokens for disk and cores; `bench` waits for it before timing)");
  sub->add_flag("--stats", f.stats, "Print expert-store statistics to stderr at the end");
  sub->add_flag("--batch-invariant", f.batch_invariant,
                "Attend in prompt batches with decoding's per-token arithmetic, so logits are bit-identical however "
                "the prompt is batched (slower prefill)");
  sub->add_option("--stats-json", f.stats_json, "Write the statistics as JSON to this file");
  sub->add_option("--lowbit", f.lowbit,
                  "Low-bit copies of the experts (from `moe quantize-experts`), used for experts whose routing "
                  "weight is below --lowbit-below");
  sub->add_option_function<double>(
      "--lowbit-below",
      [&f](const double& w) {
        f.lowbit_below = w;
        f.lowbit_below_given = true;
      },
      "With --lowbit: an expert whose tokens all weigh less than W comes from its low-bit copy (when "
      "streaming: unless its full copy is already in memory; when resident: always). 0 = never");
  sub->add_option("--skip-below", f.skip_below,
                  "Skip (token, expert) pairs whose routing weight is below S (<= W); the other experts' weights "
                  "are not renormalized. 0 = never. The same mechanism as --route-min-weight");
  add_routing_flags(sub, f.routing);
}

RoutingPolicy routing_policy(const EngineFlags& f) {
  if (!(f.skip_below >= 0) || f.skip_below > 1e30)
    fail("--skip-below {}: expected a routing weight >= 0", f.skip_below);
  return routing_policy_from_flags(f.routing, f.skip_below);
}

ExpertPrecision expert_precision(const EngineFlags& f) {
  if (f.lowbit_below_given && f.lowbit.empty())
    fail("--lowbit-below {} needs --lowbit SIDE.gguf (make one with `moe quantize-experts -m MODEL --type q2_K -o "
         "SIDE.gguf`)",
         f.lowbit_below);
  if (!f.lowbit.empty() && !f.lowbit_below_given)
    fail("--lowbit {} needs --lowbit-below W: the routing weight below which an expert may use its low-bit copy "
         "(e.g. 0.3)",
         f.lowbit);
  if (!(f.lowbit_below >= 0) || f.lowbit_below > 1e30)
    fail("--lowbit-below {}: expected a routing weight >= 0", f.lowbit_below);
  if (!(f.skip_below >= 0) || f.skip_below > 1e30)
    fail("--skip-below {}: expected a routing weight >= 0", f.skip_below);
  if (f.lowbit_below_given && f.skip_below > f.lowbit_below)
    fail("--skip-below {} is above --lowbit-below {}: skipping must use the lower threshold", f.skip_below,
         f.lowbit_below);
  ExpertPrecision p;
  p.low_bit_below = static_cast<float>(f.lowbit_below);
  return p;
}

void add_sampling_flags(CLI::App* sub, SamplerParams& p) {
  sub->add_option("--temp", p.temperature, "Temperature (0 = greedy)")->check(CLI::Range(0.0, 100.0));
  sub->add_option("--top-k", p.top_k, "Top-k (0 = off)")->check(CLI::Range(0, 1 << 24));
  sub->add_option("--top-p", p.top_p, "Top-p (1 = off)")->check(CLI::Range(0.0, 1.0));
  sub->add_option("--seed", p.seed, "Sampling seed");
}

EngineOptions engine_options(const EngineFlags& f, int64_t n_ctx, int64_t n_batch, int experts_per_token, int n_seq,
                             std::vector<MemoryReservation> reserved) {
  EngineOptions o;
  if (!f.mem.empty()) o.mem_bytes = parse_size(f.mem, "--mem");
  o.n_ctx = n_ctx;
  o.n_seq = n_seq;
  o.n_batch = n_batch;
  o.cache_policy = f.cache_policy;
  o.mmap = f.mmap;
  o.repack = !f.no_repack;
  o.force_offload = f.offload_all;
  o.preload = f.preload;
  expert_precision(f);  // bad thresholds are reported before anything is loaded
  o.low_bit_path = f.lowbit;
  const RoutingPolicy policy = routing_policy(f);
  o.experts_per_token = policy_max_experts(policy);
  if (experts_per_token < 0) o.experts_per_token = -1;
  else if (o.experts_per_token >= 0) o.experts_per_token = std::max(o.experts_per_token, experts_per_token);
  for (const LayerExpert& m : policy.mask_experts) o.preload_exclude.emplace_back(m.layer, m.expert);
  o.held_bytes = current_rss_bytes();
  o.reserved = std::move(reserved);
  return o;
}

std::unique_ptr<Engine> open_engine(const std::string& path, const EngineFlags& f, int64_t n_ctx, int64_t n_batch,
                                    int experts_per_token, int n_seq, std::vector<MemoryReservation> reserved) {
  const EngineOptions o = engine_options(f, n_ctx, n_batch, experts_per_token, n_seq, std::move(reserved));
  try {
    return Engine::open(path, o);
  } catch (const Error&) {
    load_model_for_generation(path);  // rethrows with the vocabulary-only explanation when that is why
    throw;
  }
}

std::string resolved_predictor(const EngineFlags& f) {
  if (!f.predictor.empty()) return f.predictor;
  return f.transitions.empty() ? "gate" : "transition";
}

ForwardOptions forward_options(const EngineFlags& f, Engine& engine, bool llama_compat) {
  ForwardOptions fo;
  fo.llama_compat_attention = llama_compat;
  fo.batch_invariant = f.batch_invariant;
  fo.precision = expert_precision(f);
  fo.expert_use = &engine.expert_use();
  fo.routing = routing_policy(f);
  if (!fo.routing.remix_refs.empty() && !f.routing.remix_supported)
    fail("re-mixing (--remix, or 'remix' in --routing-policy) is computed from a prompt by `moe run`; this command "
         "does not support it");
  fo.routing_use = &engine.routing_use();
  RoutingPlan(fo.routing, routing_shape(engine.model().spec()));  // errors name the layer, expert and flag
  const std::string predictor = resolved_predictor(f);
  if (!f.transitions.empty() && predictor != "transition")
    fail("--transitions {} is only used by --predictor transition, not --predictor {}", f.transitions, predictor);
  const bool streaming = engine.offload_store() != nullptr;
  fo.lookahead_margin = streaming && predictor != "none" ? f.prefetch_margin : -1;
  if (predictor == "transition") {
    fo.predictor = PrefetchPredictor::Transition;
    // A resident run never predicts, so it only reads a table the user named (to report a bad one early).
    if (streaming || !f.transitions.empty()) {
      const Model& model = engine.model();
      const std::string path = f.transitions.empty() ? default_transition_path(model.file().path()) : f.transitions;
      LoadedTransitions t = load_transition_table(path, model);
      if (!t.same_weights)
        std::fprintf(stderr, "moe: warning: %s was built from another checkpoint of this model's shape (router "
                             "weights differ); its predictions will be worse\n",
                     path.c_str());
      fo.transitions = std::move(t.table);
    }
  }
  return fo;
}

namespace {
uint64_t proc_status_kib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') return std::stoull(line.substr(n + 1)) * 1024;
  return 0;
}
}  // namespace

uint64_t peak_rss_bytes() { return proc_status_kib("VmHWM"); }

uint64_t current_rss_bytes() { return proc_status_kib("VmRSS"); }

nlohmann::ordered_json plan_bytes_json(const MemoryPlan& p) {
  nlohmann::ordered_json j;
  j["held"] = p.held_bytes;
  j["weights_resident"] = p.weights_resident;
  j["low_bit"] = p.low_bit_bytes;
  j["kv"] = p.kv_bytes;
  j["buffers"] = p.buffer_bytes;
  for (const MemoryReservation& r : p.reserved) j["reserved"][r.what] = r.bytes;
  j["expert_pool"] = p.expert_pool_bytes;
  j["total"] = p.total_bytes();
  return j;
}

nlohmann::ordered_json engine_stats_json(Engine& engine, const PredictionStats* pred, uint64_t tokens,
                                         double seconds) {
  nlohmann::ordered_json j;
  const MemoryPlan& plan = engine.plan();
  j["mode"] = plan.offload ? "offload" : "resident";
  j["plan"] = plan.describe();
  j["plan_bytes"] = plan_bytes_json(plan);
  j["tokens"] = tokens;
  j["seconds"] = seconds;
  j["tok_s"] = seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0;
  j["peak_rss_bytes"] = peak_rss_bytes();
  {
    const ExpertUseCounters& u = engine.expert_use();
    const uint64_t full = u.full_evals, low = u.low_bit_evals, skipped = u.skipped_evals;
    const uint64_t routed = full + low + skipped;
    if (engine.has_low_bit()) j["low_bit_type"] = std::string(dtype_traits(engine.low_bit_type()).name);
    j["expert_evals_full"] = full;
    j["expert_evals_low_bit"] = low;
    j["expert_evals_skipped"] = skipped;
    j["low_bit_frac"] = routed ? static_cast<double>(low) / static_cast<double>(routed) : 0.0;
    j["skipped_frac"] = routed ? static_cast<double>(skipped) / static_cast<double>(routed) : 0.0;
    j["expert_acquires_full"] = u.full_acquires.load();
    j["expert_acquires_low_bit"] = u.low_bit_acquires.load();
  }
  j["routing"] = engine.routing_use().to_json();
  BudgetedExpertStore* st = engine.offload_store();
  if (!st) return j;
  const ExpertStoreStats s = st->stats();
  uint64_t hits = 0, misses = 0;
  nlohmann::ordered_json per_layer = nlohmann::ordered_json::array();
  for (size_t l = 0; l < s.hits.size(); ++l) {
    hits += s.hits[l];
    misses += s.misses[l];
    const uint64_t n = s.hits[l] + s.misses[l];
    per_layer.push_back(n ? static_cast<double>(s.hits[l]) / static_cast<double>(n) : 0.0);
  }
  j["policy"] = st->policy_name();
  j["io"] = st->io_mode_name();
  j["pool_slots"] = st->n_slots();
  j["slot_bytes"] = st->slot_bytes();
  j["hit_rate"] = hits + misses ? static_cast<double>(hits) / static_cast<double>(hits + misses) : 0.0;
  j["hit_rate_per_layer"] = per_layer;
  j["hits"] = hits;
  j["misses"] = misses;
  j["order_sensitive_evictions"] = s.order_sensitive_evictions;
  j["loads"] = s.loads;
  j["bytes_read"] = s.bytes_read;
  j["bytes_read_full"] = s.bytes_read - s.low_bit_bytes_read;
  j["bytes_read_low_bit"] = s.low_bit_bytes_read;
  j["loads_low_bit"] = s.low_bit_loads;
  j["bytes_read_per_token"] = tokens ? static_cast<double>(s.bytes_read) / static_cast<double>(tokens) : 0.0;
  j["read_seconds"] = s.read_seconds;
  j["read_gbps"] = s.read_seconds > 0 ? static_cast<double>(s.bytes_read) / s.read_seconds / 1e9 : 0.0;
  j["stall_seconds"] = s.stall_seconds;
  j["stall_frac"] = seconds > 0 ? s.stall_seconds / seconds : 0.0;
  j["io_hidden_frac"] = s.read_seconds > 0 ? std::max(0.0, 1.0 - s.stall_seconds / s.read_seconds) : 0.0;
  j["prefetch_issued"] = s.prefetch_issued;
  j["prefetch_used"] = s.prefetch_used;
  j["prefetch_wasted"] = s.prefetch_wasted;
  j["prefetch_throttled"] = s.prefetch_throttled;
  if (pred) {
    j["prediction_precision"] = pred->precision();
    j["prediction_recall"] = pred->recall();
  }
  return j;
}

namespace {
bool st_low_bit(const nlohmann::ordered_json& j) { return j.contains("low_bit_type"); }
}  // namespace

void report_engine_stats(const EngineFlags& f, Engine& engine, const PredictionStats* pred, uint64_t tokens,
                         double seconds) {
  if (!f.stats && f.stats_json.empty()) return;
  nlohmann::ordered_json j = engine_stats_json(engine, pred, tokens, seconds);
  j["routing_policy"] = routing_policy(f).to_json();
  if (j["mode"] == "offload") {
    j["predictor"] = f.prefetch_margin < 0 ? std::string("none") : resolved_predictor(f);
    j["prefetch_margin"] = f.prefetch_margin;
  }
  if (f.stats) {
    std::fprintf(stderr, "moe stats: %s\n", j["plan"].get<std::string>().c_str());
    std::fprintf(stderr, "moe stats: %.2f tok/s over %llu tokens, peak RSS %s\n", j["tok_s"].get<double>(),
                 static_cast<unsigned long long>(tokens), human_bytes(j["peak_rss_bytes"].get<uint64_t>()).c_str());
    std::fprintf(stderr, "moe stats: routing %s: %s\n", j["routing_policy"].dump().c_str(),
                 describe_routing_use(j["routing"]).c_str());
    if (!f.lowbit.empty() || f.skip_below > 0) {
      auto n = [&](const char* k) { return static_cast<unsigned long long>(j[k].get<uint64_t>()); };
      std::fprintf(stderr, "moe stats: expert evaluations (token x expert): %llu full, %llu low-bit%s%s (%.1f%%), "
                           "%llu skipped (%.1f%%); expert acquires (per expert and batch): %llu full, %llu low-bit\n",
                   n("expert_evals_full"), n("expert_evals_low_bit"), j.contains("low_bit_type") ? " " : "",
                   j.contains("low_bit_type") ? j["low_bit_type"].get<std::string>().c_str() : "",
                   100 * j["low_bit_frac"].get<double>(), n("expert_evals_skipped"),
                   100 * j["skipped_frac"].get<double>(), n("expert_acquires_full"), n("expert_acquires_low_bit"));
    }
    if (j["mode"] == "offload") {
      std::fprintf(stderr, "moe stats: %s cache, %s, %zu slots of %s\n", j["policy"].get<std::string>().c_str(),
                   j["io"].get<std::string>().c_str(), j["pool_slots"].get<size_t>(),
                   human_bytes(j["slot_bytes"].get<uint64_t>()).c_str());
      std::string layers;
      for (const auto& v : j["hit_rate_per_layer"]) layers += fmt::format(" {:.0f}%", 100 * v.get<double>());
      std::fprintf(stderr, "moe stats: hit rate %.1f%% (per layer:%s)\n", 100 * j["hit_rate"].get<double>(),
                   layers.c_str());
      std::fprintf(stderr, "moe stats: read %s in %llu loads (%.2f GB/s, %s per token), stalled %.2f s (%.1f%% of "
                           "the time), %.0f%% of I/O hidden\n",
                   human_bytes(j["bytes_read"].get<uint64_t>()).c_str(),
                   static_cast<unsigned long long>(j["loads"].get<uint64_t>()), j["read_gbps"].get<double>(),
                   human_bytes(static_cast<uint64_t>(j["bytes_read_per_token"].get<double>())).c_str(),
                   j["stall_seconds"].get<double>(), 100 * j["stall_frac"].get<double>(),
                   100 * j["io_hidden_frac"].get<double>());
      if (st_low_bit(j))
        std::fprintf(stderr, "moe stats: by tier: full %s read, low-bit %s read in %llu loads\n",
                     human_bytes(j["bytes_read_full"].get<uint64_t>()).c_str(),
                     human_bytes(j["bytes_read_low_bit"].get<uint64_t>()).c_str(),
                     static_cast<unsigned long long>(j["loads_low_bit"].get<uint64_t>()));
      if (pred && j["predictor"] != "none")
        std::fprintf(stderr, "moe stats: prefetch (%s, margin %d) precision %.1f%%, recall %.1f%% (issued %llu, used "
                             "%llu, wasted %llu, throttled %llu)\n",
                     j["predictor"].get<std::string>().c_str(), f.prefetch_margin, 100 * pred->precision(),
                     100 * pred->recall(),
                     static_cast<unsigned long long>(j["prefetch_issued"].get<uint64_t>()),
                     static_cast<unsigned long long>(j["prefetch_used"].get<uint64_t>()),
                     static_cast<unsigned long long>(j["prefetch_wasted"].get<uint64_t>()),
                     static_cast<unsigned long long>(j["prefetch_throttled"].get<uint64_t>()));
    }
  }
  if (!f.stats_json.empty()) {
    const std::string body = j.dump(2) + "\n";
    write_file_atomic(f.stats_json, body.data(), body.size());
  }
}

}  // namespace moe::cli

// `moe bench -m MODEL [-t N] [-p 512] [-n 64] [-r REPS] [--json]`: prefill and decode throughput, in
// the way llama-bench measures them, plus what performance.md asks to report next to them:
//   pp     p random tokens evaluated as one batch into an empty context (tok/s)
//   tg     n single-token steps, each sampled greedily from the last logits (tok/s), from an empty context or
//          (--depth D) after D random tokens were evaluated untimed
//   ttft   prompt eval of p tokens + the first (greedy) sample, in ms
//   decode_gbps   active bytes per token (Model::byte_report) * tg tok/s
//   mem_bw_gbps   a streaming-read probe run here, with the same thread count (best of 3 passes), just
//                 before each timed decode run: the median of those probes. Under --mem the probe's buffer
//                 counts against the budget (plan_probe): it shrinks, runs once before the model loads, or
//                 is skipped, and says so on stderr
//   roofline_frac each decode run's GB/s over the probe taken just before it: the median of those
//                 ratios. Bandwidth on a shared machine swings by 2x within minutes, so a decode run is
//                 compared with the bandwidth of its own moment, alternating, as performance.md asks of
//                 every comparison. (Without a way to reset VmHWM, one probe after all runs instead.)
//   peak_rss      VmHWM (the mapped model pages we touched count, as they do for llama.cpp), not
//                 counting the probe's buffer
//   preload_s     streaming with --preload: how long the expert pool's background fill still ran after
//                 the model loaded; waited for before anything is timed (0 without --preload)
//   --parallel N  tg decodes N sequences together, one token of each per step (each with its own KV cache,
//                 as `moe serve`'s continuous batching runs them): tg tok/s counts all N streams. A step
//                 reads the union of its rows' experts once, so the roofline is the bytes of that union
//                 (distinct_experts_per_layer, measured) per N tokens; batched decode can also go no
//                 faster than prefill, so batch_bound_tok_s = min(pp tok/s, that roofline) and
//                 batch_frac = tg / batch_bound (issue 20's fraction).
// Every rate is the median of REPS repetitions, with min and max, after one untimed warm-up of each.
#include <emmintrin.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "engine_flags.h"
#include "commands.h"
#include "model/weights.h"
#include "moe/expert_store.h"
#include "runtime/sampler.h"
#include "runtime/session.h"

namespace moe::cli {

namespace {

struct BenchArgs {
  std::string model;
  int threads = 0;
  int64_t n_prompt = 512;
  int64_t n_gen = 64;
  int64_t depth = 0;  // context tokens already in the KV cache when tg starts
  int reps = 5;
  bool json = false;
  double bw_gib = 1.0;  // probe buffer size; 0 = skip the probe
  uint64_t seed = 42;
  int parallel = 1;  // sequences decoded together per tg step
  EngineFlags engine;
};

// Distinct routed experts per MoE layer per step (the union a batched step reads), over the steps seen
// while counting is on.
class DistinctExpertCounter : public ForwardObserver {
 public:
  bool counting = false;
  uint64_t layer_steps = 0, distinct = 0;
  void on_routing(const MoeLayerRouting& r) override {
    if (!counting) return;
    seen_.assign(static_cast<size_t>(r.n_expert), 0);
    uint64_t n = 0;
    for (int64_t t = 0; t < r.routing->n_tokens; ++t)
      for (int j = 0; j < r.routing->k; ++j) {
        const int32_t e = r.routing->id(t, j);
        if (e >= 0 && e < r.n_expert && !seen_[static_cast<size_t>(e)]) seen_[static_cast<size_t>(e)] = 1, ++n;
      }
    distinct += n;
    ++layer_steps;
  }
  double mean() const { return layer_steps ? static_cast<double>(distinct) / static_cast<double>(layer_steps) : 0.0; }

 private:
  std::vector<uint8_t> seen_;
};

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Stat {
  double median = 0, min = 0, max = 0;
};

Stat stat_of(std::vector<double> v) {
  Stat s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  s.min = v.front();
  s.max = v.back();
  return s;
}

// Streaming read bandwidth: each thread sums its slice of a buffer far larger than the L3 with
// independent SSE2 accumulators (enough loads in flight to saturate DRAM). Best of `passes`.
double probe_read_bandwidth(ThreadPool& pool, size_t bytes, int passes) {
  // The buffer is freed on return (a mapping this large goes back to the system), so the probe adds
  // nothing to the RSS the timed runs see.
  bytes = bytes / (64 * 1024) * (64 * 1024);
  auto* buf = static_cast<uint8_t*>(std::aligned_alloc(64, bytes));
  if (!buf) fail("bench: cannot allocate {} bytes for the bandwidth probe", bytes);
  std::unique_ptr<uint8_t, decltype(&std::free)> guard(buf, &std::free);
  // Touch every page from the threads that will read it (first-touch placement), with non-zero data.
  pool.run([&](int ti, int nt) {
    const size_t b = bytes / nt * ti, e = ti == nt - 1 ? bytes : bytes / nt * (ti + 1);
    std::memset(buf + b, ti + 1, e - b);
  });
  std::vector<uint64_t> sink(static_cast<size_t>(pool.size()) * 8);
  double best = 0;
  for (int p = 0; p < passes; ++p) {
    const auto t0 = Clock::now();
    pool.run([&](int ti, int nt) {
      const size_t chunk = bytes / nt / 64 * 64;
      const auto* s = reinterpret_cast<const __m128i*>(buf + chunk * ti);
      const size_t n = chunk / 16;
      __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
      for (size_t i = 0; i + 4 <= n; i += 4) {
        a0 = _mm_add_epi64(a0, _mm_load_si128(s + i));
        a1 = _mm_add_epi64(a1, _mm_load_si128(s + i + 1));
        a2 = _mm_add_epi64(a2, _mm_load_si128(s + i + 2));
        a3 = _mm_add_epi64(a3, _mm_load_si128(s + i + 3));
      }
      const __m128i t = _mm_add_epi64(_mm_add_epi64(a0, a1), _mm_add_epi64(a2, a3));
      sink[static_cast<size_t>(ti) * 8] = static_cast<uint64_t>(_mm_cvtsi128_si64(t));
    });
    const double s = seconds_since(t0);
    const double read = static_cast<double>(bytes / pool.size() / 64 * 64) * pool.size();
    best = std::max(best, read / s / 1e9);
  }
  volatile uint64_t keep = sink[0];
  (void)keep;
  return best;
}

// Below this a probe reads partly from cache: on the development VM 64 MiB read 3-5x faster than 128 MiB,
// while 128 MiB, 256 MiB and 1 GiB agreed within run-to-run noise.
constexpr uint64_t kMinProbeBytes = 128ull << 20;
// Room left beside the probe's buffer for what the process's footprint may add meanwhile (allocator, stacks).
constexpr uint64_t kProbeMargin = 16ull << 20;

enum class ProbeWhen { EachRun, BeforeLoad, None };

struct ProbePlan {
  uint64_t bytes = 0;
  ProbeWhen when = ProbeWhen::EachRun;
  std::string note;  // what --mem changed ("" = nothing)
};

// The bandwidth probe under --mem, whose buffer counts against the budget like everything else:
//   - before each decode run, as without --mem, when the buffer fits in what the plan leaves of the budget
//     (a resident model with room to spare), shrunk to that room if needed;
//   - otherwise once before the model loads, when the budget is still free (streaming: the expert pool
//     takes everything the plan leaves, and giving the probe part of it would make the benchmark's pool
//     smaller than `moe run`'s at the same --mem); its buffer is freed before anything is loaded;
//   - skipped, when even then the budget holds less than a DRAM measurement needs.
ProbePlan plan_probe(const std::string& model_path, const EngineFlags& flags, int64_t n_ctx, int64_t n_batch,
                     uint64_t asked) {
  ProbePlan pp{asked, ProbeWhen::EachRun, ""};
  if (asked == 0) pp.when = ProbeWhen::None;
  if (asked == 0 || flags.mem.empty()) return pp;
  const EngineOptions o = engine_options(flags, n_ctx, n_batch);
  const MemoryPlan plan = plan_memory(model_path, o);
  const uint64_t need = std::min<uint64_t>(asked, kMinProbeBytes);
  // The margin keeps the plan resident when the engine opens: what the process holds then (measured
  // again) may have grown a little (the header this plan read leaves heap behind).
  const uint64_t planned = plan.total_bytes() + kProbeMargin;
  const uint64_t spare = !plan.offload && o.mem_bytes > planned ? o.mem_bytes - planned : 0;
  const std::string budget = fmt::format("--mem {}", flags.mem);
  if (spare >= need) {
    pp.bytes = std::min(asked, spare);
    if (pp.bytes < asked)
      pp.note = fmt::format("{} instead of {}: what {} leaves beside the resident model", human_bytes(pp.bytes),
                            human_bytes(asked), budget);
    return pp;
  }
  const uint64_t held = o.held_bytes + kProbeMargin;
  const uint64_t free_now = o.mem_bytes > held ? o.mem_bytes - held : 0;
  const std::string why = plan.offload ? "the expert pool takes what the plan leaves of " + budget
                                       : budget + " leaves " + human_bytes(spare) + " beside the resident model";
  if (free_now < need) {
    pp.bytes = 0;
    pp.when = ProbeWhen::None;
    pp.note = fmt::format("skipped: {}, and before loading it holds {}, under the {} a DRAM measurement needs", why,
                          human_bytes(free_now), human_bytes(kMinProbeBytes));
    return pp;
  }
  pp.bytes = std::min(asked, free_now);
  pp.when = ProbeWhen::BeforeLoad;
  pp.note = fmt::format("of {} once before loading, not before each decode run: {}", human_bytes(pp.bytes), why);
  return pp;
}

// Resets VmHWM to the current RSS (Linux's clear_refs "5"), so a freed probe buffer leaves no trace
// in the peak. False where the kernel does not allow it.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5" << std::flush;
  return static_cast<bool>(f);
}

// Matmul FLOPs per token (2 per weight element of every matrix a token passes through; the k routed
// experts of each MoE layer; no embedding lookup; attention score FLOPs excluded).
double matmul_flops_per_token(const Model& m) {
  double flops = 0;
  const ModelSpec& s = m.spec();
  auto elems = [](const WeightView& v) { return static_cast<double>(v.cols) * v.rows; };
  for (const TensorRoleDesc& d : m.arch().roles) {
    if (d.placement == Placement::Norm || d.placement == Placement::Embedding) continue;
    if (!d.per_layer) {
      if (const WeightView& v = m.global(d.role); v && v.rows > 1) flops += 2 * elems(v);
      continue;
    }
    for (int il = 0; il < s.n_layer; ++il) {
      const WeightView& v = m.layer(il)[d.role];
      if (!v || v.rows <= 1) continue;
      const double per_mat = 2 * elems(v);
      if (d.placement == Placement::Expert) flops += per_mat * s.layers[il].moe.n_expert_used;
      else flops += per_mat * static_cast<double>(v.n_mat);
    }
  }
  return flops;
}

std::string type_summary(const Model& m) {
  if (m.file().has("general.file_type")) {
    static const char* names[] = {"F32",    "F16",    "Q4_0",   "Q4_1",   "Q4_1_F16", "?5",     "?6",
                                  "Q8_0",   "Q5_0",   "Q5_1",   "Q2_K",   "Q3_K_S",   "Q3_K_M", "Q3_K_L",
                                  "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"};
    const uint64_t ft = m.file().get_uint("general.file_type");
    if (ft < sizeof(names) / sizeof(names[0])) return names[ft];
    if (ft == 32) return "BF16";
    return "ftype " + std::to_string(ft);
  }
  return "?";
}

int run_bench(const BenchArgs& a) {
  const int n_threads = resolve_threads(a.threads);
  if (a.reps < 1) fail("bench: -r must be >= 1");
  const int64_t n_ctx = std::max<int64_t>(a.n_prompt, a.depth + a.n_gen) + 1;
  if (a.parallel < 1) fail("bench: --parallel must be >= 1");
  const int64_t n_batch = std::max<int64_t>({1, a.n_prompt, std::min<int64_t>(a.depth, 512), a.parallel});
  ThreadPool pool(n_threads);
  // The probe's buffer counts against --mem like the engine's memory (plan_probe): reserved in the plan
  // when it runs between the timed runs, or used and freed before anything loads.
  const ProbePlan probe = plan_probe(a.model, a.engine, n_ctx, n_batch, static_cast<uint64_t>(a.bw_gib * (1 << 30)));
  if (!probe.note.empty()) std::fprintf(stderr, "moe bench: bandwidth probe %s\n", probe.note.c_str());
  std::vector<double> bw_rep;
  if (probe.when == ProbeWhen::BeforeLoad) {
    bw_rep.push_back(probe_read_bandwidth(pool, probe.bytes, 5));
    reset_peak_rss();  // peak_rss describes the engine, not the probe's freed buffer
  }
  std::vector<MemoryReservation> reserved;
  if (probe.when == ProbeWhen::EachRun && !a.engine.mem.empty()) reserved.push_back({"bandwidth probe", probe.bytes});
  const auto t_load = Clock::now();
  auto engine = open_engine(a.model, a.engine, n_ctx, n_batch, 0, a.parallel, std::move(reserved));
  const Model* model = &engine->model();
  const double load_s = seconds_since(t_load);
  const ModelSpec& spec = model->spec();
  const Model::ByteReport br = model->byte_report();
  const ForwardOptions fo = forward_options(a.engine, *engine, false);
  Session session(*model, engine->store(), n_ctx, fo);
  // Experts routed per layer over the timed decode runs: under a routing policy they, not the model's k,
  // are the expert bytes a token reads.
  RoutingUseCounters& routing_use = engine->routing_use();
  std::vector<uint64_t> tg_routed(static_cast<size_t>(spec.n_layer)), tg_selected(static_cast<size_t>(spec.n_layer));
  // Expert-store counters accumulated over the timed decode runs only.
  BudgetedExpertStore* offload = engine->offload_store();
  // Streaming with --preload: the pool's background fill finishes before anything is timed, so that it
  // neither competes with the timed runs for the cores and the disk nor counts in their bytes read.
  // Reported as preload_s.
  double preload_s = 0;
  if (offload && a.engine.preload) {
    const auto t_preload = Clock::now();
    offload->wait_preloaded();
    preload_s = seconds_since(t_preload);
  }
  uint64_t tg_hits = 0, tg_misses = 0, tg_bytes = 0, tg_tokens = 0;
  double tg_stall = 0, tg_seconds = 0;
  auto totals = [&](uint64_t& hits, uint64_t& misses, uint64_t& bytes, double& stall) {
    const ExpertStoreStats st = offload->stats();
    hits = misses = 0;
    for (size_t l = 0; l < st.hits.size(); ++l) hits += st.hits[l], misses += st.misses[l];
    bytes = st.bytes_read;
    stall = st.stall_seconds;
  };

  std::mt19937_64 rng(a.seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(spec.n_vocab - 1));
  std::vector<int32_t> prompt(static_cast<size_t>(a.n_prompt));
  for (auto& t : prompt) t = tok(rng);
  std::vector<int32_t> context(static_cast<size_t>(a.depth));
  for (auto& t : context) t = tok(rng);

  std::vector<double> pp_rate, ttft_ms, tg_rate;
  bool holds_context = false;  // the session's cache starts with the `depth` context tokens
  auto run_pp = [&](bool timed) {
    session.reset();  // (a deep context is evaluated again for the next decode run)
    holds_context = false;
    const auto t0 = Clock::now();
    const std::vector<float>& logits = session.eval(prompt, pool, false, a.n_prompt);
    const double eval_s = seconds_since(t0);
    volatile int32_t first = argmax(logits.data(), spec.n_vocab);
    (void)first;
    const double total_s = seconds_since(t0);
    if (timed) {
      pp_rate.push_back(a.n_prompt / eval_s);
      ttft_ms.push_back(total_s * 1e3);
    }
  };
  // A context holding `depth` tokens (untimed); returns the first token to decode. The context of the
  // previous decode run is cut back to `depth` and reused when the cache still holds it (the decoded
  // tokens only wrote positions after it), so a deep context is evaluated once, not once per run.
  int32_t depth_next = 0;
  auto prepare_tg = [&]() -> int32_t {
    if (context.empty()) {
      session.reset();
      return prompt.empty() ? 0 : prompt[0];
    }
    if (holds_context && session.truncate(a.depth) == a.depth) return depth_next;
    session.reset();
    const std::vector<float>& logits = session.eval(context, pool, false, n_batch);
    depth_next = argmax(logits.data(), spec.n_vocab);
    holds_context = true;
    return depth_next;
  };
  auto decode = [&](int32_t next, int64_t n) {
    std::vector<int32_t> one(1);
    for (int64_t i = 0; i < n; ++i) {
      one[0] = next;
      const std::vector<float>& logits = session.eval(one, pool, false);
      next = argmax(logits.data(), spec.n_vocab);
    }
  };
  // --parallel: one pass and one cache per sequence, every step one token of each (serve's batched decode).
  std::unique_ptr<ForwardPass> batch_fwd;
  std::vector<std::unique_ptr<KvCache>> batch_kv;
  DistinctExpertCounter distinct;
  if (a.parallel > 1) {
    if (a.depth > 0) fail("bench: --parallel with --depth is not supported (each sequence starts empty)");
    batch_fwd = std::make_unique<ForwardPass>(*model, engine->store(), fo);
    batch_fwd->add_observer(&distinct);
    for (int i = 0; i < a.parallel; ++i) batch_kv.push_back(std::make_unique<KvCache>(spec, n_ctx));
  }
  auto decode_parallel = [&](int64_t n) {
    const size_t P = static_cast<size_t>(a.parallel);
    std::vector<int32_t> next(P);
    for (auto& t : next) t = tok(rng);  // different first tokens: the streams route differently
    std::vector<std::vector<float>> logits(P, std::vector<float>(static_cast<size_t>(spec.n_vocab)));
    std::vector<SeqSpan> spans(P);
    for (int64_t i = 0; i < n; ++i) {
      for (size_t q = 0; q < P; ++q) {
        spans[q].kv = batch_kv[q].get();
        spans[q].tokens = &next[q];
        spans[q].n_tokens = 1;
        spans[q].pos0 = i;
        spans[q].seq_id = static_cast<int32_t>(q);
        spans[q].logits = logits[q].data();
      }
      batch_fwd->run(spans.data(), spans.size(), pool);
      for (size_t q = 0; q < P; ++q) next[q] = argmax(logits[q].data(), spec.n_vocab);
    }
  };
  auto run_tg = [&](bool timed, int64_t n) {
    const int32_t first = a.parallel > 1 ? 0 : prepare_tg();
    uint64_t h0 = 0, m0 = 0, b0 = 0, h1 = 0, m1 = 0, b1 = 0;
    double s0 = 0, s1 = 0;
    if (timed && offload) totals(h0, m0, b0, s0);
    std::vector<uint64_t> r0(tg_routed.size()), s0_(tg_selected.size());
    for (int il = 0; il < spec.n_layer; ++il) r0[il] = routing_use.tokens(il), s0_[il] = routing_use.selected(il);
    distinct.counting = timed;
    const auto t0 = Clock::now();
    if (a.parallel > 1) decode_parallel(n);
    else decode(first, n);
    const double seconds = seconds_since(t0);
    distinct.counting = false;
    if (!timed) return;
    for (int il = 0; il < spec.n_layer; ++il) {
      tg_routed[il] += routing_use.tokens(il) - r0[il];
      tg_selected[il] += routing_use.selected(il) - s0_[il];
    }
    tg_rate.push_back(static_cast<double>(n * a.parallel) / seconds);
    tg_seconds += seconds;
    if (!offload) return;
    totals(h1, m1, b1, s1);
    tg_hits += h1 - h0, tg_misses += m1 - m0, tg_bytes += b1 - b0, tg_stall += s1 - s0;
    tg_tokens += static_cast<uint64_t>(n * a.parallel);
  };

  if (!a.json) {
    std::fprintf(stderr, "moe bench: %s (%s, %s), %d threads, pp%lld tg%lld x %d reps\n", a.model.c_str(),
                 spec.arch.c_str(), type_summary(*model).c_str(), n_threads, (long long)a.n_prompt,
                 (long long)a.n_gen, a.reps);
  }
  // Warm-up (untimed): pages the mapped weights in, sizes the scratch buffers.
  if (a.n_prompt > 0) run_pp(false);
  if (a.n_gen > 0) run_tg(false, std::min<int64_t>(a.n_gen, 4));
  const size_t probe_bytes = static_cast<size_t>(probe.bytes);
  // Probe just before each decode run when the probe's buffer can be kept out of the peak RSS.
  const bool probe_each_rep =
      probe.when == ProbeWhen::EachRun && probe_bytes > 0 && a.n_gen > 0 && reset_peak_rss();
  uint64_t rss = peak_rss_bytes();  // load and warm-up
  for (int r = 0; r < a.reps; ++r) {
    if (a.n_prompt > 0) run_pp(true);
    if (probe_each_rep) {
      rss = std::max(rss, peak_rss_bytes());
      bw_rep.push_back(probe_read_bandwidth(pool, probe_bytes, 3));
      reset_peak_rss();
    }
    if (a.n_gen > 0) run_tg(true, a.n_gen);
    if (!a.json) std::fprintf(stderr, "  rep %d/%d: pp %.2f tok/s, tg %.2f tok/s\n", r + 1, a.reps,
                              pp_rate.empty() ? 0.0 : pp_rate.back(), tg_rate.empty() ? 0.0 : tg_rate.back());
  }
  rss = std::max(rss, peak_rss_bytes());  // before any later probe buffer exists
  if (probe.when == ProbeWhen::EachRun && probe_bytes > 0 && !probe_each_rep)
    bw_rep.push_back(probe_read_bandwidth(pool, probe_bytes, 5));
  const Stat bw_stat = stat_of(bw_rep);
  const double bw = bw_stat.median;

  const Stat pp = stat_of(pp_rate), tg = stat_of(tg_rate), ttft = stat_of(ttft_ms);
  // Decoding at depth also reads the KV cache (what each layer's cache holds for the mean context of the
  // tg steps: fp16 K and V, a window, or MLA latents), which counts toward the bytes a token needs.
  const double kv_read =
      a.n_gen > 0 ? KvCache::bytes_read_per_token(spec, static_cast<double>(a.depth) + 0.5 * static_cast<double>(a.n_gen))
                  : 0.0;
  double weight_bytes = static_cast<double>(br.active_bytes_per_token);
  uint64_t routed_all = 0, selected_all = 0;
  for (int il = 0; il < spec.n_layer; ++il) routed_all += tg_routed[il], selected_all += tg_selected[il];
  const double experts_per_token = routed_all ? static_cast<double>(selected_all) / static_cast<double>(routed_all) : 0.0;
  if (!fo.routing.is_default()) {
    const ExpertLayout& layout = model->expert_layout();
    for (int il = 0; il < spec.n_layer; ++il) {
      if (!spec.layers[il].is_moe || tg_routed[il] == 0) continue;
      uint64_t per_expert = 0;
      for (const auto& t : layout.layers[static_cast<size_t>(il)]) per_expert += t.matrix_bytes();
      const double used = static_cast<double>(tg_selected[il]) / static_cast<double>(tg_routed[il]);
      weight_bytes += static_cast<double>(per_expert) * (used - spec.layers[il].moe.n_expert_used);
    }
  }
  double active = weight_bytes + kv_read;
  // --parallel: a step reads the union of its rows' experts once (and each row its own KV cache); the
  // bytes per token are those of a step over its rows.
  const double distinct_per_layer = distinct.mean();
  if (a.parallel > 1) {
    const ExpertLayout& layout = model->expert_layout();
    double step = weight_bytes + kv_read * a.parallel;
    for (int il = 0; il < spec.n_layer; ++il) {
      if (!spec.layers[il].is_moe || tg_routed[il] == 0) continue;
      uint64_t per_expert = 0;
      for (const auto& t : layout.layers[static_cast<size_t>(il)]) per_expert += t.matrix_bytes();
      const double used = static_cast<double>(tg_selected[il]) / static_cast<double>(tg_routed[il]);
      step += static_cast<double>(per_expert) * (distinct_per_layer - used);
    }
    active = step / a.parallel;
  }
  const double decode_gbps = active * tg.median / 1e9;
  // Each decode run against the probe of its own moment, or all of them against the one probe.
  std::vector<double> frac_rep;
  for (size_t r = 0; r < tg_rate.size() && bw > 0; ++r)
    frac_rep.push_back(active * tg_rate[r] / 1e9 / (probe_each_rep ? bw_rep[r] : bw));
  const Stat frac = stat_of(frac_rep);
  const double flops_tok = matmul_flops_per_token(*model);

  nlohmann::ordered_json j;
  j["model"] = a.model;
  j["arch"] = spec.arch;
  j["type"] = type_summary(*model);
  j["threads"] = n_threads;
  j["n_prompt"] = a.n_prompt;
  j["n_gen"] = a.n_gen;
  j["depth"] = a.depth;
  j["reps"] = a.reps;
  j["pp_tok_s"] = pp.median;
  j["pp_tok_s_min"] = pp.min;
  j["pp_tok_s_max"] = pp.max;
  j["pp_gflops"] = pp.median * flops_tok / 1e9;
  j["tg_tok_s"] = tg.median;
  j["tg_tok_s_min"] = tg.min;
  j["tg_tok_s_max"] = tg.max;
  j["ttft_ms"] = ttft.median;
  j["ttft_ms_min"] = ttft.min;
  j["ttft_ms_max"] = ttft.max;
  j["active_bytes_per_token"] = static_cast<uint64_t>(active);
  j["weight_bytes_per_token"] = static_cast<uint64_t>(weight_bytes);
  j["routing_policy"] = fo.routing.to_json();
  j["experts_per_token"] = experts_per_token;  // measured over the timed decode runs
  j["kv_bytes_per_token"] = static_cast<uint64_t>(kv_read);
  // The cache of this context as allocated, and as it would be with full per-head K and V everywhere
  // (no window ring, MLA expanded): what the cache layout saves.
  j["kv_cache_bytes"] = session.kv_bytes();
  j["kv_cache_bytes_expanded"] = KvCache::expanded_bytes_for(spec, n_ctx);
  j["model_bytes"] = br.total;
  j["decode_gbps"] = decode_gbps;
  j["decode_gbps_min"] = active * tg.min / 1e9;
  j["decode_gbps_max"] = active * tg.max / 1e9;
  j["mem_bw_gbps"] = bw;
  j["mem_bw_gbps_min"] = bw_stat.min;
  j["mem_bw_gbps_max"] = bw_stat.max;
  j["mem_bw_probe"] = probe_each_rep                        ? "before each decode run"
                     : probe.when == ProbeWhen::BeforeLoad ? "before loading"
                     : bw > 0                              ? "after all runs"
                                                           : "none";
  j["mem_bw_probe_bytes"] = probe_bytes;
  if (!probe.note.empty()) j["mem_bw_probe_note"] = probe.note;
  j["roofline_tok_s"] = bw > 0 ? bw * 1e9 / active : 0.0;
  j["parallel"] = a.parallel;
  if (a.parallel > 1) {
    j["distinct_experts_per_layer"] = distinct_per_layer;
    const double roof = bw > 0 ? bw * 1e9 / active : 0.0;
    const double bound = pp.median > 0 && roof > 0 ? std::min(pp.median, roof) : std::max(pp.median, roof);
    j["batch_bound_tok_s"] = bound;
    j["batch_frac"] = bound > 0 ? tg.median / bound : 0.0;
  }
  j["roofline_frac"] = frac.median;
  j["roofline_frac_min"] = frac.min;
  j["roofline_frac_max"] = frac.max;
  j["peak_rss_bytes"] = rss;
  j["load_s"] = load_s;
  j["mode"] = offload ? "offload" : "resident";
  j["plan"] = engine->plan().describe();
  j["plan_bytes"] = plan_bytes_json(engine->plan());
  if (offload) {
    j["mem_budget"] = a.engine.mem;
    j["cache_policy"] = offload->policy_name();
    j["preload_s"] = preload_s;
    j["hit_rate"] = tg_hits + tg_misses ? static_cast<double>(tg_hits) / static_cast<double>(tg_hits + tg_misses) : 0.0;
    j["bytes_read_per_token"] = tg_tokens ? static_cast<double>(tg_bytes) / static_cast<double>(tg_tokens) : 0.0;
    j["stall_frac"] = tg_seconds > 0 ? tg_stall / tg_seconds : 0.0;
    const PredictionStats& ps = session.forward().prediction_stats();
    j["prediction_precision"] = ps.precision();
    j["prediction_recall"] = ps.recall();
  }
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("model            %s (%s, %s, %s)\n", a.model.c_str(), spec.arch.c_str(), type_summary(*model).c_str(),
              human_bytes(br.total).c_str());
  std::printf("threads          %d\n", n_threads);
  std::printf("pp%-5lld tok/s    %.2f  [min %.2f, max %.2f]  (%.1f GFLOP/s matmul)\n", (long long)a.n_prompt,
              pp.median, pp.min, pp.max, pp.median * flops_tok / 1e9);
  std::printf("tg%-5lld tok/s    %.2f  [min %.2f, max %.2f]\n", (long long)a.n_gen, tg.median, tg.min, tg.max);
  std::printf("ttft ms          %.1f  [min %.1f, max %.1f]\n", ttft.median, ttft.min, ttft.max);
  std::printf("active bytes/tok %s (weights %s, KV cache %s at depth %lld)\n",
              human_bytes(static_cast<uint64_t>(active)).c_str(), human_bytes(static_cast<uint64_t>(weight_bytes)).c_str(),
              human_bytes(static_cast<uint64_t>(kv_read)).c_str(), (long long)a.depth);
  std::printf("KV cache         %s for %lld positions (%s as full per-head K and V)\n",
              human_bytes(session.kv_bytes()).c_str(), (long long)n_ctx,
              human_bytes(KvCache::expanded_bytes_for(spec, n_ctx)).c_str());
  if (!fo.routing.is_default())
    std::printf("routing          %s: %.2f experts per token per MoE layer in decode\n", fo.routing.to_json().dump().c_str(),
                experts_per_token);
  std::printf("decode GB/s      %.2f\n", decode_gbps);
  std::printf("memory bw GB/s   %.2f  [min %.2f, max %.2f] (read probe %s, %d threads, %s%s)\n", bw, bw_stat.min,
              bw_stat.max, j["mem_bw_probe"].get<std::string>().c_str(), n_threads, human_bytes(probe_bytes).c_str(),
              probe.note.empty() ? "" : (", " + probe.note).c_str());
  std::printf("roofline         %.1f%%  [min %.1f%%, max %.1f%%] (bound %.2f tok/s)\n", 100.0 * frac.median,
              100.0 * frac.min, 100.0 * frac.max, bw > 0 ? bw * 1e9 / active : 0.0);
  if (a.parallel > 1)
    std::printf("batched decode   %d streams: %.1f distinct experts per MoE layer per step; bound min(pp, roofline) "
                "%.2f tok/s, reached %.1f%%\n",
                a.parallel, distinct_per_layer, j["batch_bound_tok_s"].get<double>(), 100 * j["batch_frac"].get<double>());
  std::printf("peak RSS         %s\n", human_bytes(rss).c_str());
  if (offload)
    std::printf("expert cache     %s, hit rate %.1f%%, %s read per token, stalled %.1f%% of decode, prediction "
                "precision %.1f%% recall %.1f%%\n",
                offload->policy_name(), 100 * j["hit_rate"].get<double>(),
                human_bytes(static_cast<uint64_t>(j["bytes_read_per_token"].get<double>())).c_str(),
                100 * j["stall_frac"].get<double>(), 100 * j["prediction_precision"].get<double>(),
                100 * j["prediction_recall"].get<double>());
  if (offload && a.engine.preload)
    std::printf("pool preload     %.2f s after load (untimed)\n", preload_s);
  return 0;
}

}  // namespace

void register_bench(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* sub = app.add_subcommand("bench", "Measure prefill/decode throughput against the memory roofline");
  sub->add_option("-m,--model", a->model, "GGUF model file")->required();
  sub->add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("-p,--n-prompt", a->n_prompt, "Prompt tokens for pp (0 = skip)")->check(CLI::Range(0, 1 << 16));
  sub->add_option("-n,--n-gen", a->n_gen, "Decode steps for tg (0 = skip)")->check(CLI::Range(0, 1 << 16));
  sub->add_option("-d,--depth", a->depth, "Context tokens in the KV cache before tg starts (evaluated untimed)")
      ->check(CLI::Range(0, 1 << 20));
  sub->add_option("-r,--reps", a->reps, "Repetitions (median, min, max)")->check(CLI::Range(1, 1000));
  sub->add_option("--bw-gib", a->bw_gib,
                  "Bandwidth probe buffer in GiB (0 = skip the probe). With --mem it counts in the budget: it runs "
                  "before each decode run in what a resident model leaves (shrunk to fit), else once before the "
                  "model loads (experts stream: the pool keeps its full share), or is skipped, saying so")->check(CLI::Range(0.0, 64.0));
  sub->add_option("--seed", a->seed, "Seed for the random prompt");
  sub->add_option("--parallel", a->parallel,
                  "tg decodes N sequences together, one token of each per step (as `moe serve` batches them); tg "
                  "tok/s counts all streams, and the roofline is that of the step's expert union")
      ->check(CLI::Range(1, 256));
  add_engine_flags(sub, a->engine);
  sub->add_flag("--json", a->json, "Print one JSON object");
  cmds.add(sub, [a] { return run_bench(*a); });
}

}  // namespace moe::cli

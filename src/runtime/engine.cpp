#include "runtime/engine.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <thread>

#include "base/error.h"
#include "kernels/matmul.h"
#include "kernels/q4k_repack.h"
#include "kernels/q8_0_panels.h"
#include "model/kv_cache.h"
#include "model/lowbit_experts.h"

namespace moe {

namespace {

// What the engine allocates beyond weights, KV cache, activations and the expert pool: its threads'
// stacks, the expert store's I/O rings, OpenBLAS's per-thread packing buffers, prompt attention's
// per-thread scratch (at most about 0.5 MB a thread: kernels::attention_heads_per_block), allocator
// slack and the kernel's page tables. Code, libraries and what the command built before the engine opened (a
// tokenizer, its inputs) are EngineOptions::held_bytes, measured by the caller.
constexpr uint64_t kEngineOverhead = 32ull << 20;
// The engine's gguf::File keeps the metadata parsed (token strings, merges, tensor infos): measured at
// 1.5-3.1x the header's bytes in the file (llama-bpe: 7.8 MB of header, 23 MB parsed).
constexpr uint64_t kParsedMetadataPerHeaderByte = 4;

// The experts a token may get in a layer: the model's k, or what the routing policy allows.
int64_t planned_k(const MoeSpec& m, int experts_per_token) {
  if (experts_per_token < 0) return m.n_expert;
  return std::min<int64_t>(m.n_expert, std::max(m.n_expert_used, experts_per_token));
}

uint64_t buffer_bytes_for(const Model& m, int64_t n_batch, int64_t n_ctx, int experts_per_token) {
  const ModelSpec& s = m.spec();
  // Per token of a batch, in floats: hidden state, normed copy and FFN output; the router's fp32 input
  // copies and the 8-bit activations of the dense projections; q, k, v and attention output (MLA: each
  // head's full query and its output after attn_v_b); the FFN; the logits. The FFN: a MoE layer's
  // expert outputs (weighted in place and summed straight into the layer output; the experts' inputs
  // are quantized from the layer input's rows), gate and up, and 8-bit activations of its experts
  // (gate/up input, up input when its type differs, down input: at most 1.31 bytes per element,
  // a Q8_0 batch's quants and its blocks' sums and scales, and a kernels::ActBuffer keeps up to twice
  // what it last needed: 2/3 of a float per element), for as many experts per token as
  // the routing policy allows; plus any dense or shared-expert FFN in the same layer (gate, up, its
  // 8-bit activations and its output).
  int64_t ffn = 0;
  int max_experts = 0;
  for (const auto& L : s.layers) {
    const int64_t dense_ff = std::max(L.n_ff_dense, L.moe.n_ff_shexp);
    int64_t layer = dense_ff > 0 ? 3 * dense_ff + s.n_embd : 0;
    if (L.is_moe) {
      const int64_t k = std::max<int64_t>(1, planned_k(L.moe, experts_per_token));
      layer += k * s.n_embd + 2 * k * L.moe.n_ff_exp + (2 * k * (2 * s.n_embd + L.moe.n_ff_exp)) / 3;
      max_experts = std::max(max_experts, L.moe.n_expert);
    }
    ffn = std::max(ffn, layer);
  }
  const int64_t mla = s.is_mla() ? s.n_head * (s.mla.qk_nope + s.mla.qk_rope + s.mla.v_head) : 0;
  const int64_t per_token = 6 * s.n_embd + 2 * s.q_dim() + s.kv_dim() + s.v_dim() + mla + ffn + s.n_vocab;
  // A batch widens the layer's KV cache to fp32 for attention.
  const uint64_t widened_kv =
      static_cast<uint64_t>(n_ctx) * static_cast<uint64_t>(s.kv_dim() + s.v_dim()) * sizeof(float);
  // The executor's per-expert activation buffers each keep up to kActSlackBytes beyond their need.
  const uint64_t act_slack = 3ull * static_cast<uint64_t>(max_experts) * kernels::kActSlackBytes;
  const uint64_t metadata = kParsedMetadataPerHeaderByte * m.file().data_offset();
  return static_cast<uint64_t>(per_token) * sizeof(float) * static_cast<uint64_t>(n_batch) + widened_kv + act_slack +
         kEngineOverhead + metadata;
}

}  // namespace

uint64_t MemoryPlan::reserved_bytes() const {
  uint64_t sum = 0;
  for (const MemoryReservation& r : reserved) sum += r.bytes;
  return sum;
}

uint64_t MemoryPlan::total_bytes() const {
  return held_bytes + weights_resident + low_bit_bytes + kv_bytes + buffer_bytes + reserved_bytes() +
         expert_pool_bytes;
}

std::string MemoryPlan::describe() const {
  auto gib = [](uint64_t b) { return static_cast<double>(b) / (1ull << 30); };
  // What the process holds besides the engine, and what the caller reserved: only when there is some.
  std::string extra;
  if (held_bytes) extra += fmt::format(", held before loading {:.2f} GiB", gib(held_bytes));
  for (const MemoryReservation& r : reserved) extra += fmt::format(", {} {:.2f} GiB", r.what, gib(r.bytes));
  if (!offload) {
    const std::string low = low_bit_bytes ? fmt::format(" + low-bit experts {:.2f} GiB", gib(low_bit_bytes)) : "";
    return fmt::format("all weights resident ({:.2f} GiB){} + KV {:.2f} GiB + buffers {:.2f} GiB{}", gib(weights_total),
                       low, gib(kv_bytes), gib(buffer_bytes), extra);
  }
  return fmt::format(
      "experts stream from disk: resident weights {:.2f} GiB of {:.2f} GiB, KV {:.2f} GiB, buffers {:.2f} GiB{}, "
      "expert pool {:.2f} GiB",
      gib(weights_resident), gib(weights_total), gib(kv_bytes), gib(buffer_bytes), extra, gib(expert_pool_bytes));
}

MemoryPlan plan_memory(const Model& m, const EngineOptions& o, uint64_t low_bit_expert_bytes) {
  MemoryPlan p;
  const Model::ByteReport r = m.byte_report();
  p.weights_total = r.total;
  if (o.n_seq < 1) fail("engine: {} sequences: at least one is needed", o.n_seq);
  p.kv_bytes = KvCache::bytes_for(m.spec(), o.n_ctx) * static_cast<uint64_t>(o.n_seq);
  // No batch is longer than the context times the sequences (chat asks for 512-token batches whatever its -c).
  const int64_t n_batch = std::max<int64_t>(1, std::min(o.n_batch, o.n_ctx * o.n_seq));
  p.buffer_bytes = buffer_bytes_for(m, n_batch, o.n_ctx, o.experts_per_token);
  p.held_bytes = o.held_bytes;
  p.reserved = o.reserved;
  // Held and reserved bytes share the budget with the engine.
  const uint64_t outside = p.held_bytes + p.reserved_bytes();
  std::string outside_text;
  if (p.held_bytes) outside_text += fmt::format(" + {} held before loading", p.held_bytes);
  for (const MemoryReservation& res : p.reserved) outside_text += fmt::format(" + {} {}", res.bytes, res.what);
  const uint64_t experts = r.by_placement[static_cast<size_t>(Placement::Expert)];
  const bool fits = o.mem_bytes == 0 ||
                    outside + p.weights_total + low_bit_expert_bytes + p.kv_bytes + p.buffer_bytes <= o.mem_bytes;
  p.offload = experts > 0 && (o.force_offload || !fits);
  if (!p.offload) {
    p.weights_resident = p.weights_total;
    p.low_bit_bytes = low_bit_expert_bytes;
    if (o.mem_bytes != 0 && !fits)
      fail("--mem {} bytes: the model needs {} bytes of weights + {} KV + {} buffers{} and has no experts to stream",
           o.mem_bytes, p.weights_total, p.kv_bytes, p.buffer_bytes, outside_text);
    return p;
  }
  p.weights_resident = p.weights_total - experts;
  const uint64_t fixed = outside + p.weights_resident + p.kv_bytes + p.buffer_bytes;
  if (o.mem_bytes == 0) {
    // Forced offload without a budget: room for every expert (and every low-bit copy).
    p.expert_pool_bytes = experts + low_bit_expert_bytes;
  } else {
    if (o.mem_bytes <= fixed)
      fail("--mem {} bytes is too small: non-expert weights {} + KV cache {} + buffers {}{} already need {} bytes "
           "(a smaller -c context also helps)",
           o.mem_bytes, p.weights_resident, p.kv_bytes, p.buffer_bytes, outside_text, fixed);
    p.expert_pool_bytes = o.mem_bytes - fixed;
  }
  return p;
}

MemoryPlan plan_memory(const std::string& path, const EngineOptions& o) {
  auto header = Model::load(path, gguf::DataAccess::Mmap, /*defer_experts=*/true);
  return plan_memory(*header, o, o.low_bit_path.empty() ? 0 : low_bit_file_expert_bytes(o.low_bit_path));
}

namespace {

void repack_for_kernels(Model& m, const EngineOptions& o) {
  if (!o.repack) return;
  Model::RepackChoice c;
  c.q4k = quant::q4k_repacked_kernels_available();
  c.q8_0_panels = quant::q8_0_panel_kernels_available();
  if (c.q4k || c.q8_0_panels) m.repack(c, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

}  // namespace

std::unique_ptr<Engine> Engine::open(const std::string& path, const EngineOptions& o) {
  auto e = std::unique_ptr<Engine>(new Engine());
  const bool low_bit = !o.low_bit_path.empty();
  auto count_routing = [&] {
    std::vector<int> model_k;
    for (const LayerSpec& L : e->model_->spec().layers) model_k.push_back(L.is_moe ? L.moe.n_expert_used : 0);
    e->routing_use_ = std::make_unique<RoutingUseCounters>(std::move(model_k));
  };
  // Plan from a header-only view (deferred experts, mmap: nothing is read yet).
  e->plan_ = plan_memory(path, o);
  if (!e->plan_.offload) {
    e->model_ = Model::load(path, o.mmap ? gguf::DataAccess::Mmap : gguf::DataAccess::Pread);
    repack_for_kernels(*e->model_, o);
    ExpertLayout low_layout;
    if (low_bit) {
      // Mapped like the model: the low-bit copies are read on first use and stay.
      LowBitExperts lb = open_low_bit_experts(o.low_bit_path, *e->model_, gguf::DataAccess::Mmap);
      e->low_bit_file_ = std::move(lb.file);
      e->low_bit_type_ = lb.type;
      low_layout = std::move(lb.layout);
    }
    e->store_ = std::make_unique<ResidentExpertStore>(e->model_->expert_layout(), std::move(low_layout));
    count_routing();
    return e;
  }
  // Resident part read into owned memory, so the experts' file pages are never mapped or cached.
  e->model_ = Model::load(path, gguf::DataAccess::Pread, /*defer_experts=*/true);
  repack_for_kernels(*e->model_, o);
  BudgetedExpertStore::Options so;
  so.pool_bytes = e->plan_.expert_pool_bytes;
  so.policy = o.cache_policy;
  so.io_mode = o.io_mode;
  for (const LayerSpec& L : e->model_->spec().layers)
    if (L.is_moe) so.min_slots = std::max<int>(so.min_slots, static_cast<int>(planned_k(L.moe, o.experts_per_token)));
  if (low_bit) {
    // Only the header is read: the store reads the copies into its pool with its own reader.
    LowBitExperts lb = open_low_bit_experts(o.low_bit_path, *e->model_, gguf::DataAccess::Pread);
    e->low_bit_type_ = lb.type;
    so.low_bit = std::move(lb.layout);
  }
  auto store = std::make_unique<BudgetedExpertStore>(e->model_->expert_layout(), so);
  if (o.preload && !low_bit) {
    // With no routing statistics every expert is as likely as any other: take them layer by layer in
    // turn, so that each layer gets the same share of the pool. Not with low-bit copies: a full copy
    // in the pool serves every request for its expert, so preloaded full copies would stand in for the
    // low-bit copies the precision thresholds ask for.
    const ExpertLayout& layout = e->model_->expert_layout();
    std::vector<std::pair<int, int>> order;
    for (int x = 0; x < layout.n_expert; ++x)
      for (int l = 0; l < layout.n_layer(); ++l)
        if (layout.n_expert_used[static_cast<size_t>(l)] > 0 &&
            std::find(o.preload_exclude.begin(), o.preload_exclude.end(), std::make_pair(l, x)) == o.preload_exclude.end())
          order.emplace_back(l, x);
    store->preload(order);
  }
  e->budgeted_ = store.get();
  e->store_ = std::move(store);
  count_routing();
  return e;
}

void Engine::reset_stats() {
  if (budgeted_) budgeted_->reset_stats();
  expert_use_.reset();
  routing_use_->reset();
}

uint64_t parse_size(const std::string& text, const std::string& what) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) fail("{}: '{}' is not a size (examples: 8G, 512M, 3.5GiB)", what, text);
  double v = 0;
  try {
    v = std::stod(text.substr(0, i));
  } catch (...) {
    fail("{}: '{}' is not a size", what, text);
  }
  std::string unit = text.substr(i);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KB" || unit == "KIB") mult = 1024.0;
  else if (unit == "M" || unit == "MB" || unit == "MIB") mult = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB" || unit == "GIB") mult = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TB" || unit == "TIB") mult = 1024.0 * 1024 * 1024 * 1024;
  else fail("{}: unknown unit '{}' in '{}' (use K, M, G or T)", what, text.substr(i), text);
  const double bytes = v * mult;
  if (!(bytes >= 1) || bytes > 1e18) fail("{}: '{}' is out of range", what, text);
  return static_cast<uint64_t>(bytes);
}

}  // namespace moe

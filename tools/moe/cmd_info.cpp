// `moe info -m MODEL [--json]`: architecture, hyperparameters, and where the bytes are.
#include <cstdio>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "commands.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace moe::cli {

namespace {

const char* gating_name(Gating g) {
  switch (g) {
    case Gating::Softmax: return "softmax";
    case Gating::Sigmoid: return "sigmoid";
    case Gating::SoftmaxWeight: return "softmax_selected";
  }
  return "?";
}

struct InfoArgs {
  std::string model;
  bool json = false;
};

int run_info(const InfoArgs& a) {
  auto model = Model::load(a.model);
  const ModelSpec& s = model->spec();
  const Model::ByteReport r = model->byte_report();
  int n_moe = 0;
  const LayerSpec* first_moe = nullptr;
  for (const auto& L : s.layers)
    if (L.is_moe) {
      ++n_moe;
      if (!first_moe) first_moe = &L;
    }
  nlohmann::ordered_json j;
  j["file"] = a.model;
  j["arch"] = s.arch;
  j["name"] = s.name;
  j["n_vocab"] = s.n_vocab;
  j["n_embd"] = s.n_embd;
  j["n_layer"] = s.n_layer;
  j["n_moe_layers"] = n_moe;
  j["n_head"] = s.n_head;
  j["n_head_kv"] = s.n_head_kv;
  j["head_dim"] = s.head_dim;
  j["n_rot"] = s.n_rot;
  j["rope"] = s.rope_style == RopeStyle::Neox ? "neox" : "normal";
  j["rope_base"] = s.rope_base;
  if (s.yarn.ext_factor != 0.0f) {
    j["rope_scaling"] = "yarn";
    j["rope_scaling_factor"] = 1.0f / s.rope_freq_scale;
    j["rope_yarn_orig_ctx"] = s.yarn.n_ctx_orig;
  } else if (s.rope_freq_scale != 1.0f) {
    j["rope_scaling"] = "linear";
    j["rope_scaling_factor"] = 1.0f / s.rope_freq_scale;
  }
  if (s.is_mla()) {
    j["mla"] = {{"q_lora_rank", s.mla.q_lora_rank}, {"kv_lora_rank", s.mla.kv_lora_rank},
                {"qk_nope", s.mla.qk_nope}, {"qk_rope", s.mla.qk_rope}, {"v_head", s.mla.v_head}};
  }
  int n_window = 0;
  int64_t window = 0;
  for (const auto& L : s.layers)
    if (L.n_swa > 0) ++n_window, window = L.n_swa;
  if (n_window > 0) {
    j["sliding_window"] = window;
    j["n_window_layers"] = n_window;
  }
  if (s.attn_sinks) j["attn_sinks"] = true;
  if (s.n_layer_nextn > 0) j["n_layer_nextn"] = s.n_layer_nextn;
  // KV cache bytes per context position, as cached (a window layer counts its ring once it is full).
  j["kv_bytes_per_position"] = KvCache::bytes_for(s, 1 << 20) / (1 << 20);
  j["rms_eps"] = s.rms_eps;
  j["n_ctx_train"] = s.n_ctx_train;
  if (first_moe) {
    const MoeSpec& m = first_moe->moe;
    j["n_expert"] = m.n_expert;
    j["n_expert_used"] = m.n_expert_used;
    j["n_ff_exp"] = m.n_ff_exp;
    j["gating"] = gating_name(m.gating);
    if (m.n_group > 1) {
      j["n_expert_groups"] = m.n_group;
      j["n_expert_groups_used"] = m.topk_group;
    }
    if (m.activation == Activation::SwiGLUOai) j["activation"] = "swiglu_oai";
    j["norm_topk"] = m.norm_topk;
    j["route_scale"] = m.route_scale;
    j["n_shared_experts"] = m.n_shared;
    j["n_ff_shexp"] = m.n_ff_shexp;
    j["shared_gate"] = m.shared_gate == SharedGate::Sigmoid ? "sigmoid" : "none";
  }
  j["n_tensors"] = model->file().tensors().size();
  nlohmann::ordered_json bytes;
  for (Placement p : {Placement::Attention, Placement::Router, Placement::Expert, Placement::SharedExpert,
                      Placement::DenseFfn, Placement::Embedding, Placement::Output, Placement::Norm})
    bytes[placement_name(p)] = r.by_placement[static_cast<size_t>(p)];
  if (const uint64_t b = r.by_placement[static_cast<size_t>(Placement::ExpertBias)])
    bytes[placement_name(Placement::ExpertBias)] = b;
  j["bytes_by_role"] = bytes;
  j["bytes_total"] = r.total;
  if (r.unused) j["bytes_unused"] = r.unused;  // in the file, never read (NextN/MTP layers)
  j["bytes_per_expert"] = r.bytes_per_expert_max;
  j["active_bytes_per_token"] = r.active_bytes_per_token;
  std::map<std::string, int> type_counts;
  for (const auto& t : model->file().tensors()) ++type_counts[std::string(dtype_traits(t.type).name)];
  j["tensor_types"] = type_counts;

  if (a.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("file:            %s\n", a.model.c_str());
  std::printf("arch:            %s (%s)\n", s.arch.c_str(), s.name.c_str());
  std::printf("layers:          %d (%d MoE)\n", s.n_layer, n_moe);
  std::printf("embedding:       %lld, vocab %lld\n", (long long)s.n_embd, (long long)s.n_vocab);
  std::printf("attention:       %d heads, %d kv heads, head dim %lld, rope %s base %g%s\n", s.n_head, s.n_head_kv,
              (long long)s.head_dim, s.rope_style == RopeStyle::Neox ? "neox" : "normal", s.rope_base,
              s.yarn.ext_factor != 0.0f
                  ? fmt::format(", yarn x{:g} from {}", 1.0f / s.rope_freq_scale, s.yarn.n_ctx_orig).c_str()
                  : "");
  if (s.is_mla())
    std::printf("latent (MLA):    kv_lora %lld, q_lora %lld, qk nope %lld + rope %lld, v %lld per head\n",
                (long long)s.mla.kv_lora_rank, (long long)s.mla.q_lora_rank, (long long)s.mla.qk_nope,
                (long long)s.mla.qk_rope, (long long)s.mla.v_head);
  if (n_window > 0)
    std::printf("sliding window:  %lld on %d of %d layers%s\n", (long long)window, n_window, s.n_layer,
                s.attn_sinks ? ", attention sinks" : "");
  else if (s.attn_sinks)
    std::printf("attention sinks: yes\n");
  std::printf("KV cache:        %s per position\n", human_bytes(KvCache::bytes_for(s, 1 << 20) >> 20).c_str());
  if (s.n_layer_nextn > 0) std::printf("NextN layers:    %d (not run)\n", s.n_layer_nextn);
  if (first_moe) {
    const MoeSpec& m = first_moe->moe;
    std::printf("experts:         %d, top-%d, ff %lld, %s gate, renorm %s, scale %g%s%s\n", m.n_expert,
                m.n_expert_used, (long long)m.n_ff_exp, gating_name(m.gating), m.norm_topk ? "yes" : "no", m.route_scale,
                m.n_group > 1 ? fmt::format(", {} of {} groups", m.topk_group, m.n_group).c_str() : "",
                m.activation == Activation::SwiGLUOai ? ", clamped swiglu" : "");
    if (m.n_shared)
      std::printf("shared experts:  %d, ff %lld, gate %s\n", m.n_shared, (long long)m.n_ff_shexp,
                  m.shared_gate == SharedGate::Sigmoid ? "sigmoid" : "none");
  }
  std::printf("tensors:         %zu (", model->file().tensors().size());
  const char* sep = "";
  for (const auto& [name, count] : type_counts) {
    std::printf("%s%s x %d", sep, name.c_str(), count);
    sep = ", ";
  }
  std::printf(")\n");
  std::printf("bytes by role:\n");
  for (auto& [k, v] : bytes.items()) std::printf("  %-13s  %s\n", k.c_str(), human_bytes(v.get<uint64_t>()).c_str());
  std::printf("  %-13s  %s\n", "total", human_bytes(r.total).c_str());
  if (r.unused) std::printf("  %-13s  %s (in the file, not read)\n", "unused", human_bytes(r.unused).c_str());
  std::printf("bytes per expert:       %s%s\n", human_bytes(r.bytes_per_expert_max).c_str(),
              model->experts_split() ? " (largest; per-expert layout: one tensor and type per expert)" : "");
  std::printf("active bytes per token: %s\n", human_bytes(r.active_bytes_per_token).c_str());
  return 0;
}

}  // namespace

void register_info(CLI::App& app, CommandSet& cmds) {
  auto args = std::make_shared<InfoArgs>();
  CLI::App* sub = app.add_subcommand("info", "Show a model's architecture, hyperparameters and byte budget");
  sub->add_option("-m,--model", args->model, "GGUF model file (default: the bundled model, see README)");
  sub->add_flag("--json", args->json, "Print one JSON object");
  cmds.add(sub, [args] {
    if (args->model.empty()) args->model = default_model_path();
    return run_info(*args);
  });
}

}  // namespace moe::cli

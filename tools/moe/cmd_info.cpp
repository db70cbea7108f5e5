// `moe info -m MODEL [--json]`: architecture, hyperparameters, and where the bytes are.
#include <cstdio>
#include <map>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "commands.h"
#include "model/weights.h"

namespace moe::cli {

namespace {

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
  j["rms_eps"] = s.rms_eps;
  j["n_ctx_train"] = s.n_ctx_train;
  if (first_moe) {
    const MoeSpec& m = first_moe->moe;
    j["n_expert"] = m.n_expert;
    j["n_expert_used"] = m.n_expert_used;
    j["n_ff_exp"] = m.n_ff_exp;
    j["gating"] = m.gating == Gating::Softmax ? "softmax" : "sigmoid";
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
  j["bytes_by_role"] = bytes;
  j["bytes_total"] = r.total;
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
  std::printf("attention:       %d heads, %d kv heads, head dim %lld, rope %s base %g\n", s.n_head, s.n_head_kv,
              (long long)s.head_dim, s.rope_style == RopeStyle::Neox ? "neox" : "normal", s.rope_base);
  if (first_moe) {
    const MoeSpec& m = first_moe->moe;
    std::printf("experts:         %d, top-%d, ff %lld, %s gate, renorm %s, scale %g\n", m.n_expert, m.n_expert_used,
                (long long)m.n_ff_exp, m.gating == Gating::Softmax ? "softmax" : "sigmoid", m.norm_topk ? "yes" : "no",
                m.route_scale);
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
  std::printf("bytes per expert:       %s\n", human_bytes(r.bytes_per_expert_max).c_str());
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

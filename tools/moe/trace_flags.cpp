#include "trace_flags.h"

#include <cstdio>

#include "base/error.h"
#include "model/arch.h"

namespace moe::cli {

void add_trace_flags(CLI::App* sub, TraceFlags& f) {
  sub->add_option("--trace", f.path,
                  "Record which experts every token used at every MoE layer (a routing trace, docs/trace-format.md) "
                  "into this file; read it with `moe trace --dump` or `moe analyze`");
  sub->add_flag("--trace-probs", f.fields.probs, "With --trace: also record the router's scores over all experts");
  sub->add_flag("--trace-expert-stats", f.fields.expert_stats,
                "With --trace: also record each selected expert's output norm and max |output| (super experts)");
  sub->add_option("--trace-lookahead", f.fields.lookahead,
                  "With --trace: also record the next MoE layer's top R experts as the gate predictor ranks them "
                  "(what `moe analyze --simulate` replays for --predictor gate)")
      ->check(CLI::Range(0, 255));
}

TraceHeader cli_trace_header(Engine& engine, const EngineFlags& ef, const TraceFields& fields, int64_t n_ctx,
                             int64_t n_batch, const std::string& command) {
  const Model& model = engine.model();
  TraceHeader h = make_trace_header(model, fields);
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  // The routing settings in force: the routing policy's JSON form (docs/routing-lab.md; {} = the model's
  // own gate with its own k) and the low-bit tier's threshold.
  const ExpertPrecision pr = expert_precision(ef);
  j["routing"] = {{"policy", routing_policy(ef).to_json()}, {"low_bit_below", pr.low_bit_below}};
  BudgetedExpertStore* off = engine.offload_store();
  const std::string predictor = resolved_predictor(ef);
  j["engine"] = {{"mode", off ? "offload" : "resident"},
                 {"cache_policy", ef.cache_policy},
                 {"pool_slots", off ? off->n_slots() : 0},
                 {"prefetch_margin", off && predictor != "none" ? ef.prefetch_margin : -1},
                 {"predictor", off ? (ef.prefetch_margin < 0 ? std::string("none") : predictor) : std::string("none")},
                 {"lowbit", ef.lowbit},
                 {"n_ctx", n_ctx},
                 {"n_batch", n_batch}};
  // What turns a pool of N expert slots into a --mem value: --mem = resident + KV + buffers + held + N x slot.
  const ExpertLayout layout = model.expert_layout();
  const Model::ByteReport br = model.byte_report();
  const MemoryPlan& plan = engine.plan();
  nlohmann::ordered_json read = nlohmann::ordered_json::array();
  for (int il : h.moe_layers) read.push_back(BudgetedExpertStore::read_bytes_for(layout, il));
  j["memory"] = {{"slot_bytes", off ? off->slot_bytes() : BudgetedExpertStore::slot_bytes_for(layout)},
                 {"expert_read_bytes", read},
                 {"expert_bytes_total", br.by_placement[static_cast<size_t>(Placement::Expert)]},
                 {"resident_bytes", br.total - br.by_placement[static_cast<size_t>(Placement::Expert)]},
                 {"kv_bytes", plan.kv_bytes},
                 {"buffer_bytes", plan.buffer_bytes},
                 // What the process held before loading (measured) and its reservations: --mem covers them too.
                 {"held_bytes", plan.held_bytes + plan.reserved_bytes()},
                 {"n_ctx", n_ctx},
                 {"n_batch", n_batch}};
  j["command"] = command;
  j["created_by"] = "moe.cpp 0.1.0";
  h.json = j;
  return h;
}

std::unique_ptr<CliTrace> CliTrace::open(const TraceFlags& f, Engine& engine, const EngineFlags& ef, int64_t n_ctx,
                                         int64_t n_batch, const std::string& command) {
  if (f.path.empty()) {
    if (f.fields.probs || f.fields.expert_stats || f.fields.lookahead > 0)
      fail("--trace-probs, --trace-expert-stats and --trace-lookahead need --trace FILE");
    return nullptr;
  }
  return std::make_unique<CliTrace>(f.path, cli_trace_header(engine, ef, f.fields, n_ctx, n_batch, command));
}

CliTrace::CliTrace(const std::string& path, const TraceHeader& header) : writer_(path, header), recorder_(writer_) {}

CliTrace::~CliTrace() { detach(); }

void CliTrace::attach(Session& session) {
  detach();
  session_ = &session;
  session.forward().add_observer(&recorder_);
}

void CliTrace::detach() {
  if (session_) session_->forward().remove_observer(&recorder_);
  session_ = nullptr;
}

int CliTrace::begin_input(const std::string& file, const std::string& label) {
  input_ = writer_.add_input(file, label);
  recorder_.clear_sources();
  recorder_.set_default_source(input_, false);
  return input_;
}

void CliTrace::set_generated(bool generated) { recorder_.set_default_source(input_, generated); }

void CliTrace::finish() {
  detach();
  writer_.finish();
  std::fprintf(stderr, "moe: wrote trace %s (%llu steps, %llu tokens, %d MoE layers)\n", writer_.path().c_str(),
               static_cast<unsigned long long>(writer_.n_steps()), static_cast<unsigned long long>(writer_.n_tokens()),
               writer_.header().n_moe());
}

}  // namespace moe::cli

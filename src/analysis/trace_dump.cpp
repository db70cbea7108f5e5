#include "analysis/trace_dump.h"

#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.h"

namespace moe {

namespace {

void emit(std::FILE* out, const std::string& s) {
  if (std::fwrite(s.data(), 1, s.size(), out) != s.size()) fail("write failed (output closed?)");
}

// JSON has no NaN: expert statistics of experts that did not run are null.
nlohmann::ordered_json num(float v) {
  if (std::isfinite(v)) return v;
  return nullptr;
}

}  // namespace

void dump_trace_csv(TraceReader& r, std::FILE* out) {
  const TraceHeader& h = r.header();
  emit(out, "seq,pos,token,layer,rank,expert,weight\n");
  TraceStep s;
  std::string buf;
  while (r.next(s)) {
    buf.clear();
    for (size_t t = 0; t < s.n_tokens(); ++t) {
      const TraceToken& k = s.tokens[t];
      for (int m = 0; m < s.n_moe; ++m)
        for (uint32_t i = s.begin(t, m), rank = 0; i < s.end(t, m); ++i, ++rank)
          fmt::format_to(std::back_inserter(buf), "{},{},{},{},{},{},{:.9g}\n", k.seq, k.pos, k.id, h.moe_layers[m], rank,
                         s.experts[i], s.weights[i]);
    }
    emit(out, buf);
  }
}

void dump_trace_jsonl(TraceReader& r, std::FILE* out) {
  const TraceHeader& h = r.header();
  TraceStep s;
  uint64_t step = 0;
  std::string buf;
  while (r.next(s)) {
    buf.clear();
    for (size_t t = 0; t < s.n_tokens(); ++t) {
      const TraceToken& k = s.tokens[t];
      nlohmann::ordered_json j;
      j["step"] = step;
      j["seq"] = k.seq;
      j["pos"] = k.pos;
      j["token"] = k.id;
      j["input"] = k.input;
      j["generated"] = (k.flags & TraceToken::kGenerated) != 0;
      nlohmann::ordered_json layers = nlohmann::ordered_json::array();
      for (int m = 0; m < s.n_moe; ++m) {
        nlohmann::ordered_json L;
        L["layer"] = h.moe_layers[m];
        nlohmann::ordered_json ex = nlohmann::ordered_json::array(), w = nlohmann::ordered_json::array();
        for (uint32_t i = s.begin(t, m); i < s.end(t, m); ++i) {
          ex.push_back(s.experts[i]);
          w.push_back(s.weights[i]);
        }
        L["experts"] = ex;
        L["weights"] = w;
        if (h.fields.expert_stats) {
          nlohmann::ordered_json n = nlohmann::ordered_json::array(), x = nlohmann::ordered_json::array();
          for (uint32_t i = s.begin(t, m); i < s.end(t, m); ++i) {
            n.push_back(num(s.out_norm[i]));
            x.push_back(num(s.out_max[i]));
          }
          L["out_norm"] = n;
          L["out_max"] = x;
        }
        if (h.fields.probs) {
          const size_t a = s.at(t, m);
          L["probs"] = std::vector<float>(s.probs.begin() + s.probs_offsets[a], s.probs.begin() + s.probs_offsets[a + 1]);
        }
        if (h.fields.lookahead > 0 && m + 1 < s.n_moe) {
          const size_t a = s.at(t, m);
          L["lookahead"] = std::vector<int32_t>(s.lookahead.begin() + s.lookahead_offsets[a],
                                                s.lookahead.begin() + s.lookahead_offsets[a + 1]);
        }
        layers.push_back(L);
      }
      j["layers"] = layers;
      buf += j.dump();
      buf += '\n';
    }
    emit(out, buf);
    ++step;
  }
}

void dump_trace_summary(TraceReader& r, std::FILE* out) {
  TraceStep s;
  uint64_t generated = 0, max_step = 0;
  std::set<int32_t> seqs;
  std::map<int, uint64_t> per_input;
  while (r.next(s)) {
    max_step = std::max<uint64_t>(max_step, s.n_tokens());
    for (const TraceToken& k : s.tokens) {
      seqs.insert(k.seq);
      ++per_input[k.input];
      generated += (k.flags & TraceToken::kGenerated) != 0;
    }
  }
  const TraceHeader& h = r.header();
  std::string o = h.to_json().dump(2) + "\n";
  o += fmt::format("{}: {} steps, {} tokens ({} generated), {} sequences, largest step {} tokens, {} MoE layers\n",
                   r.path(), r.steps_read(), r.tokens_read(), generated, seqs.size(), max_step, h.n_moe());
  for (const auto& [input, n] : per_input) {
    const TraceInput& in = h.inputs[static_cast<size_t>(input)];
    o += fmt::format("  input {} ({}{}{}): {} tokens\n", input, in.label, in.file.empty() ? "" : ", ", in.file, n);
  }
  emit(out, o);
}

}  // namespace moe

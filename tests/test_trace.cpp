// Routing traces: the file format round trip, the recorder against what the executor really ran (on
// every fixture, batched and token by token), the gate-lookahead ranking against the predictor's
// hints, and malformed or truncated files.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "analysis/trace_dump.h"
#include "analysis/trace_format.h"
#include "analysis/trace_recorder.h"
#include "base/error.h"
#include "cli_runner.h"
#include "fixture_util.h"
#include "runtime/session.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

fs::path tmp_dir() {
  static const fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("moe_test_trace_" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
  }();
  return d;
}

// A fixture model, or a skip when this build does not support its arch (newer fixture families).
std::unique_ptr<Model> load_or_skip(const std::string& name) {
  try {
    return Model::load(test::model_path(name));
  } catch (const Error& e) {
    if (std::string(e.what()).find("is not supported") != std::string::npos) return nullptr;
    throw;
  }
}

TraceHeader small_header(TraceFields fields) {
  TraceHeader h;
  h.arch = "qwen3moe";
  h.model_name = "test";
  h.model_file = "test.gguf";
  h.n_layer = 3;
  h.n_vocab = 100;
  h.moe_layers = {1, 2};
  h.n_expert = {4, 6};
  h.n_expert_used = {2, 2};
  h.router_fingerprint = 0x0123456789abcdefull;
  h.fields = fields;
  h.inputs = {{0, "a.txt", "alpha"}};
  h.json = {{"routing", {{"policy", nlohmann::ordered_json::object()}}}};
  return h;
}

// Token t of step s selects experts (t + s) % E, then (t + s + 1) % E at layer 1 (one only for odd t:
// an empty slot), and the reverse order at layer 2.
TraceStep small_step(const TraceHeader& h, int s, int n_tokens, int input) {
  TraceStep st;
  st.clear(h.n_moe());
  for (int t = 0; t < n_tokens; ++t) {
    TraceToken k;
    k.id = (7 * t + s) % 100;
    k.pos = t;
    k.seq = s % 2;
    k.input = static_cast<uint16_t>(input);
    k.flags = t % 3 == 0 ? TraceToken::kGenerated : 0;
    st.tokens.push_back(k);
    for (int m = 0; m < h.n_moe(); ++m) {
      const int E = h.n_expert[m];
      std::vector<int> ids = {(t + s) % E};
      if (t % 2 == 0 || m == 1) ids.push_back((t + s + 1) % E);
      if (m == 1) std::swap(ids.front(), ids.back());
      for (size_t j = 0; j < ids.size(); ++j) {
        st.experts.push_back(ids[j]);
        st.weights.push_back(0.25f * static_cast<float>(j + 1) + 0.01f * static_cast<float>(t));
        if (h.fields.expert_stats) {
          st.out_norm.push_back(j == 1 && t == 1 ? NAN : 1.5f * static_cast<float>(t + 1));
          st.out_max.push_back(0.5f * static_cast<float>(t + m));
        }
      }
      st.offsets.push_back(static_cast<uint32_t>(st.experts.size()));
      if (h.fields.probs) {
        for (int e = 0; e < E; ++e) st.probs.push_back(static_cast<float>(e + t) / 10.0f);
        st.probs_offsets.push_back(static_cast<uint32_t>(st.probs.size()));
      }
      if (h.fields.lookahead > 0) {
        if (m + 1 < h.n_moe())
          for (int j = 0; j < std::min(h.fields.lookahead, h.n_expert[m + 1]); ++j) st.lookahead.push_back((t + j) % h.n_expert[m + 1]);
        st.lookahead_offsets.push_back(static_cast<uint32_t>(st.lookahead.size()));
      }
    }
  }
  return st;
}

std::string write_small_trace(const std::string& name, TraceFields fields, int n_steps = 3) {
  const std::string path = (tmp_dir() / name).string();
  const TraceHeader h = small_header(fields);
  TraceWriter w(path, h);
  for (int s = 0; s < n_steps; ++s) {
    if (s == 2) w.add_input("", "later");
    w.write_step(small_step(w.header(), s, 5, s >= 2 ? 1 : 0));
  }
  w.finish();
  return path;
}

void expect_same_step(const TraceStep& a, const TraceStep& b, bool stats, bool probs, bool look) {
  ASSERT_EQ(a.tokens.size(), b.tokens.size());
  for (size_t t = 0; t < a.tokens.size(); ++t) {
    EXPECT_EQ(a.tokens[t].id, b.tokens[t].id);
    EXPECT_EQ(a.tokens[t].pos, b.tokens[t].pos);
    EXPECT_EQ(a.tokens[t].seq, b.tokens[t].seq);
    EXPECT_EQ(a.tokens[t].input, b.tokens[t].input);
    EXPECT_EQ(a.tokens[t].flags, b.tokens[t].flags);
  }
  EXPECT_EQ(a.offsets, b.offsets);
  EXPECT_EQ(a.experts, b.experts);
  EXPECT_EQ(a.weights, b.weights);
  if (stats) {
    ASSERT_EQ(a.out_norm.size(), b.out_norm.size());
    for (size_t i = 0; i < a.out_norm.size(); ++i) {
      EXPECT_TRUE(a.out_norm[i] == b.out_norm[i] || (std::isnan(a.out_norm[i]) && std::isnan(b.out_norm[i])));
      EXPECT_EQ(a.out_max[i], b.out_max[i]);
    }
  }
  if (probs) {
    EXPECT_EQ(a.probs, b.probs);
    EXPECT_EQ(a.probs_offsets, b.probs_offsets);
  }
  if (look) {
    EXPECT_EQ(a.lookahead, b.lookahead);
    EXPECT_EQ(a.lookahead_offsets, b.lookahead_offsets);
  }
}

TEST(TraceFormat, RoundTripWithEveryField) {
  for (int variant = 0; variant < 2; ++variant) {
    TraceFields f;
    if (variant == 1) {
      f.probs = f.expert_stats = true;
      f.lookahead = 3;
    }
    const std::string path = write_small_trace("round" + std::to_string(variant) + ".trace", f);
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    TraceReader r(path);
    EXPECT_EQ(r.header().arch, "qwen3moe");
    EXPECT_EQ(r.header().moe_layers, (std::vector<int>{1, 2}));
    EXPECT_EQ(r.header().router_fingerprint, 0x0123456789abcdefull);
    EXPECT_EQ(r.header().json["routing"]["policy"], nlohmann::ordered_json::object());
    TraceStep got;
    const TraceHeader want_h = small_header(f);
    for (int s = 0; s < 3; ++s) {
      ASSERT_TRUE(r.next(got)) << "step " << s;
      const TraceStep want = small_step(want_h, s, 5, s >= 2 ? 1 : 0);
      expect_same_step(got, want, f.expert_stats, f.probs, f.lookahead > 0);
    }
    EXPECT_FALSE(r.next(got));
    EXPECT_FALSE(r.next(got));
    ASSERT_EQ(r.header().inputs.size(), 2u);
    EXPECT_EQ(r.header().inputs[1].label, "later");
    EXPECT_EQ(r.tokens_read(), 15u);
  }
}

TEST(TraceFormat, CsvAndJsonlDumps) {
  TraceFields f;
  f.expert_stats = true;
  const std::string path = write_small_trace("dump.trace", f, 2);
  {
    TraceReader r(path);
    std::FILE* out = std::tmpfile();
    dump_trace_csv(r, out);
    std::rewind(out);
    std::string text(1 << 16, '\0');
    text.resize(std::fread(text.data(), 1, text.size(), out));
    std::fclose(out);
    EXPECT_EQ(text.rfind("seq,pos,token,layer,rank,expert,weight\n", 0), 0u);
    // Step 0, token 0 (id 0, seq 0): layer 1 selects 0 then 1; layer 2 selects 1 then 0 (block indices).
    EXPECT_NE(text.find("\n0,0,0,1,0,0,0.25\n0,0,0,1,1,1,0.5\n0,0,0,2,0,1,0.25\n0,0,0,2,1,0,0.5\n"), std::string::npos)
        << text.substr(0, 300);
    // Token 1 at layer 1 has one expert (an empty slot is not a row).
    EXPECT_NE(text.find("\n0,1,7,1,0,1,0.25999999\n0,1,7,2,0,"), std::string::npos) << text.substr(0, 400);
    size_t rows = 0;
    for (char c : text) rows += c == '\n';
    // 2 steps x 5 tokens: layer 1 has 2 experts for even tokens (3 of 5), 1 for odd; layer 2 has 2.
    EXPECT_EQ(rows, 1u + 2 * (3 * 2 + 2 * 1 + 5 * 2));
  }
  {
    TraceReader r(path);
    std::FILE* out = std::tmpfile();
    dump_trace_jsonl(r, out);
    std::rewind(out);
    std::string line(4096, '\0');
    ASSERT_NE(std::fgets(line.data(), static_cast<int>(line.size()), out), nullptr);
    std::fclose(out);
    const auto j = nlohmann::json::parse(line.c_str());
    EXPECT_EQ(j["token"], 0);
    EXPECT_EQ(j["generated"], true);
    EXPECT_EQ(j["layers"][0]["layer"], 1);
    EXPECT_EQ(j["layers"][0]["experts"], (std::vector<int>{0, 1}));
    EXPECT_EQ(j["layers"][1]["experts"], (std::vector<int>{1, 0}));
    EXPECT_TRUE(j["layers"][0].contains("out_norm"));
  }
}

// Every truncation of a valid file is an error, never a crash or a silent partial read.
TEST(TraceFormat, EveryTruncationIsAnError) {
  TraceFields f;
  f.probs = f.expert_stats = true;
  f.lookahead = 2;
  const std::string path = write_small_trace("trunc.trace", f, 2);
  const std::string bytes = test::slurp(path);
  for (size_t n = 0; n < bytes.size(); ++n) {
    try {
      TraceReader::parse_all(reinterpret_cast<const uint8_t*>(bytes.data()), n, "cut.trace");
      ADD_FAILURE() << "a file cut to " << n << " of " << bytes.size() << " bytes was accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("cut.trace: ", 0), 0u) << msg;
      EXPECT_TRUE(msg.find("truncated") != std::string::npos || msg.find("header") != std::string::npos) << n << ": " << msg;
    }
  }
  TraceReader::parse_all(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "whole.trace");
}

TEST(TraceFormat, MalformedFieldsAreNamed) {
  TraceFields f;
  const std::string path = write_small_trace("bad.trace", f, 2);
  const std::string good = test::slurp(path);
  uint32_t header_len;
  std::memcpy(&header_len, good.data() + 12, 4);
  const size_t first_record = 16 + header_len;
  auto expect_error = [&](std::string bytes, const std::string& needle) {
    try {
      TraceReader::parse_all(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "bad.trace");
      ADD_FAILURE() << "accepted; expected an error mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  {
    std::string b = good;
    b[0] = 'X';
    expect_error(b, "magic");
  }
  {
    std::string b = good;
    b[8] = 9;
    expect_error(b, "version");
  }
  {
    std::string c = good;
    c.replace(c.find("\"moe_layers\":[1,2]"), 18, "\"moe_layers\":[2,1]");
    expect_error(c, "moe_layers is not ascending");
    std::string d = good;
    d.replace(d.find("\"n_expert_used\":[2,2]"), 21, "\"n_expert_used\":[5,2]");
    expect_error(d, "n_expert_used 5 exceeds model.n_expert 4");
  }
  {
    // The first step's first selection: record header (8) + counts (12) + 5 tokens x 16, then the
    // selection count of token 0, layer 1, then its first expert id (u16).
    std::string b = good;
    const size_t sel = first_record + 8 + 12 + 5 * 16;
    ASSERT_EQ(static_cast<uint8_t>(b[sel]), 2u);
    b[sel + 1] = 4;  // expert 4 of 4
    expect_error(b, "expert 4 outside [0, 4)");
    std::string c = good;
    c[sel] = 5;
    expect_error(c, "5 experts selected of 4");
    std::string d = good;
    d[sel + 1] = 1;  // expert 1 twice
    expect_error(d, "selected twice");
  }
  {
    std::string b = good;
    const size_t tok0 = first_record + 8 + 12;
    b[tok0] = 100;  // token id 100 of 100
    expect_error(b, "outside the vocabulary");
    std::string c = good;
    c[tok0 + 12] = 7;  // input 7 was never declared
    expect_error(c, "never declared");
  }
  {
    std::string b = good;
    b[b.size() - 16] = 9;  // the end record counts 9 steps
    expect_error(b, "the end record counts 9 steps");
    expect_error(good + "x", "bytes after the end record");
  }
  EXPECT_THROW(TraceReader((tmp_dir() / "missing.trace").string()), Error);
}

// A store that serves everything from memory and records what the executor declared (the experts it
// then acquires) and what the predictor hinted.
class RecordingStore final : public ExpertStore {
 public:
  explicit RecordingStore(const Model& m) : inner_(m) {}
  ExpertWeights acquire(int layer, int expert, bool low) override { return inner_.acquire(layer, expert, low); }
  void release(int, int, ExpertTier) override {}
  bool is_ready(int, int, bool) override { return true; }
  void prefetch(int layer, const int32_t* experts, int n, bool speculative, const uint8_t*) override {
    (speculative ? hinted : declared).push_back({layer, std::vector<int32_t>(experts, experts + n)});
  }
  std::vector<std::pair<int, std::vector<int32_t>>> declared, hinted;

 private:
  ResidentExpertStore inner_;
};

struct FixtureRun {
  std::vector<TraceStep> steps;
  RecordingStore* store = nullptr;
};

// Runs ids through a session (one batch, or token by token), recording a trace.
std::vector<TraceStep> trace_run(const Model& model, RecordingStore& store, const std::vector<int32_t>& ids, bool one_by_one,
                                 TraceFields fields, const std::string& name, ForwardOptions fo = {}) {
  const std::string path = (tmp_dir() / (name + ".trace")).string();
  {
    TraceWriter w(path, make_trace_header(model, fields));
    w.add_input("", "test");
    TraceRecorder rec(w);
    ThreadPool pool(2);
    Session s(model, store, static_cast<int64_t>(ids.size()) + 1, fo);
    s.forward().set_seq_id(3);
    s.forward().add_observer(&rec);
    if (one_by_one)
      for (int32_t id : ids) s.eval({id}, pool, false, 1);
    else
      s.eval(ids, pool, false, 512);
    w.finish();
  }
  TraceReader r(path);
  std::vector<TraceStep> steps;
  TraceStep st;
  while (r.next(st)) steps.push_back(st);
  return steps;
}

class TraceOnFixture : public ::testing::TestWithParam<std::string> {};

// The experts in the trace are exactly the ones the executor acquired, layer by layer and step by step,
// and a batched pass and token-by-token decoding record the same routing. The passes run batch-invariant
// (model/forward.h), so that the batch computes decoding's bits: otherwise the batch's blocked attention
// rounds differently and two near-tied experts may swap places (the order in the trace is the executed
// one either way, which the first half checks).
TEST_P(TraceOnFixture, IdsAreTheExecutedRoutingBatchedAndTokenByToken) {
  auto model = load_or_skip(GetParam());
  if (!model) GTEST_SKIP() << GetParam() << ": arch not supported by this build";
  const auto ids = test::read_ids(test::ref_path(GetParam(), "seq.tok"));
  TraceFields f;
  f.expert_stats = true;
  ForwardOptions invariant;
  invariant.batch_invariant = true;
  std::vector<std::vector<TraceStep>> runs;
  for (bool one_by_one : {false, true}) {
    RecordingStore store(*model);
    const auto steps =
        trace_run(*model, store, ids, one_by_one, f, GetParam() + (one_by_one ? "-1" : "-b"), invariant);
    ASSERT_EQ(steps.size(), one_by_one ? ids.size() : 1u);
    const TraceHeader h = make_trace_header(*model, f);
    size_t call = 0;
    for (const TraceStep& s : steps) {
      for (int m = 0; m < h.n_moe(); ++m) {
        std::set<int32_t> in_trace;
        for (size_t t = 0; t < s.n_tokens(); ++t) {
          EXPECT_EQ(s.end(t, m) - s.begin(t, m), static_cast<uint32_t>(h.n_expert_used[m]));
          for (uint32_t i = s.begin(t, m); i < s.end(t, m); ++i) {
            in_trace.insert(s.experts[i]);
            // Every selected expert ran, so its output statistics are there.
            EXPECT_TRUE(std::isfinite(s.out_norm[i]) && s.out_norm[i] > 0) << "layer " << h.moe_layers[m];
            EXPECT_GE(s.out_norm[i], s.out_max[i]);
          }
        }
        ASSERT_LT(call, store.declared.size());
        const auto& [layer, declared] = store.declared[call++];
        EXPECT_EQ(layer, h.moe_layers[m]);
        EXPECT_EQ(std::vector<int32_t>(in_trace.begin(), in_trace.end()), declared) << "layer " << layer;
      }
      for (size_t t = 0; t < s.n_tokens(); ++t) EXPECT_EQ(s.tokens[t].seq, 3);
    }
    EXPECT_EQ(call, store.declared.size());
    runs.push_back(steps);
  }
  // Batched vs token by token: same experts in the same order for every token.
  const TraceStep& batched = runs[0][0];
  for (size_t t = 0; t < ids.size(); ++t) {
    const TraceStep& one = runs[1][t];
    EXPECT_EQ(one.tokens[0].pos, static_cast<int32_t>(t));
    EXPECT_EQ(batched.tokens[t].pos, static_cast<int32_t>(t));
    for (int m = 0; m < batched.n_moe; ++m) {
      std::vector<int32_t> a(batched.experts.begin() + batched.begin(t, m), batched.experts.begin() + batched.end(t, m));
      std::vector<int32_t> b(one.experts.begin() + one.begin(0, m), one.experts.begin() + one.end(0, m));
      EXPECT_EQ(a, b) << GetParam() << " token " << t << " MoE layer " << m;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TraceOnFixture, ::testing::ValuesIn(test::fixture_model_names()),
                         test::FixtureParamName());

// The recorded gate lookahead is what `--predictor gate` hints: per token its top (k + margin), in
// token order, without repeats.
TEST(TraceRecorder, LookaheadRankingIsWhatTheGatePredictorHints) {
  for (const std::string name : {"tiny-qwen3moe", "tiny-deepseekmoe", "tiny-qwen2moe"}) {
    auto model = Model::load(test::model_path(name));
    const auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
    for (int margin : {0, 2}) {
      RecordingStore store(*model);
      ForwardOptions fo;
      fo.lookahead_margin = margin;
      fo.predictor = PrefetchPredictor::Gate;
      TraceFields f;
      f.lookahead = 6;
      const std::vector<int32_t> part(ids.begin(), ids.begin() + 10);
      const auto steps = trace_run(*model, store, part, false, f, name + "-look", fo);
      ASSERT_EQ(steps.size(), 1u);
      const TraceStep& s = steps[0];
      const TraceHeader h = make_trace_header(*model, f);
      ASSERT_EQ(store.hinted.size(), static_cast<size_t>(h.n_moe() - 1));
      for (int m = 0; m + 1 < h.n_moe(); ++m) {
        const int want = std::min(h.n_expert[m + 1], h.n_expert_used[m + 1] + margin);
        std::vector<int32_t> hint;
        for (size_t t = 0; t < s.n_tokens(); ++t) {
          const uint32_t b = s.lookahead_offsets[s.at(t, m)];
          ASSERT_GE(s.lookahead_offsets[s.at(t, m) + 1] - b, static_cast<uint32_t>(want));
          for (int j = 0; j < want; ++j)
            if (std::find(hint.begin(), hint.end(), s.lookahead[b + j]) == hint.end()) hint.push_back(s.lookahead[b + j]);
        }
        EXPECT_EQ(store.hinted[static_cast<size_t>(m)].first, h.moe_layers[m + 1]);
        EXPECT_EQ(store.hinted[static_cast<size_t>(m)].second, hint) << name << " margin " << margin << " layer " << m;
      }
    }
  }
}

// Tracing (with every optional field) never changes the logits.
TEST(TraceRecorder, RecordingLeavesLogitsBitIdentical) {
  auto model = Model::load(test::model_path("tiny-qwen2moe"));
  const auto ids = test::read_ids(test::ref_path("tiny-qwen2moe", "seq.tok"));
  ResidentExpertStore store(*model);
  ThreadPool pool(2);
  Session plain(*model, store, 128);
  const std::vector<float> want = plain.eval(ids, pool, true, 512);
  TraceFields f;
  f.probs = f.expert_stats = true;
  f.lookahead = 4;
  TraceWriter w((tmp_dir() / "logits.trace").string(), make_trace_header(*model, f));
  w.add_input("", "x");
  TraceRecorder rec(w);
  Session traced(*model, store, 128);
  traced.forward().add_observer(&rec);
  const std::vector<float> got = traced.eval(ids, pool, true, 512);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)));
  w.finish();
}

// Several sequences in one step (a server's batch): each token keeps its own sequence, input and flag.
TEST(TraceRecorder, StepsMixingSequencesKeepTheirSources) {
  auto model = Model::load(test::model_path("tiny-qwen3moe"));
  const std::string path = (tmp_dir() / "mixed.trace").string();
  TraceWriter w(path, make_trace_header(*model, TraceFields{}));
  const int a = w.add_input("", "request a"), b = w.add_input("", "request b");
  TraceRecorder rec(w);
  rec.set_source(10, a, false);
  rec.set_source(11, b, true);
  rec.set_default_source(a, false);
  // Feed the observer a step by hand, as a batching server's forward pass would.
  const int32_t tok[3] = {5, 6, 7};
  const int64_t pos[3] = {4, 0, 5};
  const int32_t seq[3] = {10, 11, 10};
  StepTokens st{tok, pos, seq, 3};
  rec.on_step_begin(st);
  const TraceHeader& h = w.header();
  for (int m = 0; m < h.n_moe(); ++m) {
    Routing r;
    r.n_tokens = 3;
    r.k = 2;
    r.ids = {1, 2, Routing::kEmpty, 3, 4, 5};
    r.weights = {0.6f, 0.4f, 0.0f, 1.0f, 0.5f, 0.5f};
    std::vector<float> scores(3 * static_cast<size_t>(h.n_expert[m]), 0.1f);
    MoeLayerRouting v;
    v.layer = h.moe_layers[m];
    v.tokens = &st;
    v.n_expert = h.n_expert[m];
    v.scores = scores.data();
    v.routing = &r;
    rec.on_routing(v);
  }
  rec.on_step_end(st);
  w.finish();
  TraceReader rd(path);
  TraceStep s;
  ASSERT_TRUE(rd.next(s));
  ASSERT_EQ(s.n_tokens(), 3u);
  EXPECT_EQ(s.tokens[0].input, a);
  EXPECT_EQ(s.tokens[1].input, b);
  EXPECT_EQ(s.tokens[1].flags, TraceToken::kGenerated);
  EXPECT_EQ(s.tokens[2].seq, 10);
  EXPECT_EQ(s.tokens[1].pos, 0);
  // Token 1's empty slot is left out; rank 0 is its only expert.
  EXPECT_EQ(s.end(1, 0) - s.begin(1, 0), 1u);
  EXPECT_EQ(s.experts[s.begin(1, 0)], 3);
}

}  // namespace
}  // namespace moe

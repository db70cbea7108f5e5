#include "analysis/trace_format.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include <fmt/format.h>

#include "base/error.h"

namespace moe {

static_assert(std::endian::native == std::endian::little, "traces are little-endian; this reader assumes a little-endian host");

namespace {

constexpr char kTagStep[4] = {'S', 'T', 'E', 'P'};
constexpr char kTagInput[4] = {'I', 'N', 'P', 'T'};
constexpr char kTagEnd[4] = {'E', 'N', 'D', 'T'};
constexpr uint32_t kMaxHeaderBytes = 16u << 20;
constexpr uint32_t kMaxRecordBytes = 1u << 30;
constexpr size_t kTokenBytes = 16;
constexpr int kMaxExperts = 65535;  // ids are u16
constexpr int kMaxSelected = 255;   // counts are u8

template <typename T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

// Bounds-checked little-endian reads from a record payload; errors name the field.
class Cursor {
 public:
  Cursor(const std::string& data, const std::string& where) : p_(data.data()), n_(data.size()), where_(where) {}
  template <typename T>
  T get(const char* field) {
    if (n_ - pos_ < sizeof(T)) fail("{}: truncated record: {} needs {} more bytes, {} left", where_, field, sizeof(T), n_ - pos_);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  void need(uint64_t bytes, const char* field) {
    if (n_ - pos_ < bytes) fail("{}: truncated record: {} needs {} bytes, {} left", where_, field, bytes, n_ - pos_);
  }
  size_t left() const { return n_ - pos_; }
  const char* here() const { return p_ + pos_; }
  void skip(size_t n) { pos_ += n; }

 private:
  const char* p_;
  size_t n_, pos_ = 0;
  std::string where_;
};

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

}  // namespace

int TraceHeader::moe_index(int block) const {
  for (size_t i = 0; i < moe_layers.size(); ++i)
    if (moe_layers[i] == block) return static_cast<int>(i);
  return -1;
}

nlohmann::ordered_json TraceHeader::to_json() const {
  nlohmann::ordered_json j = json.is_object() ? json : nlohmann::ordered_json::object();
  j["format"] = "moe.cpp routing trace";
  j["version"] = kTraceVersion;
  nlohmann::ordered_json m = j.contains("model") && j["model"].is_object() ? j["model"] : nlohmann::ordered_json::object();
  m["file"] = model_file;
  m["name"] = model_name;
  m["arch"] = arch;
  m["n_layer"] = n_layer;
  m["n_vocab"] = n_vocab;
  m["moe_layers"] = moe_layers;
  m["n_expert"] = n_expert;
  m["n_expert_used"] = n_expert_used;
  m["router_fingerprint"] = hex64(router_fingerprint);
  j["model"] = m;
  j["fields"] = {{"probs", fields.probs}, {"expert_stats", fields.expert_stats}, {"lookahead", fields.lookahead}};
  nlohmann::ordered_json in = nlohmann::ordered_json::array();
  for (const TraceInput& i : inputs) in.push_back({{"id", i.id}, {"file", i.file}, {"label", i.label}});
  j["inputs"] = in;
  return j;
}

namespace {

const nlohmann::ordered_json& member(const nlohmann::ordered_json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) fail("{}: header: missing key {}", where, key);
  return j[key];
}

int64_t int_member(const nlohmann::ordered_json& j, const char* key, const std::string& where, int64_t lo, int64_t hi) {
  const auto& v = member(j, key, where);
  if (!v.is_number_integer()) fail("{}: header: {} is not an integer", where, key);
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) fail("{}: header: {} = {} is outside [{}, {}]", where, key, x, lo, hi);
  return x;
}

std::string str_member(const nlohmann::ordered_json& j, const char* key, const std::string& where) {
  const auto& v = member(j, key, where);
  if (!v.is_string()) fail("{}: header: {} is not a string", where, key);
  return v.get<std::string>();
}

std::vector<int> int_array(const nlohmann::ordered_json& j, const char* key, const std::string& where, int64_t lo,
                           int64_t hi) {
  const auto& v = member(j, key, where);
  if (!v.is_array()) fail("{}: header: {} is not an array", where, key);
  std::vector<int> out;
  for (const auto& x : v) {
    if (!x.is_number_integer()) fail("{}: header: {} holds a non-integer", where, key);
    const int64_t y = x.get<int64_t>();
    if (y < lo || y > hi) fail("{}: header: {} holds {}, outside [{}, {}]", where, key, y, lo, hi);
    out.push_back(static_cast<int>(y));
  }
  return out;
}

TraceInput parse_input(const nlohmann::ordered_json& j, const std::string& where) {
  TraceInput in;
  in.id = static_cast<int>(int_member(j, "id", where, 0, 65535));
  in.file = str_member(j, "file", where);
  in.label = str_member(j, "label", where);
  return in;
}

}  // namespace

TraceHeader TraceHeader::from_json(const nlohmann::ordered_json& j, const std::string& path) {
  TraceHeader h;
  if (!j.is_object()) fail("{}: header: not a JSON object", path);
  if (str_member(j, "format", path) != "moe.cpp routing trace") fail("{}: header: format is not \"moe.cpp routing trace\"", path);
  const int64_t version = int_member(j, "version", path, 0, 1 << 30);
  if (version != kTraceVersion) fail("{}: header: version {} (this build reads version {})", path, version, kTraceVersion);
  const auto& m = member(j, "model", path);
  const std::string mp = path + ": model";
  h.model_file = str_member(m, "file", mp);
  h.model_name = str_member(m, "name", mp);
  h.arch = str_member(m, "arch", mp);
  h.n_layer = static_cast<int>(int_member(m, "n_layer", mp, 1, 1 << 16));
  h.n_vocab = int_member(m, "n_vocab", mp, 1, int64_t{1} << 31);
  h.moe_layers = int_array(m, "moe_layers", mp, 0, h.n_layer - 1);
  h.n_expert = int_array(m, "n_expert", mp, 1, kMaxExperts);
  h.n_expert_used = int_array(m, "n_expert_used", mp, 1, kMaxSelected);
  if (h.moe_layers.empty()) fail("{}: header: model.moe_layers is empty", path);
  for (size_t i = 1; i < h.moe_layers.size(); ++i)
    if (h.moe_layers[i] <= h.moe_layers[i - 1]) fail("{}: header: model.moe_layers is not ascending", path);
  if (h.n_expert.size() != h.moe_layers.size() || h.n_expert_used.size() != h.moe_layers.size())
    fail("{}: header: model.n_expert ({}) and model.n_expert_used ({}) must have one entry per MoE layer ({})", path,
         h.n_expert.size(), h.n_expert_used.size(), h.moe_layers.size());
  for (size_t i = 0; i < h.n_expert.size(); ++i)
    if (h.n_expert_used[i] > h.n_expert[i])
      fail("{}: header: model.n_expert_used {} exceeds model.n_expert {} (MoE layer {})", path, h.n_expert_used[i],
           h.n_expert[i], h.moe_layers[i]);
  const std::string fp = str_member(m, "router_fingerprint", mp);
  if (fp.size() != 16 || fp.find_first_not_of("0123456789abcdef") != std::string::npos)
    fail("{}: header: model.router_fingerprint '{}' is not 16 lowercase hex digits", path, fp);
  h.router_fingerprint = std::stoull(fp, nullptr, 16);
  const auto& f = member(j, "fields", path);
  const std::string fpth = path + ": fields";
  const auto& probs = member(f, "probs", fpth);
  const auto& stats = member(f, "expert_stats", fpth);
  if (!probs.is_boolean() || !stats.is_boolean()) fail("{}: header: fields.probs and fields.expert_stats must be booleans", path);
  h.fields.probs = probs.get<bool>();
  h.fields.expert_stats = stats.get<bool>();
  h.fields.lookahead = static_cast<int>(int_member(f, "lookahead", fpth, 0, kMaxSelected));
  const auto& in = member(j, "inputs", path);
  if (!in.is_array()) fail("{}: header: inputs is not an array", path);
  for (const auto& x : in) {
    TraceInput ti = parse_input(x, path + ": inputs");
    if (ti.id != static_cast<int>(h.inputs.size()))
      fail("{}: header: inputs[{}] has id {}; ids must count up from 0", path, h.inputs.size(), ti.id);
    h.inputs.push_back(std::move(ti));
  }
  h.json = j;
  return h;
}

void TraceStep::clear(int n_moe_layers) {
  n_moe = n_moe_layers;
  tokens.clear();
  offsets.assign(1, 0);
  experts.clear();
  weights.clear();
  out_norm.clear();
  out_max.clear();
  probs.clear();
  probs_offsets.assign(1, 0);
  lookahead.clear();
  lookahead_offsets.assign(1, 0);
}

// ---------------------------------------------------------------------------------------------------
// Writer

TraceWriter::TraceWriter(const std::string& path, const TraceHeader& header)
    : path_(path), tmp_path_(path + ".tmp"), header_(header) {
  if (header_.moe_layers.empty()) fail("{}: a trace needs a model with MoE layers", path);
  if (header_.fields.lookahead < 0 || header_.fields.lookahead > kMaxSelected)
    fail("{}: lookahead {} is outside [0, {}]", path, header_.fields.lookahead, kMaxSelected);
  for (int e : header_.n_expert)
    if (e > kMaxExperts) fail("{}: {} experts in a layer; traces hold at most {}", path, e, kMaxExperts);
  // Validate what we write by the reader's rules.
  header_ = TraceHeader::from_json(header_.to_json(), path);
  f_ = std::fopen(tmp_path_.c_str(), "wb");
  if (!f_) fail("{}: cannot write: {}", tmp_path_, std::strerror(errno));
  std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  const std::string text = header_.to_json().dump();
  std::string head(kTraceMagic, sizeof(kTraceMagic));
  put<uint32_t>(head, kTraceVersion);
  put<uint32_t>(head, static_cast<uint32_t>(text.size()));
  head += text;
  if (std::fwrite(head.data(), 1, head.size(), f_) != head.size()) fail("{}: write failed", tmp_path_);
}

TraceWriter::~TraceWriter() {
  if (!f_) return;
  std::fclose(f_);
  std::error_code ec;
  std::filesystem::remove(tmp_path_, ec);
}

void TraceWriter::write_record(const char tag[4], const std::string& payload) {
  if (!f_) fail("{}: the trace was already finished", path_);
  if (payload.size() > kMaxRecordBytes) fail("{}: a record of {} bytes exceeds the {} byte limit", path_, payload.size(), kMaxRecordBytes);
  char head[8];
  std::memcpy(head, tag, 4);
  const uint32_t n = static_cast<uint32_t>(payload.size());
  std::memcpy(head + 4, &n, 4);
  if (std::fwrite(head, 1, 8, f_) != 8 || std::fwrite(payload.data(), 1, payload.size(), f_) != payload.size())
    fail("{}: write failed: {}", tmp_path_, std::strerror(errno));
}

int TraceWriter::add_input(const std::string& file, const std::string& label) {
  const int id = static_cast<int>(header_.inputs.size());
  if (id > 65535) fail("{}: more than 65536 inputs", path_);
  header_.inputs.push_back({id, file, label});
  std::string p;
  put<uint32_t>(p, static_cast<uint32_t>(id));
  p += nlohmann::ordered_json({{"id", id}, {"file", file}, {"label", label}}).dump();
  write_record(kTagInput, p);
  return id;
}

void TraceWriter::write_step(const TraceStep& s) {
  const int M = header_.n_moe();
  const size_t T = s.tokens.size();
  const TraceFields& fl = header_.fields;
  if (s.n_moe != M || s.offsets.size() != T * M + 1) fail("{}: step with {} MoE layers, the header has {}", path_, s.n_moe, M);
  if (fl.probs && s.probs_offsets.size() != T * M + 1) fail("{}: step without router probabilities", path_);
  if (fl.lookahead > 0 && s.lookahead_offsets.size() != T * M + 1) fail("{}: step without lookahead rankings", path_);
  if (T > std::numeric_limits<uint32_t>::max()) fail("{}: step of {} tokens", path_, T);
  if (s.weights.size() != s.experts.size() ||
      (fl.expert_stats && (s.out_norm.size() != s.experts.size() || s.out_max.size() != s.experts.size())))
    fail("{}: step with {} experts but {} weights / {} output statistics", path_, s.experts.size(), s.weights.size(),
         s.out_norm.size());
  buf_.clear();
  put<uint32_t>(buf_, static_cast<uint32_t>(T));
  put<uint32_t>(buf_, fl.bits());
  put<uint16_t>(buf_, static_cast<uint16_t>(M));
  put<uint16_t>(buf_, static_cast<uint16_t>(fl.lookahead));
  for (const TraceToken& t : s.tokens) {
    if (t.input >= header_.inputs.size()) fail("{}: token at position {} names input {}, which was not declared", path_, t.pos, t.input);
    put<int32_t>(buf_, t.id);
    put<int32_t>(buf_, t.pos);
    put<int32_t>(buf_, t.seq);
    put<uint16_t>(buf_, t.input);
    put<uint8_t>(buf_, t.flags);
    put<uint8_t>(buf_, 0);
  }
  for (size_t t = 0; t < T; ++t) {
    for (int m = 0; m < M; ++m) {
      const uint32_t b = s.begin(t, m), e = s.end(t, m);
      if (e < b || e > s.experts.size() || e - b > static_cast<uint32_t>(header_.n_expert[m]))
        fail("{}: step token {} layer {}: bad selection range", path_, t, header_.moe_layers[m]);
      put<uint8_t>(buf_, static_cast<uint8_t>(e - b));
      for (uint32_t i = b; i < e; ++i) {
        const int32_t x = s.experts[i];
        if (x < 0 || x >= header_.n_expert[m])
          fail("{}: token {} layer {}: expert {} outside [0, {})", path_, t, header_.moe_layers[m], x, header_.n_expert[m]);
        put<uint16_t>(buf_, static_cast<uint16_t>(x));
      }
      for (uint32_t i = b; i < e; ++i) put<float>(buf_, s.weights[i]);
      if (fl.expert_stats) {
        for (uint32_t i = b; i < e; ++i) put<float>(buf_, s.out_norm[i]);
        for (uint32_t i = b; i < e; ++i) put<float>(buf_, s.out_max[i]);
      }
      if (fl.probs) {
        const uint32_t pb = s.probs_offsets[s.at(t, m)], pe = s.probs_offsets[s.at(t, m) + 1];
        if (pe - pb != static_cast<uint32_t>(header_.n_expert[m]) || pe > s.probs.size())
          fail("{}: token {} layer {}: {} probabilities for {} experts", path_, t, header_.moe_layers[m], pe - pb,
               header_.n_expert[m]);
        for (uint32_t i = pb; i < pe; ++i) put<float>(buf_, s.probs[i]);
      }
      if (fl.lookahead > 0 && m + 1 < M) {
        const uint32_t lb = s.lookahead_offsets[s.at(t, m)], le = s.lookahead_offsets[s.at(t, m) + 1];
        const uint32_t cap = static_cast<uint32_t>(std::min(fl.lookahead, header_.n_expert[m + 1]));
        if (le < lb || le - lb > cap || le > s.lookahead.size())
          fail("{}: token {} layer {}: bad lookahead range", path_, t, header_.moe_layers[m]);
        put<uint8_t>(buf_, static_cast<uint8_t>(le - lb));
        for (uint32_t i = lb; i < le; ++i) put<uint16_t>(buf_, static_cast<uint16_t>(s.lookahead[i]));
      }
    }
  }
  write_record(kTagStep, buf_);
  ++n_steps_;
  n_tokens_ += T;
}

void TraceWriter::finish() {
  std::string p;
  put<uint64_t>(p, n_steps_);
  put<uint64_t>(p, n_tokens_);
  write_record(kTagEnd, p);
  const bool ok = std::fflush(f_) == 0;
  std::fclose(f_);
  f_ = nullptr;
  if (!ok) fail("{}: write failed: {}", tmp_path_, std::strerror(errno));
  std::error_code ec;
  std::filesystem::rename(tmp_path_, path_, ec);
  if (ec) fail("{}: cannot rename {} into place: {}", path_, tmp_path_, ec.message());
}

// ---------------------------------------------------------------------------------------------------
// Reader

TraceReader::TraceReader(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "rb");
  if (!f_) fail("{}: cannot open: {}", path, std::strerror(errno));
  std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  try {
    open_common();
  } catch (...) {
    std::fclose(f_);
    f_ = nullptr;
    throw;
  }
}

TraceReader::~TraceReader() {
  if (f_) std::fclose(f_);
}

bool TraceReader::read_exact(void* dst, size_t n) {
  if (mem_) {
    if (mem_size_ - mem_pos_ < n) return false;
    std::memcpy(dst, mem_ + mem_pos_, n);
    mem_pos_ += n;
  } else if (n > 0 && std::fread(dst, 1, n, f_) != n) {
    return false;
  }
  offset_ += n;
  return true;
}

void TraceReader::open_common() {
  char magic[8];
  if (!read_exact(magic, 8)) fail("{}: truncated: the file is shorter than the 8-byte magic", path_);
  if (std::memcmp(magic, kTraceMagic, 8) != 0) fail("{}: not a moe.cpp trace (magic is not MOETRACE)", path_);
  uint32_t version = 0, len = 0;
  if (!read_exact(&version, 4)) fail("{}: truncated in the version field", path_);
  if (version != kTraceVersion) fail("{}: trace version {} (this build reads version {})", path_, version, kTraceVersion);
  if (!read_exact(&len, 4)) fail("{}: truncated in the header length field", path_);
  if (len == 0 || len > kMaxHeaderBytes) fail("{}: header length {} is outside [1, {}]", path_, len, kMaxHeaderBytes);
  std::string text(len, '\0');
  if (!read_exact(text.data(), len)) fail("{}: truncated in the header ({} bytes announced)", path_, len);
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail("{}: header: not valid JSON", path_);
  header_ = TraceHeader::from_json(j, path_);
}

bool TraceReader::next(TraceStep& step) {
  for (;;) {
    if (done_) return false;
    const uint64_t at = offset_;
    char head[8];
    if (!read_exact(head, 8))
      fail("{}: truncated after {} steps (byte {}): no ENDT record; the trace was not finished", path_, n_steps_, at);
    uint32_t len = 0;
    std::memcpy(&len, head + 4, 4);
    const std::string tag(head, 4);
    if (len > kMaxRecordBytes) fail("{}: record {} at byte {}: length {} exceeds {}", path_, tag, at, len, kMaxRecordBytes);
    payload_.resize(len);
    if (!read_exact(payload_.data(), len))
      fail("{}: truncated in record {} at byte {} ({} bytes announced)", path_, tag, at, len);
    const std::string where = fmt::format("{}: record {} at byte {}", path_, tag, at);
    if (std::memcmp(head, kTagStep, 4) == 0) {
      decode_step(payload_, step);
      ++n_steps_;
      n_tokens_ += step.tokens.size();
      return true;
    }
    if (std::memcmp(head, kTagInput, 4) == 0) {
      Cursor c(payload_, where);
      const uint32_t id = c.get<uint32_t>("input id");
      if (id != header_.inputs.size()) fail("{}: input id {}, expected {}", where, id, header_.inputs.size());
      nlohmann::ordered_json j = nlohmann::ordered_json::parse(c.here(), c.here() + c.left(), nullptr, false);
      if (j.is_discarded()) fail("{}: input description is not valid JSON", where);
      TraceInput in = parse_input(j, where);
      if (in.id != static_cast<int>(id)) fail("{}: input id {} in the JSON, {} in the record", where, in.id, id);
      header_.inputs.push_back(std::move(in));
      continue;
    }
    if (std::memcmp(head, kTagEnd, 4) == 0) {
      Cursor c(payload_, where);
      const uint64_t steps = c.get<uint64_t>("step count");
      const uint64_t tokens = c.get<uint64_t>("token count");
      if (steps != n_steps_ || tokens != n_tokens_)
        fail("{}: the end record counts {} steps and {} tokens, the file holds {} and {}", where, steps, tokens,
             n_steps_, n_tokens_);
      char extra;
      if (read_exact(&extra, 1)) fail("{}: bytes after the end record", path_);
      done_ = true;
      return false;
    }
    // Unknown record types are skipped: later versions may add some.
  }
}

void TraceReader::decode_step(const std::string& payload, TraceStep& s) {
  const std::string where = fmt::format("{}: step {}", path_, n_steps_);
  Cursor c(payload, where);
  const int M = header_.n_moe();
  const TraceFields& fl = header_.fields;
  const uint32_t T = c.get<uint32_t>("token count");
  const uint32_t bits = c.get<uint32_t>("field bits");
  const uint16_t m_rec = c.get<uint16_t>("MoE layer count");
  const uint16_t look = c.get<uint16_t>("lookahead");
  if (bits != fl.bits()) fail("{}: field bits {} disagree with the header's {}", where, bits, fl.bits());
  if (m_rec != M) fail("{}: {} MoE layers, the header has {}", where, m_rec, M);
  if (look != fl.lookahead) fail("{}: lookahead {}, the header has {}", where, look, fl.lookahead);
  c.need(static_cast<uint64_t>(T) * kTokenBytes, "tokens");
  s.clear(M);
  s.tokens.resize(T);
  for (uint32_t t = 0; t < T; ++t) {
    TraceToken& k = s.tokens[t];
    k.id = c.get<int32_t>("token id");
    k.pos = c.get<int32_t>("position");
    k.seq = c.get<int32_t>("sequence id");
    k.input = c.get<uint16_t>("input id");
    k.flags = c.get<uint8_t>("token flags");
    c.get<uint8_t>("reserved");
    if (k.id < 0 || k.id >= header_.n_vocab)
      fail("{}: token {}: id {} outside the vocabulary [0, {})", where, t, k.id, header_.n_vocab);
    if (k.pos < 0) fail("{}: token {}: negative position {}", where, t, k.pos);
    if (k.input >= header_.inputs.size()) fail("{}: token {}: input {} was never declared", where, t, k.input);
  }
  s.offsets.reserve(static_cast<size_t>(T) * M + 1);
  std::vector<uint8_t> seen;
  for (uint32_t t = 0; t < T; ++t) {
    for (int m = 0; m < M; ++m) {
      const int E = header_.n_expert[m];
      const uint8_t n = c.get<uint8_t>("selection count");
      if (n > E) fail("{}: token {} layer {}: {} experts selected of {}", where, t, header_.moe_layers[m], n, E);
      c.need(static_cast<uint64_t>(n) * (2 + 4 + (fl.expert_stats ? 8 : 0)), "selections");
      seen.assign(static_cast<size_t>(E), 0);
      for (int i = 0; i < n; ++i) {
        const int x = c.get<uint16_t>("expert id");
        if (x >= E) fail("{}: token {} layer {}: expert {} outside [0, {})", where, t, header_.moe_layers[m], x, E);
        if (seen[static_cast<size_t>(x)]++) fail("{}: token {} layer {}: expert {} selected twice", where, t, header_.moe_layers[m], x);
        s.experts.push_back(x);
      }
      for (int i = 0; i < n; ++i) s.weights.push_back(c.get<float>("weight"));
      if (fl.expert_stats) {
        for (int i = 0; i < n; ++i) s.out_norm.push_back(c.get<float>("output norm"));
        for (int i = 0; i < n; ++i) s.out_max.push_back(c.get<float>("output max"));
      }
      s.offsets.push_back(static_cast<uint32_t>(s.experts.size()));
      if (fl.probs) {
        c.need(static_cast<uint64_t>(E) * 4, "router probabilities");
        const size_t at = s.probs.size();
        s.probs.resize(at + static_cast<size_t>(E));
        std::memcpy(s.probs.data() + at, c.here(), static_cast<size_t>(E) * 4);
        c.skip(static_cast<size_t>(E) * 4);
        s.probs_offsets.push_back(static_cast<uint32_t>(s.probs.size()));
      }
      if (fl.lookahead > 0) {
        if (m + 1 < M) {
          const int En = header_.n_expert[m + 1];
          const uint8_t n_look = c.get<uint8_t>("lookahead count");
          if (n_look > std::min(fl.lookahead, En))
            fail("{}: token {} layer {}: {} lookahead experts, at most {}", where, t, header_.moe_layers[m], n_look,
                 std::min(fl.lookahead, En));
          seen.assign(static_cast<size_t>(En), 0);
          for (int i = 0; i < n_look; ++i) {
            const int x = c.get<uint16_t>("lookahead expert id");
            if (x >= En || seen[static_cast<size_t>(x)]++)
              fail("{}: token {} layer {}: lookahead expert {} is out of range or repeated", where, t,
                   header_.moe_layers[m], x);
            s.lookahead.push_back(x);
          }
        }
        s.lookahead_offsets.push_back(static_cast<uint32_t>(s.lookahead.size()));
      }
    }
  }
  if (c.left() != 0) fail("{}: {} bytes left over after the last token", where, c.left());
}

void TraceReader::parse_all(const uint8_t* data, size_t size, const std::string& name,
                            const std::function<void(const TraceHeader&, const TraceStep&)>& on_step) {
  TraceReader r;
  r.path_ = name;
  r.mem_ = data;
  r.mem_size_ = size;
  r.open_common();
  TraceStep s;
  while (r.next(s))
    if (on_step) on_step(r.header_, s);
}

}  // namespace moe

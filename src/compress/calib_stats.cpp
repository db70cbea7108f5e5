#include "compress/calib_stats.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "base/error.h"
#include "format/gguf.h"
#include "model/lowbit_experts.h"
#include "model/weights.h"

namespace moe::compress {

namespace {

constexpr uint32_t kVersion = 1;

struct Field {
  const char* name;
  std::vector<double> LayerStats::*member;
  bool non_negative;
};
// The per-expert vectors of length E, in file order.
const Field kVectors[] = {
    {"count", &LayerStats::count, true},       {"weight_sum", &LayerStats::weight_sum, true},
    {"reap", &LayerStats::reap, true},         {"easy_ep", &LayerStats::easy_ep, true},
    {"max_out", &LayerStats::max_out, true},   {"out_norm", &LayerStats::out_norm, true},
    {"recon_ref", &LayerStats::recon_ref, true}, {"recon_n", &LayerStats::recon_n, true},
};

std::string tname(int layer, const char* field) { return "calib." + std::to_string(layer) + "." + field; }

void put(gguf::Writer& w, const std::string& name, const std::vector<double>& v, std::vector<int64_t> dims) {
  std::vector<uint8_t> bytes(v.size() * sizeof(float));
  for (size_t i = 0; i < v.size(); ++i) {
    const float f = static_cast<float>(v[i]);
    std::memcpy(bytes.data() + i * sizeof(float), &f, sizeof f);
  }
  w.add_tensor(name, DType::F32, std::move(dims), std::move(bytes));
}

// Reads an F32 tensor of exactly `dims` (trailing 1s ignored), checking every value.
std::vector<double> get(const gguf::File& f, const std::string& name, std::vector<int64_t> dims, bool non_negative) {
  const gguf::TensorInfo* t = f.find_tensor(name);
  if (!t) fail("{}: tensor '{}' is missing", f.path(), name);
  auto trim = [](std::vector<int64_t> v) {
    while (v.size() > 1 && v.back() == 1) v.pop_back();
    return v;
  };
  if (t->type != DType::F32) fail("{}: tensor '{}': type {}, expected f32", f.path(), name, dtype_traits(t->type).name);
  if (trim(t->dims) != trim(dims)) {
    std::string want, got;
    for (int64_t d : dims) want += (want.empty() ? "" : "x") + std::to_string(d);
    for (int64_t d : t->dims) got += (got.empty() ? "" : "x") + std::to_string(d);
    fail("{}: tensor '{}': shape {}, expected {}", f.path(), name, got, want);
  }
  std::vector<float> raw(static_cast<size_t>(t->n_elements()));
  f.read_tensor_bytes(*t, 0, raw.size() * sizeof(float), raw.data());
  std::vector<double> out(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (!std::isfinite(raw[i]) || (non_negative && raw[i] < 0))
      fail("{}: tensor '{}': element {} is {}, expected a finite{} value", f.path(), name, i, raw[i],
           non_negative ? " non-negative" : "");
    out[i] = raw[i];
  }
  return out;
}

}  // namespace

void LayerStats::init(int l, int e, int64_t ff, size_t n_labels, size_t n_types) {
  layer = l;
  n_expert = e;
  n_ff = ff;
  const size_t E = static_cast<size_t>(e);
  for (const Field& fd : kVectors) (this->*fd.member).assign(E, 0.0);
  logit_gram.assign(E * E, 0.0);
  tcess.assign(n_labels * E, 0.0);
  recon.assign(n_types * kReconParts * E, 0.0);
  heapr.clear();
}

const LayerStats* CalibStats::find_layer(int layer) const {
  for (const LayerStats& l : layers)
    if (l.layer == layer) return &l;
  return nullptr;
}

size_t CalibStats::label_index(const std::string& label) const {
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] == label) return i;
  std::string known;
  for (const auto& l : labels) known += (known.empty() ? "" : ", ") + l;
  fail("--label {}: the stats have no such label (known: {})", label, known);
}

void save_stats(const CalibStats& s, const std::string& path) {
  using gguf::Value;
  gguf::Writer w;
  w.set("general.type", Value::make_string("moe.calibration"));
  w.set("calib.version", Value::make_u32(kVersion));
  w.set("calib.architecture", Value::make_string(s.arch));
  w.set("calib.model", Value::make_string(s.model_file));
  w.set("calib.fingerprint", Value::make_u64(s.fingerprint));
  w.set("calib.n_layer", Value::make_u32(static_cast<uint32_t>(s.n_layer)));
  w.set("calib.n_embd", Value::make_u32(static_cast<uint32_t>(s.n_embd)));
  w.set("calib.tokens", Value::make_u64(s.tokens));
  w.set("calib.labels", Value::make_string_array(s.labels));
  w.set("calib.tcess_k", Value::make_u32(static_cast<uint32_t>(s.tcess_k)));
  std::vector<std::string> types;
  for (DType t : s.recon_types) types.emplace_back(dtype_traits(t).name);
  w.set("calib.recon_types", Value::make_string_array(types));
  w.set("calib.recon_tokens", Value::make_u64(s.recon_tokens));
  w.set("calib.heapr_tokens", Value::make_u64(s.heapr_tokens));
  std::vector<int32_t> layer_ids;
  for (const LayerStats& l : s.layers) layer_ids.push_back(l.layer);
  w.set("calib.moe_layers", Value::make_i32_array(layer_ids));
  const int64_t L = static_cast<int64_t>(s.labels.size()), C = static_cast<int64_t>(s.recon_types.size());
  if (L > 0) put(w, "calib.label_tokens", s.label_tokens, {L});
  for (const LayerStats& l : s.layers) {
    const int64_t E = l.n_expert;
    w.set("calib." + std::to_string(l.layer) + ".n_ff", Value::make_u32(static_cast<uint32_t>(l.n_ff)));
    for (const Field& fd : kVectors) put(w, tname(l.layer, fd.name), l.*fd.member, {E});
    put(w, tname(l.layer, "logit_gram"), l.logit_gram, {E, E});
    if (L > 0) put(w, tname(l.layer, "tcess"), l.tcess, {E, L});
    if (C > 0) put(w, tname(l.layer, "recon"), l.recon, {E, kReconParts, C});
    if (!l.heapr.empty()) put(w, tname(l.layer, "heapr"), l.heapr, {l.n_ff, E});
  }
  w.write(path);
}

CalibStats parse_stats(const gguf::File& f) {
  if (f.get_string_or("general.type", "") != "moe.calibration")
    fail("{}: not a calibration stats file (general.type is not 'moe.calibration'; write one with moe calibrate)",
         f.path());
  const uint64_t version = f.get_uint("calib.version");
  if (version != kVersion) fail("{}: calib.version {}: this build reads version {}", f.path(), version, kVersion);
  CalibStats s;
  s.arch = f.get_string("calib.architecture");
  s.model_file = f.get_string_or("calib.model", "");
  s.fingerprint = f.get_uint("calib.fingerprint");
  const uint64_t n_layer = f.get_uint("calib.n_layer");
  if (n_layer == 0 || n_layer > 4096) fail("{}: calib.n_layer {} out of range [1, 4096]", f.path(), n_layer);
  s.n_layer = static_cast<int>(n_layer);
  const uint64_t n_embd = f.get_uint("calib.n_embd");
  if (n_embd == 0 || n_embd > (1u << 20)) fail("{}: calib.n_embd {} out of range", f.path(), n_embd);
  s.n_embd = static_cast<int64_t>(n_embd);
  s.tokens = f.get_uint("calib.tokens");
  s.labels = f.get_string_array("calib.labels");
  if (s.labels.size() > 4096) fail("{}: calib.labels: {} labels (at most 4096)", f.path(), s.labels.size());
  const uint64_t tk = f.get_uint("calib.tcess_k");
  if (tk == 0 || tk > 4096) fail("{}: calib.tcess_k {} out of range", f.path(), tk);
  s.tcess_k = static_cast<int>(tk);
  for (const std::string& name : f.get_string_array("calib.recon_types")) {
    const auto t = dtype_from_name(name);
    if (!t || !storage_quantizer(*t)) fail("{}: calib.recon_types: '{}' is not a weight type", f.path(), name);
    s.recon_types.push_back(*t);
  }
  if (s.recon_types.size() > 32) fail("{}: calib.recon_types: {} types (at most 32)", f.path(), s.recon_types.size());
  s.recon_tokens = f.get_uint("calib.recon_tokens");
  s.heapr_tokens = f.get_uint("calib.heapr_tokens");
  const int64_t L = static_cast<int64_t>(s.labels.size()), C = static_cast<int64_t>(s.recon_types.size());
  if (L > 0) s.label_tokens = get(f, "calib.label_tokens", {L}, true);
  const std::vector<int64_t> ids = f.get_int_array("calib.moe_layers");
  if (ids.empty()) fail("{}: calib.moe_layers: no MoE layers", f.path());
  int prev = -1;
  for (int64_t id : ids) {
    if (id <= prev || id >= s.n_layer)
      fail("{}: calib.moe_layers: layer {} out of order or out of range [0, {})", f.path(), id, s.n_layer);
    prev = static_cast<int>(id);
    const int il = static_cast<int>(id);
    const gguf::TensorInfo* c = f.find_tensor(tname(il, "count"));
    if (!c) fail("{}: tensor '{}' is missing", f.path(), tname(il, "count"));
    const int64_t E = c->dims.empty() ? 0 : c->dims[0];
    if (E < 1 || E > 65536) fail("{}: tensor '{}': {} experts out of range", f.path(), tname(il, "count"), E);
    const uint64_t ff = f.get_uint("calib." + std::to_string(il) + ".n_ff");
    if (ff == 0 || ff > (1u << 20)) fail("{}: calib.{}.n_ff {} out of range", f.path(), il, ff);
    LayerStats l;
    l.init(il, static_cast<int>(E), static_cast<int64_t>(ff), s.labels.size(), s.recon_types.size());
    for (const Field& fd : kVectors) l.*fd.member = get(f, tname(il, fd.name), {E}, fd.non_negative);
    l.logit_gram = get(f, tname(il, "logit_gram"), {E, E}, false);
    if (L > 0) l.tcess = get(f, tname(il, "tcess"), {E, L}, false);
    if (C > 0) l.recon = get(f, tname(il, "recon"), {E, kReconParts, C}, true);
    if (s.heapr_tokens > 0) l.heapr = get(f, tname(il, "heapr"), {static_cast<int64_t>(ff), E}, true);
    s.layers.push_back(std::move(l));
  }
  return s;
}

CalibStats load_stats(const std::string& path) {
  auto f = gguf::File::open(path, gguf::DataAccess::Pread);
  return parse_stats(*f);
}

bool check_stats_match(const CalibStats& s, const Model& model, const std::string& stats_path) {
  const ModelSpec& spec = model.spec();
  const std::string& mp = model.file().path();
  if (s.arch != spec.arch)
    fail("{}: calibrated on a {} model, but {} is {}", stats_path, s.arch, mp, spec.arch);
  if (s.n_layer != spec.n_layer || s.n_embd != spec.n_embd)
    fail("{}: calibrated on {} layers of width {}, but {} has {} of width {}", stats_path, s.n_layer, s.n_embd, mp,
         spec.n_layer, spec.n_embd);
  size_t i = 0;
  for (int il = 0; il < spec.n_layer; ++il) {
    const LayerSpec& L = spec.layers[il];
    if (!L.is_moe) continue;
    if (i >= s.layers.size() || s.layers[i].layer != il)
      fail("{}: no statistics for MoE layer {} of {}", stats_path, il, mp);
    if (s.layers[i].n_expert != L.moe.n_expert || s.layers[i].n_ff != L.moe.n_ff_exp)
      fail("{}: layer {}: calibrated with {} experts of width {}, but {} has {} of width {}", stats_path, il,
           s.layers[i].n_expert, s.layers[i].n_ff, mp, L.moe.n_expert, L.moe.n_ff_exp);
    ++i;
  }
  if (i != s.layers.size()) fail("{}: statistics for {} MoE layers, but {} has {}", stats_path, s.layers.size(), mp, i);
  return low_bit_base(model).fingerprint == s.fingerprint;
}

}  // namespace moe::compress

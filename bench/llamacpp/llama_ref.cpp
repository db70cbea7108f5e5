// llama_ref: llama.cpp's own answers on a GGUF file, for checking moe.cpp against it at development time.
// Built against a native llama.cpp build by bench/llamacpp/build_llama_native.sh (nothing lands in the repo).
//
//   llama_ref logits -m MODEL --tokens FILE -o OUT.f32 [--override-kv KEY=TYPE:VALUE]... [-t N]
//       one batched pass from position 0; float32 logits row-major [n_tokens][n_vocab] (as `moe logits`)
//   llama_ref route  -m MODEL --tokens FILE -o OUT.csv [--override-kv ...] [-t N]
//       the routing llama.cpp computes in the same pass, from its graph tensors ffn_moe_topk-L (selected
//       experts; a strided view, read row by row) and the last of ffn_moe_weights* (final weights):
//       CSV `pos,token,layer,rank,expert,weight`
//   llama_ref greedy -m MODEL --tokens FILE -n N [--override-kv ...] [-t N]
//       N greedy tokens after the prompt, one at a time with the KV cache; ids one per line on stdout
//
// --override-kv takes llama.cpp's own form: KEY=int:N, KEY=float:F, KEY=bool:true|false, KEY=str:S.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "llama_ref: %s\n", msg.c_str());
  std::exit(1);
}

llama_model_kv_override parse_override(const std::string& spec) {
  llama_model_kv_override o{};
  const size_t eq = spec.find('='), colon = spec.find(':', eq == std::string::npos ? 0 : eq);
  if (eq == std::string::npos || colon == std::string::npos || eq >= sizeof(o.key))
    die("--override-kv " + spec + ": expected KEY=TYPE:VALUE");
  std::strncpy(o.key, spec.substr(0, eq).c_str(), sizeof(o.key) - 1);
  const std::string type = spec.substr(eq + 1, colon - eq - 1), val = spec.substr(colon + 1);
  if (type == "int") {
    o.tag = LLAMA_KV_OVERRIDE_TYPE_INT;
    o.val_i64 = std::strtoll(val.c_str(), nullptr, 10);
  } else if (type == "float") {
    o.tag = LLAMA_KV_OVERRIDE_TYPE_FLOAT;
    o.val_f64 = std::strtod(val.c_str(), nullptr);
  } else if (type == "bool") {
    o.tag = LLAMA_KV_OVERRIDE_TYPE_BOOL;
    o.val_bool = val == "true" || val == "1";
  } else if (type == "str") {
    o.tag = LLAMA_KV_OVERRIDE_TYPE_STR;
    std::strncpy(o.val_str, val.c_str(), sizeof(o.val_str) - 1);
  } else {
    die("--override-kv " + spec + ": unknown type " + type);
  }
  return o;
}

std::vector<llama_token> read_tokens(const std::string& path) {
  std::ifstream in(path);
  if (!in) die("cannot open " + path);
  std::vector<llama_token> t;
  long v;
  while (in >> v) t.push_back(static_cast<llama_token>(v));
  if (t.empty()) die(path + ": no tokens");
  return t;
}

// Routing tensors seen during one decode, keyed by layer.
struct RouteCapture {
  std::map<int, std::vector<int32_t>> ids;   // [n_tokens][k]
  std::map<int, std::vector<float>> weights; // [n_tokens][k] (the last weights tensor of the layer)
  std::map<int, int> k;
};

int layer_of(const char* name, const char* prefix) {
  const size_t n = std::strlen(prefix);
  if (std::strncmp(name, prefix, n) != 0 || name[n] != '-') return -1;
  return std::atoi(name + n + 1);
}

bool route_cb(ggml_tensor* t, bool ask, void* user) {
  auto* cap = static_cast<RouteCapture*>(user);
  const char* name = t->name;
  int il = layer_of(name, "ffn_moe_topk");
  const bool is_ids = il >= 0;
  if (!is_ids) {
    for (const char* p : {"ffn_moe_weights", "ffn_moe_weights_softmax", "ffn_moe_weights_norm", "ffn_moe_weights_scaled"})
      if ((il = layer_of(name, p)) >= 0) break;
  }
  if (il < 0) return ask ? false : true;
  if (ask) return true;
  // Either may be a view into a larger tensor (the top-k ids are the first k of each token's argsort):
  // read each row at its stride. Rows are ne[0] long, over ne[1] and ne[2].
  const int64_t cols = t->ne[0];
  const size_t esz = ggml_type_size(t->type);
  if (is_ids ? t->type != GGML_TYPE_I32 : t->type != GGML_TYPE_F32) die(std::string(name) + ": unexpected type");
  std::vector<uint8_t> raw(static_cast<size_t>(ggml_nelements(t)) * esz);
  size_t at = 0;
  for (int64_t i2 = 0; i2 < t->ne[2]; ++i2)
    for (int64_t i1 = 0; i1 < t->ne[1]; ++i1, at += static_cast<size_t>(cols) * esz)
      ggml_backend_tensor_get(t, raw.data() + at, i2 * t->nb[2] + i1 * t->nb[1], static_cast<size_t>(cols) * esz);
  if (is_ids) {
    std::vector<int32_t> v(raw.size() / sizeof(int32_t));
    std::memcpy(v.data(), raw.data(), raw.size());
    cap->ids[il] = std::move(v);
    cap->k[il] = static_cast<int>(cols);
  } else {
    std::vector<float> v(raw.size() / sizeof(float));
    std::memcpy(v.data(), raw.data(), raw.size());
    cap->weights[il] = std::move(v);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: llama_ref logits|route|greedy -m MODEL --tokens FILE [-o OUT] [-n N] [--override-kv K=T:V]");
  const std::string mode = argv[1];
  std::string model_path, tokens_path, out_path;
  int n_gen = 24, threads = 2;
  std::vector<llama_model_kv_override> overrides;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value");
      return argv[++i];
    };
    if (a == "-m") model_path = next();
    else if (a == "--tokens") tokens_path = next();
    else if (a == "-o") out_path = next();
    else if (a == "-n") n_gen = std::atoi(next().c_str());
    else if (a == "-t") threads = std::atoi(next().c_str());
    else if (a == "--override-kv") overrides.push_back(parse_override(next()));
    else die("unknown argument " + a);
  }
  if (model_path.empty() || tokens_path.empty()) die("-m and --tokens are required");
  if (mode != "greedy" && out_path.empty()) die("-o is required");
  const std::vector<llama_token> tokens = read_tokens(tokens_path);

  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  overrides.push_back(llama_model_kv_override{});  // terminator: key[0] == 0
  if (overrides.size() > 1) mp.kv_overrides = overrides.data();
  llama_model* model = llama_model_load_from_file(model_path.c_str(), mp);
  if (!model) die("cannot load " + model_path);
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

  RouteCapture cap;
  llama_context_params cp = llama_context_default_params();
  const uint32_t n_ctx = static_cast<uint32_t>(tokens.size() + n_gen + 16);
  cp.n_ctx = n_ctx;
  cp.n_batch = n_ctx;
  cp.n_ubatch = n_ctx;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  if (mode == "route") {
    cp.cb_eval = route_cb;
    cp.cb_eval_user_data = &cap;
  }
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) die("cannot create a context");

  const int n = static_cast<int>(tokens.size());
  llama_batch batch = llama_batch_init(n, 0, 1);
  for (int i = 0; i < n; ++i) {
    batch.token[i] = tokens[static_cast<size_t>(i)];
    batch.pos[i] = i;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = mode == "greedy" ? (i == n - 1) : 1;
  }
  batch.n_tokens = n;
  if (llama_decode(ctx, batch) != 0) die("llama_decode failed");

  if (mode == "logits") {
    std::FILE* f = std::fopen(out_path.c_str(), "wb");
    if (!f) die("cannot write " + out_path);
    for (int i = 0; i < n; ++i) std::fwrite(llama_get_logits_ith(ctx, i), sizeof(float), static_cast<size_t>(n_vocab), f);
    std::fclose(f);
  } else if (mode == "route") {
    std::FILE* f = std::fopen(out_path.c_str(), "w");
    if (!f) die("cannot write " + out_path);
    std::fprintf(f, "pos,token,layer,rank,expert,weight\n");
    for (const auto& [il, ids] : cap.ids) {
      const int k = cap.k[il];
      const auto w = cap.weights.find(il);
      for (int t = 0; t < n; ++t)
        for (int j = 0; j < k; ++j) {
          const size_t at = static_cast<size_t>(t) * static_cast<size_t>(k) + static_cast<size_t>(j);
          const float wt = w != cap.weights.end() && at < w->second.size() ? w->second[at] : 0.0f;
          std::fprintf(f, "%d,%d,%d,%d,%d,%.9g\n", t, tokens[static_cast<size_t>(t)], il, j, ids[at], wt);
        }
    }
    std::fclose(f);
  } else if (mode == "greedy") {
    llama_token cur = 0;
    int pos = n;
    for (int g = 0; g < n_gen; ++g) {
      const float* lg = llama_get_logits_ith(ctx, -1);
      int best = 0;
      for (int v = 1; v < n_vocab; ++v)
        if (lg[v] > lg[best]) best = v;
      cur = best;
      std::printf("%d\n", cur);
      llama_batch one = llama_batch_get_one(&cur, 1);
      (void)pos;
      if (llama_decode(ctx, one) != 0) die("llama_decode failed");
      ++pos;
    }
  } else {
    die("unknown mode " + mode);
  }
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}

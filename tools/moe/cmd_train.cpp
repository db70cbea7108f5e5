// `moe train --preset qwen3moe|deepseek --vocab VOCAB.gguf --train FILE... -o MODEL.gguf`: fp32 CPU
// training of a small MoE language model; the result is an ordinary GGUF of the preset's arch.
// Prints a progress line (loss, tokens/s, ETA), validation loss every --eval-every steps, and at the
// end the perplexity of every --test file. --checkpoint/--resume continue a run exactly.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "format/gguf.h"
#include "model/arch.h"
#include "tokenizer/tokenizer.h"
#include "train/trainer.h"

namespace moe::cli {

namespace {

struct TrainArgs {
  std::string preset = "qwen3moe";
  std::string vocab;
  std::vector<std::string> train_files, valid_files, test_files;
  std::string output;
  std::string name;
  train::ShapeOptions shape;
  train::TrainOptions opts;
  int threads = 0;
  int64_t eval_every = 100;
  int64_t eval_windows = 32;
  std::string checkpoint;
  int64_t checkpoint_every = 200;
  bool resume = false;
  std::string log_csv;
  bool f16 = false;
  bool untied = false;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every file's tokens, followed by end-of-text, one after another.
std::vector<int32_t> tokenize_files(const Tokenizer& tok, const std::vector<std::string>& files) {
  std::vector<int32_t> out;
  for (const std::string& f : files) {
    const std::vector<int32_t> ids = tok.encode(read_file(f), false, false);
    out.insert(out.end(), ids.begin(), ids.end());
    if (tok.eos() >= 0) out.push_back(tok.eos());
  }
  return out;
}

std::string hms(double secs) {
  const long s = static_cast<long>(secs + 0.5);
  return s >= 3600 ? fmt::format("{}h{:02}m", s / 3600, (s / 60) % 60) : fmt::format("{}m{:02}s", s / 60, s % 60);
}

int run_train(TrainArgs a) {
  const ArchDescriptor* arch = find_arch(a.preset);
  if (!arch) fail("train: unknown preset '{}'", a.preset);
  auto vocab_file = gguf::File::open(a.vocab);
  auto tok = Tokenizer::from_gguf(*vocab_file);
  a.shape.n_vocab = tok->n_vocab();
  a.shape.preset = a.preset;
  if (a.untied) a.shape.tied_output = false;
  const ModelSpec spec = train::canonical_spec(a.shape, *arch);
  a.opts.optim.total_steps = std::max<int64_t>(a.opts.optim.total_steps, 1);

  ThreadPool pool(resolve_threads(a.threads));
  const auto t_tok = std::chrono::steady_clock::now();
  const std::vector<int32_t> train_stream = tokenize_files(*tok, a.train_files);
  std::vector<std::vector<int32_t>> valid_streams, test_streams;
  for (const auto& f : a.valid_files) valid_streams.push_back(tokenize_files(*tok, {f}));
  for (const auto& f : a.test_files) test_streams.push_back(tokenize_files(*tok, {f}));
  std::fprintf(stderr, "train: %zu training tokens (tokenized in %.1f s), %d threads\n", train_stream.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_tok).count(), pool.size());

  train::Trainer trainer(spec, *arch, a.opts);
  const size_t n_params = trainer.model().layout().total();
  std::fprintf(stderr, "train: %s, %d layers, d=%lld, %zu parameters (%.1f MB as f32)\n", arch->name.c_str(),
               spec.n_layer, static_cast<long long>(spec.n_embd), n_params, n_params * 4.0 / 1e6);
  bool resumed = false;
  if (a.resume && !a.checkpoint.empty() && std::filesystem::exists(a.checkpoint)) {
    trainer.load_checkpoint(a.checkpoint);
    resumed = true;
    std::fprintf(stderr, "train: resumed from %s at step %lld\n", a.checkpoint.c_str(),
                 static_cast<long long>(trainer.step_index()));
  } else {
    trainer.init_params();
  }
  std::FILE* log = nullptr;
  if (!a.log_csv.empty()) {
    log = std::fopen(a.log_csv.c_str(), resumed ? "a" : "w");
    if (!log) fail("{}: cannot open the log file", a.log_csv);
    if (!resumed) std::fprintf(log, "step,lr,loss,ce,balance,zloss,grad_norm,load_cv,valid_ce\n");
  }

  auto validate = [&]() -> double {
    if (valid_streams.empty()) return NAN;
    double sum = 0;
    for (const auto& s : valid_streams) sum += trainer.evaluate(s, a.eval_windows, pool);
    return sum / static_cast<double>(valid_streams.size());
  };

  const int64_t total = a.opts.optim.total_steps;
  const int64_t tokens_per_step = a.opts.batch * a.opts.seq_len;
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t first_step = trainer.step_index();
  double ema_loss = NAN;
  while (trainer.step_index() < total) {
    const train::StepResult r = trainer.step(train_stream, pool);
    const int64_t step = trainer.step_index();
    ema_loss = std::isnan(ema_loss) ? r.loss.ce : 0.95 * ema_loss + 0.05 * r.loss.ce;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double tps = static_cast<double>((step - first_step) * tokens_per_step) / std::max(secs, 1e-9);
    const double eta = secs / static_cast<double>(step - first_step) * static_cast<double>(total - step);
    double valid = NAN;
    const bool eval_now = a.eval_every > 0 && (step % a.eval_every == 0 || step == total);
    if (eval_now) valid = validate();
    if (log)
      std::fprintf(log, "%lld,%.6g,%.6f,%.6f,%.6f,%.6f,%.4f,%.4f,%.6f\n", static_cast<long long>(step), r.lr,
                   r.loss.total(), r.loss.ce, r.loss.balance, r.loss.z, r.grad_norm, r.load_cv, valid);
    const int width = 24;
    const int filled = static_cast<int>(width * step / total);
    std::fprintf(stderr, "\r[%s%s] %lld/%lld loss %.4f lr %.2e cv %.2f %.0f tok/s ETA %s   ",
                 std::string(filled, '=').c_str(), std::string(width - filled, ' ').c_str(),
                 static_cast<long long>(step), static_cast<long long>(total), ema_loss, r.lr, r.load_cv, tps,
                 hms(eta).c_str());
    if (eval_now && !std::isnan(valid))
      std::fprintf(stderr, "\nstep %lld: train ce %.4f, valid ce %.4f (ppl %.2f)\n", static_cast<long long>(step),
                   r.loss.ce, valid, std::exp(valid));
    if (!a.checkpoint.empty() && a.checkpoint_every > 0 && (step % a.checkpoint_every == 0 || step == total))
      trainer.save_checkpoint(a.checkpoint);
  }
  std::fprintf(stderr, "\n");
  if (log) std::fclose(log);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("trained %lld steps (%lld tokens) in %s\n", static_cast<long long>(total - first_step),
              static_cast<long long>((total - first_step) * tokens_per_step), hms(secs).c_str());
  for (size_t i = 0; i < test_streams.size(); ++i) {
    const double ce = trainer.evaluate(test_streams[i], 1 << 30, pool);
    std::printf("test %-40s ce %.4f ppl %.2f (%zu tokens)\n", a.test_files[i].c_str(), ce, std::exp(ce),
                test_streams[i].size());
  }
  if (!a.output.empty()) {
    trainer.export_model(a.output, a.f16 ? DType::F16 : DType::F32, a.vocab, a.name);
    std::printf("wrote %s\n", a.output.c_str());
  }
  return 0;
}

}  // namespace

void register_train(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* sub = app.add_subcommand("train", "Train a small MoE language model on the CPU (writes GGUF)");
  sub->add_option("--preset", a->preset, "qwen3moe (routed experts), qwen3 (dense baseline) or deepseek (dense lead + shared experts)")
      ->capture_default_str()
      ->each([a](const std::string& p) {
        try {
          a->shape = train::preset_shape(p);  // validates the name
        } catch (const Error& e) {
          throw CLI::ValidationError("--preset", e.what());  // a usage error, not a crash
        }
      });
  sub->add_option("--vocab", a->vocab, "vocabulary GGUF (from train-tokenizer)")->required();
  sub->add_option("--train", a->train_files, "training text files")->required();
  sub->add_option("--valid", a->valid_files, "validation text files (mean loss reported)");
  sub->add_option("--test", a->test_files, "test text files (perplexity of each reported at the end)");
  sub->add_option("-o,--output", a->output, "output model GGUF");
  sub->add_option("--name", a->name, "general.name of the output model");
  // Shape (defaults: the preset's).
  sub->add_option("--layers", a->shape.n_layer, "layers");
  sub->add_option("--embd", a->shape.n_embd, "embedding width");
  sub->add_option("--heads", a->shape.n_head, "attention heads");
  sub->add_option("--heads-kv", a->shape.n_head_kv, "key/value heads (GQA)");
  sub->add_option("--head-dim", a->shape.head_dim, "head dimension");
  sub->add_option("--experts", a->shape.n_expert, "routed experts per MoE layer (0 = dense model)");
  sub->add_option("--top-k", a->shape.n_expert_used, "experts per token");
  sub->add_option("--ff-exp", a->shape.n_ff_exp, "expert FFN width");
  sub->add_option("--dense-lead", a->shape.n_dense_lead, "leading dense layers");
  sub->add_option("--ff-dense", a->shape.n_ff_dense, "dense FFN width");
  sub->add_option("--shared", a->shape.n_shared, "shared experts (deepseek)");
  sub->add_option("--ctx", a->shape.n_ctx, "context length recorded in the model");
  sub->add_flag("--untied", a->untied, "separate output matrix (default: tied to the embeddings where allowed)");
  // Optimisation.
  sub->add_option("--steps", a->opts.optim.total_steps, "optimizer steps")->capture_default_str();
  sub->add_option("--batch", a->opts.batch, "sequences per step")->capture_default_str();
  sub->add_option("--seq", a->opts.seq_len, "tokens per sequence")->capture_default_str();
  sub->add_option("--lr", a->opts.optim.lr, "peak learning rate")->capture_default_str();
  sub->add_option("--min-lr-ratio", a->opts.optim.min_lr_ratio, "final lr / peak lr (cosine)")->capture_default_str();
  sub->add_option("--warmup", a->opts.optim.warmup_steps, "linear warmup steps")->capture_default_str();
  sub->add_option("--wd", a->opts.optim.weight_decay, "AdamW weight decay")->capture_default_str();
  sub->add_option("--clip", a->opts.optim.grad_clip, "gradient clipping norm (0 = off)")->capture_default_str();
  sub->add_option("--seed", a->opts.seed, "seed for initialisation and batches")->capture_default_str();
  sub->add_option("-t,--threads", a->threads, "threads (0 = all cores)");
  // Router.
  sub->add_option("--balance-coef", a->opts.router.load_balance_coef, "Switch load-balancing loss coefficient")
      ->capture_default_str();
  sub->add_option("--z-loss-coef", a->opts.router.z_loss_coef, "router z-loss coefficient")->capture_default_str();
  sub->add_option("--bias-rate", a->opts.bias_update_rate,
                  "aux-loss-free balancing: selection-bias update rate gamma (0 = off; saved as exp_probs_b)")
      ->capture_default_str();
  // Bookkeeping.
  sub->add_option("--eval-every", a->eval_every, "validate every N steps (0 = never)")->capture_default_str();
  sub->add_option("--eval-windows", a->eval_windows, "windows per validation file")->capture_default_str();
  sub->add_option("--checkpoint", a->checkpoint, "checkpoint file (GGUF with optimizer state)");
  sub->add_option("--checkpoint-every", a->checkpoint_every, "steps between checkpoints")->capture_default_str();
  sub->add_flag("--resume", a->resume, "continue from --checkpoint when it exists");
  sub->add_option("--log", a->log_csv, "CSV file of per-step losses");
  sub->add_flag("--f16", a->f16, "store matrices as F16 (default F32)");
  cmds.add(sub, [a] { return run_train(*a); });
}

}  // namespace moe::cli

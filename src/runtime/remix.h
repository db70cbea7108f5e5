// C3PO test-time re-mixing, kernel-regression form (techniques.md section 3; no gradients). A reference
// set holds, for texts the model handled well, an embedding (the mean-pooled final hidden state) and the
// gate's score vector at the last position in every MoE layer. For a new input, the nearest references
// by cosine similarity are averaged, weighted by similarity, and the average replaces the router's
// scores in the last N MoE layers (then the usual top-k and renormalization).
//
// The reference file (`moe remix-build`) is a GGUF file (written atomically), docs/routing-lab.md:
//   metadata  moe.remix.version          u32     1
//             moe.remix.model.arch        string  the model's general.architecture
//             moe.remix.model.n_embd      u32
//             moe.remix.model.n_expert    i32[]   experts per layer (0 = dense layer)
//             moe.remix.model.router_fnv  string  FNV-1a of the routers' bytes (another checkpoint: warning)
//             moe.remix.count             u32     references, >= 1
//             moe.remix.snippet_len       u32     tokens per reference text (informational)
//             moe.remix.sources           string[count]  where each reference came from
//   tensors   remix.embedding             F32 [count][n_embd]
//             remix.scores.L              F32 [count][n_expert[L]] for every MoE layer L
// Every count, shape, type and value (finite; scores >= 0) is checked on read; a malformed file is an
// error naming the file and the field.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/forward.h"
#include "model/forward_observer.h"
#include "model/weights.h"
#include "moe/routing_policy.h"

namespace moe {

namespace gguf {
class File;
}

struct RemixReferences {
  std::string arch;
  int64_t n_embd = 0;
  std::vector<int> n_expert;  // per layer, 0 = dense
  std::string router_fnv;
  int snippet_len = 0;
  std::vector<std::string> sources;
  std::vector<float> embeddings;           // [count][n_embd]
  std::vector<std::vector<float>> scores;  // per layer: [count][n_expert] (empty for dense layers)

  int count() const { return static_cast<int>(sources.size()); }
  // The shape fields from a model (arch, n_embd, experts per layer, router hash); no references yet.
  static RemixReferences for_model(const Model& model);
  void add(const std::string& source, const std::vector<float>& embedding,
           const std::vector<std::vector<float>>& layer_scores);
  void write(const std::string& path) const;
  static RemixReferences read(const std::string& path);
  // Validates and reads an opened file (the fuzz target's entry point).
  static RemixReferences parse(const gguf::File& file);
  // Throws unless the references were built for a model of this shape; returns false when its routers
  // differ (another checkpoint of the same shape: usable, with a warning).
  bool check_model(const Model& model, const std::string& path) const;
};

// Records, over the forward calls it observes, the mean of the final hidden state over every token and
// the gate's scores at the last token of the last call, per MoE layer.
class RemixRecorder final : public ForwardObserver {
 public:
  explicit RemixRecorder(const ModelSpec& spec);
  ObserverNeeds needs() const override;
  void on_routing(const MoeLayerRouting& r) override;
  void on_final_hidden(const StepTokens& tokens, const float* hidden, int64_t n_embd) override;
  void reset();
  std::vector<float> embedding() const;  // the mean
  const std::vector<std::vector<float>>& last_scores() const { return last_scores_; }

 private:
  std::vector<double> sum_;
  int64_t n_ = 0;
  std::vector<std::vector<float>> last_scores_;
};

struct RemixNeighbors {
  std::vector<int> ids;          // nearest first
  std::vector<double> cosine;
  std::vector<double> weights;   // similarity weights, summing 1 (max(cos, 0), uniform if none is > 0)
};
RemixNeighbors remix_neighbors(const RemixReferences& refs, const std::vector<float>& embedding, int k);
// The same weights on other references (a control: random neighbours).
RemixNeighbors with_references(const RemixNeighbors& n, const std::vector<int>& ids);

// The re-mixed score vectors for the last `n_layers` MoE layers (the others stay empty).
std::shared_ptr<const RemixScores> remix_scores(const RemixReferences& refs, const RemixNeighbors& n, int n_layers);

}  // namespace moe

namespace moe {

class Session;
class ThreadPool;

// C3PO for a prompt: evaluates it under the session's policy (without re-mixing) while recording its
// embedding, finds the nearest references, then evaluates the prompt's last token again with the
// re-mixed scores in the last `n_layers` MoE layers. The session keeps the re-mixing policy for the
// tokens that follow (each new token is routed as the last position). Returns the logits of the last
// token; `used` (optional) receives the neighbours.
const std::vector<float>& eval_with_remix(Session& session, const std::vector<int32_t>& prompt, ThreadPool& pool,
                                          const RemixReferences& refs, int n_layers, int neighbors,
                                          RemixNeighbors* used = nullptr);

}  // namespace moe

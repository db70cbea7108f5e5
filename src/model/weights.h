// Binds the tensors of a GGUF file to the roles of its arch descriptor, checking every shape and type
// against the spec. Model code sees WeightViews (pointer + type + shape), never the file.
#pragma once
#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/direct_io.h"
#include "format/gguf.h"
#include "kernels/matmul.h"
#include "moe/expert_store.h"
#include "model/arch.h"
#include "model/spec.h"
#include "tensor/dtype.h"

namespace moe {

// A 2-D (or stacked 3-D) matrix in ggml order: `cols` elements per row (contiguous), `rows` rows,
// `n_mat` matrices (experts) one after another.
struct WeightView {
  const uint8_t* data = nullptr;
  DType type = DType::F32;
  int64_t cols = 0;
  int64_t rows = 0;
  int64_t n_mat = 1;
  size_t row_bytes = 0;
  const gguf::TensorInfo* info = nullptr;
  // Per-expert layout (model/expert_split.h): the n_mat experts are separate tensors, each with its own type
  // and bytes, viewed by split[0..n_mat). This view then has no data of its own; type, row_bytes and info are
  // expert 0's. Null for a stacked (or plain) tensor.
  const WeightView* split = nullptr;

  // Bound to a tensor of the file (data may be null for experts served by an ExpertStore).
  explicit operator bool() const { return info != nullptr; }
  // Bytes of one matrix (of expert 0 when split: use matrix(e).matrix_bytes() for another expert).
  size_t matrix_bytes() const { return row_bytes * static_cast<size_t>(rows); }
  const uint8_t* row(int64_t r, int64_t mat = 0) const {
    if (split) return split[mat].row(r);
    return data + static_cast<size_t>(mat) * matrix_bytes() + static_cast<size_t>(r) * row_bytes;
  }
  // One matrix of a stacked tensor (e.g. one expert).
  WeightView matrix(int64_t mat) const {
    if (split) return split[mat];
    WeightView v = *this;
    v.data = data + static_cast<size_t>(mat) * matrix_bytes();
    v.n_mat = 1;
    return v;
  }
  // Bytes of all matrices (the tensor's bytes, or the sum of the split tensors').
  uint64_t total_bytes() const {
    if (!split) return matrix_bytes() * static_cast<uint64_t>(n_mat);
    uint64_t b = 0;
    for (int64_t e = 0; e < n_mat; ++e) b += split[e].matrix_bytes();
    return b;
  }
};

inline kernels::MatrixRef to_matrix(const WeightView& v, int64_t mat = 0) {
  WeightView m = v.matrix(mat);
  return {m.data, m.type, m.rows, m.cols, m.row_bytes};
}

struct LayerWeights {
  std::array<WeightView, static_cast<size_t>(Role::Count)> t{};
  const WeightView& operator[](Role r) const { return t[static_cast<size_t>(r)]; }
};

class Model {
 public:
  // Opens, validates and binds a model. Throws moe::Error naming the file, key or tensor.
  static std::unique_ptr<Model> load(const std::string& path, gguf::DataAccess access = gguf::DataAccess::Mmap);
  // With defer_experts, routed-expert tensors are bound (shape, type, file offset) but their bytes are
  // not read: an offloading ExpertStore loads them on demand.
  static std::unique_ptr<Model> load(const std::string& path, gguf::DataAccess access, bool defer_experts);
  bool experts_deferred() const { return experts_deferred_; }
  // Whether the routed experts are stored one tensor per expert (model/expert_split.h).
  bool experts_split() const { return experts_split_; }
  // For commands that read or rewrite the stacked expert tensors: throws naming the file and `command`.
  void require_stacked_experts(const std::string& command) const;

  // In-memory layouts for the kernels, each the same bytes per unit as the file's, so sizes and plans
  // do not change: Q4_K matrices as Q4_K_R (kernels/q4k_repack.h; call only when
  // quant::q4k_repacked_kernels_available()), Q8_0 matrices with a multiple of 16 rows as Q8_0_P
  // (kernels/q8_0_panels.h; only when quant::q8_0_panel_kernels_available()), except the token
  // embedding, which is read by rows, and a tied output head sharing its bytes.
  struct RepackChoice {
    bool q4k = false;
    bool q8_0_panels = false;
  };
  // Rewrites the chosen matrices with n_threads threads: in place when the model owns the bytes
  // (pread), else into owned memory, releasing the mapped pages. Deferred experts only change type:
  // the expert store repacks each one after reading it. Returns the bytes repacked.
  uint64_t repack(const RepackChoice& choice, int n_threads);

  const ModelSpec& spec() const { return spec_; }
  const ArchDescriptor& arch() const { return *arch_; }
  const gguf::File& file() const { return *file_; }
  const WeightView& global(Role r) const { return globals_[r]; }
  const LayerWeights& layer(int il) const { return layers_[il]; }

  // Bytes per placement, for `moe info` and residency planning.
  struct ByteReport {
    std::array<uint64_t, kPlacementCount> by_placement{};  // indexed by Placement
    uint64_t total = 0;
    uint64_t bytes_per_expert_max = 0;   // largest single expert (gate+up+down) over layers
    uint64_t active_bytes_per_token = 0; // attention + router + k experts + shared + dense + output
    uint64_t unused = 0;                 // tensors in the file that nothing reads (NextN/MTP layers)
  };
  ByteReport byte_report() const;
  // Where the routed experts are (in memory and in the file), for expert stores.
  ExpertLayout expert_layout() const;

 private:
  uint8_t* alloc_owned(uint64_t bytes, const std::string& tensor);  // 64-byte aligned, freed with the model
  // Binds the per-expert tensors of a stacked expert role `name` (dims `want` = [cols, rows, n_expert]).
  void bind_split_experts(const TensorRoleDesc& d, int il, const std::string& name, const std::vector<int64_t>& want,
                          const std::function<const uint8_t*(const gguf::TensorInfo*, const std::string&)>& data);

  std::unique_ptr<gguf::File> file_;
  // Tensor bytes held in our own memory: read with pread when the file is not memory-mapped, or
  // repacked (64-byte aligned per tensor).
  std::vector<AlignedBuffer> owned_;
  const ArchDescriptor* arch_ = nullptr;
  bool experts_deferred_ = false;
  bool experts_split_ = false;
  // Per-expert views of split expert tensors (WeightView::split points into these; never reallocated).
  std::vector<std::unique_ptr<WeightView[]>> split_views_;
  std::vector<int64_t> split_counts_;
  ModelSpec spec_;
  LayerWeights globals_;
  std::vector<LayerWeights> layers_;
};

}  // namespace moe

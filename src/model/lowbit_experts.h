// Low-bit copies of a model's routed experts (precision tiers, techniques.md section 5): a side file
// holding only the expert tensors, with the model's tensor names and shapes, re-quantized from the
// model's own data to one type (e.g. Q2_K). Its metadata identifies the model it was made from, so a
// side file is never used with another model. `moe quantize-experts` writes one; the Engine serves it
// through the expert store (`--lowbit`).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/thread_pool.h"
#include "format/gguf.h"
#include "model/weights.h"
#include "moe/expert_store.h"
#include "tensor/dtype.h"

namespace moe {

// What identifies the base model: arch, layer and expert counts, the model file's size, and an FNV-1a
// hash over every routed-expert tensor's name, type and shape and its first 4 KiB of data (a few small
// reads, so a check costs nothing even when the experts stay on disk).
struct LowBitBase {
  std::string arch;
  int n_layer = 0;
  int n_expert = 0;
  uint64_t file_size = 0;
  uint64_t fingerprint = 0;
  std::string file_name;  // the model's file name, for messages only

  bool same_model(const LowBitBase& o) const {
    return arch == o.arch && n_layer == o.n_layer && n_expert == o.n_expert && file_size == o.file_size &&
           fingerprint == o.fingerprint;
  }
  std::string describe() const;
};

LowBitBase low_bit_base(const Model& model);

// Throws, naming the tensor, unless every routed-expert tensor of `model` can be stored as `type`
// (a weight type with a quantizer, rows a multiple of its block size).
void check_low_bit_type(const Model& model, DType type);

// Progress of write_low_bit_experts: tensors finished and rows quantized so far, out of the totals.
using LowBitProgress = std::function<void(int tensors_done, int tensors_total, int64_t rows_done, int64_t rows_total)>;

// Writes the side file atomically: every routed-expert tensor of `model`, dequantized row by row from
// the model file (read with pread, a bounded chunk per thread) and quantized to `type` on `pool`'s
// threads. At most one output tensor is held in memory. The bytes do not depend on the thread count.
void write_low_bit_experts(const Model& model, DType type, const std::string& out_path, ThreadPool& pool,
                           const LowBitProgress& progress = nullptr);

// An opened side file, checked against its model.
struct LowBitExperts {
  std::unique_ptr<gguf::File> file;
  ExpertLayout layout;        // shapes and offsets in the side file; data pointers when mapped
  DType type = DType::Q2_K;
  uint64_t bytes = 0;         // all expert tensors
};

// Throws naming the side file (and the model) when it is missing, not a side file, made from another
// model, or lacks / misshapes an expert tensor. With Mmap the layout points into the mapping.
LowBitExperts open_low_bit_experts(const std::string& path, const Model& model, gguf::DataAccess access);

// Bytes of expert data in a side file (header only; no checks against a model).
uint64_t low_bit_file_expert_bytes(const std::string& path);

}  // namespace moe

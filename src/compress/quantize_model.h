// Whole-model quantization (`moe quantize`): every tensor of a GGUF re-typed by the mix rules of
// compress/quant_mix.h, streamed one tensor at a time (read with pread, converted row by row on the
// thread pool, written through gguf::Writer to a temporary file renamed at the end). The tensor data is
// byte-identical to llama-quantize's for the same input, file type and overrides: both dequantize to fp32
// and run the reference (imatrix-free) quantizers, whose bytes do not depend on how rows are split.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "compress/quant_mix.h"
#include "format/gguf.h"
#include "model/arch.h"
#include "model/spec.h"

namespace moe::compress {

// Every tensor of `f` with its role and layer from the arch's role table (tensors the table does not
// name get no role and are copied as they are).
std::vector<MixTensor> mix_tensors(const gguf::File& f, const ArchDescriptor& arch, const ModelSpec& spec);
MixModel mix_model(const ModelSpec& spec);

struct QuantizePlan {
  std::vector<MixTensor> tensors;          // llama.cpp's order, which is also the output order
  std::vector<const gguf::TensorInfo*> src;
  std::vector<DType> types;                // output type of each tensor
  std::vector<uint64_t> src_offset;        // where each tensor's bytes start in its source (empty: all at 0)
  bool split_experts = false;              // the per-expert layout (model/expert_split.h)
  int n_fallback = 0;
  uint64_t bytes_in = 0, bytes_out = 0;    // tensor data
  int64_t n_elements = 0;
};

// Plans the output types of every tensor of an opened model. Throws naming the tensor when a quantized
// input would be re-quantized and allow_requantize is false (as llama-quantize does).
QuantizePlan plan_quantize(const gguf::File& f, const MixOptions& o, bool allow_requantize);

// The per-expert layout: replaces each stacked tensor plan.tensors[tensors[j]] ([cols, rows, n_expert]) by one
// [cols, rows] tensor per expert, named by split_expert_name, of type types[j][expert], read from its slice of
// the stacked source tensor; marks the plan so write_quantized records moe.expert_layout. plan.bytes_out is the
// caller's to keep right.
void split_experts(QuantizePlan& plan, const std::vector<size_t>& tensors, const std::vector<std::vector<DType>>& types);

// Progress: tensors finished and output bytes written so far, out of the totals.
using QuantizeProgress = std::function<void(int tensors_done, int tensors_total, uint64_t bytes_done,
                                            uint64_t bytes_total)>;

// Writes `out` atomically: the source's metadata (general.file_type set to the mix's ftype and
// general.quantization_version to 2, as llama-quantize does; moe.expert_layout for a split plan) and every
// tensor in plan order.
// `extra_metadata` may add or replace keys before writing.
void write_quantized(const gguf::File& src, const QuantizePlan& plan, int ftype, const std::string& out,
                     ThreadPool& pool, const QuantizeProgress& progress = nullptr,
                     const std::function<void(gguf::Writer&)>& extra_metadata = nullptr);

// Converts `rows` rows of `cols` elements from one type to another (dequantize to fp32, then the reference
// quantizer), on the pool. Same bytes for any thread count. The building block of every writer here.
void convert_rows(const uint8_t* src, DType from, uint8_t* dst, DType to, int64_t cols, int64_t rows,
                  ThreadPool* pool);

}  // namespace moe::compress

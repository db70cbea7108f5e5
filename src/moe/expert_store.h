// ExpertStore: owns where experts live (design.md seam 3). The executor acquires an expert's
// gate/up/down matrices for a layer, computes, and releases it. This resident store serves the
// mmap'd model directly; budgeted/offloaded stores implement the same interface and must give
// bit-identical results.
#pragma once
#include <cstdint>

#include "kernels/matmul.h"

namespace moe {

class Model;

struct ExpertWeights {
  kernels::MatrixRef gate, up, down;
};

class ExpertStore {
 public:
  virtual ~ExpertStore() = default;
  virtual ExpertWeights acquire(int layer, int expert) = 0;
  virtual void release(int layer, int expert) = 0;
};

class ResidentExpertStore final : public ExpertStore {
 public:
  explicit ResidentExpertStore(const Model& model) : model_(model) {}
  ExpertWeights acquire(int layer, int expert) override;
  void release(int, int) override {}

 private:
  const Model& model_;
};

}  // namespace moe

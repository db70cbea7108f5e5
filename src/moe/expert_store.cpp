#include "moe/expert_store.h"

#include "base/error.h"
#include "model/weights.h"

namespace moe {

ExpertWeights ResidentExpertStore::acquire(int layer, int expert) {
  const LayerWeights& lw = model_.layer(layer);
  const WeightView& up = lw[Role::ExpUp];
  if (!up || expert < 0 || expert >= up.n_mat) fail("expert store: no expert {} in layer {}", expert, layer);
  return {to_matrix(lw[Role::ExpGate], expert), to_matrix(up, expert), to_matrix(lw[Role::ExpDown], expert)};
}

}  // namespace moe

#include "model/expert_split.h"

namespace moe {

std::string split_expert_name(const std::string& stacked_name, int expert) {
  static const std::string kSuffix = ".weight";
  const std::string e = "." + std::to_string(expert);
  if (stacked_name.size() > kSuffix.size() &&
      stacked_name.compare(stacked_name.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0)
    return stacked_name.substr(0, stacked_name.size() - kSuffix.size()) + e + kSuffix;
  return stacked_name + e;
}

}  // namespace moe

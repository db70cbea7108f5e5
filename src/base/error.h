// Errors carry context (file, tensor, key, expected vs found). The library throws moe::Error and never
// exits or prints; only the CLI decides what to do with a failure.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace moe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] inline void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace moe

// Stop strings over streamed text (shared by `moe run`, `moe chat` and the server). Stop strings are matched
// on the decoded text and are never printed: output that could still turn out to be the start of a stop
// string is held back until it cannot.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace moe {

// Incremental stop-string search over streamed text.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Adds text; returns what is safe to print now. After a stop string was seen, stopped() is true,
  // the returned text ends just before it, and later calls return nothing.
  std::string push(std::string_view text);
  // Whatever is still held back (call once generation ended without a stop string).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace moe

// Routing traces (techniques.md section 4; docs/trace-format.md is the byte-level specification):
// which experts every token used at every MoE layer, with their weights, streamed to disk one forward
// step at a time. A trace starts with a JSON header naming the model (arch, layers, experts, k, a
// fingerprint of the router weights), the routing settings in force and the inputs; then come records:
// STEP (one forward call: its tokens and, per token and MoE layer, the selected experts in selection
// order with their weights; optionally the router's full scores, per-expert output statistics and the
// cross-layer gate predictor's ranking), INPT (an input declared after the header) and, last, ENDT.
//
// TraceWriter writes a file atomically (a temporary file renamed by finish()); TraceReader reads one
// record at a time, so analyses of long traces need not hold them in memory. Every count, id and
// length is validated: a malformed or truncated file gets an Error naming the file, the record and the
// field.
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe {

inline constexpr char kTraceMagic[8] = {'M', 'O', 'E', 'T', 'R', 'A', 'C', 'E'};
inline constexpr uint32_t kTraceVersion = 1;

// Optional per-token, per-layer fields of STEP records.
struct TraceFields {
  bool probs = false;         // the gate's scores over all of the layer's experts (f32 each)
  bool expert_stats = false;  // per selected expert: ||E_e(x)||_2 and max |E_e(x)| of its unweighted output
  int lookahead = 0;          // the next MoE layer's experts as the gate predictor ranks them (top R; 0 = none)
  uint32_t bits() const { return (probs ? 1u : 0u) | (expert_stats ? 2u : 0u) | (lookahead > 0 ? 4u : 0u); }
};

struct TraceInput {
  int id = 0;
  std::string file;   // where the tokens came from ("" for none)
  std::string label;  // what the analysis groups by (a domain, a request, a turn)
};

// What the header says. `json` holds the whole header (extra keys are kept and ignored).
struct TraceHeader {
  nlohmann::ordered_json json;
  std::string arch, model_file, model_name;
  int n_layer = 0;                 // blocks in the model
  int64_t n_vocab = 0;
  std::vector<int> moe_layers;     // block indices (as in GGUF tensor names) of the MoE layers, ascending
  std::vector<int> n_expert;       // per MoE layer (same order)
  std::vector<int> n_expert_used;  // per MoE layer: the model's k
  uint64_t router_fingerprint = 0;
  TraceFields fields;
  std::vector<TraceInput> inputs;  // from the header; INPT records append more

  int n_moe() const { return static_cast<int>(moe_layers.size()); }
  // Index into moe_layers of a block index, or -1.
  int moe_index(int block) const;
  // The header JSON for these fields (plus `extra` keys merged in): what TraceWriter writes.
  nlohmann::ordered_json to_json() const;
  // Parses and validates a header; errors name `path` and the key.
  static TraceHeader from_json(const nlohmann::ordered_json& j, const std::string& path);
};

// One token of a step.
struct TraceToken {
  int32_t id = 0;        // token id
  int32_t pos = 0;       // position in its sequence
  int32_t seq = 0;       // sequence id
  uint16_t input = 0;    // TraceInput id
  uint8_t flags = 0;     // kGenerated: sampled by the model (else it came from an input)
  static constexpr uint8_t kGenerated = 1;
};

// One STEP record, decoded: tokens, and per (token, MoE layer) its selected experts. The selections of
// token t at MoE layer index m are sel[at(t, m)] .. sel[at(t, m + 1) - 1] in selection order (rank 0 first).
struct TraceStep {
  std::vector<TraceToken> tokens;
  std::vector<uint32_t> offsets;      // [n_tokens * n_moe + 1]
  std::vector<int32_t> experts;       // expert id per selection
  std::vector<float> weights;         // routing weight per selection
  std::vector<float> out_norm;        // per selection, with expert_stats (NaN where the expert did not run)
  std::vector<float> out_max;         // per selection, with expert_stats
  std::vector<float> probs;           // with probs: per (token, MoE layer) n_expert floats, token-major
  std::vector<uint32_t> probs_offsets;  // [n_tokens * n_moe + 1] into probs
  std::vector<int32_t> lookahead;       // with lookahead: ranked next-layer experts
  std::vector<uint32_t> lookahead_offsets;  // [n_tokens * n_moe + 1] into lookahead (empty for the last MoE layer)
  int n_moe = 0;

  size_t n_tokens() const { return tokens.size(); }
  size_t at(size_t t, int m) const { return t * static_cast<size_t>(n_moe) + static_cast<size_t>(m); }
  uint32_t begin(size_t t, int m) const { return offsets[at(t, m)]; }
  uint32_t end(size_t t, int m) const { return offsets[at(t, m) + 1]; }
  void clear(int n_moe_layers);
};

// Streams a trace to `path` (through path + ".tmp", renamed by finish()). Not thread-safe: one writer
// per recorder, called from the thread running the forward pass.
class TraceWriter {
 public:
  TraceWriter(const std::string& path, const TraceHeader& header);
  ~TraceWriter();  // without finish(): the temporary file is removed and `path` is not written
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  const TraceHeader& header() const { return header_; }
  // Declares an input after the header (an INPT record); returns its id.
  int add_input(const std::string& file, const std::string& label);
  // Writes one STEP record. Checks it against the header (layers, expert ids, field presence).
  void write_step(const TraceStep& step);
  // Writes the ENDT record, flushes and renames the file into place.
  void finish();
  uint64_t n_steps() const { return n_steps_; }
  uint64_t n_tokens() const { return n_tokens_; }
  const std::string& path() const { return path_; }

 private:
  void write_record(const char tag[4], const std::string& payload);
  std::string path_, tmp_path_;
  std::FILE* f_ = nullptr;
  TraceHeader header_;
  uint64_t n_steps_ = 0, n_tokens_ = 0;
  std::string buf_;
};

// Reads a trace record by record.
class TraceReader {
 public:
  explicit TraceReader(const std::string& path);
  ~TraceReader();
  TraceReader(const TraceReader&) = delete;
  TraceReader& operator=(const TraceReader&) = delete;

  const TraceHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  // The next STEP (INPT records on the way are added to header().inputs). False after the ENDT record,
  // whose counts are checked; a file that ends before it is an error ("truncated").
  bool next(TraceStep& step);
  uint64_t steps_read() const { return n_steps_; }
  uint64_t tokens_read() const { return n_tokens_; }

  // Parses a whole trace held in memory (for the fuzzer and tests): header and every record, handing
  // each step (with the header as read so far) to on_step when given.
  static void parse_all(const uint8_t* data, size_t size, const std::string& name,
                        const std::function<void(const TraceHeader&, const TraceStep&)>& on_step = {});

 private:
  TraceReader() = default;
  bool read_exact(void* dst, size_t n);
  void decode_step(const std::string& payload, TraceStep& step);
  std::string path_;
  std::FILE* f_ = nullptr;
  const uint8_t* mem_ = nullptr;  // parse_all: the bytes, instead of f_
  size_t mem_size_ = 0, mem_pos_ = 0;
  TraceHeader header_;
  uint64_t n_steps_ = 0, n_tokens_ = 0, offset_ = 0;
  bool done_ = false;
  std::string payload_;
  void open_common();
};

}  // namespace moe

// Text forms of a trace: CSV (one row per selected expert, the form external tools read), JSON Lines
// (one object per token) and a short summary. All stream: one step in memory at a time.
#pragma once
#include <cstdio>
#include <string>

#include "analysis/trace_format.h"

namespace moe {

// Header line exactly `seq,pos,token,layer,rank,expert,weight`; layer is the block index (as in GGUF
// tensor names), rank 0 is the first selected expert, weight has 9 significant digits.
void dump_trace_csv(TraceReader& reader, std::FILE* out);
// One JSON object per token: step, seq, pos, token, input, generated, and per MoE layer its experts and
// weights (and the recorded optional fields).
void dump_trace_jsonl(TraceReader& reader, std::FILE* out);
// The header (pretty JSON), then counts: steps, tokens, sequences, tokens per input.
void dump_trace_summary(TraceReader& reader, std::FILE* out);

}  // namespace moe

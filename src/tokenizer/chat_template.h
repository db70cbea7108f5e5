// Chat prompt formatting for the template families we recognise. Like llama.cpp's built-in
// templates this is recognition, not a Jinja engine: detect_chat_template() looks for telltale
// substrings of tokenizer.chat_template (or accepts a family name such as "chatml"), and
// apply_chat_template() renders the prompt the way llama.cpp's llm_chat_apply_template does for
// that family.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace moe {

enum class ChatTemplate {
  None,  // unknown / unsupported: the caller should fall back to plain completion
  ChatML,
  Llama2,
  Llama2Sys,
  Llama2SysBos,
  Llama2SysStrip,
  MistralV1,
  MistralV3,
  MistralV3Tekken,
  MistralV7,
  MistralV7Tekken,
  Phi3,
  Falcon3,
  Zephyr,
  GlmEdge,  // "<|user|>\n..." without end markers (what OLMoE/Tulu-style templates detect as)
  Gemma,
  DeepSeek,   // deepseek-coder instruct ("### Instruction:")
  DeepSeek2,  // "User: ...\n\nAssistant: "
  DeepSeek3,  // <｜User｜> / <｜Assistant｜>
  CommandR,
  Llama3,
  Granite,    // granite 3.x
  Granite4,   // granite 4.0 / 4.1
  ChatGlm4,   // GLM-4 / GLM-4.5 / 4.6 / 4.7: "[gMASK]<sop><|role|>\n..."
  OpenAiMoe,  // gpt-oss (harmony): "<|start|>role<|message|>...<|end|>"
  KimiK2,     // "<|im_user|>user<|im_middle|>...<|im_end|>"
  Bailing,       // Ling / Ring: "<role>HUMAN</role>..."
  BailingThink,  // the same, the generation prompt opening <think>
  Bailing2,      // Ling 2.0 / 3.0: "<role>HUMAN</role>...<|role_end|>"
  SeedOss,       // "<seed:bos>role\n...<seed:eos>"
  SolarOpen,     // "<|begin|>role<|content|>...<|end|>"
  RwkvWorld,     // "User: ...\n\nAssistant:"
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

ChatTemplate detect_chat_template(std::string_view tmpl);
// Short family name ("chatml", "mistral-v7", ...; "none" for None).
const char* chat_template_name(ChatTemplate t);

// Renders the conversation. For ChatTemplate::None returns the contents joined by newlines.
// Families whose llama.cpp formatting has no generation prompt (the [INST] ones) ignore
// add_generation_prompt.
std::string apply_chat_template(ChatTemplate t, const std::vector<ChatMessage>& msgs, bool add_generation_prompt);

}  // namespace moe

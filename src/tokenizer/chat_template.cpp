#include "tokenizer/chat_template.h"

#include <cctype>
#include <utility>

namespace moe {

namespace {

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

const std::pair<const char*, ChatTemplate> kNames[] = {
    {"chatml", ChatTemplate::ChatML},
    {"llama2", ChatTemplate::Llama2},
    {"llama2-sys", ChatTemplate::Llama2Sys},
    {"llama2-sys-bos", ChatTemplate::Llama2SysBos},
    {"llama2-sys-strip", ChatTemplate::Llama2SysStrip},
    {"mistral-v1", ChatTemplate::MistralV1},
    {"mistral-v3", ChatTemplate::MistralV3},
    {"mistral-v3-tekken", ChatTemplate::MistralV3Tekken},
    {"mistral-v7", ChatTemplate::MistralV7},
    {"mistral-v7-tekken", ChatTemplate::MistralV7Tekken},
    {"phi3", ChatTemplate::Phi3},
    {"falcon3", ChatTemplate::Falcon3},
    {"zephyr", ChatTemplate::Zephyr},
    {"glmedge", ChatTemplate::GlmEdge},
    {"gemma", ChatTemplate::Gemma},
    {"deepseek", ChatTemplate::DeepSeek},
    {"deepseek2", ChatTemplate::DeepSeek2},
    {"deepseek3", ChatTemplate::DeepSeek3},
    {"command-r", ChatTemplate::CommandR},
    {"llama3", ChatTemplate::Llama3},
    {"granite", ChatTemplate::Granite},
    {"granite-4.0", ChatTemplate::Granite4},
    {"chatglm4", ChatTemplate::ChatGlm4},
    {"gpt-oss", ChatTemplate::OpenAiMoe},
    {"kimi-k2", ChatTemplate::KimiK2},
    {"bailing", ChatTemplate::Bailing},
    {"bailing-think", ChatTemplate::BailingThink},
    {"bailing2", ChatTemplate::Bailing2},
    {"seed_oss", ChatTemplate::SeedOss},
    {"solar-open", ChatTemplate::SolarOpen},
    {"rwkv-world", ChatTemplate::RwkvWorld},
};

// DeepSeek's full-width bar markers.
#define DS_USER "<\xEF\xBD\x9CUser\xEF\xBD\x9C>"
#define DS_ASSISTANT "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>"
#define DS_EOS "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
// Hunyuan's markers (only to tell its templates apart).
#define HY_ASSISTANT "<\xEF\xBD\x9Chy_Assistant\xEF\xBD\x9C>"
#define HY_BOS "<\xEF\xBD\x9Chy_begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
#define HY_PLACEHOLDER3 "<\xEF\xBD\x9Chy_place\xE2\x96\x81holder\xE2\x96\x81no\xE2\x96\x81" "3\xEF\xBD\x9C>"

}  // namespace

const char* chat_template_name(ChatTemplate t) {
  for (const auto& [name, value] : kNames)
    if (value == t) return name;
  return "none";
}

ChatTemplate detect_chat_template(std::string_view tmpl) {
  for (const auto& [name, value] : kNames)
    if (tmpl == name) return value;
  auto has = [&](const char* s) { return tmpl.find(s) != std::string_view::npos; };

  // The order of these checks matters: it mirrors the reference heuristics, including the
  // families we do not render (they return None rather than falling through to a wrong match).
  if (has("<|im_start|>")) {
    if (has("<|im_sep|>") || has("<end_of_utterance>")) return ChatTemplate::None;  // phi-4, smolvlm
    return ChatTemplate::ChatML;
  }
  if (tmpl.substr(0, 7) == "mistral" || has("[INST]")) {
    if (has("[SYSTEM_PROMPT]")) return ChatTemplate::MistralV7;
    if (has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]")) {
      if (has(" [INST]")) return ChatTemplate::MistralV1;
      if (has("\"[INST]\"")) return ChatTemplate::MistralV3Tekken;
      return ChatTemplate::MistralV3;
    }
    if (has("content.strip()")) return ChatTemplate::Llama2SysStrip;
    if (has("bos_token + '[INST]")) return ChatTemplate::Llama2SysBos;
    if (has("<<SYS>>")) return ChatTemplate::Llama2Sys;
    return ChatTemplate::Llama2;
  }
  if (has("<|assistant|>") && has("<|end|>")) return ChatTemplate::Phi3;
  if (has("[gMASK]<sop>")) return ChatTemplate::ChatGlm4;  // GLM-4, GLM-4.5 ... 4.7
  if (has("<|assistant|>") && has("<|user|>")) {
    if (has("<|tool_declare|>")) return ChatTemplate::None;  // exaone-moe
    return has("</s>") ? ChatTemplate::Falcon3 : ChatTemplate::GlmEdge;
  }
  if (has("<|{{ item['role'] }}|>") && has("<|begin_of_image|>")) return ChatTemplate::GlmEdge;
  if (has("<|user|>") && has("<|endoftext|>")) return ChatTemplate::Zephyr;
  if (has("bos_token + message['role']")) return ChatTemplate::None;  // monarch
  if (has("<start_of_turn>")) return ChatTemplate::Gemma;
  if (has("'\\n\\nAssistant: ' + eos_token")) return ChatTemplate::None;  // orion
  if (has("GPT4 Correct ")) return ChatTemplate::None;                    // openchat
  if (has("USER: ") && has("ASSISTANT: ")) return ChatTemplate::None;     // vicuna
  if (has("### Instruction:") && has("<|EOT|>")) return ChatTemplate::DeepSeek;
  if (has("<|START_OF_TURN_TOKEN|>") && has("<|USER_TOKEN|>")) return ChatTemplate::CommandR;
  if (has("<|start_header_id|>") && has("<|end_header_id|>")) return ChatTemplate::Llama3;
  if (has("[gMASK]sop")) return ChatTemplate::None;                            // chatglm3
  if (has("<\xE7\x94\xA8\xE6\x88\xB7>")) return ChatTemplate::None;          // minicpm "<用户>"
  if (has("'Assistant: ' + message['content'] + eos_token")) return ChatTemplate::DeepSeek2;
  if (has(DS_ASSISTANT) && has(DS_USER) && has(DS_EOS)) return ChatTemplate::DeepSeek3;
  if (has("[|system|]") && has("[|assistant|]") && has("[|endofturn|]")) return ChatTemplate::None;  // exaone
  if (has("rwkv-world") || has("{{- 'User: ' + message['content']|trim + '\\n\\n' -}}")) return ChatTemplate::RwkvWorld;
  if (has("<|start_of_role|>")) {
    if (has("<tool_call>") || has("<tools>")) return ChatTemplate::Granite4;
    return ChatTemplate::Granite;
  }
  if (has("message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]"))
    return ChatTemplate::None;                                                     // gigachat
  if (has("<|role_start|>")) return ChatTemplate::None;                            // megrez
  if (has(" \xD0\x90\xD1\x81\xD1\x81\xD0\xB8\xD1\x81\xD1\x82\xD0\xB5\xD0\xBD\xD1\x82:"))  // yandex " Ассистент:"
    return ChatTemplate::None;
  if (has("<role>ASSISTANT</role>") && has("'HUMAN'")) return ChatTemplate::Bailing;
  if (has("<role>ASSISTANT</role>") && has("\"HUMAN\"") && has("<think>")) return ChatTemplate::BailingThink;
  if (has("<role>ASSISTANT</role>") && has("<role>HUMAN</role>") && has("<|role_end|>")) return ChatTemplate::Bailing2;
  if (has("<|header_start|>") && has("<|header_end|>")) return ChatTemplate::None;  // llama4
  if (has("<|endofuserprompt|>")) return ChatTemplate::None;                       // dots1
  if (has("<|extra_0|>") && has("<|extra_4|>")) return ChatTemplate::None;          // hunyuan-moe
  if (has("<|start|>") && has("<|channel|>")) return ChatTemplate::OpenAiMoe;      // gpt-oss (harmony)
  if (has(HY_ASSISTANT) && (has(HY_BOS) || has(HY_PLACEHOLDER3))) return ChatTemplate::None;  // hunyuan-vl / -dense
  if (has("<|im_assistant|>assistant<|im_middle|>")) return ChatTemplate::KimiK2;
  if (has("<seed:bos>")) return ChatTemplate::SeedOss;
  if (has("'Assistant: '  + message['content'] + '<|separator|>")) return ChatTemplate::None;  // grok-2
  if (has("[unused9]\xE7\xB3\xBB\xE7\xBB\x9F\xEF\xBC\x9A[unused10]")) return ChatTemplate::None;      // pangu "系统："
  if (has("<|begin|>") && has("<|end|>") && has("<|content|>")) return ChatTemplate::SolarOpen;
  return ChatTemplate::None;
}

std::string apply_chat_template(ChatTemplate t, const std::vector<ChatMessage>& msgs, bool add_gen) {
  std::string s;
  switch (t) {
    case ChatTemplate::None:
      for (size_t i = 0; i < msgs.size(); ++i) {
        if (i) s += '\n';
        s += msgs[i].content;
      }
      break;

    case ChatTemplate::ChatML:
      for (const auto& m : msgs) s += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      if (add_gen) s += "<|im_start|>assistant\n";
      break;

    case ChatTemplate::MistralV7:
    case ChatTemplate::MistralV7Tekken: {
      const std::string sp = t == ChatTemplate::MistralV7 ? " " : "";
      for (const auto& m : msgs) {
        if (m.role == "system") {
          s += "[SYSTEM_PROMPT]" + sp + m.content + "[/SYSTEM_PROMPT]";
        } else if (m.role == "user") {
          s += "[INST]" + sp + m.content + "[/INST]";
        } else {
          s += sp + m.content + "</s>";
        }
      }
      break;
    }

    case ChatTemplate::MistralV1:
    case ChatTemplate::MistralV3:
    case ChatTemplate::MistralV3Tekken: {
      const std::string lead = t == ChatTemplate::MistralV1 ? " " : "";
      const std::string trail = t == ChatTemplate::MistralV3Tekken ? "" : " ";
      bool in_turn = false;
      for (const auto& m : msgs) {
        if (!in_turn) {
          s += lead + "[INST]" + trail;
          in_turn = true;
        }
        if (m.role == "system") {
          s += m.content + "\n\n";
        } else if (m.role == "user") {
          s += m.content + lead + "[/INST]";
        } else {
          s += trail + (t == ChatTemplate::MistralV3 ? trim(m.content) : m.content) + "</s>";
          in_turn = false;
        }
      }
      break;
    }

    case ChatTemplate::Llama2:
    case ChatTemplate::Llama2Sys:
    case ChatTemplate::Llama2SysBos:
    case ChatTemplate::Llama2SysStrip: {
      const bool sys = t != ChatTemplate::Llama2;
      bool in_turn = true;  // the opening [INST] is written up front, without BOS
      s += "[INST] ";
      for (const auto& m : msgs) {
        const std::string content = t == ChatTemplate::Llama2SysStrip ? trim(m.content) : m.content;
        if (!in_turn) {
          in_turn = true;
          s += t == ChatTemplate::Llama2SysBos ? "<s>[INST] " : "[INST] ";
        }
        if (m.role == "system") {
          s += sys ? "<<SYS>>\n" + content + "\n<</SYS>>\n\n" : content + "\n";
        } else if (m.role == "user") {
          s += content + " [/INST]";
        } else {
          s += content + "</s>";
          in_turn = false;
        }
      }
      break;
    }

    case ChatTemplate::Phi3:
      for (const auto& m : msgs) s += "<|" + m.role + "|>\n" + m.content + "<|end|>\n";
      if (add_gen) s += "<|assistant|>\n";
      break;

    case ChatTemplate::Falcon3:
      for (const auto& m : msgs) s += "<|" + m.role + "|>\n" + m.content + "\n";
      if (add_gen) s += "<|assistant|>\n";
      break;

    case ChatTemplate::Zephyr:
      for (const auto& m : msgs) s += "<|" + m.role + "|>\n" + m.content + "<|endoftext|>\n";
      if (add_gen) s += "<|assistant|>\n";
      break;

    case ChatTemplate::GlmEdge:
      for (const auto& m : msgs) s += "<|" + m.role + "|>\n" + m.content;
      if (add_gen) s += "<|assistant|>";
      break;

    case ChatTemplate::Gemma: {
      std::string system;
      for (const auto& m : msgs) {
        if (m.role == "system") {
          system += trim(m.content);
          continue;
        }
        const std::string role = m.role == "assistant" ? "model" : m.role;
        s += "<start_of_turn>" + role + "\n";
        if (!system.empty() && role != "model") {
          s += system + "\n\n";
          system.clear();
        }
        s += trim(m.content) + "<end_of_turn>\n";
      }
      if (add_gen) s += "<start_of_turn>model\n";
      break;
    }

    case ChatTemplate::DeepSeek:
      for (const auto& m : msgs) {
        if (m.role == "system") {
          s += m.content;
        } else if (m.role == "user") {
          s += "### Instruction:\n" + m.content + "\n";
        } else if (m.role == "assistant") {
          s += "### Response:\n" + m.content + "\n<|EOT|>\n";
        }
      }
      if (add_gen) s += "### Response:\n";
      break;

    case ChatTemplate::DeepSeek2:
      for (const auto& m : msgs) {
        if (m.role == "system") {
          s += m.content + "\n\n";
        } else if (m.role == "user") {
          s += "User: " + m.content + "\n\n";
        } else if (m.role == "assistant") {
          s += "Assistant: " + m.content + DS_EOS;
        }
      }
      if (add_gen) s += "Assistant:";
      break;

    case ChatTemplate::DeepSeek3:
      for (const auto& m : msgs) {
        if (m.role == "system") {
          s += m.content + "\n\n";
        } else if (m.role == "user") {
          s += DS_USER + m.content;
        } else if (m.role == "assistant") {
          s += DS_ASSISTANT + m.content + DS_EOS;
        }
      }
      if (add_gen) s += DS_ASSISTANT;
      break;

    case ChatTemplate::CommandR:
      for (const auto& m : msgs) {
        const char* tag = m.role == "system" ? "<|SYSTEM_TOKEN|>"
                          : m.role == "user" ? "<|USER_TOKEN|>"
                          : m.role == "assistant" ? "<|CHATBOT_TOKEN|>"
                                                  : nullptr;
        if (tag) s += std::string("<|START_OF_TURN_TOKEN|>") + tag + trim(m.content) + "<|END_OF_TURN_TOKEN|>";
      }
      if (add_gen) s += "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>";
      break;

    case ChatTemplate::Llama3:
      for (const auto& m : msgs) {
        s += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + trim(m.content) + "<|eot_id|>";
      }
      if (add_gen) s += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;

    case ChatTemplate::ChatGlm4:
      s += "[gMASK]<sop>";
      for (const auto& m : msgs) s += "<|" + m.role + "|>\n" + m.content;
      if (add_gen) s += "<|assistant|>\n";
      break;

    case ChatTemplate::OpenAiMoe:
      // Harmony as llama.cpp's built-in renders it: a finished assistant turn ends in <|return|>, and the
      // generation prompt leaves the channel for the model to choose.
      for (const auto& m : msgs)
        s += "<|start|>" + m.role + "<|message|>" + m.content + (m.role == "assistant" ? "<|return|>" : "<|end|>");
      if (add_gen) s += "<|start|>assistant";
      break;

    case ChatTemplate::KimiK2:
      for (const auto& m : msgs) {
        if (m.role == "system") {
          s += "<|im_system|>system<|im_middle|>";
        } else if (m.role == "user") {
          s += "<|im_user|>user<|im_middle|>";
        } else if (m.role == "assistant") {
          s += "<|im_assistant|>assistant<|im_middle|>";
        } else if (m.role == "tool") {
          s += "<|im_system|>tool<|im_middle|>";
        }
        s += m.content + "<|im_end|>";
      }
      if (add_gen) s += "<|im_assistant|>assistant<|im_middle|>";
      break;

    case ChatTemplate::Bailing:
    case ChatTemplate::BailingThink:
    case ChatTemplate::Bailing2: {
      const bool v2 = t == ChatTemplate::Bailing2;
      if (v2 && (msgs.empty() || msgs[0].role != "system")) s += "<role>SYSTEM</role>detailed thinking off<|role_end|>";
      for (const auto& m : msgs) {
        std::string role = m.role == "user" ? "HUMAN" : m.role;
        for (char& c : role) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        s += "<role>" + role + "</role>" + m.content + (v2 ? "<|role_end|>" : "");
      }
      if (add_gen) s += t == ChatTemplate::BailingThink ? "<role>ASSISTANT</role><think>" : "<role>ASSISTANT</role>";
      break;
    }

    case ChatTemplate::SeedOss:
      for (const auto& m : msgs)
        s += "<seed:bos>" + m.role + "\n" + (m.role == "assistant" ? trim(m.content) : m.content) + "<seed:eos>";
      if (add_gen) s += "<seed:bos>assistant\n";
      break;

    case ChatTemplate::SolarOpen:
      for (const auto& m : msgs) s += "<|begin|>" + m.role + "<|content|>" + m.content + "<|end|>";
      if (add_gen) s += "<|begin|>assistant";
      break;

    case ChatTemplate::RwkvWorld:
      // llama.cpp writes the generation prompt after a final user message whatever add_generation_prompt says.
      for (size_t i = 0; i < msgs.size(); ++i) {
        const auto& m = msgs[i];
        if (m.role == "system") {
          s += "System: " + trim(m.content) + "\n\n";
        } else if (m.role == "user") {
          s += "User: " + trim(m.content) + "\n\n";
          if (i + 1 == msgs.size()) s += "Assistant:";
        } else if (m.role == "assistant") {
          s += "Assistant: " + trim(m.content) + "\n\n";
        }
      }
      break;

    case ChatTemplate::Granite:
    case ChatTemplate::Granite4:
      for (const auto& m : msgs) {
        if (m.role == "assistant_tool_call") {
          s += t == ChatTemplate::Granite ? "<|start_of_role|>assistant_tool_call<|end_of_role|><|tool_call|>"
                                          : "<|start_of_role|>assistant<|end_of_role|><|tool_call|>";
        } else {
          s += "<|start_of_role|>" + m.role + "<|end_of_role|>";
        }
        s += m.content + "<|end_of_text|>\n";
      }
      if (add_gen) s += "<|start_of_role|>assistant<|end_of_role|>";
      break;
  }
  return s;
}

}  // namespace moe

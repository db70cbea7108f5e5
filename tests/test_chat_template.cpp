// Chat template detection and rendering. Expected prompts are written out by hand from the
// reference formats (llama.cpp's built-in templates) for a system + two-turn conversation.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace {

using moe::ChatMessage;
using moe::ChatTemplate;

const std::vector<ChatMessage> kChat = {
    {"system", "You are terse."},
    {"user", "Hi"},
    {"assistant", " Hello! "},
    {"user", "Name an expert."},
};

std::string render(ChatTemplate t, bool gen = true) { return moe::apply_chat_template(t, kChat, gen); }

TEST(ChatTemplate, DetectsFamilies) {
  // Qwen2 / Qwen3 style ChatML.
  EXPECT_EQ(moe::detect_chat_template(
                "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
            ChatTemplate::ChatML);
  // Mixtral-8x7B-Instruct: [INST] without a system prompt.
  EXPECT_EQ(moe::detect_chat_template(
                "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
                "message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + "
                "eos_token}}{% endif %}{% endfor %}"),
            ChatTemplate::Llama2);
  EXPECT_EQ(moe::detect_chat_template("{{ '[SYSTEM_PROMPT] ' + m }}{{ '[INST] ' }}"), ChatTemplate::MistralV7);
  EXPECT_EQ(moe::detect_chat_template("{{ bos_token }}{{ ' [INST] ' + system_message }}"), ChatTemplate::MistralV1);
  EXPECT_EQ(moe::detect_chat_template("{{- \"[AVAILABLE_TOOLS][\" }}{{- \"[INST]\" + c }}"), ChatTemplate::MistralV3Tekken);
  EXPECT_EQ(moe::detect_chat_template("{{- \"[AVAILABLE_TOOLS] [\" }}{{- \"[INST] \" + c }}"), ChatTemplate::MistralV3);
  EXPECT_EQ(moe::detect_chat_template("[INST] <<SYS>>\\n{{ s }}<</SYS>>"), ChatTemplate::Llama2Sys);
  // DeepSeek families.
  EXPECT_EQ(moe::detect_chat_template("{{'### Instruction:\\n' + c}}{{'\\n<|EOT|>\\n'}}"), ChatTemplate::DeepSeek);
  EXPECT_EQ(moe::detect_chat_template("{{ 'User: ' + message['content'] + '\\n\\n' }}{{ 'Assistant: ' + "
                                      "message['content'] + eos_token }}"),
            ChatTemplate::DeepSeek2);
  EXPECT_EQ(moe::detect_chat_template("{{'<\xEF\xBD\x9CUser\xEF\xBD\x9C>' + c}}{{'<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>'}}"
                                      "{{'<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>'}}"),
            ChatTemplate::DeepSeek3);
  // OLMoE-Instruct / Tulu: "<|user|>\n" + content, eos_token as a variable (no literal </s>).
  EXPECT_EQ(moe::detect_chat_template(
                "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\\n' + "
                "message['content'] }}{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] }}{% "
                "elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n'  + message['content'] + eos_token }}{% "
                "endif %}{% if not loop.last %}{{ '\\n' }}{% endif %}{% if loop.last and add_generation_prompt %}{{ "
                "'\\n<|assistant|>\\n' }}{% endif %}{% endfor %}"),
            ChatTemplate::GlmEdge);
  EXPECT_EQ(moe::detect_chat_template("{{'<|user|>\\n' + c + '<|end|>\\n<|assistant|>\\n'}}"), ChatTemplate::Phi3);
  EXPECT_EQ(moe::detect_chat_template("{{'<|user|>\\n' + c + '<|endoftext|>'}}"), ChatTemplate::Zephyr);
  // Granite 3.x and 4.
  EXPECT_EQ(moe::detect_chat_template("{{'<|start_of_role|>' + m['role'] + '<|end_of_role|>'}}"), ChatTemplate::Granite);
  EXPECT_EQ(moe::detect_chat_template("<|start_of_role|>{% if tools %}<tools>{% endif %}"), ChatTemplate::Granite4);
  // Names work too; unknown text means "none".
  EXPECT_EQ(moe::detect_chat_template("chatml"), ChatTemplate::ChatML);
  EXPECT_EQ(moe::detect_chat_template("deepseek3"), ChatTemplate::DeepSeek3);
  EXPECT_EQ(moe::detect_chat_template(""), ChatTemplate::None);
  EXPECT_EQ(moe::detect_chat_template("{{ messages[0]['content'] }}"), ChatTemplate::None);
  // Families we do not render must not be mistaken for one we do.
  EXPECT_EQ(moe::detect_chat_template("<|im_start|>user<|im_sep|>"), ChatTemplate::None);  // phi-4
  EXPECT_EQ(moe::detect_chat_template("{{ 'GPT4 Correct ' + role }}"), ChatTemplate::None);
  EXPECT_STREQ(moe::chat_template_name(ChatTemplate::MistralV7), "mistral-v7");
  EXPECT_STREQ(moe::chat_template_name(ChatTemplate::None), "none");
}

TEST(ChatTemplate, ChatML) {
  EXPECT_EQ(render(ChatTemplate::ChatML),
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n Hello! <|im_end|>\n<|im_start|>user\nName an expert.<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(render(ChatTemplate::ChatML, false),
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n Hello! <|im_end|>\n<|im_start|>user\nName an expert.<|im_end|>\n");
}

TEST(ChatTemplate, MistralAndLlama2) {
  // No generation prompt in any [INST] family; the system prompt joins the first user turn.
  EXPECT_EQ(render(ChatTemplate::Llama2), "[INST] You are terse.\nHi [/INST] Hello! </s>[INST] Name an expert. [/INST]");
  EXPECT_EQ(render(ChatTemplate::Llama2Sys),
            "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! </s>[INST] Name an expert. [/INST]");
  EXPECT_EQ(render(ChatTemplate::Llama2SysBos),
            "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Name an expert. [/INST]");
  EXPECT_EQ(render(ChatTemplate::Llama2SysStrip),
            "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST]Hello!</s>[INST] Name an expert. [/INST]");
  EXPECT_EQ(render(ChatTemplate::MistralV1),
            " [INST] You are terse.\n\nHi [/INST]  Hello! </s> [INST] Name an expert. [/INST]");
  EXPECT_EQ(render(ChatTemplate::MistralV3),
            "[INST] You are terse.\n\nHi[/INST] Hello!</s>[INST] Name an expert.[/INST]");
  EXPECT_EQ(render(ChatTemplate::MistralV3Tekken),
            "[INST]You are terse.\n\nHi[/INST] Hello! </s>[INST]Name an expert.[/INST]");
  EXPECT_EQ(render(ChatTemplate::MistralV7),
            "[SYSTEM_PROMPT] You are terse.[/SYSTEM_PROMPT][INST] Hi[/INST]  Hello! </s>[INST] Name an expert.[/INST]");
  EXPECT_EQ(render(ChatTemplate::MistralV7Tekken),
            "[SYSTEM_PROMPT]You are terse.[/SYSTEM_PROMPT][INST]Hi[/INST] Hello! </s>[INST]Name an expert.[/INST]");
  EXPECT_EQ(render(ChatTemplate::MistralV7, false), render(ChatTemplate::MistralV7, true));
}

TEST(ChatTemplate, DeepSeek) {
  EXPECT_EQ(render(ChatTemplate::DeepSeek),
            "You are terse.### Instruction:\nHi\n### Response:\n Hello! \n<|EOT|>\n### Instruction:\nName an expert.\n"
            "### Response:\n");
  EXPECT_EQ(render(ChatTemplate::DeepSeek2),
            "You are terse.\n\nUser: Hi\n\nAssistant:  Hello! <\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
            "User: Name an expert.\n\nAssistant:");
  EXPECT_EQ(render(ChatTemplate::DeepSeek3),
            "You are terse.\n\n<\xEF\xBD\x9CUser\xEF\xBD\x9C>Hi<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C> Hello! "
            "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C><\xEF\xBD\x9CUser\xEF\xBD\x9C>Name an expert."
            "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>");
}

TEST(ChatTemplate, UserTagFamilies) {
  EXPECT_EQ(render(ChatTemplate::GlmEdge),
            "<|system|>\nYou are terse.<|user|>\nHi<|assistant|>\n Hello! <|user|>\nName an expert.<|assistant|>");
  EXPECT_EQ(render(ChatTemplate::Phi3),
            "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n Hello! <|end|>\n"
            "<|user|>\nName an expert.<|end|>\n<|assistant|>\n");
  EXPECT_EQ(render(ChatTemplate::Zephyr),
            "<|system|>\nYou are terse.<|endoftext|>\n<|user|>\nHi<|endoftext|>\n<|assistant|>\n Hello! <|endoftext|>\n"
            "<|user|>\nName an expert.<|endoftext|>\n<|assistant|>\n");
  EXPECT_EQ(render(ChatTemplate::Falcon3),
            "<|system|>\nYou are terse.\n<|user|>\nHi\n<|assistant|>\n Hello! \n<|user|>\nName an expert.\n<|assistant|>\n");
}

TEST(ChatTemplate, Granite) {
  EXPECT_EQ(render(ChatTemplate::Granite),
            "<|start_of_role|>system<|end_of_role|>You are terse.<|end_of_text|>\n"
            "<|start_of_role|>user<|end_of_role|>Hi<|end_of_text|>\n"
            "<|start_of_role|>assistant<|end_of_role|> Hello! <|end_of_text|>\n"
            "<|start_of_role|>user<|end_of_role|>Name an expert.<|end_of_text|>\n"
            "<|start_of_role|>assistant<|end_of_role|>");
  const std::vector<ChatMessage> tool = {{"assistant_tool_call", "[{\"name\":\"f\"}]"}};
  EXPECT_EQ(moe::apply_chat_template(ChatTemplate::Granite, tool, false),
            "<|start_of_role|>assistant_tool_call<|end_of_role|><|tool_call|>[{\"name\":\"f\"}]<|end_of_text|>\n");
  EXPECT_EQ(moe::apply_chat_template(ChatTemplate::Granite4, tool, false),
            "<|start_of_role|>assistant<|end_of_role|><|tool_call|>[{\"name\":\"f\"}]<|end_of_text|>\n");
}

TEST(ChatTemplate, OthersTrimContent) {
  EXPECT_EQ(render(ChatTemplate::Llama3),
            "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nName an expert.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render(ChatTemplate::Gemma),
            "<start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nName an expert.<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(render(ChatTemplate::CommandR),
            "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are terse.<|END_OF_TURN_TOKEN|>"
            "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|>"
            "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello!<|END_OF_TURN_TOKEN|>"
            "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Name an expert.<|END_OF_TURN_TOKEN|>"
            "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>");
  EXPECT_EQ(render(ChatTemplate::None), "You are terse.\nHi\n Hello! \nName an expert.");
}

}  // namespace

// ---- the fixtures' real templates, against llama.cpp's own rendering ---------------------------------

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace {

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The conversation ../shared/fixtures/templates/X.rendered.txt was rendered from (fixtures README).
const std::vector<ChatMessage> kFixtureChat = {
    {"system", "You are a careful assistant. Answer briefly."},
    {"user", "Which experts fire for code?\nList two."},
    {"assistant", "Experts 3 and 7 fire most often on Python."},
    {"user", "And for scripture?"},
};

TEST(ChatTemplate, FixtureTemplatesRenderAsLlamaCpp) {
  // Every template we detect must render llama.cpp's bytes. These must be detected (the families of the
  // MoE models we run), by name -> family.
  const std::vector<std::pair<std::string, ChatTemplate>> must = {
      {"openai-gpt-oss-120b", ChatTemplate::OpenAiMoe},
      {"GLM-4.6", ChatTemplate::ChatGlm4},
      {"GLM-4.7-Flash", ChatTemplate::ChatGlm4},
      {"moonshotai-Kimi-K2", ChatTemplate::KimiK2},
      {"Kimi-K2-Instruct", ChatTemplate::KimiK2},
      {"Kimi-K2-Thinking", ChatTemplate::KimiK2},
      {"deepseek-ai-DeepSeek-V3.1", ChatTemplate::DeepSeek3},
      {"deepseek-ai-DeepSeek-V3.2", ChatTemplate::DeepSeek3},
      {"Qwen-Qwen3-0.6B", ChatTemplate::ChatML},
      {"meta-llama-Llama-3.1-8B-Instruct", ChatTemplate::Llama3},
  };
  const std::filesystem::path dir = std::filesystem::path(MOE_FIXTURES_DIR) / "templates";
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".jinja") names.push_back(e.path().stem().string());
  std::sort(names.begin(), names.end());
  ASSERT_GE(names.size(), 40u);
  int rendered = 0;
  std::string unknown;
  for (const std::string& name : names) {
    const ChatTemplate t = moe::detect_chat_template(read_file(dir / (name + ".jinja")));
    for (const auto& [n, want] : must) {
      if (n == name) {
        EXPECT_EQ(moe::chat_template_name(t), std::string(moe::chat_template_name(want))) << name;
      }
    }
    if (t == ChatTemplate::None) {
      unknown += " " + name;
      continue;
    }
    EXPECT_EQ(moe::apply_chat_template(t, kFixtureChat, true), read_file(dir / (name + ".rendered.txt")))
        << name << " (" << moe::chat_template_name(t) << ")";
    ++rendered;
  }
  std::printf("[chat] %d of %zu fixture templates detected and rendered; not detected:%s\n", rendered, names.size(),
              unknown.c_str());
}

}  // namespace

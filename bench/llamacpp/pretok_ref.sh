#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/pretok-kimi-k2.*: llama.cpp's tokenization with the kimi-k2
# pre-tokenizer, which no shared fixture vocabulary uses. The fixtures' llama-bpe and qwen2 vocabularies
# are loaded with tokenizer.ggml.pre overridden to kimi-k2 (tests/test_tokenizer.cpp rewrites the key the
# same way), on their own test strings plus strings aimed at the splitter (Han runs against kana and
# Latin, case changes, contractions, combining marks, digit runs, whitespace).
#
#   bench/llamacpp/pretok_ref.sh [LLAMA_DIR=/work/llama.cpp]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LLAMA_DIR=${1:-/work/llama.cpp}
VOCAB="$ROOT/../shared/fixtures/vocab"
OUT="$ROOT/tests/data/llamacpp"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
g++ -O2 -std=c++17 "$HERE/tokenize_ref.cpp" -I"$LLAMA_DIR/include" -I"$LLAMA_DIR/ggml/include" \
  -L"$LLAMA_DIR/build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$LLAMA_DIR/build/bin" -o "$TMP/tokenize_ref"
python3 - "$VOCAB/ggml-vocab-llama-bpe.gguf.inp" "$OUT/pretok-kimi-k2.inp" <<'PY'
import sys
sep = "\n__ggml_vocab_test__\n"
items = open(sys.argv[1], encoding='utf-8').read().split(sep)
if items and items[-1] == '':
    items.pop()
items += [
    "Hello世界abc", "中文English混合text", "ひらがなカタカナ漢字とKanji", "漢字123漢字", "東京タワーTokyo",
    "HelloWorld CamelCase lowerUPPER ÜberStraße", "I'LL DON'T we'Re YOU'VE it'S she'd", "don't'd'll",
    "e\u0301te\u0301 cafe\u0301 n\u0303o", "(hello) [world] {x} \"quoted\" 'single'", "\tword\n\nword\r\nword",
    "12345678 1234 12 1", "٣٤٥٦ ١٢", "한국어 텍스트입니다", "Ελληνικά русский עברית العربية हिन्दी ไทย",
    "emoji 🦙🦙 family 👨‍👩‍👧 flags 🇯🇵", "   leading and trailing   ", "a\u00a0b\u2003c",
    "x=1+2; y*=3 // done!\n\n", "𠀀𠀁 CJK ext B and 豈 compat", "〇々〆 ヶ", "ABC漢DEF", "..漢字..", " 漢字 ",
    "'s 's 'S", "1,234,567.89",
]
open(sys.argv[2], 'w', encoding='utf-8').write(sep.join(items) + sep)
PY
for v in llama-bpe qwen2; do
  "$TMP/tokenize_ref" "$VOCAB/ggml-vocab-$v.gguf" "$OUT/pretok-kimi-k2.inp" "$OUT/pretok-kimi-k2.$v.out" \
    --pre kimi-k2 2> /dev/null
done
wc -l "$OUT"/pretok-kimi-k2.*

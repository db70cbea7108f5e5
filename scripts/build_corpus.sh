#!/usr/bin/env bash
# Builds the multi-domain training corpus for `moe train` from Debian packages only, deterministically:
# the same package versions give byte-identical files (sorted inputs, hash-based splits, no timestamps).
#
#   scripts/build_corpus.sh [OUT_DIR]          (default: build/corpus)
#
# Domains (sources and licences in data/README.md):
#   bible     King James Bible, one document per chapter          (bible-kjv, bible-kjv-text)
#   python    Python standard library sources, one per file      (libpython3.X-stdlib / -minimal)
#   fortunes  fortune-mod quotes and jokes, one per fortune       (fortunes-min, fortunes)
# Each document goes to train (90%), valid (5%) or test (5%) by the MD5 of "domain/document-id", so a
# document's split never changes when other documents are added. Writes OUT/<domain>/{train,valid,test}.txt
# (documents separated by a blank line) and OUT/MANIFEST.txt (package versions, sizes, SHA-256).
#
# Missing packages: scripts/deps.sh corpus
set -euo pipefail
export LC_ALL=C

out=${1:-build/corpus}
for cmd in bible python3 sha256sum dpkg-query; do
  command -v "$cmd" >/dev/null || { echo "build_corpus.sh: '$cmd' not found (run scripts/deps.sh corpus)" >&2; exit 1; }
done
[ -d /usr/share/games/fortunes ] || { echo "build_corpus.sh: fortunes are not installed (scripts/deps.sh corpus)" >&2; exit 1; }
# The Debian-packaged standard library (not a pyenv/venv one): the newest /usr/lib/python3.N with os.py.
pystdlib=$(ls -d /usr/lib/python3.[0-9]* 2>/dev/null | sort -V | while read -r d; do [ -f "$d/os.py" ] && echo "$d"; done | tail -1)
[ -n "$pystdlib" ] || { echo "build_corpus.sh: no Debian Python standard library under /usr/lib" >&2; exit 1; }

mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Whole Bible as plain text; COLUMNS is fixed so line wrapping does not depend on the terminal.
COLUMNS=100000 bible -l100000 "Gen1:1-Rev22:21" > "$tmp/bible.txt"

python3 - "$out" "$tmp/bible.txt" "$pystdlib" /usr/share/games/fortunes <<'PY'
import hashlib, os, re, sys

out, bible_path, pystdlib, fortune_dir = sys.argv[1:5]

def split_of(domain, doc_id):
    h = int(hashlib.md5(f"{domain}/{doc_id}".encode()).hexdigest(), 16) % 100
    return "train" if h < 90 else ("valid" if h < 95 else "test")

def clean(text):
    # Normalise line endings and trailing blanks; keep everything else verbatim.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")

def bible_docs():
    text = open(bible_path, encoding="utf-8", errors="replace").read()
    # Chapters start with a header line "Book N" followed by indented verses "  1 In the ...".
    chapters = re.split(r"\n(?=\S[^\n]* \d+\n)", "\n" + text)
    for ch in chapters:
        ch = clean(ch)
        if not ch:
            continue
        header = ch.split("\n", 1)[0]
        body = "\n".join(l.strip() for l in ch.split("\n"))
        yield header, body

def python_docs():
    files = []
    for root, dirs, names in os.walk(pystdlib):
        dirs[:] = sorted(d for d in dirs if d not in ("test", "tests", "idle_test", "site-packages",
                                                       "dist-packages", "__pycache__", "lib2to3"))
        for n in names:
            if n.endswith(".py"):
                files.append(os.path.join(root, n))
    for path in sorted(files):
        rel = os.path.relpath(path, pystdlib)
        # Keep about a third of the library so the domain is of a size with the others.
        if int(hashlib.md5(rel.encode()).hexdigest(), 16) % 100 >= 35:
            continue
        text = clean(open(path, encoding="utf-8", errors="replace").read())
        if text:
            yield rel, text

def fortune_docs():
    for name in sorted(os.listdir(fortune_dir)):
        path = os.path.join(fortune_dir, name)
        if name.endswith(".dat") or name.endswith(".u8") or os.path.islink(path) or not os.path.isfile(path):
            continue
        text = open(path, encoding="utf-8", errors="replace").read()
        for i, f in enumerate(re.split(r"\n%\n", "\n" + text + "\n")):
            f = clean(f)
            if f and f != "%":
                yield f"{name}/{i}", f

domains = {"bible": bible_docs(), "python": python_docs(), "fortunes": fortune_docs()}
for domain, docs in domains.items():
    parts = {"train": [], "valid": [], "test": []}
    for doc_id, text in docs:
        parts[split_of(domain, doc_id)].append(text)
    os.makedirs(os.path.join(out, domain), exist_ok=True)
    for split, texts in parts.items():
        with open(os.path.join(out, domain, f"{split}.txt"), "w", encoding="utf-8", newline="\n") as f:
            f.write("\n\n".join(texts) + "\n")
        print(f"{domain:9s} {split:6s} {len(texts):6d} docs", file=sys.stderr)
PY

{
  echo "# moe.cpp training corpus, built by scripts/build_corpus.sh"
  echo "# packages:"
  for p in bible-kjv bible-kjv-text fortunes-min fortunes "libpython$(basename "$pystdlib" | sed 's/python//')-stdlib" \
           "libpython$(basename "$pystdlib" | sed 's/python//')-minimal"; do
    echo "#   $p $(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo not-installed)"
  done
  echo "# python stdlib: $pystdlib"
  echo "# bytes sha256 file"
  (cd "$out" && for f in */train.txt */valid.txt */test.txt; do
     echo "$(wc -c < "$f") $(sha256sum "$f" | cut -d' ' -f1) $f"
   done | sort -k3)
} > "$out/MANIFEST.txt"
cat "$out/MANIFEST.txt"

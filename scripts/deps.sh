#!/usr/bin/env bash
# Installs the Debian packages moe.cpp builds against, but only those not already present,
# so a machine that has them all never touches apt (and never needs the network).
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  nlohmann-json3-dev libcli11-dev libfmt-dev libpcre2-dev liburing-dev libopenblas-dev
  libgtest-dev libbenchmark-dev libcpp-httplib-dev
)
# Optional groups, asked for by name: "fuzz" (clang + libFuzzer runtime), "corpus" (the Debian packages
# scripts/build_corpus.sh reads: the King James Bible, fortunes, Python's standard library).
for group in "$@"; do
  case "$group" in
    fuzz) packages+=(clang libclang-rt-14-dev) ;;
    corpus) packages+=(bible-kjv bible-kjv-text fortunes-min fortunes python3 libpython3-stdlib) ;;
    interactive) packages+=(tmux) ;;
    # The server's client tests (skipped without them): the official openai npm package runs on node,
    # and the dashboard test drives headless chromium.
    serve) packages+=(nodejs npm chromium) ;;
    *) echo "deps.sh: unknown group '$group' (known: fuzz, interactive, corpus, serve)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "deps.sh: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

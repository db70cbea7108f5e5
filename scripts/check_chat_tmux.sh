#!/usr/bin/env bash
# Drives `moe chat` in a real terminal (a detached tmux pane) and checks what a user would see:
#   1. two turns typed with Enter both get an answer, then Ctrl-D at the prompt exits with status 0;
#   2. Ctrl-C during a long answer stops it, the conversation goes on (the next turn re-uses the
#      cache), Ctrl-C at the prompt discards the line, and Ctrl-D exits with status 0.
# Exits non-zero on the first failed check and prints the pane. Needs tmux (scripts/deps.sh interactive).
#
#   scripts/check_chat_tmux.sh [MOE_BINARY] [MODEL]
# The fixture models carry no chat template, so the check passes --chat-template chatml.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
moe=${1:-$root/build-chat/bin/moe}
model=${2:-$root/../shared/fixtures/models/tiny-qwen3moe.gguf}
[ -x "$moe" ] || { echo "check_chat_tmux: no moe binary at $moe" >&2; exit 2; }
[ -f "$model" ] || { echo "check_chat_tmux: no model at $model" >&2; exit 2; }
command -v tmux >/dev/null || { echo "check_chat_tmux: tmux is not installed" >&2; exit 2; }

sock="moe-chat-check-$$"
tm() { tmux -L "$sock" "$@"; }
cleanup() { tm kill-server 2>/dev/null || true; }
trap cleanup EXIT

screen() { tm capture-pane -p -t chat -S -3000; }
# Prints the visible pane and fails the script.
die() {
  echo "check_chat_tmux: FAIL: $*" >&2
  echo "----- pane -----" >&2
  tm capture-pane -p -t chat >&2 || true
  echo "----------------" >&2
  exit 1
}
# wait_for DESCRIPTION COMMAND...: polls (up to 20 s) until COMMAND, given the pane on stdin, succeeds.
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 200); do
    if screen | "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "timed out waiting for: $what"
}
# capture-pane drops trailing blanks, so an empty prompt line reads ">".
prompts() { grep -cE '^>( |$)' || true; }
at_least_prompts() { local n; n=$(prompts); [ "$n" -ge "$1" ]; }
export -f prompts at_least_prompts 2>/dev/null || true

start() {
  cleanup
  tm new-session -d -s chat -x 120 -y 40 \
    "$moe chat -m '$model' --chat-template chatml -t 2 $*; echo \"[exit \$?]\"; sleep 600"
}

# ---- 1: two turns, then Ctrl-D ----
start -n 16 --temp 0
wait_for "the first prompt marker" grep -qE '^>( |$)'
tm send-keys -t chat 'Hello there' Enter
wait_for "the answer to turn 1" bash -c 'at_least_prompts 2'
tm send-keys -t chat 'What are experts?' Enter
wait_for "the answer to turn 2" bash -c 'at_least_prompts 3'
# Every user line must be followed by a non-empty answer line before the next prompt.
screen | awk '
  /^> Hello there$/ || /^> What are experts\?$/ { want = 1; next }
  want && /^>( |$)/ { exit 1 }
  want && NF > 0 { answered++; want = 0 }
  END { exit !(answered == 2) }' || die "both turns should show an answer"
tm send-keys -t chat C-d
wait_for "exit status 0 after Ctrl-D" grep -q '^\[exit 0\]'
echo "===== screen 1: two turns and Ctrl-D ====="
tm capture-pane -p -t chat | awk 'NF { last = NR } { line[NR] = $0 } END { for (i = 1; i <= last; i++) print line[i] }'

# ---- 2: Ctrl-C during an endless answer ----
start -n -1 --ignore-eos -c 32768 --temp 0 --verbose
wait_for "the first prompt marker" grep -qE '^>( |$)'
tm send-keys -t chat 'Tell me a very long story' Enter
sleep 1.5
screen | at_least_prompts 2 && die "the endless answer ended by itself"
tm send-keys -t chat C-c
wait_for "[interrupted] after Ctrl-C" grep -q '^\[interrupted\]'
wait_for "a prompt after the interrupted answer" bash -c 'at_least_prompts 2'
tm send-keys -t chat 'And another one' Enter
sleep 1
tm send-keys -t chat C-c
wait_for "the second [interrupted]" bash -c '[ "$(grep -c "^\[interrupted\]")" -ge 2 ]'
wait_for "the turn 2 statistics" grep -q 'turn 2: evaluated'
# The second turn must have re-used the whole first turn (its prompt and its answer) from the cache.
conv1=$(screen | sed -n 's/.*turn 1: evaluated.*conversation \([0-9]*\) tokens.*/\1/p' | head -1)
reused=$(screen | sed -n 's/.*turn 2: evaluated [0-9]* new tokens (\([0-9]*\) reused.*/\1/p' | head -1)
[ -n "$conv1" ] && [ -n "$reused" ] && [ "$reused" -gt "$conv1" ] ||
  die "turn 2 should re-use turn 1 from the cache (turn 1 conversation '${conv1}', turn 2 reused '${reused}')"
wait_for "a prompt after the second interrupted answer" bash -c 'at_least_prompts 3'
# Ctrl-C at the prompt throws away the half-typed line and keeps going.
tm send-keys -t chat 'half a line'
sleep 0.3
tm send-keys -t chat C-c
wait_for "the Ctrl-D hint after Ctrl-C at the prompt" grep -q '(Ctrl-D quits)'
tm send-keys -t chat C-d
wait_for "exit status 0 after Ctrl-D" grep -q '^\[exit 0\]'
echo "===== screen 2 (tail): Ctrl-C during answers, then Ctrl-D ====="
screen | grep -v '^$' | tail -n 14 | cut -c1-120
echo "check_chat_tmux: OK"

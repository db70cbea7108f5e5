# Sourced by the llama.cpp comparison scripts: makes sure NLC_DIR names a directory whose node_modules
# holds node-llama-cpp and its prebuilt linux-x64 CPU libraries, npm-installing them into a temp dir
# when NLC_DIR is unset. Nothing is installed into the repository.
NLC_VERSION=${NLC_VERSION:-3.22.1}
ensure_nlc() {
  if [[ -n "${NLC_DIR:-}" && -d "$NLC_DIR/node_modules/node-llama-cpp" ]]; then return 0; fi
  NLC_DIR=$(mktemp -d /tmp/nlc.XXXXXX)
  echo "installing node-llama-cpp $NLC_VERSION into $NLC_DIR" >&2
  NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --prefix "$NLC_DIR" --no-audit --no-fund --omit=optional \
    "node-llama-cpp@$NLC_VERSION" "@node-llama-cpp/linux-x64@$NLC_VERSION" >&2
  export NLC_DIR
}

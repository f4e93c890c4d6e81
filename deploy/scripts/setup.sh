#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test Flotilla: libclang (RocksDB's bindings
# run bindgen), a C++ compiler, and Prometheus with promtool (the observability tests run a
# real Prometheus against a local cluster and check the shipped rules). As root it installs
# with apt-get; otherwise it prints the exact command and fails.
set -euo pipefail

# libclang proper (libclang.so or libclang-NN.so), not libclang-cpp, which bindgen cannot use.
have_libclang() {
  local dir
  for dir in /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib; do
    compgen -G "$dir/libclang.so*" >/dev/null && return 0
    compgen -G "$dir/libclang-[0-9]*.so*" >/dev/null && return 0
  done
  return 1
}

missing=()
have_libclang || missing+=(libclang-dev clang)
command -v c++ >/dev/null || missing+=(g++)
{ [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

cmd="apt-get update && apt-get install -y ${missing[*]}"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  have_libclang || { echo "setup: libclang still missing after install" >&2; exit 1; }
else
  echo "setup: missing ${missing[*]}; run as root:" >&2
  echo "  $cmd" >&2
  exit 1
fi

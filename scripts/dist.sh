#!/usr/bin/env bash
# Builds the static agent for both architectures into dist/ and checks that each really is
# static (no ELF interpreter, no dynamic section):
#   dist/microvm-agent-x86_64     local development, x86_64 hosts
#   dist/microvm-agent-aarch64    Lambda MicroVMs (Graviton, ARM_64)
#   dist/SHA256SUMS               `sha256sum -c SHA256SUMS` in dist/ checks both
# Honours CARGO_TARGET_DIR. `--version` of each binary names the commit it was built from.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl >/dev/null 2>&1
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit-dirty"; fi
export MICROVM_AGENT_COMMIT=$commit
mkdir -p dist
for arch in x86_64 aarch64; do
  cargo build -q --release --locked --target "$arch-unknown-linux-musl" -p microvm-agent --bin microvm-agent
  cp "$target_dir/$arch-unknown-linux-musl/release/microvm-agent" "dist/microvm-agent-$arch"
  headers=$(readelf -lW "dist/microvm-agent-$arch")
  if grep -qE "INTERP|DYNAMIC" <<<"$headers"; then
    echo "dist/microvm-agent-$arch is not static:" >&2
    grep -E "INTERP|DYNAMIC" <<<"$headers" >&2
    exit 1
  fi
  machine=$(readelf -hW "dist/microvm-agent-$arch" | awk -F: '/Machine/{gsub(/^ +/, "", $2); print $2}')
  echo "dist/microvm-agent-$arch: static, $machine, $(stat -c %s "dist/microvm-agent-$arch") bytes, commit $commit"
done
(cd dist && sha256sum microvm-agent-x86_64 microvm-agent-aarch64 > SHA256SUMS && sha256sum -c --quiet SHA256SUMS)
echo "dist/SHA256SUMS written"

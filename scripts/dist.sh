#!/usr/bin/env bash
# Builds the static agent for both architectures into dist/ (scripts/build-static.sh, which checks
# that each really is static) and holds the aarch64 one to its size budget:
#   dist/microvm-agent-x86_64     local development, x86_64 hosts
#   dist/microvm-agent-aarch64    Lambda MicroVMs (Graviton, ARM_64)
#   dist/SHA256SUMS               `sha256sum -c SHA256SUMS` in dist/ checks both
# Honours CARGO_TARGET_DIR. `--version` of each binary names the commit it was built from.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit-dirty"; fi
export MICROVM_AGENT_COMMIT=$commit
mkdir -p dist
for arch in x86_64 aarch64; do
  scripts/build-static.sh "$arch"
  cp "$target_dir/shipped/$arch-unknown-linux-musl/release/microvm-agent" "dist/microvm-agent-$arch"
done
# The size budget of the binary that ships (BENCHMARKS.md, "Size"): it goes into
# every image and its pages into every snapshot. Growing past it is a decision, not a drift.
budget=${MICROVM_AGENT_SIZE_BUDGET:-1750000}
size=$(stat -c %s dist/microvm-agent-aarch64)
if [ "$size" -gt "$budget" ]; then
  echo "dist/microvm-agent-aarch64 is $size bytes, over its budget of $budget (BENCHMARKS.md, \"Size\")" >&2
  exit 1
fi
echo "dist/microvm-agent-aarch64: $size bytes, within the budget of $budget"
(cd dist && sha256sum microvm-agent-x86_64 microvm-agent-aarch64 > SHA256SUMS && sha256sum -c --quiet SHA256SUMS)
echo "dist/SHA256SUMS written"

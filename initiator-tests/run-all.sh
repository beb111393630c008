#!/usr/bin/env bash
# Install what the tests need, then run every check: fmt, clippy, the Rust test suites
# (unit, integration, bounded fuzz runs), libiscsi's conformance suite against a node,
# through a virtual volume and against a two-node cluster, and the real-initiator run
# (open-iscsi + dm-multipath in a QEMU guest logged in to two cluster members, about
# 2-4.5 minutes with the guest image cached; see initiator-tests/qemu/README.md), and
# the web console in headless Chromium during a migration.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v iscsi-test-cu >/dev/null || need+=(libiscsi-bin)
command -v tgtd >/dev/null || need+=(tgt)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build"
cargo build --workspace --bins
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
    # nextest does not run documentation examples.
    cargo test --workspace --doc
else
    cargo test --workspace --no-fail-fast
fi
echo "== libiscsi conformance (iscsi-test-cu)"
./initiator-tests/conformance.sh
echo "== libiscsi conformance through a virtual volume over a switchyard array, tgtd and a file"
./initiator-tests/virtual-conformance.sh
echo "== libiscsi conformance against a cluster: two nodes (and a witness), one path through each"
./initiator-tests/cluster-conformance.sh
echo "== real initiators: open-iscsi + dm-multipath in a QEMU guest, qemu-img (libiscsi)"
./initiator-tests/qemu/run.sh
echo "== the web console in headless Chromium during a migration"
./initiator-tests/console-test.sh

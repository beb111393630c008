#!/usr/bin/env bash
# Second, independent test initiator: the crates.io crate iscsi-client-rs (AGPL-3.0,
# dev-only; this package is outside the main workspace). Builds switchyard (debug) and
# this checker, starts a node on a free port and runs the checks.
#   CLIENT_RS_PROBES=1  also reproduce the crate's known bugs (printed, not counted)
#   CLIENT_RS_LOG=debug the crate's own tracing on stderr
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
t0=$(date +%s)
(cd "$root" && CARGO_TARGET_DIR="$target" cargo build -q -p switchyard)
(cd "$here" && CARGO_TARGET_DIR="$target/client-rs" cargo build -q)
t1=$(date +%s)
echo "# build: $((t1 - t0)) s"
SWITCHYARD_BIN="$target/debug/switchyard" "$target/client-rs/debug/client-rs-check"

#!/usr/bin/env bash
# Checks that every package selection the README shows resolves each shared
# dependency with the same features as `cargo test --workspace` (so no
# command rebuilds tokio, hyper or axum for itself). Prints the offending
# dependencies and exits 1 otherwise; the fix goes into workspace-hack/Cargo.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

resolved() {
    # One line per package: name, version and its enabled features.
    cargo tree --locked "$@" -f '{p} [{f}]' --prefix none | sed 's/ (\*)$//; s/ (proc-macro)//' | sort -u
}

all=$(mktemp)
trap 'rm -f "$all"' EXIT
resolved --workspace -e normal,build,dev > "$all"
status=0
for package in scenarios payment-service chaos-proxy client receipts eo-core; do
    different=$(resolved -p "$package" -e normal,build | comm -23 - "$all")
    if [ -n "$different" ]; then
        echo "-p $package resolves other features than the workspace for:"
        echo "$different" | sed 's/^/    /'
        status=1
    fi
done
if [ "$status" = 0 ]; then
    echo "every package selection resolves the workspace's features: no command rebuilds dependencies"
fi
exit "$status"

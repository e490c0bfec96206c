#!/usr/bin/env bash
# vendor/candle-core is the crates.io release of candle-core plus vendor/candle-core.patch.
# This script rebuilds it from those two, or with --check verifies that it still matches
# them (CI runs the check), so the patched copy stays auditable: nothing in it but the patch.
#
# Usage: scripts/vendor-candle.sh [--check]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=0.11.1
patch="$root/vendor/candle-core.patch"
vendored="$root/vendor/candle-core"

work=$(mktemp -d /tmp/cardinal-vendor.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The published crate, through cargo (the registry it already uses): a throwaway package
# that depends on exactly this version, fetched without building anything.
mkdir -p "$work/fetch/src"
cat > "$work/fetch/Cargo.toml" << TOML
[package]
name = "fetch-candle-core"
version = "0.0.0"
edition = "2021"

[dependencies]
candle-core = "=$version"
TOML
: > "$work/fetch/src/lib.rs"
(cd "$work/fetch" && cargo fetch --quiet)
crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "candle-core-$version.crate" | head -n 1)
[ -n "$crate" ] || { echo "vendor-candle: cargo fetched no candle-core-$version.crate" >&2; exit 1; }
tar -xzf "$crate" -C "$work"
fresh="$work/candle-core-$version"
# Files cargo adds when it packages a crate, which a path dependency does not use.
rm -f "$fresh/.cargo_vcs_info.json" "$fresh/Cargo.lock"
(cd "$fresh" && git apply --whitespace=nowarn "$patch")

if [ "${1:-}" = "--check" ]; then
    if diff -r "$fresh" "$vendored" > "$work/diff.txt"; then
        echo "vendor-candle: vendor/candle-core is candle-core $version plus vendor/candle-core.patch"
    else
        echo "vendor-candle: vendor/candle-core differs from candle-core $version plus the patch:" >&2
        head -n 40 "$work/diff.txt" >&2
        exit 1
    fi
else
    rm -rf "$vendored"
    cp -r "$fresh" "$vendored"
    echo "vendor-candle: rebuilt vendor/candle-core from candle-core $version and the patch"
fi

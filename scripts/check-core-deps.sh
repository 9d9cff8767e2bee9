#!/usr/bin/env bash
# steward-core holds the workflow language and the planner: pure code, no
# I/O, no runtime. This fails when anything that does I/O or drives time
# (an async runtime, a database driver, the sandbox, an HTTP stack) enters
# its dependency tree, directly or through another crate.
set -euo pipefail
cd "$(dirname "$0")/.."

deny='^(tokio|async-std|smol|mio|sqlx|sqlx-core|libsqlite3-sys|wasmtime|cranelift-codegen|axum|hyper|reqwest|ureq|rustls|steward-engine|steward-store|steward)$'

# The matcher itself must catch a denied crate, or this check proves nothing.
if [ -z "$(printf 'serde v1.0.0\ntokio v1.54.1\n' | awk '{print $1}' | grep -E "$deny")" ]; then
    echo "check-core-deps: the deny list no longer matches tokio; fix the pattern" >&2
    exit 1
fi

tree=$(cargo tree --offline --quiet -p steward-core -e normal,build --prefix none --format '{p}' 2>/dev/null \
    || cargo tree --quiet -p steward-core -e normal,build --prefix none --format '{p}')
if ! printf '%s\n' "$tree" | grep -q '^steward-core '; then
    echo "check-core-deps: cargo tree did not list steward-core; cannot check its dependencies" >&2
    exit 1
fi
found=$(printf '%s\n' "$tree" | awk '{print $1}' | sort -u | grep -E "$deny" || true)
if [ -n "$found" ]; then
    echo "check-core-deps: steward-core must not depend on these crates:" >&2
    printf '  %s\n' $found >&2
    echo "Move the code that needs them to steward-engine, steward-store or the steward binary," >&2
    echo "and pass what the core needs (time, group members, data) in as values." >&2
    exit 1
fi
echo "check-core-deps: steward-core depends on none of the denied crates"

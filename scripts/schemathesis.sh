#!/usr/bin/env bash
# Fuzzes the running API against its own /openapi.json with schemathesis:
# no request may make the server fail (500) and every status must be
# documented. Starts `steward serve` (debug build) on a free port with a
# throwaway database, and stops it afterwards.
#
#   bash scripts/schemathesis.sh            # installs schemathesis with pip when missing
#   EXAMPLES=200 bash scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if ! command -v schemathesis >/dev/null 2>&1; then
    if ! python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'schemathesis>=4,<5'; then
        echo "schemathesis.sh: SKIPPED: schemathesis could not be installed from PyPI" >&2
        exit 0
    fi
fi

cargo build --quiet --bin steward
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/steward.toml" <<TOML
database = "sqlite://$work/steward.db"
data_dir = "$work/data"
workflows = ["examples/workflows"]
listen = "127.0.0.1:$port"
TOML
STEWARD_ADMIN_TOKEN=schemathesis-admin RUST_LOG=error target/debug/steward serve --config "$work/steward.toml" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
done

cd "$work"   # schemathesis writes its cache next to where it runs
schemathesis run "http://127.0.0.1:$port/openapi.json" \
    --header "Authorization: Bearer schemathesis-admin" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "${EXAMPLES:-50}" \
    --generation-deterministic \
    --no-color

#!/usr/bin/env bash
# scripts/dev's lifecycle on a second, throw-away set of services (own state directory, own ports),
# so it never disturbs the set the other tests use:
#   up from nothing starts every service; a second up is a no-op; status shows each ready;
#   down stops every process up started and frees every port; nothing listens beyond 127.0.0.1.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=$(mktemp -d /tmp/kassa-lifecycle.XXXXXX)
chmod 755 "$state" # postgres runs as its own user and must reach its data directory
export KASSA_STATE_DIR=$state
unset KASSA_UP_STARTED_FILE # this set is ours to stop, not scripts/test's
export KAFKA_PORT=29092 KAFKA_CONTROLLER_PORT=29093 KAFKA_SECURE_PORT=29094 REGISTRY_PORT=28081 REGISTRY_MANAGEMENT_PORT=28091
export POSTGRES_PORT=25432 REDIS_PORT=26379 REDIS_TLS_PORT=26380 LOCALSTRIPE_PORT=28420 SMTP_PORT=21025 API_PORT=28080
ports=(29092 29093 29094 28081 28091 25432 26379 26380 28420 21025)
dev="$ROOT/scripts/dev"
passed=0 failed=0
check() { # check NAME COMMAND...
  if "${@:2}"; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
trap '"$dev" down >/dev/null 2>&1 || true; rm -rf "$state"' EXIT

listening() { ss -ltnH "sport = :$1" | grep -q .; }
pids() { cat "$state"/run/*.pid 2>/dev/null | sort; }

first=$("$dev" up 2>&1) || { echo "$first"; exit 1; }
before=$(pids)
count=$(wc -l <<<"$before")
check "first up starts all 6 services" test "$count" -eq 6

second=$("$dev" up 2>&1)
check "second up starts nothing" bash -c '! grep -q "starting\|installing" <<<"$1"' _ "$second"
check "second up keeps the same processes" test "$before" = "$(pids)"
check "status shows 6 ready services" test "$("$dev" status | grep -c ' ready ')" -eq 6

wide=$(ss -ltnpH | awk '{print $4, $6}' | grep -E "$(IFS='|'; echo ":(${ports[*]}) ")" | grep -v '127.0.0.1' || true)
check "every port is bound to 127.0.0.1 only" test -z "$wide"

"$dev" down >/dev/null 2>&1
alive=""
for pid in $before; do if kill -0 "$pid" 2>/dev/null; then alive="$alive $pid"; fi; done
check "down stops every process up started" test -z "$alive"
open=""
for port in "${ports[@]}"; do if listening "$port"; then open="$open $port"; fi; done
check "down frees every port" test -z "$open"
check "down leaves no pid files" test -z "$(ls "$state/run"/*.pid 2>/dev/null)"

echo "lifecycle: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Starts the workshop landscape for playing by hand (Ctrl-C stops it all):
#   payment-service  http://127.0.0.1:8080   (database ./workshop.db, kept between runs)
#   chaos-proxy API  http://127.0.0.1:8474   (toxiproxy-compatible: toxi.http, curl, toxiproxy-cli)
#   proxy "payment"  http://127.0.0.1:8888 -> 127.0.0.1:8080   (unless --bare)
#   with --second-hop also:
#   receipts         http://127.0.0.1:8090   (database ./workshop-receipts.db)
#   proxy "receipts" http://127.0.0.1:8889 -> 127.0.0.1:8090, the payment service's --receipts-url
#
# Usage: scripts/workshop.sh [--bare] [--seed N] [--fresh] [--live] [--second-hop] [-- payment-service flags...]
#   --bare    start the proxy API without the "payment" proxy, as the original
#             workshop does: send "Configure Proxy" from toxi.http first
#   --seed N  seed of the proxy's faults (default 42), so a session can be replayed
#   --fresh   delete ./workshop.db first
#   --live    instead: the guided tour with its live page for a projector on
#             http://127.0.0.1:8765/ (Enter between lessons; Ctrl-C stops)
#   --second-hop  also the receipts service, reached through the proxy "receipts"
#             (the outbox by default; try -- --notify after-commit)
#   after --, flags for payment-service, e.g. -- --dedup off   or   -- --dedup check-then-insert --processing-delay-ms 200
set -euo pipefail
cd "$(dirname "$0")/.."

bare=0
seed=42
fresh=0
live=0
second_hop=0
service_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --bare) bare=1 ;;
        --seed) seed="${2:?--seed needs a number}"; shift ;;
        --fresh) fresh=1 ;;
        --live) live=1 ;;
        --second-hop) second_hop=1 ;;
        --) shift; service_args=("$@"); break ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "workshop.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$live" = 1 ]; then
    echo "building (first time: a few minutes)..."
    cargo build --release --quiet -p scenarios
    echo "open http://127.0.0.1:8765/ on the projector; the tour starts when the page is open"
    exec "${CARGO_TARGET_DIR:-target}/release/scenarios" --live 127.0.0.1:8765 --pause --seed "$seed"
fi

echo "building (first time: a minute or two)..."
cargo build --release --quiet -p payment-service -p chaos-proxy -p client -p receipts
bin="${CARGO_TARGET_DIR:-target}/release"
for tool in payment-service chaos-proxy client receipts; do
    if [ ! -x "$bin/$tool" ]; then
        echo "workshop.sh: $bin/$tool is missing after the build" >&2
        exit 1
    fi
done

ports=(8080 8474 8888)
if [ "$second_hop" = 1 ]; then
    ports+=(8090 8889)
fi
for port in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "workshop.sh: port $port is already in use; stop whatever listens there first" >&2
        exit 1
    fi
done

if [ "$fresh" = 1 ]; then
    rm -f workshop.db workshop.db-wal workshop.db-shm workshop-receipts.db workshop-receipts.db-wal workshop-receipts.db-shm
fi

# Waits until $3 answers HTTP on 127.0.0.1:$2, or exits with the child's own
# status if it dies first (a bad flag, a locked database), so the banner below
# is printed only when both servers really serve.
wait_ready() {
    local pid=$1 port=$2 name=$3 status=0
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || status=$?
            echo "workshop.sh: $name exited with status $status before it answered (its error is above)" >&2
            exit "$((status == 0 ? 1 : status))"
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /version HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3 | grep -q 'HTTP/1') 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "workshop.sh: $name did not answer on port $port within 30 s" >&2
    exit 1
}

pids=()
stop() {
    trap - EXIT INT TERM
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    echo "stopped."
}
trap stop EXIT INT TERM

# Creates the proxy "receipts" in front of the receipts service through the
# proxy's API (plain HTTP over bash's /dev/tcp: no curl needed).
receipts_route() {
    local body='{"name": "receipts", "listen": "127.0.0.1:8889", "upstream": "127.0.0.1:8090", "enabled": true}'
    local answer
    answer=$(exec 3<>/dev/tcp/127.0.0.1/8474 &&
        printf 'POST /proxies HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
            "${#body}" "$body" >&3 && head -c 12 <&3)
    if ! grep -q ' 201' <<<"$answer"; then
        echo "workshop.sh: the proxy refused the route \"receipts\" ($answer)" >&2
        exit 1
    fi
}

if [ "$second_hop" = 1 ]; then
    "$bin/receipts" --listen 127.0.0.1:8090 --db workshop-receipts.db &
    pids+=($!)
    wait_ready "${pids[0]}" 8090 receipts
    service_args=(--receipts-url http://127.0.0.1:8889 ${service_args[@]+"${service_args[@]}"})
fi
"$bin/payment-service" --db workshop.db ${service_args[@]+"${service_args[@]}"} &
pids+=($!)
service_pid=$!
proxy_args=(--seed "$seed")
if [ "$bare" = 0 ]; then
    proxy_args+=(--workshop)
fi
"$bin/chaos-proxy" "${proxy_args[@]}" &
pids+=($!)
wait_ready "$service_pid" 8080 payment-service
wait_ready "$!" 8474 chaos-proxy
if [ "$second_hop" = 1 ]; then
    receipts_route
fi

cat <<TEXT

  payment service   http://127.0.0.1:8080   (GET /stats, POST /payments/, DELETE /payments/)
  proxy API         http://127.0.0.1:8474   (GET /proxies, POST /proxies/payment/toxics, POST /reset)
  proxy "payment"   http://127.0.0.1:8888   $([ "$bare" = 1 ] && echo "(not configured yet: send 'Configure Proxy' from scripts/toxi.http)" || echo "-> 127.0.0.1:8080")

  Play with scripts/payment.http and scripts/toxi.http, or send 1000 payments:
    $bin/client pay --count 1000 --key none --retries 0
$([ "$second_hop" = 1 ] && printf '%s\n' \
"  receipts service  http://127.0.0.1:8090   (GET /stats; the payment service notifies it through" \
"  proxy \"receipts\"  http://127.0.0.1:8889    which takes toxics like \"payment\"): scripts/second-hop.http," \
"    $bin/client pay --count 1000 --receipts http://127.0.0.1:8090")
  Ctrl-C stops everything.

TEXT
wait

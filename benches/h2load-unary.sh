#!/usr/bin/env bash
# Quick side-by-side: small unary gRPC calls with h2load (nghttp2-client), once straight to
# the stand-in pachd (h2c, the limit) and once through pachgate (TLS in, h2c out), in the
# same run, alternating A B A B to cancel drift. Prints req/s and the ratio.
#
# usage: benches/h2load-unary.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
seconds=${2:-10}
command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
cargo build --release -q
bin=target/release/pachgate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

PACHGATE_WORKER_THREADS=1 "$bin" standins > "$work/standins.out" &
until grep -q standin-console "$work/standins.out"; do sleep 0.1; done
pachd=$(sed -n 's/.*standin-pachd listening on //p' "$work/standins.out")

cat > "$work/pachgate.toml" <<TOML
[listen]
https = "127.0.0.1:0"
[tls]
self_signed = true
self_signed_dir = "certs"
[upstreams.pachd]
endpoints = ["$pachd"]
protocol = "h2c"
[[routes]]
name = "grpc"
match = { grpc = true }
upstream = "pachd"
TOML
PACHGATE_WORKER_THREADS=1 "$bin" serve --config "$work/pachgate.toml" > "$work/pachgate.out" &
until grep -q "https listening" "$work/pachgate.out"; do sleep 0.1; done
front=$(sed -n 's/.*https listening on //p' "$work/pachgate.out")

# One gRPC frame: uncompressed, 18-byte EchoRequest { payload: 16 bytes }.
printf '\x00\x00\x00\x00\x12\x0a\x10%s' "0123456789abcdef" > "$work/req.bin"
h2() {
    h2load -D "$seconds" -c 16 -m 16 -t 1 -d "$work/req.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' "$1/pachgate.standin.Echo/Unary" \
        | sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p'
}
echo "| round | direct h2c req/s | through pachgate (TLS) req/s | pachgate / direct |"
echo "|---|---|---|---|"
for round in $(seq 1 "$rounds"); do
    direct=$(h2 "http://$pachd")
    proxied=$(h2 "https://$front")
    ratio=$(python3 -c "print(f'{$proxied/$direct:.2f}')")
    echo "| $round | $direct | $proxied | $ratio |"
done

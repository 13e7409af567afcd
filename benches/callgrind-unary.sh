#!/usr/bin/env bash
# Instructions per gRPC unary call through pachgate (access log off): the stand-in pachd,
# pachgate under callgrind with one worker on an h2c listener, `pachgate bench grpc` at
# 4 connections x 8 streams: 500 calls, counters zeroed, 20,000 calls, counters dumped.
# A count that does not drift with the machine's load, to compare builds.
# Usage: benches/callgrind-unary.sh target/release/pachgate
set -euo pipefail
bin=${1:?usage: $0 PATH-TO-PACHGATE}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
PACHGATE_WORKER_THREADS=1 $bin standins > $work/standins.out 2>&1 &
until grep -q "standin-pachd listening" $work/standins.out; do sleep 0.1; done
pachd=$(sed -n 's/.*standin-pachd listening on //p' $work/standins.out)
port=$((30000 + RANDOM % 20000))
cat > $work/c.toml <<TOML
[listen]
http = "127.0.0.1:$port"
http_mode = "serve"
[log]
access = "off"
[upstreams.pachd]
endpoints = ["$pachd"]
protocol = "h2c"
[[routes]]
name = "pachd-grpc"
match = { grpc = true }
upstream = "pachd"
TOML
PACHGATE_WORKER_THREADS=1 PACHGATE_LOG=error valgrind --tool=callgrind --callgrind-out-file=$work/cg.out $bin serve --config $work/c.toml > $work/log 2> $work/err &
until (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null; do sleep 0.5; done
$bin bench grpc --target http://127.0.0.1:$port --connections 4 --streams 8 --requests 500 --quiet --threads 1 >/dev/null
callgrind_control -z >/dev/null
$bin bench grpc --target http://127.0.0.1:$port --connections 4 --streams 8 --requests 20000 --quiet --threads 1 >/dev/null
callgrind_control -d >/dev/null
sleep 1
total=$(for f in $work/cg.out*; do grep -h "^summary:\|^totals:" $f | awk '{print $2}'; done | sort -n | tail -1)
echo "instructions per call: $(( total / 20000 ))"

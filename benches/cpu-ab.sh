#!/usr/bin/env bash
# Fixed-count CPU per gRPC unary call of several pachgate builds or log modes, side by side:
# one pachgate per NAME (one worker, h2c in, h2c out to one stand-in pachd), each round the
# same number of calls through each in turn (the order reversed every other round), the
# process's and its worker thread's CPU read from /proc around each run, and with them the
# stand-in pachd's and the load generator's (on this 2-core machine all of it comes out of
# calls/s in benches/compare). Prints µs per call and, against the first NAME, the ratio of
# the means and the median of per-round ratios.
# The access log goes to a file in a temporary directory (LOGDIR=/dev/shm for tmpfs,
# LOGNULL=1 for /dev/null), deleted at the end, and kept under 10 MiB as kubelet rotates a
# container's log (see ROTATE_LOG_AT in benches/compare for why).
#
# usage: benches/cpu-ab.sh CALLS ROUNDS NAME=BINARY:LOGMODE ...
#   e.g. benches/cpu-ab.sh 100000 8 off=target/release/pachgate:off on=target/release/pachgate:json
set -euo pipefail
calls=$1; rounds=$2; shift 2
work=$(mktemp -d)
logdir=${LOGDIR:-$work}
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work" "$logdir"/cpu-ab-*.log' EXIT
first=${1#*=}; first=${first%%:*}
PACHGATE_WORKER_THREADS=1 "$first" standins > "$work/standins.out" 2>&1 &
standins=$!
until grep -q "standin-pachd listening" "$work/standins.out"; do sleep 0.1; done
pachd=$(sed -n 's/.*standin-pachd listening on //p' "$work/standins.out")
names=(); declare -A pid port bin
base_port=$((20000 + RANDOM % 20000))
for spec in "$@"; do
  name=${spec%%=*}; rest=${spec#*=}
  names+=("$name"); bin[$name]=${rest%%:*}
  port[$name]=$((base_port + ${#names[@]}))
  cat > "$work/$name.toml" <<TOML
[listen]
http = "127.0.0.1:${port[$name]}"
http_mode = "serve"
[log]
access = "${rest#*:}"
[upstreams.pachd]
endpoints = ["$pachd"]
protocol = "h2c"
[[routes]]
name = "pachd-grpc"
match = { grpc = true }
upstream = "pachd"
TOML
  out="$logdir/cpu-ab-$name.log"; [ -n "${LOGNULL:-}" ] && out=/dev/null
  PACHGATE_WORKER_THREADS=1 PACHGATE_LOG=error "${bin[$name]}" serve --config "$work/$name.toml" \
    >> "$out" 2> "$work/$name.err" &
  pid[$name]=$!
done
if [ -z "${LOGNULL:-}" ]; then
  # Rotation as kubelet does it, by emptying the file (opened for appending above).
  while sleep 0.05; do
    for log in "$logdir"/cpu-ab-*.log; do
      [ "$(stat -c %s "$log" 2>/dev/null || echo 0)" -gt $((10 << 20)) ] && : > "$log"
    done
  done &
fi
# The same generator for every NAME (the first's binary), so that only the proxy differs.
load() {
  "$first" bench grpc --target "http://127.0.0.1:${port[$1]}" --requests "$2" \
    --connections 16 --streams 16 --size 16 --threads 1 --quiet > /dev/null
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU of this shell's waited-for children (the load generators run so far) into
# $load_ticks, read by the shell itself: a helper process would be counted too.
read_load_ticks() { local -a stat; read -ra stat < "/proc/$$/stat"; load_ticks=$((stat[15] + stat[16])); }
worker_ticks() { grep -l worker /proc/"$1"/task/*/comm | head -1 | xargs dirname | xargs -I{} awk '{print $14 + $15}' {}/stat; }
for name in "${names[@]}"; do
  until (echo > "/dev/tcp/127.0.0.1/${port[$name]}") 2>/dev/null; do sleep 0.1; done
  load "$name" 20000
done
for round in $(seq "$rounds"); do
  order=("${names[@]}")
  if (( round % 2 == 0 )); then order=($(printf '%s\n' "${names[@]}" | tac)); fi
  for name in "${order[@]}"; do
    before=$(ticks "${pid[$name]}"); worker_before=$(worker_ticks "${pid[$name]}")
    standins_before=$(ticks "$standins"); read_load_ticks; load_before=$load_ticks
    load "$name" "$calls"
    read_load_ticks
    echo "$round $name $(( $(ticks "${pid[$name]}") - before ))" \
      "$(( $(worker_ticks "${pid[$name]}") - worker_before ))" \
      "$(( $(ticks "$standins") - standins_before )) $((load_ticks - load_before))" >> "$work/ticks"
  done
done
python3 - "$work/ticks" "$calls" "$(getconf CLK_TCK)" "${names[@]}" <<'PY'
import statistics, sys
path, calls, tck, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
tables = {"process": {}, "worker": {}, "stand-in": {}, "generator": {}}
for line in open(path):
    round_no, name, *ticks = line.split()
    for table, value in zip(tables.values(), ticks):
        table.setdefault(name, {})[int(round_no)] = int(value)
per_call = lambda ticks, n: ticks / n / tck * 1e6 / calls
first = names[0]
for name in names:
    rounds = sorted(tables["process"][name])
    line = f"{name:12s} µs/call:" + "".join(
        f"  {label} {per_call(sum(table[name].values()), len(rounds)):6.3f}"
        for label, table in tables.items())
    if name != first:
        for label, table in tables.items():
            mean = sum(table[name].values()) / sum(table[first].values())
            paired = statistics.median(table[name][r] / table[first][r] for r in rounds)
            line += f"\n{'':12s}   {label} vs {first}: {mean:.3f} (paired median {paired:.3f})"
    print(line)
PY

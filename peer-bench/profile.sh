#!/usr/bin/env bash
# Where each stack spends its time in one scenario of the peer benchmark
# (BENCHMARKS.md, "Peer benchmark"): for each stack, system calls, context
# switches and CPU time per request on the server's and the client's threads
# (perf stat per thread, 3 s inside a 6 s window), then a sampled profile
# (perf record, cpu-clock): each side's samples by crate (kernel, libc,
# tokio, the stack's own crates), and the top symbols of the server.
#
#   bash peer-bench/profile.sh [SCENARIO] [STACKS]     # default c256x64_1KiB, "ours tarpc tonic"
#
# Needs perf (Debian's linux-perf); uses the release build of peer-bench.
set -euo pipefail
cd "$(dirname "$0")"
scenario=${1:-c256x64_1KiB}
stacks=${2:-ours tarpc tonic}
out=${PROFILE_OUT:-/tmp/peer-profile}
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/chitchat-net-peer-bench

for stack in $stacks; do
    echo "== $scenario, $stack"
    # System calls, context switches and CPU per thread, over 3 s of the window.
    $bin --runs 1 --only "$scenario" --stacks "$stack" --secs 6 >"$out/$stack.txt" 2>"$out/$stack.err" &
    pid=$!
    sleep 1.5
    perf stat --per-thread -x, -e raw_syscalls:sys_enter,context-switches,task-clock \
        -p "$pid" -o "$out/$stack.stat" -- sleep 3
    wait "$pid"
    rate=$(awk -v s="$scenario" '$1 == s { for (i = 1; i <= NF; i++) if ($i ~ /\/s$/) { v = $(i-1); u = $i; break } }
        END { if (u == "k/s") v *= 1e3; else if (u == "M/s") v *= 1e6; print v }' "$out/$stack.err")
    awk -F, -v rate="$rate" '
        { split($1, a, "-"); side = a[1]; if (side != "srv" && side != "cli") next
          if ($4 ~ /raw_syscalls/) sc[side] += $2
          else if ($4 ~ /context-switches/) cs[side] += $2
          else if ($4 ~ /task-clock/) cpu[side] += $2 }
        END { n = rate * 3
              for (s in sc) printf "%s: %.2f system calls, %.2f context switches, %.2f µs CPU per request (%.0f req/s)\n",
                  s, sc[s] / n, cs[s] / n, cpu[s] * 1e3 / n, rate }' "$out/$stack.stat"
    # A sampled profile of the same scenario.
    perf record -q -e cpu-clock -F 1999 -o "$out/$stack.data" -- \
        $bin --runs 1 --only "$scenario" --stacks "$stack" --secs 4 >/dev/null 2>&1
    for side in srv-rt cli-rt; do
        echo "-- $side threads: share of their samples by crate ([k] = kernel)"
        perf report -q -i "$out/$stack.data" --comm "$side" --no-children --sort sym \
            --percentage relative 2>/dev/null | awk '
            $2 == "[k]" { share["kernel"] += $1; next }
            $2 == "[.]" { sym = $3; sub(/^</, "", sym)
                          if (sym !~ /::/) crate = "libc (memcpy, malloc, send/recv)"
                          else { crate = sym; sub(/::.*/, "", crate) }
                          if (crate == "core" || crate == "alloc" || crate == "std") crate = "std"
                          share[crate] += $1 }
            END { for (c in share) printf "   %6.1f%%  %s\n", share[c], c }' | sort -rn | head -12 || true
    done
    echo "-- server threads: top symbols"
    perf report -q -i "$out/$stack.data" --comm srv-rt --no-children --sort sym \
        --percentage relative 2>/dev/null | head -15 || true
done

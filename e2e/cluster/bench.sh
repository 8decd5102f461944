#!/usr/bin/env bash
# The cluster benchmark: berth and the reference containerd 2.x side by side, each driving the same
# one-node cluster (cluster.sh) in turn, in one run. It prints numbers; nothing passes or fails on them.
#
#   e2e/cluster/bench.sh [--runs N] [--replicas N] [--runtimes "berth containerd"]
#
# Per runtime: `cluster.sh up --runtime R` (berth as a release build unless BERTH_PROFILE says
# otherwise), the test image pulled once, then N runs (default 3) of: `kubectl apply` of a Deployment
# of --replicas (30) busybox pods → the time until all are Ready; with the pods up, the memory of the
# runtime (daemon + every shim: VmRSS and PSS from /proc/<pid>/smaps_rollup); then the Deployment
# is deleted and the pods waited out. Reported per runtime: the p50 of the apply→Ready times, the
# kubelet's pod start SLI (`kubelet_pod_start_sli_duration_seconds`, the pods of these runs: the
# histogram's bucket counts after minus before, so p50/p90 are bucket upper bounds), the memory of
# the first run (later runs also hold the stopped sandboxes of earlier ones until the kubelet removes
# them) and the runtime processes left after the last run; then berth/containerd ratios. The
# cluster is taken down at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=$ROOT/e2e/cluster/cluster.sh
RUN=/run/berth-cluster
NODE=berth-node
IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
runs=3 replicas=30 runtimes="berth containerd"
while [ $# -gt 0 ]; do
    case $1 in
    --runs) runs=$2 && shift 2 ;;
    --replicas) replicas=$2 && shift 2 ;;
    --runtimes) runtimes=$2 && shift 2 ;;
    *)
        sed -n '2,14s/^# \{0,1\}//p' "$0" >&2
        exit 2
        ;;
    esac
done
export BERTH_PROFILE=${BERTH_PROFILE:-release}
say() { echo "bench.sh: $*" >&2; }

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }

# The SLI histogram's cumulative bucket counts, "le count" per line, summed over its label sets.
sli_buckets() {
    kubectl get --raw "/api/v1/nodes/$NODE/proxy/metrics" |
        awk -F'[{}]' '/^kubelet_pod_start_sli_duration_seconds_bucket/ {
            match($2, /le="[^"]*"/); le = substr($2, RSTART + 4, RLENGTH - 5); n[le] += $3
        } END { for (le in n) print le, n[le] }' | sort -g
}

# QUANTILE BEFORE AFTER: the upper bound of the bucket holding the quantile of (after - before).
bucket_quantile() {
    # (A fresh kubelet has no series before its first pod: its buckets count as 0.)
    join -a 2 -e 0 -o 0,1.2,2.2 <(echo "$2" | sort) <(echo "$3" | sort) | sort -g | awk -v q="$1" '{ le[NR] = $1; c[NR] = $3 - $2 }
        END { total = c[NR]; for (i = 1; i <= NR; i++) if (c[i] >= q * total) { print le[i] "s (" total " pods)"; exit } }'
}

# The runtime's processes: the daemon, then every shim.
runtime_pids() {
    cat "$RUN/pids/runtime"
    case $1 in
    berth) pgrep -f -- "--dir $RUN/berth/pods/" || true ;;
    containerd) pgrep -f -- "-address $RUN/containerd.sock" || true ;;
    esac
}

# RUNTIME: "daemon_rss daemon_pss shims shims_rss shims_pss" in KiB.
memory() {
    local first=true pid rss pss d_rss=0 d_pss=0 n=0 s_rss=0 s_pss=0
    for pid in $(runtime_pids "$1"); do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
        pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null) || continue
        if $first; then
            d_rss=$rss d_pss=$pss first=false
        else
            n=$((n + 1)) s_rss=$((s_rss + rss)) s_pss=$((s_pss + pss))
        fi
    done
    echo "$d_rss $d_pss $n $s_rss $s_pss"
}

deployment() {
    cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: bench, namespace: default}
spec:
  replicas: $replicas
  selector: {matchLabels: {app: bench}}
  template:
    metadata: {labels: {app: bench}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: c, image: $IMAGE, command: ["sleep", "100000"]}]
EOF
}

declare -A P50 SLI50 SLI90 MEM LEFT
trap '"$CLUSTER" down >/dev/null 2>&1 || true' EXIT
for rt in $runtimes; do
    say "$rt: cluster up"
    "$CLUSTER" down >/dev/null 2>&1 || true
    "$CLUSTER" up --runtime "$rt" >/dev/null
    eval "$("$CLUSTER" env)"
    # The image is on the node before the first run, as on a node that ran the workload before.
    crictl --config "$RUN/crictl.yaml" pull "$IMAGE" >/dev/null
    before=$(sli_buckets)
    times=()
    for i in $(seq 1 "$runs"); do
        t0=$(now)
        deployment | kubectl apply -f - >/dev/null
        until [ "$(kubectl get deployment bench -o 'jsonpath={.status.readyReplicas}')" = "$replicas" ]; do sleep 0.2; done
        t=$(calc "$(now) - $t0")
        times+=("$t")
        say "$rt run $i: $replicas pods Ready after ${t}s"
        sleep 3 # the shims settle
        # The first run's: later runs also find the shims of the stopped sandboxes of earlier runs.
        [ "$i" != 1 ] || MEM[$rt]=$(memory "$rt")
        kubectl delete deployment bench --wait=true >/dev/null
        until [ "$(kubectl get pods -l app=bench --no-headers 2>/dev/null | wc -l)" = 0 ]; do sleep 0.5; done
    done
    after=$(sli_buckets)
    # Processes of the stopped sandboxes the kubelet has not removed yet.
    LEFT[$rt]=$(($(runtime_pids "$rt" | wc -l) - 1))
    P50[$rt]=$(printf '%s\n' "${times[@]}" | sort -g | sed -n "$(((runs + 1) / 2))p")
    SLI50[$rt]=$(bucket_quantile 0.5 "$before" "$after")
    SLI90[$rt]=$(bucket_quantile 0.9 "$before" "$after")
    "$CLUSTER" down >/dev/null
done

printf '\n%-11s %16s %20s %20s %12s %12s %6s %12s %12s\n' runtime "apply→Ready p50" "pod start SLI p50" "SLI p90" \
    "daemon RSS" "daemon PSS" shims "shims RSS" "shims PSS"
for rt in $runtimes; do
    read -r drss dpss n srss spss <<<"${MEM[$rt]}"
    printf '%-11s %15ss %20s %20s %9s KiB %8s KiB %6s %8s KiB %8s KiB\n' "$rt" "${P50[$rt]}" "${SLI50[$rt]}" \
        "${SLI90[$rt]}" "$drss" "$dpss" "$n" "$srss" "$spss"
done
echo
for rt in $runtimes; do
    echo "$rt: ${LEFT[$rt]} shim processes left after the last run (stopped sandboxes not yet removed by the kubelet)"
done
if [ -n "${MEM[berth]:-}" ] && [ -n "${MEM[containerd]:-}" ]; then
    read -r b_drss b_dpss _ b_srss b_spss <<<"${MEM[berth]}"
    read -r c_drss c_dpss _ c_srss c_spss <<<"${MEM[containerd]}"
    echo
    echo "berth/containerd: apply→Ready p50 $(calc "${P50[berth]} / ${P50[containerd]}")," \
        "RSS (daemon + shims) $(calc "($b_drss + $b_srss) / ($c_drss + $c_srss)")," \
        "PSS (daemon + shims) $(calc "($b_dpss + $b_spss) / ($c_dpss + $c_spss)")"
fi

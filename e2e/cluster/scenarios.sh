#!/usr/bin/env bash
# The scenario suite: what a user does through kubectl on the one-node cluster of cluster.sh, and what
# the node holds afterwards. Each scenario runs in a namespace of its own, checks what kubectl shows,
# deletes the namespace, and then checks that the runtime is back to what it held before (no sandbox,
# container, shim, network namespace, pod IP or mount left).
#
#   e2e/cluster/scenarios.sh [SCENARIO...]     (default: all, in order; `list` prints their names)
#
# Needs a cluster that is up (cluster.sh up); prints `PASS: <name>` or `FAIL: <name>: <why>` per
# scenario and last `N passed, M failed`; exits non-zero if any failed. BERTH_SCENARIO_KEEP=1 keeps the
# namespace of a failed scenario for a look.
# shellcheck disable=SC2016 # the conditions given to `eventually eval` are single-quoted on purpose
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=$ROOT/e2e/cluster/cluster.sh
eval "$("$CLUSTER" env)" || exit 2
RUN=/run/berth-cluster
RUNTIME=$(cat "$RUN/runtime")
NODE=berth-node
BUSYBOX=registry.k8s.io/e2e-test-images/busybox:1.29-2
BUSYBOX2=registry.k8s.io/e2e-test-images/busybox:1.36.1-1

crictl() { command crictl --config "$RUN/crictl.yaml" "$@"; }

# ------------------------------------------------------------------------------------------ helpers

FAILED_WHY=""
fail() {
    FAILED_WHY="$*"
    return 1
}

# check WHAT CMD...: runs CMD; on failure records WHAT and returns 1.
check() {
    local what=$1
    shift
    if ! "$@" >/tmp/berth-scenario.out 2>&1; then
        fail "$what: $(tail -c 600 /tmp/berth-scenario.out | tr '\n' ' ')"
        return 1
    fi
}

# eventually SECONDS WHAT CMD...: retries CMD until it succeeds. CMD's arguments are expanded once, by
# the caller: a condition that reads the cluster goes through `eval '…'` so each try reads it again.
eventually() {
    local secs=$1 what=$2 _
    shift 2
    for _ in $(seq 1 $((secs * 2))); do
        if "$@" >/tmp/berth-scenario.out 2>&1; then return 0; fi
        sleep 0.5
    done
    fail "$what (after ${secs}s): $(tail -c 600 /tmp/berth-scenario.out | tr '\n' ' ')"
}

k() { kubectl -n "$NS" "$@"; }

apply() { k apply -f - >/dev/null; }

ready() { # POD...: wait until Ready
    k wait --for=condition=Ready --timeout=180s "${@/#/pod/}" >/dev/null 2>&1 ||
        fail "pods not Ready: $*: $(k get pods -o wide 2>&1 | tail -n +2 | tr '\n' ';')"
}

pod() { # NAME IMAGE SCRIPT [extra pod spec yaml, indented 2] : a pod running `sh -c SCRIPT`
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, labels: {app: $1}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: $2
    command: ["sh", "-c", "$3"]
${4:-}
EOF
}

jp() { k get "$1" -o "jsonpath=$2"; }

# What the runtime holds for the cluster: sandboxes, containers, shims, netns, pod IPs, mounts. The
# sandboxes and containers of kube-system's add-on (CoreDNS) are left out: after restart-node the
# kubelet keeps the previous sandbox and its exited container (its GC keeps one dead container per
# container of a live pod), which is no leak. Its running shim, netns, IP and mounts are counted.
inventory() {
    local sys_pods sys_ctrs
    sys_pods=$(crictl pods -q --namespace kube-system 2>/dev/null | wc -l)
    sys_ctrs=$(crictl ps -aq --label io.kubernetes.pod.namespace=kube-system 2>/dev/null | wc -l)
    echo "pods $(($(crictl pods -q 2>/dev/null | wc -l) - sys_pods))"
    echo "containers $(($(crictl ps -aq 2>/dev/null | wc -l) - sys_ctrs))"
    case $RUNTIME in
    berth)
        echo "shims $(pgrep -fc -- "--dir $RUN/berth/pods/" || true)"
        echo "netns $(find "$RUN/berth/netns" -mindepth 1 2>/dev/null | wc -l)"
        ;;
    containerd) echo "shims $(pgrep -fc -- "-address $RUN/containerd.sock" || true)" ;;
    esac
    echo "ips $(find /var/lib/cni/networks/berth-cluster -name '10.*' 2>/dev/null | wc -l)"
    echo "mounts $(findmnt -rno TARGET | grep -c "^$RUN/\(berth\|containerd\)/" || true)"
}

# ---------------------------------------------------------------------------------------- scenarios

s_deployment() {
    k create deployment web --image="$BUSYBOX" --replicas=3 -- sh -c 'sleep 100000' >/dev/null
    check "3 replicas available" k rollout status deployment/web --timeout=180s || return 1
    k scale deployment/web --replicas=10 >/dev/null
    check "scaled to 10" k rollout status deployment/web --timeout=240s || return 1
    [ "$(jp deployment/web '{.status.readyReplicas}')" = 10 ] || fail "10 replicas not ready" || return 1
    k scale deployment/web --replicas=3 >/dev/null
    eventually 120 "scaled back to 3 pods" eval 'test "$(k get pods -l app=web --no-headers | wc -l)" = 3' || return 1
    k set image deployment/web busybox="$BUSYBOX2" >/dev/null
    check "rolling update" k rollout status deployment/web --timeout=240s || return 1
    # The old pods go once their grace period (30 s: sh ignores SIGTERM) is over.
    eventually 120 "after the update only the new image runs" eval \
        'test "$(k get pods -l app=web -o "jsonpath={range .items[*]}{.spec.containers[0].image}{\"\n\"}{end}" | sort -u)" = "$BUSYBOX2"'
}

s_probes() {
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  containers:
  - name: web
    image: $BUSYBOX
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && touch /tmp/alive && httpd -f -p 8080 -h /www"]
    ports: [{containerPort: 8080}]
    startupProbe: {exec: {command: ["test", "-f", "/tmp/alive"]}, periodSeconds: 1, failureThreshold: 30}
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: dies}
spec:
  containers:
  - name: c
    image: $BUSYBOX
    command: ["sh", "-c", "echo started at \$(date +%s); touch /tmp/ok; sleep 100000"]
    livenessProbe: {exec: {command: ["sh", "-c", "test -f /tmp/ok && rm /tmp/ok"]}, periodSeconds: 1, failureThreshold: 2, initialDelaySeconds: 2}
EOF
    ready probed || return 1
    # The liveness probe of `dies` passes once, then fails: the kubelet restarts the container.
    eventually 120 "a failing liveness probe restarts the container" \
        eval 'test "$(jp pod/dies "{.status.containerStatuses[0].restartCount}")" -ge 1' || return 1
    eventually 60 "logs --previous" sh -c "kubectl -n $NS logs dies --previous | grep -q 'started at'" || return 1
    [ "$(jp pod/probed '{.status.containerStatuses[0].restartCount}')" = 0 ] ||
        fail "the healthy pod was restarted"
}

s_init_sidecar_job_daemonset() {
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: inits}
spec:
  initContainers:
  - {name: first, image: $BUSYBOX, command: ["sh", "-c", "echo one > /work/order"], volumeMounts: [{name: w, mountPath: /work}]}
  - name: sidecar
    image: $BUSYBOX
    restartPolicy: Always
    command: ["sh", "-c", "echo sidecar >> /work/order; sleep 100000"]
    volumeMounts: [{name: w, mountPath: /work}]
  containers:
  - {name: main, image: $BUSYBOX, command: ["sh", "-c", "echo main >> /work/order; sleep 100000"], volumeMounts: [{name: w, mountPath: /work}]}
  volumes: [{name: w, emptyDir: {}}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: job}
spec:
  completions: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: $BUSYBOX, command: ["sh", "-c", "echo done"]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds}
spec:
  selector: {matchLabels: {app: ds}}
  template:
    metadata: {labels: {app: ds}}
    spec:
      terminationGracePeriodSeconds: 2
      containers: [{name: c, image: $BUSYBOX, command: ["sh", "-c", "sleep 100000"]}]
EOF
    ready inits || return 1
    [ "$(k exec inits -c main -- cat /work/order | tr '\n' ' ')" = "one sidecar main " ] ||
        fail "init order: $(k exec inits -c main -- cat /work/order | tr '\n' ' ')" || return 1
    check "job completes" k wait --for=condition=Complete --timeout=180s job/job || return 1
    check "daemonset ready" k rollout status daemonset/ds --timeout=180s
}

s_volumes() {
    local host
    host=$(mktemp -d /var/tmp/berth-scenario-host.XXXXXX)
    echo from-host >"$host/file"
    chmod 755 "$host"
    k create configmap cm --from-literal=key=cm-value >/dev/null
    k create secret generic sec --from-literal=password=s3cret >/dev/null
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: vols, labels: {tier: test}}
spec:
  containers:
  - name: c
    image: $BUSYBOX
    command: ["sh", "-c", "sleep 100000"]
    volumeMounts:
    - {name: disk, mountPath: /disk}
    - {name: mem, mountPath: /mem}
    - {name: cm, mountPath: /cm}
    - {name: sec, mountPath: /sec}
    - {name: token, mountPath: /token}
    - {name: down, mountPath: /down}
    - {name: host, mountPath: /host}
    - {name: disk, mountPath: /sub, subPath: nested/dir}
  volumes:
  - {name: disk, emptyDir: {}}
  - {name: mem, emptyDir: {medium: Memory}}
  - {name: cm, configMap: {name: cm}}
  - {name: sec, secret: {secretName: sec}}
  - name: token
    projected: {sources: [{serviceAccountToken: {path: token, expirationSeconds: 3600}}]}
  - name: down
    downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
  - {name: host, hostPath: {path: $host, type: Directory}}
EOF
    ready vols || {
        rm -rf "$host"
        return 1
    }
    local out
    out=$(k exec vols -- sh -c 'echo x > /disk/f && cat /disk/f; grep -q " /mem tmpfs" /proc/mounts && echo tmpfs;
        cat /cm/key; echo; cat /sec/password; echo; test -s /token/token && echo token;
        cat /down/labels; echo; cat /host/file; echo y > /sub/g && cat /disk/nested/dir/g' 2>&1)
    rm -rf "$host"
    local want
    want=$(printf 'x\ntmpfs\ncm-value\ns3cret\ntoken\ntier="test"\nfrom-host\ny')
    [ "$out" = "$want" ] || fail "volume contents: $(echo "$out" | tr '\n' '|')"
}

s_security() {
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: restricted}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 3000, fsGroup: 2000, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: c
    image: $BUSYBOX
    command: ["sh", "-c", "sleep 100000"]
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {drop: ["ALL"], add: ["NET_BIND_SERVICE"]}
    resources:
      requests: {cpu: 100m, memory: 32Mi}
      limits: {cpu: 200m, memory: 64Mi}
    resizePolicy: [{resourceName: cpu, restartPolicy: NotRequired}, {resourceName: memory, restartPolicy: NotRequired}]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: privileged}
spec:
  containers:
  - {name: c, image: $BUSYBOX, command: ["sh", "-c", "sleep 100000"], securityContext: {privileged: true}}
EOF
    ready restricted privileged || return 1
    local out
    out=$(k exec restricted -- sh -c 'id -u; id -g; id -G; touch /x 2>&1 | grep -q "Read-only" && echo ro;
        touch /data/f && stat -c %g /data/f; grep -E "^(CapBnd|CapEff|Seccomp|NoNewPrivs):" /proc/self/status | tr -s "\t" " "')
    local want
    # A non-root process keeps no effective capabilities (no ambient ones, as with containerd and CRI-O);
    # the bounding set is what the spec asked for.
    want=$(printf '1000\n3000\n3000 2000\nro\n2000\nCapEff: 0000000000000000\nCapBnd: 0000000000000400\nNoNewPrivs: 1\nSeccomp: 2')
    [ "$out" = "$want" ] || fail "restricted pod sees: $(echo "$out" | tr '\n' '|')" || return 1
    check "privileged pod can add a link" k exec privileged -- ip link add scen7 type bridge || return 1
    check "an unprivileged pod cannot" sh -c "! kubectl -n $NS exec restricted -- ip link add scen7 type bridge" || return 1
    # Limits land in the container's cgroup, and an in-place resize changes them without a restart.
    check "the memory limit in the container's cgroup" sh -c \
        "kubectl -n $NS exec restricted -- sh -c 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max' | grep -qx 67108864" || return 1
    k patch pod restricted --subresource resize \
        -p '{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"100m","memory":"32Mi"},"limits":{"cpu":"300m","memory":"96Mi"}}}]}}' >/dev/null ||
        fail "resize refused" || return 1
    eventually 120 "the resize lands in the cgroup" sh -c \
        "kubectl -n $NS exec restricted -- sh -c 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max' | grep -qx 100663296" || return 1
    [ "$(jp pod/restricted '{.status.containerStatuses[0].restartCount}')" = 0 ] || fail "the resize restarted the container"
}

s_kubectl_io() {
    # shellcheck disable=SC2016 # the script runs in the container
    pod io "$BUSYBOX" 'echo line1; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done' "  - name: quit
    image: $BUSYBOX
    command: [\"sh\", \"-c\", \"if [ -e /d/ran ]; then exec sleep 100000; fi; touch /d/ran; echo bye; exit 3\"]
    volumeMounts: [{name: d, mountPath: /d}]
  volumes: [{name: d, emptyDir: {}}]"
    eventually 120 "io running" sh -c "kubectl -n $NS get pod io -o jsonpath='{.status.containerStatuses[?(@.name==\"c\")].ready}' | grep -q true" || return 1
    # exec with exit codes
    k exec io -c c -- sh -c 'exit 7' >/dev/null 2>&1
    [ $? = 7 ] || fail "exec exit code" || return 1
    # exec -it: a tty that sees a resize (script gives kubectl a terminal)
    local tty
    # (the size arrives on the resize stream right after the exec starts, as with every runtime: the
    # shell waits a moment; a line may start with `^@`, the echo of a NUL that script(1) types once
    # its own stdin ends)
    tty=$(script -qec "stty cols 91 rows 37; kubectl -n $NS exec -it io -c c -- sh -c 'sleep 1; stty size; tty'" /dev/null | tr -d '\r')
    echo "$tty" | grep -q '37 91$' || fail "exec -it size: $tty" || return 1
    echo "$tty" | grep -q '^/dev/pts/' || fail "exec -it has no tty: $tty" || return 1
    # logs -f follows
    timeout 5 kubectl -n "$NS" logs -f io -c c >/tmp/berth-scenario-follow 2>&1
    grep -q 'tick' /tmp/berth-scenario-follow || fail "logs -f: $(head -c 200 /tmp/berth-scenario-follow)" || return 1
    # logs --previous of the restarted container: it fails once, then runs (a container failing for
    # good is not used: the kubelet removes all but its newest dead instance, and its status may name
    # the one before as the previous one for a while)
    eventually 120 "quit restarted once and running" sh -c \
        "kubectl -n $NS get pod io -o jsonpath='{.status.containerStatuses[?(@.name==\"quit\")].state.running}' | grep -q started" || return 1
    check "logs --previous" sh -c "kubectl -n $NS logs io -c quit --previous | grep -q bye" || return 1
    # cp both ways
    echo from-host >/tmp/berth-scenario-cp
    check "cp into the pod" k cp /tmp/berth-scenario-cp io:/tmp/in -c c || return 1
    [ "$(k exec io -c c -- cat /tmp/in)" = from-host ] || fail "cp in" || return 1
    k exec io -c c -- sh -c 'echo from-pod > /tmp/out'
    check "cp out of the pod" k cp io:/tmp/out /tmp/berth-scenario-cp2 -c c || return 1
    [ "$(cat /tmp/berth-scenario-cp2)" = from-pod ] || fail "cp out" || return 1
    # attach: the container's output arrives
    pod att "$BUSYBOX" 'while true; do echo attached-out; sleep 1; done'
    ready att || return 1
    timeout 5 kubectl -n "$NS" attach att -c c >/tmp/berth-scenario-attach 2>&1
    grep -q attached-out /tmp/berth-scenario-attach || fail "attach: $(head -c 200 /tmp/berth-scenario-attach)" || return 1
    # port-forward
    pod pf "$BUSYBOX" 'mkdir -p /www && echo forwarded > /www/index.html && httpd -f -p 8080 -h /www'
    ready pf || return 1
    kubectl -n "$NS" port-forward pod/pf 18080:8080 >/dev/null 2>&1 &
    local pfpid=$!
    eventually 30 "port-forward" sh -c 'curl -fsS http://127.0.0.1:18080/ | grep -q forwarded'
    local r=$?
    kill $pfpid 2>/dev/null
    [ $r = 0 ] || return 1
    # debug: an ephemeral container in the pid namespace of a running container
    check "kubectl debug" k debug io --image="$BUSYBOX" --target=c --container=dbg -- sh -c 'sleep 100000' || return 1
    eventually 120 "the ephemeral container runs" sh -c \
        "kubectl -n $NS get pod io -o jsonpath='{.status.ephemeralContainerStatuses[0].state.running}' | grep -q started" || return 1
    k exec io -c dbg -- ps | grep -q 'tick\|while' || fail "the debug container does not see the target's processes"
}

s_network() {
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: $BUSYBOX
    command: ["sh", "-c", "mkdir -p /www && echo served > /www/index.html && httpd -f -p 8080 -h /www"]
    ports: [{containerPort: 8080, hostPort: 18081}]
---
apiVersion: v1
kind: Service
metadata: {name: server}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers: [{name: c, image: $BUSYBOX, command: ["sh", "-c", "sleep 100000"]}]
EOF
    pod client "$BUSYBOX" 'sleep 100000'
    ready server hostnet client || return 1
    local ip
    ip=$(jp service/server '{.spec.clusterIP}')
    eventually 60 "the ClusterIP from another pod" sh -c \
        "kubectl -n $NS exec client -- wget -qO- -T 2 http://$ip/ | grep -q served" || return 1
    eventually 30 "the hostPort from the node" sh -c 'curl -fsS http://10.86.0.1:18081/ | grep -q served' || return 1
    k exec hostnet -- ip link show berthnode0 >/dev/null 2>&1 || fail "hostNetwork pod does not see the node's interfaces"
}

s_termination() {
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: graceful}
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: c
    image: $BUSYBOX
    command: ["sh", "-c", "trap 'echo got-term > /mnt/log/term; exit 0' TERM; while true; do sleep 1; done"]
    lifecycle: {preStop: {exec: {command: ["sh", "-c", "echo prestop > /mnt/log/prestop"]}}}
    volumeMounts: [{name: log, mountPath: /mnt/log}]
  volumes: [{name: log, hostPath: {path: /var/tmp/berth-scenario-term, type: DirectoryOrCreate}}]
EOF
    pod stubborn "$BUSYBOX" "trap '' TERM; while true; do sleep 1; done" "  terminationGracePeriodSeconds: 600"
    rm -rf /var/tmp/berth-scenario-term
    ready graceful stubborn || return 1
    check "graceful delete" k delete pod graceful --timeout=60s || return 1
    [ "$(cat /var/tmp/berth-scenario-term/prestop 2>/dev/null)" = prestop ] || fail "preStop did not run" || return 1
    [ "$(cat /var/tmp/berth-scenario-term/term 2>/dev/null)" = got-term ] || fail "no SIGTERM after preStop" || return 1
    rm -rf /var/tmp/berth-scenario-term
    check "forced delete" k delete pod stubborn --grace-period=0 --force || return 1
    eventually 60 "the forced pod's container is gone from the runtime" \
        sh -c "! crictl ps -q --label io.kubernetes.pod.name=stubborn --label io.kubernetes.pod.namespace=$NS | grep -q ."
}

s_images() {
    # The registry that wants a password (registry.sh's AUTH_USER, AUTH_PASSWORD and AUTH_IMAGES).
    local areg
    areg=$("$ROOT/e2e/images/registry.sh" start-auth | tail -n1)
    k create secret docker-registry pull --docker-server="$areg" --docker-username=berth \
        --docker-password=berth-e2e-pull >/dev/null
    apply <<EOF
apiVersion: v1
kind: Pod
metadata: {name: always}
spec:
  terminationGracePeriodSeconds: 2
  containers: [{name: c, image: $BUSYBOX, imagePullPolicy: Always, command: ["sh", "-c", "sleep 100000"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: ifnotpresent}
spec:
  terminationGracePeriodSeconds: 2
  containers: [{name: c, image: $BUSYBOX, imagePullPolicy: IfNotPresent, command: ["sh", "-c", "sleep 100000"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: never-missing}
spec:
  containers: [{name: c, image: registry.k8s.io/e2e-test-images/never-pulled:1.0, imagePullPolicy: Never}]
---
apiVersion: v1
kind: Pod
metadata: {name: secret-pull}
spec:
  terminationGracePeriodSeconds: 2
  imagePullSecrets: [{name: pull}]
  containers: [{name: c, image: $areg/e2e-test-images/busybox:1.37.0-1, command: ["sh", "-c", "sleep 100000"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  containers: [{name: c, image: registry.k8s.io/e2e-test-images/does-not-exist:0.0}]
EOF
    ready always ifnotpresent secret-pull || return 1
    eventually 60 "Never with a missing image says ErrImageNeverPull" sh -c \
        "kubectl -n $NS get pod never-missing -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' | grep -q ErrImageNeverPull" || return 1
    eventually 120 "a missing image shows ErrImagePull or ImagePullBackOff" sh -c \
        "kubectl -n $NS get pod missing -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' | grep -qE 'ErrImagePull|ImagePullBackOff'" || return 1
    local msg
    msg=$(k get events --field-selector involvedObject.name=missing -o jsonpath='{range .items[*]}{.message}{"\n"}{end}')
    echo "$msg" | grep -q 'does-not-exist' || fail "the pull error does not say what failed: $msg"
}

s_summary() {
    pod busy "$BUSYBOX" 'dd if=/dev/zero of=/tmp/f bs=1M count=8; while true; do :; done'
    ready busy || return 1
    local url="/api/v1/nodes/$NODE/proxy/stats/summary"
    eventually 90 "summary API has CPU, memory, fs and network for the pod" sh -c "kubectl get --raw $url |
        python3 -c '
import json,sys
s=json.load(sys.stdin)
p=[p for p in s[\"pods\"] if p[\"podRef\"][\"name\"]==\"busy\" and p[\"podRef\"][\"namespace\"]==\"$NS\"][0]
c=p[\"containers\"][0]
assert c[\"cpu\"][\"usageNanoCores\"]>0, c[\"cpu\"]
assert c[\"memory\"][\"workingSetBytes\"]>0, c[\"memory\"]
assert c[\"rootfs\"][\"usedBytes\"]>=8*1024*1024, c[\"rootfs\"]
assert p[\"network\"][\"interfaces\"], p.get(\"network\")
assert p[\"cpu\"][\"usageNanoCores\"]>0
assert s[\"node\"][\"runtime\"][\"imageFs\"][\"capacityBytes\"]>0
'"
}

s_restarts() {
    k create deployment keep --image="$BUSYBOX" --replicas=2 -- sh -c 'sleep 100000' >/dev/null
    check "deployment ready" k rollout status deployment/keep --timeout=180s || return 1
    local before after
    before=$(crictl ps -q --label "io.kubernetes.pod.namespace=$NS" | sort)
    # The runtime killed hard: pods keep running, the node stays (or returns to) Ready.
    "$CLUSTER" kill-runtime >/dev/null || fail "killing the runtime" || return 1
    eventually 120 "node Ready after the runtime came back" sh -c \
        "kubectl get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True" || return 1
    after=$(crictl ps -q --label "io.kubernetes.pod.namespace=$NS" | sort)
    [ "$before" = "$after" ] || fail "containers changed across a runtime kill" || return 1
    k scale deployment/keep --replicas=3 >/dev/null
    check "the kubelet syncs again" k rollout status deployment/keep --timeout=180s || return 1
    before=$(crictl ps -q --label "io.kubernetes.pod.namespace=$NS" | sort)
    "$CLUSTER" restart-kubelet >/dev/null || fail "restarting the kubelet" || return 1
    sleep 20
    after=$(crictl ps -q --label "io.kubernetes.pod.namespace=$NS" | sort)
    [ "$before" = "$after" ] || fail "a kubelet restart changed the containers" || return 1
    # The whole node stops (as in a reboot: processes and /run gone) and starts again.
    "$CLUSTER" restart-node >/dev/null || fail "restarting the node" || return 1
    check "pods come back after a node restart" k rollout status deployment/keep --timeout=300s || return 1
    eventually 120 "3 pods running again" sh -c \
        "test \$(kubectl -n $NS get pods -l app=keep --field-selector=status.phase=Running --no-headers | wc -l) = 3"
}

SCENARIOS=(deployment probes init_sidecar_job_daemonset volumes security kubectl_io network termination
    images summary restarts)

# ------------------------------------------------------------------------------------------ runner

run_one() {
    local name=$1 before after start
    NS="s-${name//_/-}"
    FAILED_WHY=""
    before=$(inventory)
    start=$(date +%s)
    kubectl create namespace "$NS" >/dev/null 2>&1
    # The namespace's default service account must exist before pods are created.
    eventually 60 "service account" kubectl -n "$NS" get serviceaccount default >/dev/null 2>&1
    local ok=0
    "s_$name" || ok=1
    if [ $ok != 0 ] && [ "${BERTH_SCENARIO_KEEP:-}" = 1 ]; then
        echo "FAIL: $name: $FAILED_WHY (namespace $NS kept)"
        return 1
    fi
    kubectl delete namespace "$NS" --timeout=300s >/dev/null 2>&1 || { [ $ok = 0 ] && ok=1 && FAILED_WHY="namespace deletion hung"; }
    # The kubelet removes what the namespace ran; the runtime must then hold what it held before.
    if ! eventually 180 "the node back to its inventory" sh -c "test \"\$(BERTH_INV=1 $0 inventory)\" = \"$before\""; then
        after=$(inventory | tr '\n' ' ')
        [ $ok = 0 ] && FAILED_WHY="leaked: before $(echo "$before" | tr '\n' ' ') after $after"
        ok=1
    fi
    if [ $ok = 0 ]; then
        echo "PASS: $name ($(($(date +%s) - start))s)"
    else
        echo "FAIL: $name: $FAILED_WHY"
    fi
    return $ok
}

if [ "${1:-}" = inventory ]; then
    inventory
    exit 0
fi
if [ "${1:-}" = list ]; then
    printf '%s\n' "${SCENARIOS[@]}"
    exit 0
fi
[ $# -gt 0 ] && SCENARIOS=("$@")
passed=0
failed=0
for s in "${SCENARIOS[@]}"; do
    if run_one "$s"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "$passed passed, $failed failed"
[ $failed = 0 ]

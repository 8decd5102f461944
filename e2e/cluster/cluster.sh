#!/usr/bin/env bash
# A one-node Kubernetes cluster on this machine, on berth (or on the reference containerd 2.x), built
# from the project's own pinned tools (tools/build.sh) and images (e2e/images/registry.sh).
#
#   e2e/cluster/cluster.sh up [--runtime berth|containerd]   start it; the last two lines on stdout are
#                                                            `export KUBECONFIG=…` and `export PATH=…`
#   e2e/cluster/cluster.sh up --runtime none                 the control plane alone (etcd, apiserver,
#                                                            controller-manager, scheduler): no node here
#   e2e/cluster/cluster.sh node-kubeconfig NAME              mint a kubelet client certificate for a node
#                                                            NAME running elsewhere; prints its kubeconfig
#   e2e/cluster/cluster.sh mirrors DIR REGISTRY              write certs.d/<host>/hosts.toml under DIR
#                                                            sending every mirrored registry to REGISTRY
#   e2e/cluster/cluster.sh env                               print those two lines again
#   e2e/cluster/cluster.sh down                              stop it and remove everything it made
#   e2e/cluster/cluster.sh status                            what runs, the node's Ready condition, CoreDNS
#   e2e/cluster/cluster.sh kill-runtime                      SIGKILL the runtime, start it again
#   e2e/cluster/cluster.sh restart-kubelet                   stop the kubelet and start it again
#   e2e/cluster/cluster.sh restart-node                      as a reboot: every node process, container
#                                                            and the runtime's state in /run go; then the
#                                                            runtime, kubelet and kube-proxy start again
#
# Everything listens on 127.0.0.1 or on the node's own address, NODE_IP on a bridge without ports (pods
# must reach the apiserver through a non-loopback address; nothing routes off the machine). Pods get
# POD_CIDR from a bridge network of its own; Services SVC_CIDR through kube-proxy in iptables mode. The
# cluster DNS is kubeadm's add-on (coredns.yaml: CoreDNS behind the kube-dns Service at SVC_DNS), the
# kubelet's clusterDNS for the domain CLUSTER_DOMAIN; `up` waits until CoreDNS is Ready.
# Files: $BERTH_CLUSTER_DIR (default /var/lib/berth-cluster: certificates, etcd, kubelet, logs) and
# /run/berth-cluster (sockets, runtime state). The runtime's mirrors send registry.k8s.io, docker.io,
# gcr.io, quay.io, k8s.gcr.io and public.ecr.aws to the project's local registry.
#
# Env: BERTH_CLUSTER_DIR, BERTH_PROFILE (debug|release: which cargo build of berth, default debug),
# BERTH_TOOLS_CACHE (see tools/build.sh).
set -Eeuo pipefail
trap 'echo "cluster.sh: failed: line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${BERTH_CLUSTER_DIR:-/var/lib/berth-cluster}
RUN=/run/berth-cluster
NODE=berth-node
NODE_IF=berthnode0
NODE_IP=10.86.0.1
POD_CIDR=10.88.0.0/16
POD_BRIDGE=berthk0
SVC_CIDR=10.96.0.0/16
SVC_APISERVER=10.96.0.1
SVC_DNS=10.96.0.10
CLUSTER_DOMAIN=cluster.local
NET_NAME=berth-cluster
PKI=$DIR/pki
LOGS=$DIR/logs
PIDS=$RUN/pids
MIRRORED="registry.k8s.io docker.io gcr.io quay.io k8s.gcr.io public.ecr.aws"

say() { echo "cluster.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# ---------------------------------------------------------------------------------------- helpers

tools_dir() { "$ROOT/tools/build.sh" "$@" | tail -n1; }

# start NAME CMD...: runs CMD in its own session, logging to $LOGS/NAME.log, pid in $PIDS/NAME; the
# command line is kept in $PIDS/NAME.cmd for `again`.
start() {
    local name=$1
    shift
    mkdir -p "$LOGS" "$PIDS"
    printf '%s\0' "$@" >"$PIDS/$name.cmd"
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$PIDS/$name"
}

# again NAME: starts NAME with the command line it last had.
again() {
    local cmd=()
    mapfile -d '' cmd <"$PIDS/$1.cmd"
    start "$1" "${cmd[@]}"
}

running() { [ -f "$PIDS/$1" ] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }

# stop NAME: SIGTERM, then SIGKILL after 20 s.
stop() {
    local name=$1 pid _
    [ -f "$PIDS/$name" ] || return 0
    pid=$(cat "$PIDS/$name")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 200); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDS/$name"
}

# kill9 NAME: SIGKILL, no grace.
kill9() {
    [ -f "$PIDS/$1" ] && kill -KILL "$(cat "$PIDS/$1")" 2>/dev/null
    rm -f "$PIDS/$1"
}

# wait_for WHAT SECONDS CMD...: retries CMD until it succeeds; fails naming WHAT.
wait_for() {
    local what=$1 secs=$2 _
    shift 2
    for _ in $(seq 1 $((secs * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "timed out after ${secs}s waiting for $what (logs in $LOGS)"
}

kc() { "$BIN/kubectl" --kubeconfig="$PKI/admin.kubeconfig" "$@"; }

# --------------------------------------------------------------------------------------- certificates

# cert NAME CN [O] USAGE [SAN]
cert() {
    local name=$1 cn=$2 o=$3 usage=$4 san=${5:-} subj
    subj="/CN=$cn"
    [ -n "$o" ] && subj="$subj/O=$o"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj" 2>/dev/null
    {
        echo "extendedKeyUsage=$usage"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        [ -n "$san" ] && echo "subjectAltName=$san"
    } >"$PKI/$name.ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 365 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
    chmod 600 "$PKI/$name.key"
}

kubeconfig() { # NAME: $PKI/NAME.kubeconfig for the client cert NAME
    local k="$BIN/kubectl --kubeconfig=$PKI/$1.kubeconfig"
    $k config set-cluster local --server="https://$NODE_IP:6443" --certificate-authority="$PKI/ca.crt" \
        --embed-certs >/dev/null
    $k config set-credentials "$1" --client-certificate="$PKI/$1.crt" --client-key="$PKI/$1.key" \
        --embed-certs >/dev/null
    $k config set-context local --cluster=local --user="$1" >/dev/null
    $k config use-context local >/dev/null
    chmod 600 "$PKI/$1.kubeconfig"
}

make_pki() {
    [ -f "$PKI/admin.kubeconfig" ] && return 0
    mkdir -p "$PKI"
    chmod 700 "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 \
        -subj /CN=berth-cluster-ca 2>/dev/null
    cert apiserver kube-apiserver "" serverAuth \
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$SVC_APISERVER,IP:$NODE_IP"
    cert apiserver-kubelet-client kube-apiserver "" clientAuth
    cert front-proxy-client system:auth-proxy "" clientAuth
    cert admin admin system:masters clientAuth
    cert controller-manager system:kube-controller-manager "" clientAuth
    cert scheduler system:kube-scheduler "" clientAuth
    cert kubelet "system:node:$NODE" system:nodes clientAuth
    cert kube-proxy system:kube-proxy "" clientAuth
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    chmod 600 "$PKI/sa.key"
    for u in admin controller-manager scheduler kubelet kube-proxy; do kubeconfig $u; done
}

# ------------------------------------------------------------------------------------------ network

node_network() {
    if ! ip link show "$NODE_IF" >/dev/null 2>&1; then
        ip link add "$NODE_IF" type bridge
        ip addr add "$NODE_IP/32" dev "$NODE_IF"
        ip link set "$NODE_IF" up
    fi
    # kube-proxy needs the first two, the kubelet sets the rest (its kernel defaults); remember what
    # they were for `down`.
    [ -f "$RUN/sysctl.before" ] || sysctl net.ipv4.ip_forward net.ipv4.conf.all.route_localnet \
        vm.overcommit_memory kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys \
        kernel.keys.root_maxbytes | sed 's/ = /=/' >"$RUN/sysctl.before"
    sysctl -qw net.ipv4.ip_forward=1
    modprobe br_netfilter 2>/dev/null || true
    mkdir -p "$DIR/net.d"
    # No default route: pods reach the node, Services and each other, nothing off the machine.
    cat >"$DIR/net.d/10-$NET_NAME.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NET_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_CIDR" }]],
        "routes": [{ "dst": "$SVC_CIDR" }, { "dst": "$NODE_IP/32" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "bandwidth", "capabilities": { "bandwidth": true } }
  ]
}
EOF
}

# --------------------------------------------------------------------------------------- runtimes

mirrors() { # DIR REGISTRY: containerd-style certs.d/<host>/hosts.toml for every mirrored registry
    local d=$1 reg=$2 h
    for h in $MIRRORED; do
        mkdir -p "$d/$h"
        printf 'server = "https://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
            "$h" "$reg" >"$d/$h/hosts.toml"
    done
}

# $RUN/crictl.yaml: crictl --config for the runtime of $RUN/endpoint.
crictl_config() {
    printf 'runtime-endpoint: %s\nimage-endpoint: %s\ntimeout: 30\n' "$(cat "$RUN/endpoint")" \
        "$(cat "$RUN/endpoint")" >"$RUN/crictl.yaml"
}

berth_bin() {
    local profile=${BERTH_PROFILE:-debug} flag=()
    [ "$profile" = release ] && flag=(--release)
    (cd "$ROOT" && cargo build -q "${flag[@]}" --bin berthd --bin berth-shim --bin berthctl >&2)
    echo "$ROOT/target/$profile"
}

start_berth() {
    local bin
    bin=$(berth_bin)
    mirrors "$DIR/berth/certs.d" "$REGISTRY"
    mkdir -p "$DIR/berth"
    cat >"$DIR/berth/config.toml" <<EOF
version = 1
root = "$DIR/berth/root"
state = "$RUN/berth"

[grpc]
address = "$RUN/berth.sock"

[debug]
level = "info"

[metrics]
address = "127.0.0.1:9830"

[cri]
cgroup_driver = "cgroupfs"

[cri.registry]
config_path = "$DIR/berth/certs.d"

[cni]
bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
conf_dir = "$DIR/net.d"
EOF
    start runtime "$bin/berthd" --config "$DIR/berth/config.toml"
    echo "unix://$RUN/berth.sock" >"$RUN/endpoint"
    crictl_config
    wait_for "berthd's socket" 60 test -S "$RUN/berth.sock"
}

start_containerd() {
    mirrors "$DIR/containerd/certs.d" "$REGISTRY"
    mkdir -p "$DIR/containerd"
    cat >"$DIR/containerd/config.toml" <<EOF
version = 3
root = "$DIR/containerd/root"
state = "$RUN/containerd"
[grpc]
  address = "$RUN/containerd.sock"
# Its own opt dir, no NRI socket (machine-wide /var/run/nri), as bench/run.sh does.
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.10.1"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$DIR/containerd/certs.d"
[plugins."io.containerd.cri.v1.runtime"]
  # Lowering a process's oom_score_adj is refused on this machine (no CAP_SYS_RESOURCE), which fails
  # every sandbox's -998; berth clamps it by itself.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
    conf_dir = "$DIR/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = false
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
EOF
    # containerd finds containerd-shim-runc-v2 in PATH.
    start runtime env PATH="$BIN:$PATH" "$BIN/containerd" --config "$DIR/containerd/config.toml"
    echo "unix://$RUN/containerd.sock" >"$RUN/endpoint"
    crictl_config
    wait_for "containerd's socket" 60 test -S "$RUN/containerd.sock"
}

# ------------------------------------------------------------------------------------ control plane

start_control_plane() {
    start etcd "$BIN/etcd" --name default --data-dir "$DIR/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster default=http://127.0.0.1:2380 --log-level warn --unsafe-no-fsync
    wait_for "etcd" 60 curl -fsS http://127.0.0.1:2379/health

    start kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
        --bind-address="$NODE_IP" --secure-port=6443 --advertise-address="$NODE_IP" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" --service-cluster-ip-range="$SVC_CIDR" \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
        --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$PKI/sa.key" \
        --service-account-signing-key-file="$PKI/sa.key" \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" --kubelet-preferred-address-types=InternalIP \
        --requestheader-client-ca-file="$PKI/ca.crt" --requestheader-allowed-names=system:auth-proxy \
        --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key"
    wait_for "kube-apiserver" 180 kc get --raw /readyz
    # The apiserver reaches kubelets (exec, logs, port-forward) as "kube-apiserver".
    kc get clusterrolebinding kube-apiserver-kubelet-admin >/dev/null 2>&1 ||
        kc create clusterrolebinding kube-apiserver-kubelet-admin --clusterrole=system:kubelet-api-admin \
            --user=kube-apiserver >/dev/null

    start kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig="$PKI/controller-manager.kubeconfig" --leader-elect=false \
        --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
        --use-service-account-credentials --cluster-signing-cert-file="$PKI/ca.crt" \
        --cluster-signing-key-file="$PKI/ca.key" --service-cluster-ip-range="$SVC_CIDR" \
        --bind-address=127.0.0.1
    start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$PKI/scheduler.kubeconfig" --leader-elect=false \
        --bind-address=127.0.0.1
}

start_kubelet() {
    local endpoint
    endpoint=$(cat "$RUN/endpoint")
    mkdir -p "$DIR/kubelet" "$DIR/pod-logs"
    cat >"$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: $endpoint
imageServiceEndpoint: $endpoint
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
podLogsDir: $DIR/pod-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$SVC_DNS]
clusterDomain: $CLUSTER_DOMAIN
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
# Pod and container stats (the summary API, /metrics/cadvisor) from the runtime's CRI stats calls, not
# from cAdvisor, which knows no runtime at this socket and would leave pod network stats empty.
featureGates: {PodAndContainerStatsFromCRI: true}
EOF
    start kubelet "$BIN/kubelet" --config="$DIR/kubelet.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
        --hostname-override="$NODE" --node-ip="$NODE_IP" --root-dir="$DIR/kubelet"
    wait_for "node $NODE to be Ready" 300 node_ready
}

node_ready() {
    [ "$(kc get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

start_kube_proxy() {
    cat >"$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $NODE
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
mode: iptables
clusterCIDR: $POD_CIDR
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, masqueradeAll: false}
EOF
    start kube-proxy "$BIN/kube-proxy" --config="$DIR/kube-proxy.yaml"
    wait_for "kube-proxy" 60 curl -fsS http://127.0.0.1:10256/healthz
}

# The DNS add-on (coredns.yaml), with the image build.sh pushes under registry.k8s.io/coredns/coredns.
start_dns() {
    local image
    image=registry.k8s.io/$("$ROOT/e2e/images/build.sh" --list | grep '^coredns/coredns:')
    sed -e "s|@DNS_IP@|$SVC_DNS|g" -e "s|@DOMAIN@|$CLUSTER_DOMAIN|g" -e "s|@IMAGE@|$image|g" \
        "$ROOT/e2e/cluster/coredns.yaml" | kc apply -f - >/dev/null
    wait_for "CoreDNS to be Ready" 300 dns_ready
}

dns_ready() {
    [ "$(kc -n kube-system get deployment coredns -o 'jsonpath={.status.readyReplicas}' 2>/dev/null)" = 1 ]
}

# ------------------------------------------------------------------------------------------ commands

print_env() {
    echo "export KUBECONFIG=$PKI/admin.kubeconfig"
    echo "export PATH=$BIN:\$PATH"
}

up() {
    local runtime=berth
    while [ $# -gt 0 ]; do
        case $1 in
        --runtime)
            runtime=${2:?--runtime needs berth or containerd}
            shift 2
            ;;
        --runtime=*)
            runtime=${1#--runtime=}
            shift
            ;;
        *) die "unknown argument $1" ;;
        esac
    done
    case $runtime in berth | containerd | none) ;; *) die "--runtime must be berth, containerd or none" ;; esac
    if running kube-apiserver; then
        [ "$(cat "$RUN/runtime")" = "$runtime" ] || die "a cluster on $(cat "$RUN/runtime") is up: run down first"
        BIN=$(cat "$RUN/bin")
        print_env
        return 0
    fi
    command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
    local tools=(kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl etcd crictl)
    [ "$runtime" = containerd ] && tools+=(containerd containerd-shim-runc-v2 ctr)
    [ "$runtime" = none ] && tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)
    BIN=$(tools_dir "${tools[@]}")
    REGISTRY=$("$ROOT/e2e/images/registry.sh" start)
    mkdir -p "$DIR" "$RUN" "$LOGS"
    chmod 700 "$DIR" "$RUN"
    echo "$runtime" >"$RUN/runtime"
    echo "$BIN" >"$RUN/bin"
    # The kubelet's volume mounts propagate to containers (HostToContainer) only from a shared mount.
    if [ "$runtime" != none ] && [ ! -f "$RUN/propagation.before" ]; then
        findmnt -no PROPAGATION / >"$RUN/propagation.before"
        mount --make-rshared /
    fi
    make_pki
    node_network
    iptables-save >"$RUN/iptables.before"
    case $runtime in
    berth) start_berth ;;
    containerd) start_containerd ;;
    esac
    start_control_plane
    if [ "$runtime" != none ]; then
        start_kubelet
        start_kube_proxy
        start_dns
    fi
    wait_for "the default service account" 120 kc -n default get serviceaccount default
    if [ "$runtime" = none ]; then
        say "up: control plane at https://$NODE_IP:6443, no node (logs in $LOGS)"
    else
        say "up: node $NODE Ready on $runtime (logs in $LOGS)"
    fi
    print_env
}

env_cmd() {
    [ -f "$RUN/bin" ] || die "no cluster is up"
    BIN=$(cat "$RUN/bin")
    print_env
}

# A kubelet client certificate (system:node:NAME in system:nodes, which the Node authorizer and
# NodeRestriction expect) and its kubeconfig, for a node that runs elsewhere and reaches NODE_IP.
node_kubeconfig() {
    local name=${1:?node-kubeconfig needs a node name}
    [ -f "$RUN/bin" ] || die "no cluster is up"
    BIN=$(cat "$RUN/bin")
    case $name in *[!a-z0-9.-]*) die "bad node name $name" ;; esac
    cert "node-$name" "system:node:$name" system:nodes clientAuth
    kubeconfig "node-$name"
    echo "$PKI/node-$name.kubeconfig"
}

runtime_socket() { local e; e=$(cat "$RUN/endpoint"); echo "${e#unix://}"; }

kill_runtime() {
    BIN=$(cat "$RUN/bin")
    kill9 runtime
    sleep 1
    rm -f "$(runtime_socket)"
    again runtime
    wait_for "the runtime's socket" 60 test -S "$(runtime_socket)"
}

restart_kubelet() {
    BIN=$(cat "$RUN/bin")
    stop kubelet
    again kubelet
    wait_for "node $NODE to be Ready" 300 node_ready
}

# What a power cut does to the node: every node process and container is gone, and so is /run.
restart_node() {
    local m runtime_dir
    BIN=$(cat "$RUN/bin")
    runtime_dir=$RUN/$(cat "$RUN/runtime")
    kill9 kube-proxy
    kill9 kubelet
    kill9 runtime
    pkill -KILL -f -- "--dir $RUN/berth/pods/" 2>/dev/null || true
    pkill -KILL -f -- "-address $RUN/containerd.sock" 2>/dev/null || true
    find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec sh -c 'xargs -r kill -KILL <"$1"' _ {} \; \
        2>/dev/null || true
    sleep 1
    for m in $(findmnt -rno TARGET | grep -E "^($runtime_dir|$DIR/kubelet)(/|$)" | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$runtime_dir" "$(runtime_socket)"
    again runtime
    wait_for "the runtime's socket" 60 test -S "$(runtime_socket)"
    again kubelet
    wait_for "node $NODE to be Ready" 300 node_ready
    again kube-proxy
    wait_for "kube-proxy" 60 curl -fsS http://127.0.0.1:10256/healthz
}

status() {
    local p
    for p in etcd kube-apiserver kube-controller-manager kube-scheduler runtime kubelet kube-proxy; do
        if running $p; then echo "$p: running (pid $(cat "$PIDS/$p"))"; else echo "$p: not running"; fi
    done
    if [ -f "$RUN/bin" ]; then
        BIN=$(cat "$RUN/bin")
        echo "runtime: $(cat "$RUN/runtime" 2>/dev/null)"
        kc get nodes 2>/dev/null || true
        kc -n kube-system get pods -l k8s-app=kube-dns 2>/dev/null || true
    fi
}

# Removes the iptables chains (and the rules jumping to them) that appeared since `up`.
restore_iptables() {
    local t chain
    [ -f "$RUN/iptables.before" ] || return 0
    for t in nat filter mangle; do
        for chain in $(iptables -t $t -S 2>/dev/null | awk '$1 == "-N" {print $2}'); do
            grep -q -- "^:$chain " "$RUN/iptables.before" && continue
            case $chain in KUBE-* | CNI-*) ;; *) continue ;; esac
            # (grep finding no reference is not a failure of `down`)
            iptables -t $t -S 2>/dev/null | { grep -- "-j $chain\( \|$\)" || true; } | sed 's/^-A/-D/' |
                while read -r rule; do eval iptables -t $t "$rule" 2>/dev/null || true; done
        done
        for chain in $(iptables -t $t -S 2>/dev/null | awk '$1 == "-N" {print $2}'); do
            grep -q -- "^:$chain " "$RUN/iptables.before" && continue
            case $chain in KUBE-* | CNI-*) ;; *) continue ;; esac
            iptables -t $t -F "$chain" 2>/dev/null || true
        done
        for chain in $(iptables -t $t -S 2>/dev/null | awk '$1 == "-N" {print $2}'); do
            grep -q -- "^:$chain " "$RUN/iptables.before" && continue
            case $chain in KUBE-* | CNI-*) ;; *) continue ;; esac
            iptables -t $t -X "$chain" 2>/dev/null || true
        done
    done
}

down() {
    local endpoint="" m
    [ -f "$RUN/bin" ] && BIN=$(cat "$RUN/bin")
    [ -f "$RUN/endpoint" ] && endpoint=$(cat "$RUN/endpoint")
    stop kube-proxy
    stop kubelet
    # Every pod goes through the runtime, so that CNI DEL and the shims clean up.
    if [ -n "$endpoint" ] && running runtime && [ -n "${BIN:-}" ]; then
        timeout 120 "$BIN/crictl" --config "$RUN/crictl.yaml" rmp -fa \
            >/dev/null 2>&1 || say "removing pods through the runtime failed; killing what is left"
    fi
    stop runtime
    # Shims and containers a failed removal left.
    pkill -KILL -f -- "--dir $RUN/berth/pods/" 2>/dev/null || true
    pkill -KILL -f -- "-address $RUN/containerd.sock" 2>/dev/null || true
    for p in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop $p; done
    restore_iptables
    # Mounts under our directories (kubelet volumes, rootfs, shm, netns), deepest first.
    for m in $(findmnt -rno TARGET | { grep -E "^($DIR|$RUN)(/|$)" || true; } | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    ip link del "$POD_BRIDGE" 2>/dev/null || true
    ip link del "$NODE_IF" 2>/dev/null || true
    rm -rf "/var/lib/cni/networks/$NET_NAME"
    if [ -f "$RUN/sysctl.before" ]; then
        while read -r kv; do sysctl -qw "$kv" || true; done <"$RUN/sysctl.before"
    fi
    if [ -f "$RUN/propagation.before" ] && [ "$(cat "$RUN/propagation.before")" = private ]; then
        mount --make-rprivate /
    fi
    # cgroups the kubelet made (kubepods) once nothing is in them.
    for m in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
        if [ -d "$m" ]; then find "$m" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
    done
    rm -rf "$DIR" "$RUN"
    say "down"
}

case ${1:-} in
up)
    shift
    up "$@"
    ;;
down) down ;;
env) env_cmd ;;
status) status ;;
node-kubeconfig) node_kubeconfig "${2:-}" ;;
mirrors) mirrors "${2:?usage: cluster.sh mirrors DIR REGISTRY}" "${3:?usage: cluster.sh mirrors DIR REGISTRY}" ;;
kill-runtime) kill_runtime ;;
restart-kubelet) restart_kubelet ;;
restart-node) restart_node ;;
*)
    sed -n '2,20s/^# \{0,1\}//p' "$0" >&2
    exit 2
    ;;
esac

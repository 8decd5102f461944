#!/usr/bin/env bash
# node-test.sh — a kind-like Kubernetes node on this machine, without Docker, and the checks of issue 10.
#
#   deploy/node-test.sh            the whole flow, one check per step, teardown even on failure; the
#                                  last line is `N passed, M failed` (exit 0 only if none failed)
#   deploy/node-test.sh up         bring the node up (the steps to "node Ready") and leave it running
#                                  (also when a step fails: `down` then removes what is there)
#   deploy/node-test.sh berth      on a node that is up: the steps of the whole flow after "Ready" (a
#                                  Deployment on containerd, helm install … helm uninstall)
#   deploy/node-test.sh down       stop the node and the control plane, remove everything they made
#   deploy/node-test.sh exec CMD…  run CMD inside the node (runc exec)
#   deploy/node-test.sh env        print `export KUBECONFIG=…` and `export PATH=…` for the control plane
#
# The node is what kind runs in Docker: a Debian 12 rootfs (debootstrap from Debian's packages, cached
# under $BERTH_NODE_CACHE, default /var/cache/berth-node/<key>) with systemd as PID 1, containerd 2.x
# and the kubelet (both from tools/build.sh) as systemd units with the systemd cgroup driver, laid out
# as kind lays out its nodes (images/base/files of kubernetes-sigs/kind: kubelet.service +
# kubelet.service.d/10-kubeadm.conf, /var/lib/kubelet/config.yaml, containerd.service with
# KillMode=process and Delegate=yes, /etc/containerd/config.toml, /etc/crictl.yaml, CNI plugins in
# /opt/cni/bin). It runs as a privileged runc container: its own network namespace (a veth to the host,
# NODE_IP, HOST_IP), its own cgroup namespace with runc's per-controller cgroup mounts (never the host's
# /sys/fs/cgroup), a fresh overlay of the cached rootfs per run (upper dir on the host's disk) and /var
# on a host directory, as kind's anonymous /var volume. Its kubelet registers with the control plane of
# e2e/cluster/cluster.sh (`up --runtime none`, reached at the host's NODE_IP of that script), and its
# runtime pulls from the project's registry (e2e/images/registry.sh), which the node sees at the same
# 127.0.0.1:<port> as the host does (a relay through a unix socket), so one image reference works on
# both sides; registry.k8s.io, docker.io … are mirrored there as cluster.sh does.
#
# Files: $BERTH_NODE_DIR (default /var/lib/berth-node-test: rootfs overlay, /var, logs, bundle) and
# /run/berth-node-test (runc state, pids, sockets). The host is left as it was: `down` removes every
# process, mount, link, route and cgroup this script made, and the full run checks that it did.
set -Eeuo pipefail
trap 'echo "node-test.sh: failed: line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLUSTER=$ROOT/e2e/cluster/cluster.sh
CACHE=${BERTH_NODE_CACHE:-/var/cache/berth-node}
DIR=${BERTH_NODE_DIR:-/var/lib/berth-node-test}
RUN=/run/berth-node-test
LOGS=$DIR/logs
NODE=berth-kind
# The host end of the node's veth and the two addresses on it; the node's pods get POD_CIDR. Neither
# may overlap cluster.sh's (10.86.0.1, 10.88.0.0/16, 10.96.0.0/16) nor berth's default CNI network
# (cni/10-berth.conflist, 10.87.0.0/16), which berth may bring onto the node later.
HOST_IF=berthkind0
HOST_IP=10.89.0.1
NODE_IP=10.89.0.2
POD_CIDR=10.244.0.0/16
CGROUP=/berth-kind-node
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
# What kind's base image installs that exists in Debian 12, plus runc and the CNI plugins (kind builds
# its own), curl for the checks. No dbus, as in kind: runc and the kubelet reach systemd through
# /run/systemd/private.
PACKAGES=(systemd systemd-sysv conntrack iptables nftables iproute2 ethtool util-linux mount kmod
    libseccomp2 procps bash ca-certificates curl runc containernetworking-plugins)
# Host tools the script needs, by Debian package.
HOST_PACKAGES=(debootstrap socat runc iproute2 iptables procps util-linux openssl curl)
MIRRORED="registry.k8s.io docker.io gcr.io quay.io k8s.gcr.io public.ecr.aws"
TEST_IMAGE=registry.k8s.io/e2e-test-images/nginx:1.14-4

say() { echo "node-test.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# wait_for WHAT SECONDS CMD...: retries CMD until it succeeds; fails naming WHAT.
wait_for() {
    local what=$1 secs=$2 end
    shift 2
    end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what"
        sleep 0.5
    done
}

rc() { runc --root "$RUN/runc" "$@"; }
node_exec() { rc exec "$NODE" "$@"; }
node_running() { [ "$(rc state "$NODE" 2>/dev/null | sed -n 's/.*"status": "\(.*\)".*/\1/p')" = running ]; }
node_pid() { cat "$RUN/node.pid"; }

tools_bin() { cat "$RUN/bin"; }
kc() { "$(tools_bin)/kubectl" --kubeconfig="$(cat "$RUN/kubeconfig")" "$@"; }
hm() { "$(tools_bin)/helm" --kubeconfig="$(cat "$RUN/kubeconfig")" "$@"; }

host_packages() {
    local missing=() p
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# ------------------------------------------------------------------------------------------ rootfs

# The cached rootfs: debootstrap plus what kind's Dockerfile does to its base image. Its key hashes the
# suite, the mirror, the packages and this function's own text, so any change here builds a new one.
rootfs_key() {
    { echo "$SUITE $MIRROR ${PACKAGES[*]}"; declare -f rootfs_build; } | sha256sum | cut -c1-12
}

rootfs_build() {
    local out=$1 r=$1/rootfs
    local list
    list=$(
        IFS=,
        echo "${PACKAGES[*]}"
    )
    debootstrap --variant=minbase --include="$list" "$SUITE" "$r" "$MIRROR" >"$out/debootstrap.log" 2>&1 ||
        die "debootstrap failed: $(tail -5 "$out/debootstrap.log")"
    rm -f "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*_Packages
    # As kind's base image: no units that manage hardware, the console or the host's clock, no
    # kernel-global binfmt registration, journald leaves /dev/kmsg alone, init is systemd.
    rm -f "$r"/lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service \
        "$r"/lib/systemd/system/multi-user.target.wants/* "$r"/etc/systemd/system/*.wants/* \
        "$r"/lib/systemd/system/local-fs.target.wants/* "$r"/lib/systemd/system/sockets.target.wants/*udev* \
        "$r"/lib/systemd/system/sockets.target.wants/*initctl* "$r"/lib/systemd/system/basic.target.wants/*
    echo "ReadKMsg=no" >>"$r/etc/systemd/journald.conf"
    ln -sf /lib/systemd/systemd "$r/sbin/init"
    ln -sf /dev/null "$r/etc/systemd/system/systemd-binfmt.service"
    # kind has the CNI plugins in /opt/cni/bin; Debian puts them in /usr/lib/cni.
    mkdir -p "$r/opt/cni/bin"
    cp -a "$r"/usr/lib/cni/. "$r/opt/cni/bin/"
    mkdir -p "$r/etc/kubernetes/manifests" "$r/etc/cni/net.d" "$r/kind"
}

# rootfs: the cached rootfs for this key, built under a lock if missing; prints its path.
rootfs() {
    local key dir
    key=$(rootfs_key)
    dir=$CACHE/$key
    mkdir -p "$CACHE"
    exec 9>"$CACHE/lock"
    flock 9
    if [ ! -f "$dir/done" ]; then
        say "building the node rootfs $dir (debootstrap $SUITE from $MIRROR)"
        rm -rf "$dir.tmp"
        mkdir -p "$dir.tmp"
        rootfs_build "$dir.tmp"
        rm -rf "$dir"
        mv "$dir.tmp" "$dir"
        touch "$dir/done"
        # Rootfs dirs of other keys are stale (this script or its package list changed).
        find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
    fi
    exec 9>&-
    echo "$dir/rootfs"
}

# --------------------------------------------------------------------------------------- node files

# The files kind's node image has (images/base/files), and what `kind create cluster` writes at start
# (kubeadm's kubelet config and flags), with this machine's addresses.
write_node_files() {
    local r=$1 bin=$2 ca=$3 kubeconfig=$4 proxyconfig=$5 registry=$6 h
    install -m 755 "$bin/k8s" "$r/usr/bin/kubelet"
    install -m 755 "$bin/k8s" "$r/usr/local/bin/kube-proxy"
    for h in containerd containerd-shim-runc-v2 ctr crictl; do install -m 755 "$bin/$h" "$r/usr/local/bin/$h"; done

    mkdir -p "$r/etc/systemd/system/kubelet.service.d" "$r/etc/systemd/system/multi-user.target.wants" \
        "$r/etc/default" "$r/etc/kubernetes/pki" "$r/etc/containerd" "$r/var/lib/kubelet" "$r/var/lib/kube-proxy"
    cat >"$r/etc/systemd/system/kubelet.service" <<'EOF'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=http://kubernetes.io/docs/
ConditionPathExists=/var/lib/kubelet/config.yaml

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=1s
CPUAccounting=true
MemoryAccounting=true
Slice=kubelet.slice
KillMode=process

[Install]
WantedBy=multi-user.target
EOF
    cat >"$r/etc/systemd/system/kubelet.service.d/10-kubeadm.conf" <<'EOF'
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
EOF
    cat >"$r/etc/systemd/system/kubelet.service.d/11-kind.conf" <<'EOF'
[Service]
# On cgroup v1 the entrypoint made /kubelet and /kubelet.slice before systemd started (as kind's).
ExecStartPre=/bin/sh -euc "if [ ! -f /sys/fs/cgroup/cgroup.controllers ] && [ ! -d /sys/fs/cgroup/systemd/kubelet ]; then mkdir -p /sys/fs/cgroup/systemd/kubelet; fi"
EOF
    cat >"$r/etc/systemd/system/kubelet.slice" <<'EOF'
[Unit]
Description=slice used to run Kubernetes / Kubelet
Before=slices.target

[Slice]
MemoryAccounting=true
CPUAccounting=true
EOF
    echo "KUBELET_EXTRA_ARGS=--runtime-cgroups=/system.slice/containerd.service" >"$r/etc/default/kubelet"
    cat >"$r/etc/systemd/system/containerd.service" <<'EOF'
[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target local-fs.target
StartLimitIntervalSec=0

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/containerd

Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=1
LimitNPROC=infinity
LimitCORE=infinity
LimitNOFILE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
EOF
    # Not kind's: kind runs kube-proxy as a DaemonSet from its image, which this machine has no
    # copy of; a unit keeps Services (the apiserver's 10.96.0.1 for pods) working on the node.
    cat >"$r/etc/systemd/system/kube-proxy.service" <<'EOF'
[Unit]
Description=kube-proxy
After=network.target

[Service]
ExecStart=/usr/local/bin/kube-proxy --config=/var/lib/kube-proxy/config.conf
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
EOF
    for h in kubelet containerd kube-proxy; do
        ln -sf "/etc/systemd/system/$h.service" "$r/etc/systemd/system/multi-user.target.wants/$h.service"
    done

    # containerd: kind's config.toml (v2 schema, which containerd 2.x migrates), with mirrors.
    cat >"$r/etc/containerd/config.toml" <<EOF
# explicitly use v2 config format
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd]
  discard_unpacked_layers = true
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    # use systemd cgroup by default
    SystemdCgroup = true

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10.1"
  # Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which this machine's bounding set lacks.
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
EOF
    "$CLUSTER" mirrors "$r/etc/containerd/certs.d" "$registry"
    mkdir -p "$r/etc/containerd/certs.d/$registry"
    printf 'server = "http://%s"\n' "$registry" >"$r/etc/containerd/certs.d/$registry/hosts.toml"
    printf 'runtime-endpoint: unix:///run/containerd/containerd.sock\n' >"$r/etc/crictl.yaml"

    cat >"$r/etc/cni/net.d/10-node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_CIDR" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF

    # What kubeadm join leaves: the kubelet's kubeconfig and CA, its config and flags.
    install -m 600 "$kubeconfig" "$r/etc/kubernetes/kubelet.conf"
    install -m 644 "$ca" "$r/etc/kubernetes/pki/ca.crt"
    cat >"$r/var/lib/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
cgroupRoot: /kubelet
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failSwapOn: false
failCgroupV1: false
imageGCHighThresholdPercent: 100
evictionHard:
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true, cacheTTL: 0s}
  x509: {clientCAFile: /etc/kubernetes/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
staticPodPath: /etc/kubernetes/manifests
rotateCertificates: false
healthzBindAddress: 127.0.0.1
EOF
    echo "KUBELET_KUBEADM_ARGS=\"--node-ip=$NODE_IP --provider-id=kind://runc/berth/$NODE\"" \
        >"$r/var/lib/kubelet/kubeadm-flags.env"
    install -m 600 "$proxyconfig" "$r/var/lib/kube-proxy/kubeconfig.conf"
    cat >"$r/var/lib/kube-proxy/config.conf" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: /var/lib/kube-proxy/kubeconfig.conf}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
iptables: {minSyncPeriod: 1s}
# Leave the machine-wide conntrack sysctls alone, as kind does.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF

    echo "$NODE" >"$r/etc/hostname"
    printf '127.0.0.1\tlocalhost\n%s\t%s\n' "$NODE_IP" "$NODE" >"$r/etc/hosts"
    # Nothing resolves names here; pods copy this file, so give them nothing that points at loopback.
    printf 'nameserver %s\n' "$HOST_IP" >"$r/etc/resolv.conf"

    # kind's entrypoint, the parts that apply to runc on cgroup v1 with a cgroup namespace.
    cat >"$r/usr/local/bin/entrypoint" <<'EOF'
#!/bin/sh
# Runs as PID 1 before systemd: shared mounts for the kubelet's mount propagation, a fresh machine-id,
# and the /kubelet and /kubelet.slice cgroups in every v1 hierarchy (kind's fix_cgroup: the kubelet's
# cgroupRoot must exist everywhere; the self bind mount keeps systemd from removing it).
set -eu
mount --make-rshared /
rm -f /etc/machine-id
systemd-machine-id-setup >/dev/null
for s in /sys/fs/cgroup/*; do
    [ -d "$s" ] && [ ! -L "$s" ] || continue
    for c in kubelet kubelet.slice; do
        mkdir -p "$s/$c"
        if [ "${s##*/}" = cpuset ]; then
            cat "$s/cpuset.cpus" >"$s/$c/cpuset.cpus"
            cat "$s/cpuset.mems" >"$s/$c/cpuset.mems"
        fi
        mount --bind "$s/$c" "$s/$c"
    done
done
exec "$@"
EOF
    chmod 755 "$r/usr/local/bin/entrypoint"
}

# -------------------------------------------------------------------------------------------- runc

# The capabilities of this process's bounding set, as OCI names (this machine lacks CAP_SYS_RESOURCE,
# and runc refuses capabilities outside it).
cap_list() {
    local names=(chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable
        net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio sys_chroot
        sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time sys_tty_config mknod lease
        audit_write audit_control setfcap mac_override mac_admin syslog wake_alarm block_suspend audit_read
        perfmon bpf checkpoint_restore)
    local bnd i out=""
    bnd=$((16#$(awk '/^CapBnd/ {print $2}' /proc/self/status)))
    for i in "${!names[@]}"; do
        if (((bnd >> i) & 1)); then out+="${out:+,}\"CAP_${names[$i]^^}\""; fi
    done
    echo "[$out]"
}

# bundle DIR ROOTFS VAR: an OCI config.json for the node: privileged (every capability, no seccomp,
# nothing masked or read-only, every device allowed), systemd as PID 1 behind the entrypoint, tmpfs on
# /run, /run/lock and /tmp, /var on the host, its own pid, ipc, uts, mount, network and cgroup namespaces.
write_bundle() {
    local b=$1 rootfs=$2 var=$3 caps modules=""
    caps=$(cap_list)
    [ -d /lib/modules ] && modules='{ "destination": "/lib/modules", "type": "bind", "source": "/lib/modules", "options": ["rbind", "ro"] },'
    mkdir -p "$b"
    cat >"$b/config.json" <<EOF
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": { "uid": 0, "gid": 0 },
    "args": ["/usr/local/bin/entrypoint", "/sbin/init"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "container=docker"],
    "cwd": "/",
    "capabilities": { "bounding": $caps, "effective": $caps, "inheritable": $caps, "permitted": $caps },
    "noNewPrivileges": false
  },
  "root": { "path": "$rootfs", "readonly": false },
  "hostname": "$NODE",
  "mounts": [
    { "destination": "/proc", "type": "proc", "source": "proc" },
    { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
    { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
    { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
    { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
    { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
    { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime"] },
    { "destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"] },
    { "destination": "/run/lock", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "noexec", "mode=755"] },
    { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] },
    $modules
    { "destination": "/var", "type": "bind", "source": "$var", "options": ["rbind", "rw"] }
  ],
  "linux": {
    "namespaces": [{ "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" },
                   { "type": "network" }, { "type": "cgroup" }],
    "cgroupsPath": "$CGROUP",
    "resources": { "devices": [{ "allow": true, "access": "rwm" }] },
    "devices": [
      { "path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 420, "uid": 0, "gid": 0 },
      { "path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0 }
    ]
  }
}
EOF
}

# ------------------------------------------------------------------------------------ node lifecycle

# The registry seen from inside the node at the host's address: a relay on the host from a unix socket
# to the registry, and one in the node's network namespace from 127.0.0.1:<port> to that socket. The
# registry itself stays on the host's 127.0.0.1 (registry.sh must never listen beyond it).
registry_relay() {
    local reg=$1 pid=$2
    setsid socat "UNIX-LISTEN:$RUN/registry.sock,fork,mode=600" "TCP:$reg" >>"$LOGS/relay-host.log" 2>&1 </dev/null &
    echo $! >"$RUN/relay-host.pid"
    setsid nsenter --net="/proc/$pid/ns/net" socat "TCP-LISTEN:${reg##*:},bind=127.0.0.1,fork,reuseaddr" \
        "UNIX-CONNECT:$RUN/registry.sock" >>"$LOGS/relay-node.log" 2>&1 </dev/null &
    echo $! >"$RUN/relay-node.pid"
}

# The node's network: a veth, HOST_IP on the host end, NODE_IP on the node's eth0 with the host as its
# gateway (the apiserver is on the host), and a host route to the node's pods.
node_network() {
    local pid=$1
    ip link add "$HOST_IF" type veth peer name eth0 netns "$pid"
    ip addr add "$HOST_IP/24" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    nsenter --net="/proc/$pid/ns/net" sh -euc "
        ip link set lo up
        ip addr add $NODE_IP/24 dev eth0
        ip link set eth0 up
        ip route add default via $HOST_IP"
    ip route add "$POD_CIDR" via "$NODE_IP" dev "$HOST_IF"
}

node_start() {
    local rootfs bin pki registry pid t0
    rootfs=$(cat "$RUN/rootfs")
    bin=$(tools_bin)
    pki=$(dirname "$(cat "$RUN/kubeconfig")")
    registry=$(cat "$RUN/registry")
    mkdir -p "$DIR/upper" "$DIR/work" "$DIR/rootfs" "$DIR/var" "$LOGS"
    # The node's /var (pod logs, volumes, containerd's store) and its kubelet's key: root's alone.
    chmod 700 "$DIR"
    mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$DIR/upper,workdir=$DIR/work" "$DIR/rootfs"
    write_node_files "$DIR/rootfs" "$bin" "$pki/ca.crt" "$(cat "$RUN/node-kubeconfig")" \
        "$pki/kube-proxy.kubeconfig" "$registry"
    # /var starts as the image's (with the kubelet's files just written) and lives on the host's disk:
    # containerd's overlayfs snapshotter cannot work on an overlay.
    cp -a "$DIR/rootfs/var/." "$DIR/var/"
    write_bundle "$DIR/bundle" "$DIR/rootfs" "$DIR/var"
    mkdir -p "$RUN/runc"
    # (no rlimits in the bundle: raising one needs CAP_SYS_RESOURCE, so the node keeps this shell's)
    rc create --bundle "$DIR/bundle" --pid-file "$RUN/node.pid" "$NODE" >>"$LOGS/node.log" 2>&1 </dev/null ||
        die "runc create failed: $(tail -3 "$LOGS/node.log")"
    pid=$(node_pid)
    node_network "$pid"
    registry_relay "$registry" "$pid"
    t0=$(date +%s.%N)
    rc start "$NODE"
    echo "$t0" >"$RUN/node.started"
}

# node_stop: as `docker stop` of a kind node: SIGRTMIN+3 to systemd (a clean poweroff), SIGKILL if it
# has not finished within 30 s, then the container is deleted. (A container whose PID 1 ignores SIGTERM,
# as `sleep` does, holds the poweroff for systemd's DefaultTimeoutStopSec, 90 s, in its scope's stop.)
node_stop() {
    local end t0
    [ -d "$RUN/runc" ] || return 0
    if node_running; then
        t0=$(date +%s.%N)
        rc kill "$NODE" 37 || true # SIGRTMIN+3 (glibc's SIGRTMIN is 34)
        end=$((SECONDS + 30))
        while node_running && [ $SECONDS -lt $end ]; do sleep 0.2; done
        if node_running; then
            say "systemd did not power off within 30 s: SIGKILL"
            rc kill "$NODE" KILL || true
            sleep 1
        else
            say "node powered off in $(since "$t0")"
        fi
    fi
    rc delete --force "$NODE" 2>/dev/null || true
}

stop_pidfile() {
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
}

# down: everything this script made goes, in reverse; safe to run twice or after a partial start.
down() {
    local m d
    node_stop
    stop_pidfile "$RUN/relay-node.pid"
    stop_pidfile "$RUN/relay-host.pid"
    ip link del "$HOST_IF" 2>/dev/null || true
    for m in $(findmnt -rno TARGET | { grep -E "^($DIR|$RUN)(/|$)" || true; } | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    # runc delete removes the node's cgroups; if it could not (a process survived), try again here.
    for d in /sys/fs/cgroup/*"$CGROUP" /sys/fs/cgroup/unified"$CGROUP"; do
        if [ -d "$d" ]; then find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
    done
    if [ -f "$RUN/cluster" ]; then
        "$CLUSTER" down >/dev/null || say "cluster.sh down failed"
    fi
    restore_sysctls
    rm -rf "$DIR" "$RUN"
}

# ----------------------------------------------------------------------------------- host snapshot

# The machine-wide sysctls (kernel, vm, fs; not the host's network namespace, which the node cannot
# reach), less the counters. The node's kubelet sets some (vm.overcommit_memory, kernel.panic, …, as
# on any node: kind's nodes do the same to their host), so `down` puts back what changed.
host_sysctls() {
    sysctl -a 2>/dev/null | grep -E '^(kernel|vm|fs)\.' |
        grep -vE '^(fs\.(dentry-state|file-nr|inode-nr|inode-state|quota\..*)|kernel\.(ns_last_pid|random\..*)) = ' | sort
}

restore_sysctls() {
    local line
    [ -f "$RUN/sysctl.before" ] || return 0
    { host_sysctls | diff "$RUN/sysctl.before" - || true; } | sed -n 's/^< //p' | while read -r line; do
        sysctl -qw "${line%% = *}=${line#* = }" || say "could not restore ${line%% = *}"
    done
}

# What this script may change on the host, for comparing before and after: every cgroup mount (all of
# them, as they are), the iptables rules, and whatever of ours could be left (mounts under our dirs,
# our link and routes, the node's cgroups, processes running from our dirs).
host_state() {
    echo "# sysctls"
    host_sysctls
    echo "# cgroup mounts"
    grep -E ' - cgroup2? ' /proc/self/mountinfo
    echo "# iptables"
    iptables-save | grep -E '^[-*:]' | sed 's/ \[[0-9]*:[0-9]*\]$//' | sort
    echo "# mounts"
    findmnt -no PROPAGATION /
    findmnt -rno TARGET | grep -E "^($DIR|$RUN)(/|$)" || true
    echo "# links and routes"
    ip -o link show | grep -E "$HOST_IF" || true
    ip route show | grep -E "${HOST_IP%.*}\.|${POD_CIDR%%/*}" || true
    echo "# cgroups"
    find /sys/fs/cgroup -maxdepth 2 -name "${CGROUP#/}" 2>/dev/null || true
    echo "# processes"
    pgrep -af "$DIR|$RUN" || true
}

# --------------------------------------------------------------------------------------------- steps
# Each step_* is one check: it runs in a subshell with errexit, so any failing command fails it. Steps
# talk to each other through files in $RUN. Timings go to $RUN/timings (reported at the end).

timing() { echo "$1: $2" >>"$RUN/timings"; }
since() { echo "$(date +%s.%N) $1" | awk '{printf "%.1fs", $1 - $2}'; }

step_rootfs() {
    local t0 cold=warm r
    t0=$(date +%s.%N)
    [ -f "$CACHE/$(rootfs_key)/done" ] || cold=cold
    r=$(rootfs)
    echo "$r" >"$RUN/rootfs"
    timing "rootfs ($cold)" "$(since "$t0")"
    [ -x "$r/lib/systemd/systemd" ] && [ -x "$r/usr/sbin/runc" ] && [ -x "$r/opt/cni/bin/bridge" ]
}

step_control_plane() {
    local t0 out bin
    t0=$(date +%s.%N)
    bin=$("$ROOT/tools/build.sh" kubelet kubectl kube-proxy containerd containerd-shim-runc-v2 ctr crictl helm | tail -n1)
    echo "$bin" >"$RUN/bin"
    "$ROOT/e2e/images/registry.sh" start | tail -n1 >"$RUN/registry"
    touch "$RUN/cluster"
    out=$("$CLUSTER" up --runtime none)
    sed -n 's/^export KUBECONFIG=//p' <<<"$out" >"$RUN/kubeconfig"
    "$CLUSTER" node-kubeconfig "$NODE" >"$RUN/node-kubeconfig"
    timing "control plane up" "$(since "$t0")"
    kc get --raw /readyz >/dev/null
}

step_node_boot() {
    local state end
    node_start
    # Until the boot is over (--wait), then the state: running, or degraded with failed units. Before
    # systemd listens the answer is "offline".
    end=$((SECONDS + 120))
    while :; do
        state=$(timeout 60 runc --root "$RUN/runc" exec "$NODE" systemctl is-system-running --wait || true)
        case $state in running | degraded | maintenance | stopping) break ;; esac
        [ $SECONDS -lt $end ] || die "systemd in the node did not finish booting in 120 s (state: $state)"
        sleep 0.2
    done
    timing "node boot to systemd $state" "$(since "$(cat "$RUN/node.started")")"
    [ "$(node_exec cat /proc/1/comm)" = systemd ] || die "PID 1 in the node is not systemd"
    if [ "$state" != running ]; then
        node_exec systemctl --failed --no-legend >&2 || true
        die "systemd in the node is $state"
    fi
}

step_node_runtime() {
    local u
    for u in containerd kubelet kube-proxy; do
        wait_for "$u.service to be active" 60 node_exec systemctl is-active "$u.service"
    done
    node_exec containerd --version | grep -q ' v2\.'
    node_exec containerd config dump | grep -q 'SystemdCgroup = true'
    node_exec crictl info >/dev/null
    # The project's registry under its own address, as the berth image will be named.
    node_exec crictl pull "$(cat "$RUN/registry")/e2e-test-images/busybox:1.37.0-1" >/dev/null
}

node_ready() {
    [ "$(kc get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

step_node_ready() {
    local cfg
    wait_for "node $NODE to be Ready" 300 node_ready
    timing "node boot to kubelet Ready" "$(since "$(cat "$RUN/node.started")")"
    # The kubelet's effective configuration, as the installer will read it.
    cfg=$(kc get --raw "/api/v1/nodes/$NODE/proxy/configz")
    grep -q '"cgroupDriver":"systemd"' <<<"$cfg"
    grep -q '"containerRuntimeEndpoint":"unix:///run/containerd/containerd.sock"' <<<"$cfg"
    kc get node "$NODE" -o 'jsonpath={.status.nodeInfo.containerRuntimeVersion}' | grep -q '^containerd://2\.'
}

# deployment_reachable NAME: a Deployment of TEST_IMAGE on the node and a Service for it; checks the
# pod answers HTTP from the host (pod IP) and from the node (Service IP), that kubectl exec and logs
# reach it, and that it reaches the apiserver; prints the pod's name.
deployment_reachable() {
    local name=$1 pod ip svc
    kc apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: $name, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: $name}}
  template:
    metadata: {labels: {app: $name}}
    spec:
      nodeSelector: {kubernetes.io/hostname: $NODE}
      containers:
      - name: web
        image: $TEST_IMAGE
        ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: $name, namespace: default}
spec:
  selector: {app: $name}
  ports: [{port: 80, targetPort: 80}]
EOF
    kc -n default rollout status "deployment/$name" --timeout=180s >&2
    pod=$(kc -n default get pod -l "app=$name" -o 'jsonpath={.items[0].metadata.name}')
    ip=$(kc -n default get pod "$pod" -o 'jsonpath={.status.podIP}')
    svc=$(kc -n default get service "$name" -o 'jsonpath={.spec.clusterIP}')
    curl -fsS --max-time 10 -o /dev/null "http://$ip/"
    wait_for "service $svc to answer in the node" 30 node_exec curl -fsS --max-time 5 -o /dev/null "http://$svc/"
    # The apiserver's way to the node's kubelet and its runtime's streaming server.
    [ "$(kc -n default exec "$pod" -- cat /etc/hostname)" = "$pod" ]
    kc -n default logs "$pod" >/dev/null
    # Pods reach the apiserver through its Service (kube-proxy on the node, the host's NODE_IP behind).
    # shellcheck disable=SC2016 # expanded in the pod
    kc -n default exec "$pod" -- sh -c 'nc -w 5 "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" </dev/null'
    echo "$pod"
}

step_deployment_on_containerd() {
    local pod id
    pod=$(deployment_reachable web-containerd)
    kc -n default get pod "$pod" -o 'jsonpath={.status.containerStatuses[0].containerID}' | grep -q '^containerd://'
    id=$(node_exec crictl pods -q --name "$pod")
    [ -n "$id" ]
    # The systemd cgroup driver all the way down: the pod's slice under kind's kubelet.slice, the
    # container in a cri-containerd scope unit.
    node_exec systemctl list-units --no-legend 'kubelet-kubepods*.slice' | grep -q "kubelet-kubepods"
    node_exec systemctl list-units --no-legend 'cri-containerd-*.scope' | grep -q "cri-containerd-$id"
}

# ------------------------------------------------------------------------------------ berth (issue 10)
# berth goes onto the node as a user would put it on a kind cluster: its image pushed where the node
# pulls from, `helm install` of charts/berth from outside through the apiserver; everything after
# that is the installer's doing, and these steps only look.

BERTH_TAG=node-test
BERTH_CRI=unix:///run/berth/berth.sock
RELEASE=berth
RELEASE_NS=kube-system

berth_crictl() { node_exec crictl -r "$BERTH_CRI" "$@"; }
# none CMD...: CMD fails (a `! CMD` would not fail a step: errexit ignores it).
none() { if "$@"; then return 1; fi; }

# helm's values: the image from the project's registry, which also mirrors every public registry.
helm_values() {
    local registry mirrors="" h
    registry=$(cat "$RUN/registry")
    for h in $MIRRORED; do mirrors+="${mirrors:+,}\"$h\":[\"http://$registry\"]"; done
    printf '%s\n' --namespace "$RELEASE_NS" --set "image.repository=$registry/berth" --set "image.tag=$BERTH_TAG" \
        --set-json "registryMirrors={$mirrors}"
}

# The files of the node's kubelet and old runtime (every one, with its checksum), and whether their
# units are enabled: what the switch edits and the uninstall must put back byte for byte.
kubelet_files() {
    node_exec sh -c 'find /etc/systemd/system/kubelet.service /etc/systemd/system/kubelet.service.d \
        /etc/default/kubelet /etc/crictl.yaml /etc/containerd /etc/cni/net.d /var/lib/kubelet/config.yaml \
        /var/lib/kubelet/kubeadm-flags.env -type f -exec sha256sum {} + | sort -k2
        systemctl is-enabled containerd.service kubelet.service'
}

# berth's files on the node with their checksums and modification times, and berthd's process: what
# a second run of the installer must leave as it is.
berth_files() {
    node_exec sh -c 'find /usr/local/bin -name "berth*" -type f; find /etc/berth /etc/systemd/system/berth.service \
        /etc/systemd/system/kubelet.service.d /var/lib/kubelet/config.yaml /var/lib/kubelet/kubeadm-flags.env \
        /etc/default/kubelet /etc/crictl.yaml -type f' | sort | while read -r f; do
        node_exec stat -c '%n %Y %s %a' "$f"
        node_exec sha256sum "$f"
    done
    node_exec systemctl show -p MainPID -p ActiveEnterTimestamp -p NRestarts berth.service
}

node_label() { kc get node "$NODE" -o "jsonpath={.metadata.labels.berth\.dev/runtime}"; }
node_runtime() { kc get node "$NODE" -o 'jsonpath={.status.nodeInfo.containerRuntimeVersion}'; }

# installer_running RUNTIME: the DaemonSet's pod has its container running on RUNTIME (containerd,
# berth), as its status says.
installer_running() {
    kc -n "$RELEASE_NS" get pods -l "app.kubernetes.io/instance=$RELEASE" -o \
        'jsonpath={range .items[*]}{.status.containerStatuses[0].containerID} {.status.containerStatuses[0].state.running.startedAt}{"\n"}{end}' |
        grep -q "^$1://[0-9a-f]* [0-9]"
}

# pods_on RUNTIME: every pod bound to the node runs, all its containers on RUNTIME.
pods_on() {
    local out
    out=$(kc get pods -A --field-selector "spec.nodeName=$NODE" -o \
        'jsonpath={range .items[*]}{.status.phase}{range .status.containerStatuses[*]} {.containerID}{end}{"\n"}{end}')
    [ -n "$out" ] && ! grep -v "^Running\( $1://[0-9a-f]*\)*$" <<<"$out" | grep -q .
}

step_berth_image() {
    local t0 registry ref
    t0=$(date +%s.%N)
    registry=$(cat "$RUN/registry")
    if ! ref=$("$ROOT/deploy/build.sh" push "$registry" "$BERTH_TAG" 2>"$LOGS/build.log"); then
        tail -n 20 "$LOGS/build.log" >&2
        return 1
    fi
    timing "berth image built and pushed" "$(since "$t0")"
    sed -n 's/^build.sh: image size: /berth image size: /p' "$LOGS/build.log" >>"$RUN/timings"
    [ "$ref" = "$registry/berth:$BERTH_TAG" ]
    curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$registry/v2/berth/manifests/$BERTH_TAG"
}

step_helm_install() {
    local values=() status
    mapfile -t values < <(helm_values)
    kubelet_files >"$RUN/kubelet-files.before"
    hm lint --strict "$ROOT/charts/berth" "${values[@]}" >/dev/null
    hm template "$RELEASE" "$ROOT/charts/berth" "${values[@]}" | kc apply --dry-run=server -f - >/dev/null
    date +%s.%N >"$RUN/helm-installed"
    hm install "$RELEASE" "$ROOT/charts/berth" "${values[@]}" >/dev/null
    status=$(hm status "$RELEASE" -n "$RELEASE_NS")
    grep -q '^STATUS: deployed' <<<"$status"
}

step_installer_on_containerd() {
    wait_for "the installer's pod to run on containerd" 180 installer_running containerd
    timing "helm install to the installer running on containerd" "$(since "$(cat "$RUN/helm-installed")")"
}

step_berth_beside_containerd() {
    local cond
    wait_for "berth.service to be active in the node" 120 node_exec systemctl is-active berth.service
    node_exec systemctl is-enabled berth.service >/dev/null
    # The kubelet's cgroup driver went into berth's config, berthd's own parser accepts the file.
    node_exec grep -qx 'cgroup_driver = "systemd"' /etc/berth/config.toml
    node_exec berthd --config /etc/berth/config.toml config dump | grep -qx 'cgroup_driver = "systemd"'
    node_exec test -f /etc/berth/certs.d/registry.k8s.io/hosts.toml
    cond=$(berth_crictl info -o go-template --template '{{range .status.conditions}}{{.type}}={{.status}} {{end}}')
    grep -q 'RuntimeReady=true' <<<"$cond" || die "berth's CRI: $cond"
    berth_crictl runtime-config | grep -qi systemd
}

step_switched() {
    local label end
    end=$((SECONDS + 360))
    until [ "$(node_label)" = true ]; do
        label=$(node_label)
        if [ "$label" = failed ]; then
            die "the installer failed: $(kc get node "$NODE" -o 'jsonpath={.metadata.annotations.berth\.dev/install-error}')"
        fi
        [ $SECONDS -lt $end ] || die "no berth.dev/runtime=true after 360 s (label: ${label:-none})"
        sleep 1
    done
    timing "helm install to the node labelled berth.dev/runtime=true" "$(since "$(cat "$RUN/helm-installed")")"
    node_ready
    node_runtime | grep -q '^berth://'
    # The kubelet on berth, with the systemd driver berth reports (RuntimeConfig) and its config says.
    kc get --raw "/api/v1/nodes/$NODE/proxy/configz" | grep -q "\"containerRuntimeEndpoint\":\"$BERTH_CRI\""
    kc get --raw "/api/v1/nodes/$NODE/proxy/configz" | grep -q '"cgroupDriver":"systemd"'
    berth_crictl runtime-config | grep -qi systemd
}

step_pods_on_berth() {
    local name
    wait_for "every pod of the node to run on berth" 180 pods_on berth
    # berth's CRI lists each of them, ready.
    for name in $(kc get pods -A --field-selector "spec.nodeName=$NODE" -o 'jsonpath={.items[*].metadata.name}'); do
        berth_crictl pods --state ready --name "^$name\$" -q | grep -q .
    done
    # containerd is off and left nothing running: no shim, its socket answers nobody.
    none node_exec systemctl is-active --quiet containerd.service
    [ "$(node_exec systemctl is-enabled containerd.service || true)" = disabled ]
    none node_exec pgrep -f containerd-shim >/dev/null
    none node_exec crictl -r unix:///run/containerd/containerd.sock --timeout 2s pods -q 2>/dev/null
    # The kubelet's files point at berth; crictl's too.
    node_exec crictl info -o go-template --template '{{.status.conditions}}' >/dev/null
    node_exec grep -q "$BERTH_CRI" /etc/crictl.yaml
}

step_deployment_on_berth() {
    local pod id
    pod=$(deployment_reachable web-berth)
    kc -n default get pod "$pod" -o 'jsonpath={.status.containerStatuses[0].containerID}' | grep -q '^berth://'
    id=$(berth_crictl pods -q --name "$pod")
    [ -n "$id" ]
    # The systemd cgroup driver: the pod's slice under kind's kubelet.slice, berth's containers in
    # scope units of their own.
    node_exec systemctl list-units --no-legend 'kubelet-kubepods*.slice' | grep -q "kubelet-kubepods"
    node_exec systemctl list-units --no-legend 'berth-*.scope' | grep -q "berth-"
    # The pod made on containerd before the switch was re-created on berth and answers.
    pod=$(kc -n default get pod -l app=web-containerd -o 'jsonpath={.items[0].metadata.name}')
    curl -fsS --max-time 10 -o /dev/null "http://$(kc -n default get pod "$pod" -o 'jsonpath={.status.podIP}')/"
}

# What berth runs for its pods: every container's id, every shim's pid, the containers' restart counts.
berth_pods_state() {
    berth_crictl ps -q | sort
    node_exec pgrep -x berth-shim | sort
    kc get pods -A --field-selector "spec.nodeName=$NODE" -o \
        'jsonpath={range .items[*]}{.metadata.name}{range .status.containerStatuses[*]} {.restartCount}{end}{"\n"}{end}'
}

step_restart_berth() {
    local before after pid ip
    before=$(berth_pods_state)
    [ -n "$before" ]
    pid=$(node_exec systemctl show -p MainPID --value berth.service)
    node_exec systemctl restart berth.service
    node_exec systemctl is-active --quiet berth.service
    [ "$(node_exec systemctl show -p MainPID --value berth.service)" != "$pid" ]
    berth_crictl info >/dev/null
    after=$(berth_pods_state)
    [ "$before" = "$after" ] || die "containers or shims changed across the restart: $(diff <(echo "$before") <(echo "$after"))"
    ip=$(kc -n default get pod -l app=web-berth -o 'jsonpath={.items[0].status.podIP}')
    curl -fsS --max-time 10 -o /dev/null "http://$ip/"
    node_ready
    # The kubelet saw no container die meanwhile.
    sleep 5
    after=$(berth_pods_state)
    [ "$before" = "$after" ] || die "containers, shims or restart counts changed after the restart: $(diff <(echo "$before") <(echo "$after"))"
}

step_installer_idempotent() {
    local before after old pod log
    before=$(berth_files)
    old=$(kc -n "$RELEASE_NS" get pods -l "app.kubernetes.io/instance=$RELEASE" -o 'jsonpath={.items[0].metadata.name}')
    kc -n "$RELEASE_NS" delete pod "$old" --wait=true >/dev/null
    wait_for "a new installer pod on berth" 120 installer_running berth
    pod=$(kc -n "$RELEASE_NS" get pods -l "app.kubernetes.io/instance=$RELEASE" -o 'jsonpath={.items[0].metadata.name}')
    [ "$pod" != "$old" ]
    wait_for "the new installer to find the node on berth" 360 installer_says "$pod" 'the node runs on berth'
    log=$(kc -n "$RELEASE_NS" logs "$pod")
    if grep -E 'write |run: ' <<<"$log"; then die "the installer changed something on a node on berth"; fi
    after=$(berth_files)
    [ "$before" = "$after" ] || die "berth's files or berthd changed: $(diff <(echo "$before") <(echo "$after"))"
    [ "$(node_label)" = true ]
}

installer_says() { kc -n "$RELEASE_NS" logs "$1" | grep -q "$2"; }

berth_gone() {
    ! node_exec systemctl is-active --quiet berth-uninstall.service &&
        [ "$(node_exec systemctl show -p LoadState --value berth.service)" = not-found ] &&
        node_ready && node_runtime | grep -q '^containerd://'
}

step_helm_uninstall() {
    local t0 after
    t0=$(date +%s.%N)
    hm uninstall "$RELEASE" -n "$RELEASE_NS" >/dev/null
    wait_for "the node back on containerd, Ready, berth.service gone" 360 berth_gone
    timing "helm uninstall to the node Ready on containerd" "$(since "$t0")"
    after=$(kubelet_files)
    [ "$after" = "$(cat "$RUN/kubelet-files.before")" ] ||
        die "the kubelet's files differ from before the install: $(diff "$RUN/kubelet-files.before" <(echo "$after"))"
    none node_exec sh -c 'ls -d /usr/local/bin/berth* /etc/berth /etc/systemd/system/berth.service /var/lib/berth-install \
        /var/lib/berth /run/berth' 2>/dev/null
    [ -z "$(node_label)" ]
    node_exec systemctl is-active --quiet containerd.service
}

step_deployment_on_containerd_again() {
    local pod
    pod=$(deployment_reachable web-again)
    kc -n default get pod "$pod" -o 'jsonpath={.status.containerStatuses[0].containerID}' | grep -q '^containerd://'
    wait_for "every pod of the node to run on containerd" 180 pods_on containerd
}

# ----------------------------------------------------------------------------------------- the flow

PASSED=0
FAILED=0
BROKEN=""

# check NAME STEP: runs STEP (unless an earlier step failed: then it counts as failed, not run).
check() {
    local name=$1 t0 rc=0
    shift
    if [ -n "$BROKEN" ]; then
        echo "FAIL $name (not run: $BROKEN failed)"
        FAILED=$((FAILED + 1))
        return 0
    fi
    t0=$(date +%s.%N)
    (
        set -Eeuo pipefail
        "$@"
    ) &
    wait $! || rc=$?
    if [ $rc -eq 0 ]; then
        echo "ok   $name ($(since "$t0"))"
        PASSED=$((PASSED + 1))
    else
        echo "FAIL $name ($(since "$t0"))"
        FAILED=$((FAILED + 1))
        BROKEN=$name
        diagnose >&2 || true
    fi
}

# What a failed step leaves for whoever reads the log: the cluster's view, the node's units and the
# last lines of its kubelet and runtime.
diagnose() {
    [ -f "$RUN/kubeconfig" ] || return 0
    echo "--- diagnosis"
    kc get nodes,pods -A -o wide 2>&1 || true
    kc get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 15 || true
    if node_running; then
        node_exec systemctl --failed --no-legend 2>&1 || true
        node_exec journalctl --no-pager -n 40 -u kubelet -u containerd 2>&1 || true
    fi
    echo "---"
}

# check_always NAME STEP: as check, but runs even after a failure (teardown and its verification).
check_always() {
    local broken=$BROKEN
    BROKEN=""
    check "$@"
    [ -n "$BROKEN" ] || BROKEN=$broken
}

host_unchanged() {
    host_state >"$TMP_STATE/after"
    diff "$TMP_STATE/before" "$TMP_STATE/after" >&2
}

up_steps() {
    check "the node rootfs (debootstrap, cached)" step_rootfs
    check "control plane up (cluster.sh --runtime none)" step_control_plane
    check "node boots with systemd as PID 1, running" step_node_boot
    check "containerd 2.x, kubelet, kube-proxy active; SystemdCgroup = true" step_node_runtime
    check "node $NODE registered and Ready, cgroupDriver systemd, on containerd" step_node_ready
}

berth_steps() {
    check "a Deployment on containerd runs, is reachable, in systemd cgroups" step_deployment_on_containerd
    check "berth's image built (deploy/build.sh) and pushed to the registry" step_berth_image
    check "helm lint, server-side dry run, helm install berth charts/berth" step_helm_install
    check "the installer's DaemonSet pod runs on containerd" step_installer_on_containerd
    check "berth.service active beside containerd, systemd driver in its config, CRI RuntimeReady" step_berth_beside_containerd
    check "the kubelet switched: berth.dev/runtime=true, Ready on berth://, cgroup driver systemd" step_switched
    check "every pod re-created on berth (berth's crictl lists them; containerd off, no shim left)" step_pods_on_berth
    check "a Deployment on berth runs and is reachable, in systemd scopes" step_deployment_on_berth
    check "systemctl restart berth: same containers and shims, still reachable, Ready" step_restart_berth
    check "the installer re-run on berth changes nothing" step_installer_idempotent
    check "helm uninstall: back on containerd://, Ready, kubelet files byte-identical, berth gone" step_helm_uninstall
    check "a Deployment on containerd again runs and is reachable" step_deployment_on_containerd_again
}

full() {
    TMP_STATE=$(mktemp -d)
    host_state >"$TMP_STATE/before"
    mkdir -p "$RUN"
    host_sysctls >"$RUN/sysctl.before"
    : >"$RUN/timings"
    trap 'down; rm -rf "$TMP_STATE"' EXIT
    up_steps
    berth_steps
    cp "$RUN/timings" "$TMP_STATE/timings"
    check_always "teardown" down
    check_always "host as before (cgroup mounts, iptables, mounts, links, cgroups, processes)" host_unchanged
    sed 's/^/timing: /' "$TMP_STATE/timings"
    rm -rf "$TMP_STATE"
    trap - EXIT
    echo "$PASSED passed, $FAILED failed"
    if [ "$FAILED" -ne 0 ]; then exit 1; fi
}

preflight() {
    [ "$(id -u)" -eq 0 ] || die "needs root"
    [ ! -d "$RUN" ] || die "a node is up ($RUN exists): run $0 down first"
    mkdir -p "$RUN"
    chmod 700 "$RUN"
    if "$CLUSTER" env >/dev/null 2>&1; then
        die "a cluster.sh cluster is up; this test runs its own control plane (run cluster.sh down first)"
    fi
    host_packages
}

case ${1:-} in
"")
    preflight
    full
    ;;
up)
    preflight
    mkdir -p "$RUN"
    host_sysctls >"$RUN/sysctl.before"
    : >"$RUN/timings"
    up_steps
    sed 's/^/timing: /' "$RUN/timings"
    echo "$PASSED passed, $FAILED failed"
    if [ "$FAILED" -ne 0 ]; then exit 1; fi
    ;;
berth)
    if [ ! -f "$RUN/kubeconfig" ] || ! node_running; then die "no node is up: run $0 up first"; fi
    : >"$RUN/timings"
    berth_steps
    sed 's/^/timing: /' "$RUN/timings"
    echo "$PASSED passed, $FAILED failed"
    if [ "$FAILED" -ne 0 ]; then exit 1; fi
    ;;
down) down ;;
exec)
    shift
    node_exec "$@"
    ;;
env)
    [ -f "$RUN/kubeconfig" ] || die "no node is up"
    echo "export KUBECONFIG=$(cat "$RUN/kubeconfig")"
    echo "export PATH=$(tools_bin):\$PATH"
    ;;
*)
    sed -n '2,12s/^# \{0,1\}//p' "$0" >&2
    exit 2
    ;;
esac

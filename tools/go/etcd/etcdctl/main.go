// Command etcdctl is etcd's client, as go.etcd.io/etcd/etcdctl/v3's own main builds it (here for the
// same reason as ../etcd); it must never do more than that main does.
package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() {
	ctlv3.MustStart()
}

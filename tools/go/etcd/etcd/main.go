// Command etcd is etcd's server, as go.etcd.io/etcd/server/v3's own main builds it. It exists only
// because that module's go.mod replaces its sibling modules with ../api etc., which makes
// `go build` of it as a dependency impossible; it must never do more than that main does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}

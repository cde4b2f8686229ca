// Command etcd builds the pinned etcd server (go.etcd.io/etcd/server/v3 cannot be built with
// "go install" because its go.mod has replace directives).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }

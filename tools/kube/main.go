// fedcare-kube: a real Kubernetes control plane on one machine, for fedcare's tests and sandbox.
//
// One multi-call binary (as hyperkube was), so the build links the Kubernetes code once:
//
//	fedcare-kube cluster --dir DIR [--port N]   etcd (embedded) + the three components below
//	fedcare-kube kube-apiserver ARGS...         the real kube-apiserver
//	fedcare-kube kube-controller-manager ARGS...
//	fedcare-kube kube-scheduler ARGS...
//	fedcare-kube version
//
// `cluster` runs in the foreground: it writes DIR/kubeconfig (cluster-admin), prints one line
// starting with "ready" when the API answers, and on SIGTERM/SIGINT stops every child and etcd.
// Children die with it even when it is killed with SIGKILL (Pdeathsig).
package main

import (
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// kubeVersion is set by the Makefile with -ldflags from go.mod's pinned k8s.io/kubernetes.
var kubeVersion = "unknown"

func usage() {
	fmt.Fprintln(os.Stderr, "usage: fedcare-kube cluster --dir DIR [--port N] | kube-apiserver|kube-controller-manager|kube-scheduler ARGS... | version")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	sub, rest := os.Args[1], os.Args[2:]
	switch sub {
	case "cluster":
		os.Exit(runCluster(rest))
	case "version":
		fmt.Println(kubeVersion)
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(rest)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(rest)
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(rest)
		os.Exit(cli.Run(cmd))
	default:
		usage()
	}
}

package main

// `fedcare-kube cluster`: etcd embedded in this process, kube-apiserver, kube-controller-manager
// and kube-scheduler as child processes of this same binary. Everything listens on loopback
// ports chosen free at start (or --port for the API server), so instances run side by side.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

const prefix = "fedcare-kube:"

func say(format string, args ...any) { fmt.Fprintf(os.Stderr, prefix+" "+format+"\n", args...) }

// freePort asks the kernel for an unused loopback port. The port is released before the
// child binds it; a rare collision shows up as that child failing to listen, with its log.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func checkPort(port int) error {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("port %d on 127.0.0.1 is taken (%v): stop what listens there, pass another --port, or omit --port to pick a free one", port, err)
	}
	return l.Close()
}

type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan error
}

// tail returns the last lines of a child's log, for error messages.
func tail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

func start(name, logDir string, args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	// The child is killed if this process dies, even by SIGKILL. Pdeathsig follows the OS
	// thread that forked, so main() locks its goroutine to the main thread before any start.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() { c.done <- cmd.Wait(); f.Close() }()
	return c, nil
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs the child's whole process group.
func (c *child) stop(grace time.Duration) {
	if c == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		say("%s did not stop within %s; killing it", c.name, grace)
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}

func startEtcd(dir, logDir string) (*embed.Etcd, string, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Name = "fedcare-kube"
	cfg.Dir = filepath.Join(dir, "etcd")
	cu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", clientPort))
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(logDir, "etcd.log")}
	// A test control plane: losing the last writes on a power cut is acceptable, fsync is slow.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("etcd did not start (log: %s): %w", filepath.Join(logDir, "etcd.log"), err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("etcd not ready after 60s (log: %s)", filepath.Join(logDir, "etcd.log"))
	}
	return e, cu.String(), nil
}

// waitReady polls /readyz with the admin certificate until it answers 200, the child exits,
// or the timeout passes.
func waitReady(ctx context.Context, c *child, server, pkiDir string, timeout time.Duration) error {
	caPEM, err := os.ReadFile(filepath.Join(pkiDir, "ca.crt"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "admin.crt"), filepath.Join(pkiDir, "admin.key"))
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
	}}
	deadline := time.Now().Add(timeout)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		select {
		case err := <-c.done:
			c.done <- err
			return fmt.Errorf("%s exited (%v) before it was ready; last log lines (%s):\n%s", c.name, err, c.log, tail(c.log, 15))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := client.Get(server + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s (last answer: %s); log: %s", c.name, timeout, last, c.log)
}

func runCluster(args []string) int {
	runtime.LockOSThread() // see start(): Pdeathsig is tied to this thread
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory: etcd data, pki/, logs/, kubeconfig")
	port := fs.Int("port", 0, "API server port on 127.0.0.1 (0: a free one)")
	readyTimeout := fs.Duration("ready-timeout", 120*time.Second, "how long to wait for the API server")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		say("--dir is required (a folder for etcd data, certificates, logs and the kubeconfig)")
		return 2
	}
	began := time.Now()
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if err := run(ctx, *dir, *port, *readyTimeout, began); err != nil {
		if errors.Is(err, context.Canceled) {
			return 0
		}
		say("%v", err)
		return 1
	}
	return 0
}

func run(ctx context.Context, dir string, port int, readyTimeout time.Duration, began time.Time) error {
	dir, _ = filepath.Abs(dir)
	logDir := filepath.Join(dir, "logs")
	pkiDir := filepath.Join(dir, "pki")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return fmt.Errorf("cannot create %s: %w", logDir, err)
	}
	if port == 0 {
		var err error
		if port, err = freePort(); err != nil {
			return err
		}
	} else if err := checkPort(port); err != nil {
		return err
	}
	// One instance per directory: a second one would delete the first one's kubeconfig and
	// fight it for the etcd data. The lock dies with the process, whatever kills it.
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("cannot create %s: %w", filepath.Join(dir, "lock"), err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("another fedcare-kube is already running with --dir %s: stop it, or give this one another --dir", dir)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	_ = os.Remove(kubeconfig) // a stale one from an earlier run must not look ready
	p, err := loadOrCreatePKI(pkiDir)
	if err != nil {
		return fmt.Errorf("certificates in %s: %w", pkiDir, err)
	}
	etcd, etcdURL, err := startEtcd(dir, logDir)
	if err != nil {
		return err
	}
	defer etcd.Close()

	server := fmt.Sprintf("https://127.0.0.1:%d", port)
	pk := func(f string) string { return filepath.Join(pkiDir, f) }
	apiserver, err := start("kube-apiserver", logDir,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--tls-cert-file="+pk("apiserver.crt"), "--tls-private-key-file="+pk("apiserver.key"),
		"--client-ca-file="+pk("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pk("sa.pub"),
		"--service-account-signing-key-file="+pk("sa.key"),
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		// The `kubernetes` Service cannot have a loopback endpoint; in-cluster clients are not
		// the point of this control plane, so its endpoint reconciler is off.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--cert-dir="+filepath.Join(dir, "apiserver-certs"),
		"--v=1",
	)
	if err != nil {
		return err
	}
	children := []*child{apiserver}
	defer func() {
		for i := len(children) - 1; i >= 0; i-- {
			children[i].stop(15 * time.Second)
		}
	}()
	if err := waitReady(ctx, apiserver, server, pkiDir, readyTimeout); err != nil {
		return err
	}
	for _, name := range []string{"controller-manager", "scheduler"} {
		if err := p.kubeconfig(filepath.Join(dir, name+".kubeconfig"), server, name); err != nil {
			return err
		}
	}
	kcm, err := start("kube-controller-manager", logDir,
		"--kubeconfig="+filepath.Join(dir, "controller-manager.kubeconfig"),
		"--authentication-kubeconfig="+filepath.Join(dir, "controller-manager.kubeconfig"),
		"--authorization-kubeconfig="+filepath.Join(dir, "controller-manager.kubeconfig"),
		"--leader-elect=false",
		"--secure-port=0",
		"--service-account-private-key-file="+pk("sa.key"),
		"--root-ca-file="+pk("ca.crt"),
		"--cluster-signing-cert-file="+pk("ca.crt"), "--cluster-signing-key-file="+pk("ca.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--controllers=*",
		"--v=1",
	)
	if err != nil {
		return err
	}
	children = append(children, kcm)
	sched, err := start("kube-scheduler", logDir,
		"--kubeconfig="+filepath.Join(dir, "scheduler.kubeconfig"),
		"--authentication-kubeconfig="+filepath.Join(dir, "scheduler.kubeconfig"),
		"--authorization-kubeconfig="+filepath.Join(dir, "scheduler.kubeconfig"),
		"--leader-elect=false",
		"--secure-port=0",
		"--v=1",
	)
	if err != nil {
		return err
	}
	children = append(children, sched)
	// The admin kubeconfig is written last: its presence means the API is ready.
	if err := p.kubeconfig(kubeconfig, server, "admin"); err != nil {
		return err
	}
	fmt.Printf("ready: Kubernetes %s API at %s in %.1fs; kubeconfig %s\n", kubeVersion, server, time.Since(began).Seconds(), kubeconfig)
	os.Stdout.Sync()

	select {
	case <-ctx.Done():
		say("stopping (signal received)")
		return context.Canceled
	case err := <-apiserver.done:
		apiserver.done <- err
		return fmt.Errorf("kube-apiserver exited (%v); last log lines (%s):\n%s", err, apiserver.log, tail(apiserver.log, 15))
	case err := <-kcm.done:
		kcm.done <- err
		return fmt.Errorf("kube-controller-manager exited (%v); last log lines (%s):\n%s", err, kcm.log, tail(kcm.log, 15))
	case err := <-sched.done:
		sched.done <- err
		return fmt.Errorf("kube-scheduler exited (%v); last log lines (%s):\n%s", err, sched.log, tail(sched.log, 15))
	}
}

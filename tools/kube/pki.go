package main

// The control plane's keys and certificates: one CA, the API server's serving certificate,
// client certificates for the admin and the two controllers, and the ServiceAccount signing
// key. Written once per DIR and reused on the next start, so tokens and kubeconfigs issued by
// an earlier run of the same DIR stay valid.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

type pki struct {
	dir string
	ca  *x509.Certificate
	key *ecdsa.PrivateKey
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

func writePEM(path, kind string, der []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readPEM(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM block; delete the directory's pki/ folder to regenerate it", path)
	}
	return block.Bytes, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// loadOrCreatePKI makes DIR/pki/{ca,apiserver,admin,controller-manager,scheduler}.{crt,key}
// and sa.{key,pub}, keeping files that already exist.
func loadOrCreatePKI(dir string) (*pki, error) {
	p := &pki{dir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caCrt, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if !exists(caCrt) || !exists(caKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber:          serial(),
			Subject:               pkix.Name{CommonName: "fedcare-kube-ca"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().AddDate(10, 0, 0),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			return nil, err
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		if err := writePEM(caKey, "EC PRIVATE KEY", keyDER, 0o600); err != nil {
			return nil, err
		}
		if err := writePEM(caCrt, "CERTIFICATE", der, 0o644); err != nil {
			return nil, err
		}
	}
	der, err := readPEM(caCrt)
	if err != nil {
		return nil, err
	}
	if p.ca, err = x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("%s: %w", caCrt, err)
	}
	if der, err = readPEM(caKey); err != nil {
		return nil, err
	}
	if p.key, err = x509.ParseECPrivateKey(der); err != nil {
		return nil, fmt.Errorf("%s: %w", caKey, err)
	}

	if err := p.leaf("apiserver", "kube-apiserver", nil, true,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")}); err != nil {
		return nil, err
	}
	// Every client of the test control plane is a cluster admin; fedcare's own identities
	// (hub, agents) are ServiceAccounts whose rights come from the chart's RBAC.
	for _, name := range []string{"admin", "controller-manager", "scheduler"} {
		cn := map[string]string{"admin": "fedcare-admin", "controller-manager": "system:kube-controller-manager", "scheduler": "system:kube-scheduler"}[name]
		if err := p.leaf(name, cn, []string{"system:masters"}, false, nil, nil); err != nil {
			return nil, err
		}
	}
	saKey := filepath.Join(dir, "sa.key")
	if !exists(saKey) {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err := writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub, 0o644); err != nil {
			return nil, err
		}
		if err := writePEM(saKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key), 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (p *pki) leaf(name, cn string, orgs []string, server bool, dns []string, ips []net.IP) error {
	crt, keyPath := filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key")
	if exists(crt) && exists(keyPath) {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	usage := x509.ExtKeyUsageClientAuth
	if server {
		usage = x509.ExtKeyUsageServerAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		return err
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	if err := writePEM(keyPath, "EC PRIVATE KEY", keyDER, 0o600); err != nil {
		return err
	}
	return writePEM(crt, "CERTIFICATE", der, 0o644)
}

// kubeconfig writes a kubeconfig for one client certificate, with absolute paths.
func (p *pki) kubeconfig(path, server, name string) error {
	abs := func(f string) string { a, _ := filepath.Abs(filepath.Join(p.dir, f)); return a }
	body := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: fedcare-kube
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: fedcare-kube
  context:
    cluster: fedcare-kube
    user: %s
    namespace: default
current-context: fedcare-kube
`, server, abs("ca.crt"), name, abs(name+".crt"), abs(name+".key"), name)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

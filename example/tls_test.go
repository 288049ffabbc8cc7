package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunTLS runs the program with -tls-self-signed and a WriteTimeout
// shorter than the wait before a push: it serves HTTPS with HTTP/2, and an
// EventSource listener over HTTP/2 gets a push made after more than twice
// -write-timeout of silence.
func TestRunTLS(t *testing.T) {
	const writeTimeout = 200 * time.Millisecond
	p := startProgram(t, "-addr", "127.0.0.1:0", "-tls-self-signed", "-secure", "-write-timeout", writeTimeout.String())
	if !strings.HasPrefix(p.URL, "https://") {
		t.Fatalf("listening on %s, want https", p.URL)
	}
	b := newBrowser(t, p.URL)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	b.c.Transport = tr
	b.mustLogin("alice")
	sub := b.subscribe()
	req, _ := http.NewRequest("GET", b.base+sub.URL, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.TLS == nil || resp.StatusCode != 200 {
		t.Fatalf("EventSource: %s %s (TLS %v), want 200 over HTTP/2", resp.Proto, resp.Status, resp.TLS != nil)
	}
	cert := resp.TLS.PeerCertificates[0]
	if err := cert.VerifyHostname("127.0.0.1"); err != nil {
		t.Errorf("self-signed certificate: %v", err)
	}
	r := bufio.NewReader(resp.Body)
	if line, err := r.ReadString('\n'); err != nil || line != ": hi\n" {
		t.Fatalf("stream starts with %q, %v", line, err)
	}
	time.Sleep(2 * writeTimeout) // the silence under test, not a synchronisation
	if resp, body := b.postJSON("/push", `{"text":"late"}`); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("push: %s %s", resp.Status, body)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended before the push: %v", err)
		}
		if strings.HasPrefix(line, "data: ") {
			if !strings.Contains(line, "late") {
				t.Errorf("data %q, want the push", line)
			}
			break
		}
	}
}

// TestServerTLS: -tls-cert and -tls-key load a key pair; half of them, or
// both with -tls-self-signed, is an error; no flag is plain HTTP.
func TestServerTLS(t *testing.T) {
	if cfg, err := serverTLS("", "", false); cfg != nil || err != nil {
		t.Errorf("no flag: %v, %v; want plain HTTP", cfg, err)
	}
	cert, err := selfSignedCert(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	cfg, err := serverTLS(certFile, keyFile, false)
	if err != nil || len(cfg.Certificates) != 1 {
		t.Fatalf("key pair: %v, %v", cfg, err)
	}
	for _, c := range [][3]any{{certFile, "", false}, {"", keyFile, false}, {certFile, keyFile, true}, {filepath.Join(dir, "none"), keyFile, false}} {
		if _, err := serverTLS(c[0].(string), c[1].(string), c[2].(bool)); err == nil {
			t.Errorf("serverTLS%q: no error", c)
		}
	}
	if err := run(t.Context(), []string{"-addr", "127.0.0.1:0", "-write-timeout", "-1s"}, io.Discard); err == nil {
		t.Error("a negative -write-timeout: no error")
	}
}

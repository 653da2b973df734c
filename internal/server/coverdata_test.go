package server_test

import (
	"archive/tar"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"example.com/gateway-e2e/internal/server"
)

// A coverage build of a service, as the xtask makes it (-cover -tags e2ecoverage), serves its
// counters on demand; a plain build does not have the endpoint at all.
func TestCoverageBuildsServeTheirCounters(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a service")
	}
	for _, build := range []struct {
		name   string
		flags  []string
		status int
	}{
		{"coverage", []string{"-cover", "-covermode=atomic", "-tags", "e2ecoverage"}, http.StatusOK},
		{"plain", nil, http.StatusNotFound},
	} {
		t.Run(build.name, func(t *testing.T) {
			resp := getFromService(t, build.flags, server.CoverDataPath)
			defer resp.Body.Close()
			if resp.StatusCode != build.status {
				body, _ := io.ReadAll(resp.Body)
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, build.status, body)
			}
			if build.status != http.StatusOK {
				return
			}
			dir := t.TempDir()
			meta, counters := 0, 0
			tr := tar.NewReader(resp.Body)
			for {
				hdr, err := tr.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case strings.HasPrefix(hdr.Name, "covmeta."):
					meta++
				case strings.HasPrefix(hdr.Name, "covcounters."):
					counters++
				}
				data, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, hdr.Name), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if meta == 0 || counters == 0 {
				t.Fatalf("want covmeta.* and covcounters.* files, got %d and %d", meta, counters)
			}
			// Go's own tool reads them as a GOCOVERDIR: the names and contents are right.
			out, err := exec.Command("go", "tool", "covdata", "percent", "-i", dir).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "coverage:") {
				t.Fatalf("go tool covdata percent: %v\n%s", err, out)
			}
		})
	}
}

// getFromService builds ./cmd/datastorage with flags, starts it on a free port and GETs path.
func getFromService(t *testing.T, flags []string, path string) *http.Response {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "datastorage")
	args := append([]string{"build", "-o", bin}, flags...)
	build := exec.Command("go", append(args, "example.com/gateway-e2e/cmd/datastorage")...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin)
	// As in our images (FROM scratch): no temporary directory to write to.
	cmd.Env = append(os.Environ(), "LISTEN_ADDR="+addr, "GOCOVERDIR="+t.TempDir(), "TMPDIR=/nonexistent")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the service did not answer: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

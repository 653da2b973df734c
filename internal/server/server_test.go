package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) Getenv { return func(k string) string { return m[k] } }

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestListenAddr(t *testing.T) {
	if got, err := ListenAddr(env(nil), ":8080"); err != nil || got != ":8080" {
		t.Fatalf("default: got %q, %v", got, err)
	}
	if got, err := ListenAddr(env(map[string]string{"LISTEN_ADDR": "127.0.0.1:9"}), ":8080"); err != nil || got != "127.0.0.1:9" {
		t.Fatalf("set: got %q, %v", got, err)
	}
	for _, bad := range []string{"8080", "localhost", "host:"} {
		_, err := ListenAddr(env(map[string]string{"LISTEN_ADDR": bad}), ":8080")
		if err == nil || !strings.Contains(err.Error(), "LISTEN_ADDR") {
			t.Errorf("LISTEN_ADDR=%q: want an error naming LISTEN_ADDR, got %v", bad, err)
		}
	}
}

func TestDuration(t *testing.T) {
	if d, err := Duration(env(nil), "W", time.Minute); err != nil || d != time.Minute {
		t.Fatalf("default: got %v, %v", d, err)
	}
	if d, err := Duration(env(map[string]string{"W": "90s"}), "W", time.Minute); err != nil || d != 90*time.Second {
		t.Fatalf("set: got %v, %v", d, err)
	}
	for _, bad := range []string{"5", "abc", "-1m", "0s"} {
		_, err := Duration(env(map[string]string{"W": bad}), "W", time.Minute)
		if err == nil || !strings.Contains(err.Error(), "invalid W") {
			t.Errorf("W=%q: want an error naming W, got %v", bad, err)
		}
	}
}

func TestPositiveInt(t *testing.T) {
	if n, err := PositiveInt(env(nil), "N", 7); err != nil || n != 7 {
		t.Fatalf("default: got %v, %v", n, err)
	}
	if n, err := PositiveInt(env(map[string]string{"N": "12"}), "N", 7); err != nil || n != 12 {
		t.Fatalf("set: got %v, %v", n, err)
	}
	for _, bad := range []string{"x", "0", "-3", "1.5"} {
		_, err := PositiveInt(env(map[string]string{"N": bad}), "N", 7)
		if err == nil || !strings.Contains(err.Error(), "invalid N") {
			t.Errorf("N=%q: want an error naming N, got %v", bad, err)
		}
	}
}

// Serve must return nil once its context is cancelled, after letting an
// in-flight request finish: that is what makes main return and write coverage.
func TestServeDrainsAndReturnsOnCancel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inHandler := make(chan struct{})
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(inHandler)
		<-release
		io.WriteString(w, "done")
	})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, discard(), ln, h) }()

	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	<-inHandler
	cancel()
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v before the in-flight request finished", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if body := <-got; body != "done" {
		t.Fatalf("in-flight request: got %q, want done", body)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("listener still accepts connections after shutdown")
	}
}

func TestRunReportsBusyAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = Run(context.Background(), discard(), ln.Addr().String(), http.NotFoundHandler())
	if err == nil || !strings.Contains(err.Error(), "LISTEN_ADDR") {
		t.Fatalf("want a listen error that mentions LISTEN_ADDR, got %v", err)
	}
}

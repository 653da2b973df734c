// Package server holds what both services share: reading configuration from
// the environment, JSON responses, request logging, and running an HTTP server
// that shuts down gracefully when its context is cancelled.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"
)

// ShutdownTimeout bounds how long in-flight requests may take to drain after
// SIGTERM. It is well below the pods' terminationGracePeriodSeconds (30 s), so
// the process returns from main, and writes its coverage counters, before the
// kubelet would SIGKILL it.
const ShutdownTimeout = 10 * time.Second

// CoverDataPath is where coverage builds (built with -tags e2ecoverage, as the xtask does)
// serve their coverage counters on demand: on a cluster without a disk shared with the host,
// they are fetched through it before the pods go away. Other builds do not have it.
const CoverDataPath = "/debug/coverdata"

// Run listens on addr and serves handler until ctx is cancelled, then shuts
// down gracefully. It returns nil after a clean shutdown.
func Run(ctx context.Context, logger *slog.Logger, addr string, handler http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (set LISTEN_ADDR to a free address)", addr, err)
	}
	return Serve(ctx, logger, ln, handler)
}

// Serve is Run on an existing listener (tests pass one bound to port 0).
func Serve(ctx context.Context, logger *slog.Logger, ln net.Listener, handler http.Handler) error {
	srv := &http.Server{
		Handler:           withCoverData(handler),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	logger.Info("listening", "addr", ln.Addr().String())

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	logger.Info("shutting down", "timeout", ShutdownTimeout.String())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("graceful shutdown: %w", err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	}
	logger.Info("stopped")
	return nil
}

// WriteJSON writes v as a JSON response with the given status code.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ErrorBody is the JSON body of every error response. Field names the
// offending part of the request, when there is one.
type ErrorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

// WriteError writes an ErrorBody with the given status code.
func WriteError(w http.ResponseWriter, status int, field, msg string) {
	WriteJSON(w, status, ErrorBody{Error: msg, Field: field})
}

// Healthz answers liveness probes: the process is up and serving.
func Healthz(w http.ResponseWriter, _ *http.Request) {
	WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// LogRequests logs one line per request: method, path, status, duration.
func LogRequests(logger *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		logger.Info("request", "method", r.Method, "path", r.URL.Path,
			"status", rec.status, "duration", time.Since(start).String())
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

// Getenv is os.Getenv's signature; configuration loaders take one so tests
// can pass a map lookup instead of mutating the process environment.
type Getenv func(string) string

// ListenAddr reads LISTEN_ADDR (host:port, host may be empty), or def.
func ListenAddr(getenv Getenv, def string) (string, error) {
	v := getenv("LISTEN_ADDR")
	if v == "" {
		return def, nil
	}
	if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
		return "", fmt.Errorf("invalid LISTEN_ADDR %q: want host:port such as :8080", v)
	}
	return v, nil
}

// Duration reads a positive Go duration (such as 5m or 90s) from name, or def.
func Duration(getenv Getenv, name string, def time.Duration) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("invalid %s %q: want a positive Go duration such as 5m", name, v)
	}
	return d, nil
}

// PositiveInt reads a positive integer from name, or def.
func PositiveInt(getenv Getenv, name string, def int) (int, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid %s %q: want a positive integer such as %d", name, v, def)
	}
	return n, nil
}

// Command datastorage runs the datastorage service; see package internal/datastorage.
//
// It returns from main on SIGTERM or SIGINT after draining requests, so a
// coverage-instrumented build writes its counters to GOCOVERDIR.
package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"example.com/gateway-e2e/internal/datastorage"
)

func main() {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := datastorage.Run(ctx, logger, os.Getenv)
	stop()
	if err != nil {
		logger.Error("datastorage failed", "err", err)
		os.Exit(1)
	}
}

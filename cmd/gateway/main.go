// Command gateway runs the gateway service; see package internal/gateway.
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

	"example.com/gateway-e2e/internal/gateway"
)

func main() {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := gateway.Run(ctx, logger, os.Getenv)
	stop()
	if err != nil {
		logger.Error("gateway failed", "err", err)
		os.Exit(1)
	}
}

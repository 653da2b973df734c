package datastorage

import (
	"context"
	"log/slog"
	"time"

	"example.com/gateway-e2e/internal/server"
)

// Config is the datastorage configuration, read from the environment.
type Config struct {
	ListenAddr string // LISTEN_ADDR, default :8081
	MaxEvents  int    // MAX_EVENTS, default 10000
}

// LoadConfig reads Config through getenv; an error names the bad variable.
func LoadConfig(getenv server.Getenv) (Config, error) {
	addr, err := server.ListenAddr(getenv, ":8081")
	if err != nil {
		return Config{}, err
	}
	maxEvents, err := server.PositiveInt(getenv, "MAX_EVENTS", 10000)
	if err != nil {
		return Config{}, err
	}
	return Config{ListenAddr: addr, MaxEvents: maxEvents}, nil
}

// Run loads the configuration and serves until ctx is cancelled.
func Run(ctx context.Context, logger *slog.Logger, getenv server.Getenv) error {
	cfg, err := LoadConfig(getenv)
	if err != nil {
		return err
	}
	logger.Info("starting datastorage", "listen", cfg.ListenAddr, "maxEvents", cfg.MaxEvents)
	h := NewHandler(logger, NewStore(cfg.MaxEvents), time.Now)
	return server.Run(ctx, logger, cfg.ListenAddr, server.LogRequests(logger, h))
}

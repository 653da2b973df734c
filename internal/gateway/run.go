package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"example.com/gateway-e2e/internal/server"
)

// Config is the gateway configuration, read from the environment.
type Config struct {
	ListenAddr     string        // LISTEN_ADDR, default :8080
	DatastorageURL string        // DATASTORAGE_URL, default http://localhost:8081
	DedupWindow    time.Duration // DEDUP_WINDOW, default 5m
}

// LoadConfig reads Config through getenv; an error names the bad variable.
func LoadConfig(getenv server.Getenv) (Config, error) {
	addr, err := server.ListenAddr(getenv, ":8080")
	if err != nil {
		return Config{}, err
	}
	dsURL := getenv("DATASTORAGE_URL")
	if dsURL == "" {
		dsURL = "http://localhost:8081"
	}
	if u, err := url.Parse(dsURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Config{}, fmt.Errorf("invalid DATASTORAGE_URL %q: want an http(s) URL such as http://datastorage:8081", dsURL)
	}
	window, err := server.Duration(getenv, "DEDUP_WINDOW", 5*time.Minute)
	if err != nil {
		return Config{}, err
	}
	return Config{ListenAddr: addr, DatastorageURL: dsURL, DedupWindow: window}, nil
}

// Run loads the configuration and serves until ctx is cancelled.
func Run(ctx context.Context, logger *slog.Logger, getenv server.Getenv) error {
	cfg, err := LoadConfig(getenv)
	if err != nil {
		return err
	}
	logger.Info("starting gateway", "listen", cfg.ListenAddr,
		"datastorage", cfg.DatastorageURL, "dedupWindow", cfg.DedupWindow.String())
	h := NewHandler(logger, NewDatastorageClient(cfg.DatastorageURL), NewDedup(cfg.DedupWindow), time.Now)
	return server.Run(ctx, logger, cfg.ListenAddr, server.LogRequests(logger, h))
}

package datastorage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"example.com/gateway-e2e/internal/server"
)

// Config is the datastorage configuration, read from the environment.
type Config struct {
	ListenAddr string        // LISTEN_ADDR, default :8081
	MaxEvents  int           // MAX_EVENTS, default 10000
	RedisAddr  string        // DATASTORAGE_REDIS_ADDR (host:port); empty: events in memory
	RedisWait  time.Duration // DATASTORAGE_REDIS_WAIT, default 60s: how long Redis may take to answer at startup
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
	redisAddr := getenv("DATASTORAGE_REDIS_ADDR")
	if redisAddr != "" {
		if host, port, err := net.SplitHostPort(redisAddr); err != nil || host == "" || port == "" {
			return Config{}, fmt.Errorf("invalid DATASTORAGE_REDIS_ADDR %q: want host:port such as redis:6379", redisAddr)
		}
	}
	redisWait, err := server.Duration(getenv, "DATASTORAGE_REDIS_WAIT", time.Minute)
	if err != nil {
		return Config{}, err
	}
	return Config{ListenAddr: addr, MaxEvents: maxEvents, RedisAddr: redisAddr, RedisWait: redisWait}, nil
}

// Run loads the configuration and serves until ctx is cancelled.
//
// With DATASTORAGE_REDIS_ADDR it serves at once (/healthz answers, /readyz
// says not ready) and waits for Redis to answer, at most DATASTORAGE_REDIS_WAIT;
// if Redis never does, Run stops and returns an error that says so.
func Run(ctx context.Context, logger *slog.Logger, getenv server.Getenv) error {
	cfg, err := LoadConfig(getenv)
	if err != nil {
		return err
	}
	if cfg.RedisAddr == "" {
		logger.Info("starting datastorage", "listen", cfg.ListenAddr, "maxEvents", cfg.MaxEvents, "store", "memory")
		h := NewHandler(logger, NewMemoryStore(cfg.MaxEvents), time.Now)
		return server.Run(ctx, logger, cfg.ListenAddr, server.LogRequests(logger, h))
	}

	logger.Info("starting datastorage", "listen", cfg.ListenAddr, "maxEvents", cfg.MaxEvents,
		"store", "redis", "redis", cfg.RedisAddr)
	store := NewRedisStore(cfg.RedisAddr, cfg.MaxEvents)
	defer store.Close()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		if err := WaitForRedis(ctx, logger, store, cfg.RedisWait); err != nil {
			cancel(err) // Run returns it
		}
	}()
	h := NewHandler(logger, store, time.Now)
	if err := server.Run(ctx, logger, cfg.ListenAddr, server.LogRequests(logger, h)); err != nil {
		return err
	}
	if cause := context.Cause(ctx); errors.Is(cause, errRedisTimeout) {
		return cause
	}
	return nil
}

var errRedisTimeout = errors.New("redis did not answer")

// WaitForRedis returns nil once store's Redis answers PING, or when ctx ends;
// an error once wait has passed without an answer. It logs when it starts
// waiting, every 5 s while it waits, and when Redis answers.
func WaitForRedis(ctx context.Context, logger *slog.Logger, store *RedisStore, wait time.Duration) error {
	start := time.Now()
	logger.Info("waiting for redis", "redis", store.Addr(), "timeout", wait.String())
	lastLog, delay := start, 50*time.Millisecond
	for {
		pingCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := store.Ping(pingCtx)
		cancel()
		if err == nil {
			logger.Info("redis answers", "redis", store.Addr(), "after", time.Since(start).Round(time.Millisecond).String())
			return nil
		}
		if ctx.Err() != nil {
			return nil // shutting down: nothing to report
		}
		if time.Since(start) >= wait {
			return fmt.Errorf("%w within %s (DATASTORAGE_REDIS_WAIT): %v: check DATASTORAGE_REDIS_ADDR and that Redis runs and is reachable from here",
				errRedisTimeout, wait, err)
		}
		if time.Since(lastLog) >= 5*time.Second {
			logger.Warn("redis does not answer yet", "redis", store.Addr(),
				"waited", time.Since(start).Round(time.Second).String(), "err", err)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
}

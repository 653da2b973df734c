package datastorage

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestMemoryStore(t *testing.T) {
	testStore(t, func(t *testing.T, maxEvents int) Store { return NewMemoryStore(maxEvents) })
}

// testStore checks what every Store does; newStore returns an empty one.
func testStore(t *testing.T, newStore func(t *testing.T, maxEvents int) Store) {
	ctx := context.Background()
	t.Run("bound", func(t *testing.T) {
		s := newStore(t, 2)
		for i := 0; i < 2; i++ {
			if _, err := s.Add(ctx, Event{Fingerprint: "a"}, t0); err != nil {
				t.Fatalf("add %d: %v", i, err)
			}
		}
		if _, err := s.Add(ctx, Event{Fingerprint: "b"}, t0); !errors.Is(err, ErrFull) {
			t.Fatalf("third add: got %v, want ErrFull", err)
		}
		if n, err := s.Len(ctx); n != 2 || err != nil {
			t.Fatalf("len %d, %v, want 2", n, err)
		}
		if got, err := s.ByFingerprint(ctx, "b"); len(got) != 0 || got == nil || err != nil {
			t.Fatalf("refused event is visible or nil slice: %#v, %v", got, err)
		}
		if s.Max() != 2 {
			t.Fatalf("Max %d, want 2", s.Max())
		}
	})
	t.Run("order and IDs", func(t *testing.T) {
		s := newStore(t, 10)
		if n, err := s.Len(ctx); n != 0 || err != nil {
			t.Fatalf("empty store: len %d, %v", n, err)
		}
		for i, e := range []Event{{Fingerprint: "a", Count: 1}, {Fingerprint: "b", Count: 1}, {Fingerprint: "a", Count: 2}} {
			stored, err := s.Add(ctx, e, t0.Add(time.Duration(i)*time.Second))
			if err != nil || stored.ID != int64(i+1) || stored.Count != e.Count {
				t.Fatalf("add %d: %#v, %v", i, stored, err)
			}
		}
		got, err := s.ByFingerprint(ctx, "a")
		if err != nil || len(got) != 2 || got[0].Count != 1 || got[1].Count != 2 || got[0].ID != 1 || got[1].ID != 3 {
			t.Fatalf("got %#v, %v", got, err)
		}
		if !got[1].StoredAt.Equal(t0.Add(2 * time.Second)) {
			t.Fatalf("StoredAt %v", got[1].StoredAt)
		}
		if n, err := s.Len(ctx); n != 3 || err != nil {
			t.Fatalf("len %d, %v, want 3", n, err)
		}
	})
	t.Run("fields kept", func(t *testing.T) {
		s := newStore(t, 10)
		in := Event{Fingerprint: "f/ü x", AlertName: "HighLoad", Status: "resolved", Count: 7, ReceivedAt: t0.Add(-time.Minute)}
		if _, err := s.Add(ctx, in, t0); err != nil {
			t.Fatal(err)
		}
		got, err := s.ByFingerprint(ctx, in.Fingerprint)
		want := in
		want.ID, want.StoredAt = 1, t0
		if err != nil || len(got) != 1 || !got[0].ReceivedAt.Equal(want.ReceivedAt) || !got[0].StoredAt.Equal(t0) {
			t.Fatalf("got %#v, %v", got, err)
		}
		got[0].ReceivedAt, got[0].StoredAt = want.ReceivedAt, want.StoredAt
		if got[0] != want {
			t.Fatalf("got %#v, want %#v", got[0], want)
		}
	})
}

func post(t *testing.T, h http.Handler, body string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, EventsPath, strings.NewReader(body)))
	return rec
}

func errorField(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	var b struct{ Error, Field string }
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil || b.Error == "" {
		t.Fatalf("error body %q: %v", rec.Body, err)
	}
	return b.Field
}

const validEvent = `{"fingerprint":"fp1","alertname":"HighLoad","status":"firing","count":1,"receivedAt":"2026-01-02T03:04:05Z"}`

func TestPostAndGet(t *testing.T) {
	h := NewHandler(discard(), NewMemoryStore(10), func() time.Time { return t0 })
	rec := post(t, h, validEvent)
	if rec.Code != http.StatusCreated {
		t.Fatalf("post: %d %s", rec.Code, rec.Body)
	}
	var stored Event
	json.Unmarshal(rec.Body.Bytes(), &stored)
	if stored.ID != 1 || stored.AlertName != "HighLoad" || !stored.StoredAt.Equal(t0) {
		t.Fatalf("stored %#v", stored)
	}

	get := httptest.NewRecorder()
	h.ServeHTTP(get, httptest.NewRequest(http.MethodGet, EventsPath+"?fingerprint=fp1", nil))
	var body struct{ Events []Event }
	if err := json.Unmarshal(get.Body.Bytes(), &body); err != nil || get.Code != http.StatusOK {
		t.Fatalf("get: %d %s %v", get.Code, get.Body, err)
	}
	if len(body.Events) != 1 || body.Events[0].Fingerprint != "fp1" || body.Events[0].Count != 1 {
		t.Fatalf("events %#v", body.Events)
	}

	empty := httptest.NewRecorder()
	h.ServeHTTP(empty, httptest.NewRequest(http.MethodGet, EventsPath+"?fingerprint=other", nil))
	if strings.TrimSpace(empty.Body.String()) != `{"events":[]}` {
		t.Fatalf("unknown fingerprint: %s", empty.Body)
	}
}

func TestGetWithoutFingerprint(t *testing.T) {
	h := NewHandler(discard(), NewMemoryStore(10), time.Now)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, EventsPath, nil))
	if rec.Code != http.StatusBadRequest || errorField(t, rec) != "fingerprint" {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
}

func TestPostValidation(t *testing.T) {
	h := NewHandler(discard(), NewMemoryStore(10), time.Now)
	for _, tc := range []struct{ body, field string }{
		{`{`, "body"},
		{`{"status":"firing","count":1,"receivedAt":"2026-01-02T03:04:05Z"}`, "fingerprint"},
		{`{"fingerprint":"f","status":"pending","count":1,"receivedAt":"2026-01-02T03:04:05Z"}`, "status"},
		{`{"fingerprint":"f","status":"firing","count":0,"receivedAt":"2026-01-02T03:04:05Z"}`, "count"},
		{`{"fingerprint":"f","status":"firing","count":1}`, "receivedAt"},
		{`{"fingerprint":"f","status":"firing","count":1,"receivedAt":"yesterday"}`, "body"},
	} {
		rec := post(t, h, tc.body)
		if rec.Code != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", tc.body, rec.Code)
			continue
		}
		if f := errorField(t, rec); f != tc.field {
			t.Errorf("%s: field %q, want %q", tc.body, f, tc.field)
		}
	}
}

func TestFullStoreAnswers507(t *testing.T) {
	h := NewHandler(discard(), NewMemoryStore(1), time.Now)
	if rec := post(t, h, validEvent); rec.Code != http.StatusCreated {
		t.Fatalf("first: %d", rec.Code)
	}
	rec := post(t, h, validEvent)
	if rec.Code != http.StatusInsufficientStorage || !strings.Contains(rec.Body.String(), "MAX_EVENTS") {
		t.Fatalf("second: %d %s", rec.Code, rec.Body)
	}
}

func TestHealthAndReady(t *testing.T) {
	h := NewHandler(discard(), NewMemoryStore(1), func() time.Time { return t0 })
	for _, p := range []string{"/healthz", "/readyz"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		if rec.Code != http.StatusOK {
			t.Errorf("%s: %d", p, rec.Code)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	var ready struct {
		Status, Store string
		Events        int
		StartedAt     time.Time
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &ready); err != nil {
		t.Fatal(err)
	}
	if ready.Status != "ready" || ready.Store != "memory" || ready.Events != 0 || !ready.StartedAt.Equal(t0) {
		t.Fatalf("readyz body %s", rec.Body)
	}
}

func TestLoadConfig(t *testing.T) {
	cfg, err := LoadConfig(func(string) string { return "" })
	if err != nil || cfg != (Config{ListenAddr: ":8081", MaxEvents: 10000, RedisWait: time.Minute}) {
		t.Fatalf("defaults: %#v %v", cfg, err)
	}
	env := map[string]string{"LISTEN_ADDR": "127.0.0.1:9999", "MAX_EVENTS": "5",
		"DATASTORAGE_REDIS_ADDR": "redis:6379", "DATASTORAGE_REDIS_WAIT": "5s"}
	cfg, err = LoadConfig(func(k string) string { return env[k] })
	if err != nil || cfg != (Config{ListenAddr: "127.0.0.1:9999", MaxEvents: 5, RedisAddr: "redis:6379", RedisWait: 5 * time.Second}) {
		t.Fatalf("set: %#v %v", cfg, err)
	}
	for name, value := range map[string]string{
		"MAX_EVENTS":             "lots",
		"DATASTORAGE_REDIS_ADDR": "redis",
		"DATASTORAGE_REDIS_WAIT": "forever",
	} {
		_, err = LoadConfig(func(k string) string { return map[string]string{name: value}[k] })
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("bad %s: %v", name, err)
		}
	}
	for _, addr := range []string{":6379", "redis:", "redis"} {
		_, err = LoadConfig(func(k string) string { return map[string]string{"DATASTORAGE_REDIS_ADDR": addr}[k] })
		if err == nil || !strings.Contains(err.Error(), "DATASTORAGE_REDIS_ADDR") {
			t.Errorf("DATASTORAGE_REDIS_ADDR=%q: %v", addr, err)
		}
	}
}

func TestRunServesUntilCancelled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, discard(), func(k string) string { return map[string]string{"LISTEN_ADDR": addr}[k] })
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never served: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

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

func TestStoreBound(t *testing.T) {
	s := NewStore(2)
	for i := 0; i < 2; i++ {
		if _, err := s.Add(Event{Fingerprint: "a"}, t0); err != nil {
			t.Fatalf("add %d: %v", i, err)
		}
	}
	if _, err := s.Add(Event{Fingerprint: "b"}, t0); !errors.Is(err, ErrFull) {
		t.Fatalf("third add: got %v, want ErrFull", err)
	}
	if s.Len() != 2 {
		t.Fatalf("len %d, want 2", s.Len())
	}
	if got := s.ByFingerprint("b"); len(got) != 0 || got == nil {
		t.Fatalf("refused event is visible or nil slice: %#v", got)
	}
}

func TestStoreByFingerprintKeepsOrderAndIDs(t *testing.T) {
	s := NewStore(10)
	s.Add(Event{Fingerprint: "a", Count: 1}, t0)
	s.Add(Event{Fingerprint: "b", Count: 1}, t0)
	s.Add(Event{Fingerprint: "a", Count: 2}, t0.Add(time.Second))
	got := s.ByFingerprint("a")
	if len(got) != 2 || got[0].Count != 1 || got[1].Count != 2 || got[0].ID != 1 || got[1].ID != 3 {
		t.Fatalf("got %#v", got)
	}
	if !got[1].StoredAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("StoredAt %v", got[1].StoredAt)
	}
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
	h := NewHandler(discard(), NewStore(10), func() time.Time { return t0 })
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
	h := NewHandler(discard(), NewStore(10), time.Now)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, EventsPath, nil))
	if rec.Code != http.StatusBadRequest || errorField(t, rec) != "fingerprint" {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
}

func TestPostValidation(t *testing.T) {
	h := NewHandler(discard(), NewStore(10), time.Now)
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
	h := NewHandler(discard(), NewStore(1), time.Now)
	if rec := post(t, h, validEvent); rec.Code != http.StatusCreated {
		t.Fatalf("first: %d", rec.Code)
	}
	rec := post(t, h, validEvent)
	if rec.Code != http.StatusInsufficientStorage || !strings.Contains(rec.Body.String(), "MAX_EVENTS") {
		t.Fatalf("second: %d %s", rec.Code, rec.Body)
	}
}

func TestHealthAndReady(t *testing.T) {
	h := NewHandler(discard(), NewStore(1), time.Now)
	for _, p := range []string{"/healthz", "/readyz"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		if rec.Code != http.StatusOK {
			t.Errorf("%s: %d", p, rec.Code)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	cfg, err := LoadConfig(func(string) string { return "" })
	if err != nil || cfg != (Config{ListenAddr: ":8081", MaxEvents: 10000}) {
		t.Fatalf("defaults: %#v %v", cfg, err)
	}
	env := map[string]string{"LISTEN_ADDR": "127.0.0.1:9999", "MAX_EVENTS": "5"}
	cfg, err = LoadConfig(func(k string) string { return env[k] })
	if err != nil || cfg != (Config{ListenAddr: "127.0.0.1:9999", MaxEvents: 5}) {
		t.Fatalf("set: %#v %v", cfg, err)
	}
	_, err = LoadConfig(func(k string) string { return map[string]string{"MAX_EVENTS": "lots"}[k] })
	if err == nil || !strings.Contains(err.Error(), "MAX_EVENTS") {
		t.Fatalf("bad MAX_EVENTS: %v", err)
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

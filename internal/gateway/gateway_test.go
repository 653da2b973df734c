package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"example.com/gateway-e2e/internal/datastorage"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestParseWebhookValid(t *testing.T) {
	wh, err := ParseWebhook([]byte(webhook("fp1")))
	if err != nil {
		t.Fatal(err)
	}
	if len(wh.Alerts) != 1 || wh.Alerts[0].Fingerprint != "fp1" || wh.Alerts[0].Labels["alertname"] != "HighLoad" {
		t.Fatalf("parsed %#v", wh)
	}
	// An alert without its own status takes the payload's.
	wh, err = ParseWebhook([]byte(`{"status":"resolved","alerts":[{"labels":{"a":"b"},"fingerprint":"f"}]}`))
	if err != nil || wh.Alerts[0].Status != "resolved" {
		t.Fatalf("inherited status: %#v %v", wh, err)
	}
}

// malformed lists every kind of bad payload and the field its error names.
var malformed = []struct{ name, body, field string }{
	{"bad JSON", `{"alerts":[`, "body"},
	{"not an object", `[]`, "body"},
	{"missing alerts", `{"version":"4","status":"firing"}`, "alerts"},
	{"empty alerts", `{"version":"4","alerts":[]}`, "alerts"},
	{"alert without labels", `{"version":"4","alerts":[{"status":"firing","fingerprint":"f"}]}`, "alerts[0].labels"},
	{"second alert without fingerprint", `{"version":"4","alerts":[{"status":"firing","labels":{"a":"b"},"fingerprint":"f"},{"status":"firing","labels":{"a":"b"}}]}`, "alerts[1].fingerprint"},
	{"bad status", `{"version":"4","alerts":[{"status":"sad","labels":{"a":"b"},"fingerprint":"f"}]}`, "alerts[0].status"},
	{"wrong version", `{"version":"3","alerts":[{"status":"firing","labels":{"a":"b"},"fingerprint":"f"}]}`, "version"},
}

func TestParseWebhookMalformed(t *testing.T) {
	for _, tc := range malformed {
		_, err := ParseWebhook([]byte(tc.body))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: got %v, want field %q", tc.name, err, tc.field)
		}
	}
}

func TestDedupWindow(t *testing.T) {
	d := NewDedup(5 * time.Minute)
	s := d.Next("a", t0)
	if s.Count != 1 || s.Deduplicated {
		t.Fatalf("first: %#v", s)
	}
	// Next alone records nothing.
	if again := d.Next("a", t0); again.Count != 1 {
		t.Fatalf("Next changed state: %#v", again)
	}
	d.Commit(s)
	s = d.Next("a", t0.Add(4*time.Minute))
	if s.Count != 2 || !s.Deduplicated || !s.FirstSeen.Equal(t0) || !s.LastSeen.Equal(t0.Add(4*time.Minute)) {
		t.Fatalf("repeat inside window: %#v", s)
	}
	d.Commit(s)
	// The window counts from the first alert: at exactly 5m a new signal opens.
	s = d.Next("a", t0.Add(5*time.Minute))
	if s.Count != 1 || s.Deduplicated || !s.FirstSeen.Equal(t0.Add(5*time.Minute)) {
		t.Fatalf("after window: %#v", s)
	}
	// Other fingerprints are independent.
	if b := d.Next("b", t0.Add(time.Minute)); b.Count != 1 {
		t.Fatalf("other fingerprint: %#v", b)
	}
}

func TestDedupForgetsExpiredSignals(t *testing.T) {
	d := NewDedup(time.Minute)
	for i, fp := range []string{"a", "b", "c"} {
		d.Commit(d.Next(fp, t0.Add(time.Duration(i)*time.Second)))
	}
	if d.Len() != 3 {
		t.Fatalf("len %d, want 3", d.Len())
	}
	d.Commit(d.Next("z", t0.Add(2*time.Minute)))
	if d.Len() != 1 {
		t.Fatalf("after a window: len %d, want 1 (expired signals forgotten)", d.Len())
	}
}

func webhook(fps ...string) string {
	alerts := make([]string, len(fps))
	for i, fp := range fps {
		alerts[i] = `{"status":"firing","labels":{"alertname":"HighLoad","severity":"page"},"annotations":{},"startsAt":"2026-01-02T03:00:00Z","fingerprint":"` + fp + `"}`
	}
	return `{"version":"4","groupKey":"{}:{}","status":"firing","receiver":"gw","alerts":[` + strings.Join(alerts, ",") + `]}`
}

type fixture struct {
	gw    *Handler
	store *datastorage.MemoryStore
	clock *clock
}

// newFixture runs a real datastorage handler behind httptest.
func newFixture(t *testing.T, maxEvents int) *fixture {
	t.Helper()
	store := datastorage.NewMemoryStore(maxEvents)
	ds := httptest.NewServer(datastorage.NewHandler(discard(), store, time.Now))
	t.Cleanup(ds.Close)
	c := &clock{now: t0}
	gw := NewHandler(discard(), NewDatastorageClient(ds.URL), NewDedup(5*time.Minute), c.Now)
	return &fixture{gw: gw, store: store, clock: c}
}

func do(h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec
}

func decode[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("decode %q: %v", rec.Body, err)
	}
	return v
}

func TestPostAcceptsAndAudits(t *testing.T) {
	f := newFixture(t, 100)
	rec := do(f.gw, http.MethodPost, SignalsPath, webhook("fp1", "fp2"))
	if rec.Code != http.StatusAccepted {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	got := decode[Accepted](t, rec)
	if got.Accepted != 2 || len(got.Signals) != 2 || got.Signals[0].Fingerprint != "fp1" || got.Signals[0].Count != 1 {
		t.Fatalf("body %#v", got)
	}
	events, _ := f.store.ByFingerprint(context.Background(), "fp1")
	if len(events) != 1 {
		t.Fatalf("audit events for fp1: %#v", events)
	}
	e := events[0]
	if e.AlertName != "HighLoad" || e.Status != "firing" || e.Count != 1 || !e.ReceivedAt.Equal(t0) {
		t.Fatalf("audit event %#v", e)
	}
}

func TestPostDeduplicates(t *testing.T) {
	f := newFixture(t, 100)
	do(f.gw, http.MethodPost, SignalsPath, webhook("fp1"))
	f.clock.Advance(time.Minute)
	rec := do(f.gw, http.MethodPost, SignalsPath, webhook("fp1"))
	got := decode[Accepted](t, rec)
	if rec.Code != http.StatusAccepted || got.Signals[0].Count != 2 || !got.Signals[0].Deduplicated || !got.Signals[0].FirstSeen.Equal(t0) {
		t.Fatalf("second post: %d %#v", rec.Code, got)
	}
	if events, _ := f.store.ByFingerprint(context.Background(), "fp1"); len(events) != 2 || events[1].Count != 2 {
		t.Fatalf("audit events %#v", events)
	}
	m := f.gw.Metrics()
	if m.Received.Load() != 2 || m.Deduplicated.Load() != 1 || m.Forwarded.Load() != 2 || m.Rejected.Load() != 0 {
		t.Fatalf("metrics received=%d dedup=%d fwd=%d rej=%d", m.Received.Load(), m.Deduplicated.Load(), m.Forwarded.Load(), m.Rejected.Load())
	}
}

func TestPostMalformedNamesField(t *testing.T) {
	f := newFixture(t, 100)
	for _, tc := range malformed {
		rec := do(f.gw, http.MethodPost, SignalsPath, tc.body)
		body := decode[struct{ Error, Field string }](t, rec)
		if rec.Code != http.StatusBadRequest || body.Field != tc.field || body.Error == "" {
			t.Errorf("%s: %d %s, want 400 naming %q", tc.name, rec.Code, rec.Body, tc.field)
		}
	}
	if n := f.gw.Metrics().Rejected.Load(); n != uint64(len(malformed)) {
		t.Fatalf("rejected %d, want %d", n, len(malformed))
	}
	if n, _ := f.store.Len(context.Background()); n != 0 {
		t.Fatalf("a rejected request reached datastorage")
	}
}

func TestDatastorageDownGives503AndKeepsState(t *testing.T) {
	ds := httptest.NewServer(http.NotFoundHandler())
	url := ds.URL
	ds.Close() // nothing listens there now
	dedup := NewDedup(5 * time.Minute)
	gw := NewHandler(discard(), NewDatastorageClient(url), dedup, func() time.Time { return t0 })
	rec := do(gw, http.MethodPost, SignalsPath, webhook("fp1"))
	body := decode[Unavailable](t, rec)
	if rec.Code != http.StatusServiceUnavailable || body.Accepted != 0 || !strings.Contains(body.Error, "datastorage") {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
	if dedup.Len() != 0 {
		t.Fatal("dedup state changed for an alert that was not accepted")
	}
	if gw.Metrics().Forwarded.Load() != 0 {
		t.Fatal("forwarded counter moved")
	}
	if rec := do(gw, http.MethodGet, "/readyz", ""); rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("readyz with datastorage down: %d", rec.Code)
	}
}

func TestFullDatastorageGives503(t *testing.T) {
	f := newFixture(t, 1)
	rec := do(f.gw, http.MethodPost, SignalsPath, webhook("fp1", "fp2"))
	body := decode[Unavailable](t, rec)
	if rec.Code != http.StatusServiceUnavailable || body.Accepted != 1 || !strings.Contains(body.Error, "507") {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
	// The first alert was stored, so a repeat of it is deduplicated; the
	// second was not, so it still opens a fresh signal.
	if s := f.gw.dedup.Next("fp2", t0); s.Count != 1 {
		t.Fatalf("fp2 counted: %#v", s)
	}
	if s := f.gw.dedup.Next("fp1", t0); s.Count != 2 {
		t.Fatalf("fp1 not counted: %#v", s)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	f := newFixture(t, 100)
	if rec := do(f.gw, http.MethodGet, "/healthz", ""); rec.Code != http.StatusOK {
		t.Fatalf("healthz %d", rec.Code)
	}
	if rec := do(f.gw, http.MethodGet, "/readyz", ""); rec.Code != http.StatusOK {
		t.Fatalf("readyz %d: %s", rec.Code, rec.Body)
	}
	do(f.gw, http.MethodPost, SignalsPath, webhook("fp1"))
	do(f.gw, http.MethodPost, SignalsPath, webhook("fp1"))
	do(f.gw, http.MethodPost, SignalsPath, `{`)
	rec := do(f.gw, http.MethodGet, "/metrics", "")
	if !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
		t.Fatalf("content type %q", rec.Header().Get("Content-Type"))
	}
	for _, line := range []string{
		"# HELP gateway_signals_received_total ",
		"# TYPE gateway_signals_received_total counter\n",
		"\ngateway_signals_received_total 2\n",
		"\ngateway_signals_deduplicated_total 1\n",
		"\ngateway_requests_rejected_total 1\n",
		"\ngateway_audit_events_forwarded_total 2\n",
	} {
		if !strings.Contains(rec.Body.String(), line) {
			t.Errorf("metrics lack %q:\n%s", line, rec.Body)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	cfg, err := LoadConfig(func(string) string { return "" })
	want := Config{ListenAddr: ":8080", DatastorageURL: "http://localhost:8081", DedupWindow: 5 * time.Minute}
	if err != nil || cfg != want {
		t.Fatalf("defaults: %#v %v", cfg, err)
	}
	env := map[string]string{"LISTEN_ADDR": ":1", "DATASTORAGE_URL": "http://datastorage:8081", "DEDUP_WINDOW": "30s"}
	cfg, err = LoadConfig(func(k string) string { return env[k] })
	want = Config{ListenAddr: ":1", DatastorageURL: "http://datastorage:8081", DedupWindow: 30 * time.Second}
	if err != nil || cfg != want {
		t.Fatalf("set: %#v %v", cfg, err)
	}
	for name, bad := range map[string]string{
		"DATASTORAGE_URL": "datastorage:8081",
		"DEDUP_WINDOW":    "five minutes",
		"LISTEN_ADDR":     "8080",
	} {
		_, err := LoadConfig(func(k string) string { return map[string]string{name: bad}[k] })
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: want an error naming %s, got %v", name, bad, name, err)
		}
	}
}

func TestRunFailsOnBadConfig(t *testing.T) {
	err := Run(context.Background(), discard(), func(k string) string {
		return map[string]string{"DEDUP_WINDOW": "x"}[k]
	})
	if err == nil || !strings.Contains(err.Error(), "DEDUP_WINDOW") {
		t.Fatalf("got %v", err)
	}
}

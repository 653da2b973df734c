//go:build e2e

package gateway

import (
	"net/http"
	"testing"
)

func TestAlertAcceptedAndAudited(t *testing.T) {
	fp := fingerprint(t, "a")
	r := postAlerts(t, webhook("E2EAccepted", fp))
	if r.status != http.StatusAccepted {
		t.Fatalf("POST alert: status %d, want 202: %s", r.status, r.body)
	}
	got := decode[accepted](t, r)
	if got.Accepted != 1 || len(got.Signals) != 1 {
		t.Fatalf("want 1 accepted alert and 1 signal, got %+v", got)
	}
	if s := got.Signals[0]; s.Fingerprint != fp || s.Count != 1 || s.Deduplicated {
		t.Fatalf("want a new signal for %s with count 1, got %+v", fp, s)
	}

	events := auditEvents(t, fp)
	if len(events) != 1 {
		t.Fatalf("want 1 audit event for %s in datastorage, got %d: %+v", fp, len(events), events)
	}
	e := events[0]
	if e.Fingerprint != fp || e.AlertName != "E2EAccepted" || e.Status != "firing" || e.Count != 1 || e.ReceivedAt.IsZero() || e.ID == 0 {
		t.Fatalf("audit event does not match the alert: %+v", e)
	}
}

func TestRepeatedAlertDeduplicated(t *testing.T) {
	fp := fingerprint(t, "a")
	first := decode[accepted](t, postAlerts(t, webhook("E2EDedup", fp)))
	r := postAlerts(t, webhook("E2EDedup", fp))
	if r.status != http.StatusAccepted {
		t.Fatalf("second POST: status %d, want 202: %s", r.status, r.body)
	}
	second := decode[accepted](t, r)
	if len(first.Signals) != 1 || len(second.Signals) != 1 {
		t.Fatalf("want one signal per response, got %+v then %+v", first, second)
	}
	s := second.Signals[0]
	if s.Count != 2 || !s.Deduplicated {
		t.Fatalf("repeat inside the window: want count 2, deduplicated, got %+v", s)
	}
	// One signal: the repeat belongs to the signal the first alert opened.
	if !s.FirstSeen.Equal(first.Signals[0].FirstSeen) {
		t.Fatalf("repeat opened a new signal: firstSeen %v, want %v", s.FirstSeen, first.Signals[0].FirstSeen)
	}

	// Each alert is audited; the second event records the signal's count.
	events := auditEvents(t, fp)
	if len(events) != 2 || events[0].Count != 1 || events[1].Count != 2 {
		t.Fatalf("want audit events with counts 1 then 2 for %s, got %+v", fp, events)
	}
}

func TestMalformedPayloadRejected(t *testing.T) {
	for _, tc := range []struct {
		name, body, field string
	}{
		{"bad JSON", `{"version":"4","alerts":[`, "body"},
		{"missing alerts", `{"version":"4","status":"firing","receiver":"gateway"}`, "alerts"},
		{"alert without labels", `{"version":"4","alerts":[{"status":"firing","fingerprint":"` + fingerprint(t, "nolabels") + `"}]}`, "alerts[0].labels"},
		{"alert without fingerprint", `{"version":"4","alerts":[{"status":"firing","labels":{"alertname":"E2EBad"}}]}`, "alerts[0].fingerprint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := postAlerts(t, tc.body)
			if r.status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", r.status, r.body)
			}
			e := decode[errorBody](t, r)
			if e.Field != tc.field || e.Error == "" {
				t.Fatalf("want an error naming field %q, got %+v", tc.field, e)
			}
		})
	}
}

func TestReadiness(t *testing.T) {
	for _, tc := range []struct{ name, url string }{
		{"gateway healthz", gatewayURL + "/healthz"},
		{"gateway readyz", gatewayURL + "/readyz"},
		{"datastorage healthz", datastorageURL + "/healthz"},
		{"datastorage readyz", datastorageURL + "/readyz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := request(t, http.MethodGet, tc.url, "")
			if r.status != http.StatusOK {
				t.Fatalf("GET %s: status %d, want 200: %s", tc.url, r.status, r.body)
			}
		})
	}
}

func TestMetricsCountersMove(t *testing.T) {
	names := []string{
		"gateway_signals_received_total",
		"gateway_signals_deduplicated_total",
		"gateway_requests_rejected_total",
		"gateway_audit_events_forwarded_total",
	}
	before := metrics(t)
	for _, n := range names {
		if _, ok := before[n]; !ok {
			t.Fatalf("/metrics lacks %s", n)
		}
	}

	a, b := fingerprint(t, "a"), fingerprint(t, "b")
	for _, body := range []string{webhook("E2EMetrics", a, b), webhook("E2EMetrics", a)} {
		if r := postAlerts(t, body); r.status != http.StatusAccepted {
			t.Fatalf("POST alerts: status %d: %s", r.status, r.body)
		}
	}
	if r := postAlerts(t, `not json`); r.status != http.StatusBadRequest {
		t.Fatalf("POST malformed: status %d: %s", r.status, r.body)
	}

	after := metrics(t)
	want := map[string]float64{
		"gateway_signals_received_total":       3,
		"gateway_signals_deduplicated_total":   1,
		"gateway_requests_rejected_total":      1,
		"gateway_audit_events_forwarded_total": 3,
	}
	for _, n := range names {
		if d := after[n] - before[n]; d != want[n] {
			t.Errorf("%s moved by %g, want %g", n, d, want[n])
		}
	}
}

//go:build e2e

// Package gateway is the end-to-end suite for the gateway and datastorage
// services. It talks to already running services over HTTP; `cargo xtask
// e2e-gateway` deploys them and sets GATEWAY_URL and DATASTORAGE_URL.
//
// The services are shared by every test (and keep state between runs), so
// each test uses its own fingerprints and compares counters as deltas. Tests
// do not call t.Parallel, which keeps those deltas exact.
package gateway

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

var (
	gatewayURL     string
	datastorageURL string
	client         = &http.Client{Timeout: 10 * time.Second}
)

func TestMain(m *testing.M) {
	for _, v := range []struct {
		name string
		dst  *string
	}{{"GATEWAY_URL", &gatewayURL}, {"DATASTORAGE_URL", &datastorageURL}} {
		*v.dst = strings.TrimRight(os.Getenv(v.name), "/")
		if *v.dst == "" {
			fmt.Fprintf(os.Stderr, "e2e: %s is not set; run this suite via `cargo xtask e2e-gateway`, "+
				"or set GATEWAY_URL and DATASTORAGE_URL to running services (such as http://127.0.0.1:18080 and http://127.0.0.1:18081)\n", v.name)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// fingerprint returns a fingerprint no other test or earlier run uses.
func fingerprint(t *testing.T, suffix string) string {
	name := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
	return fmt.Sprintf("%s-%s-%d", name, suffix, time.Now().UnixNano())
}

// webhook is an Alertmanager version 4 payload with one firing alert per fingerprint.
func webhook(alertname string, fps ...string) string {
	type alert struct {
		Status       string            `json:"status"`
		Labels       map[string]string `json:"labels"`
		Annotations  map[string]string `json:"annotations"`
		StartsAt     string            `json:"startsAt"`
		EndsAt       string            `json:"endsAt"`
		GeneratorURL string            `json:"generatorURL"`
		Fingerprint  string            `json:"fingerprint"`
	}
	alerts := make([]alert, 0, len(fps))
	for _, fp := range fps {
		alerts = append(alerts, alert{
			Status:       "firing",
			Labels:       map[string]string{"alertname": alertname, "severity": "warning"},
			Annotations:  map[string]string{"summary": "e2e test alert"},
			StartsAt:     time.Now().UTC().Format(time.RFC3339),
			EndsAt:       "0001-01-01T00:00:00Z",
			GeneratorURL: "http://prometheus.example/graph",
			Fingerprint:  fp,
		})
	}
	b, _ := json.Marshal(map[string]any{
		"version": "4", "groupKey": "{}:{alertname=\"" + alertname + "\"}", "truncatedAlerts": 0,
		"status": "firing", "receiver": "gateway", "groupLabels": map[string]string{"alertname": alertname},
		"commonLabels": map[string]string{"alertname": alertname}, "commonAnnotations": map[string]string{},
		"externalURL": "http://alertmanager.example", "alerts": alerts,
	})
	return string(b)
}

type response struct {
	status int
	body   []byte
}

func request(t *testing.T, method, u, body string) response {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, u, err)
	}
	return response{status: resp.StatusCode, body: b}
}

// decode unmarshals r's body into a T, failing the test when it is not JSON.
func decode[T any](t *testing.T, r response) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("response %d is not the expected JSON: %v\n%s", r.status, err, r.body)
	}
	return v
}

type signal struct {
	Fingerprint  string    `json:"fingerprint"`
	Count        int       `json:"count"`
	Deduplicated bool      `json:"deduplicated"`
	FirstSeen    time.Time `json:"firstSeen"`
}

type accepted struct {
	Accepted int      `json:"accepted"`
	Signals  []signal `json:"signals"`
}

type auditEvent struct {
	ID          int64     `json:"id"`
	Fingerprint string    `json:"fingerprint"`
	AlertName   string    `json:"alertname"`
	Status      string    `json:"status"`
	Count       int       `json:"count"`
	ReceivedAt  time.Time `json:"receivedAt"`
}

type errorBody struct {
	Error string `json:"error"`
	Field string `json:"field"`
}

func postAlerts(t *testing.T, body string) response {
	t.Helper()
	return request(t, http.MethodPost, gatewayURL+"/api/v1/signals/prometheus", body)
}

func auditEvents(t *testing.T, fp string) []auditEvent {
	t.Helper()
	r := request(t, http.MethodGet, datastorageURL+"/api/v1/audit/events?fingerprint="+url.QueryEscape(fp), "")
	if r.status != http.StatusOK {
		t.Fatalf("GET audit events for %s: status %d: %s", fp, r.status, r.body)
	}
	return decode[struct {
		Events []auditEvent `json:"events"`
	}](t, r).Events
}

// metrics reads the gateway's counters from /metrics.
func metrics(t *testing.T) map[string]float64 {
	t.Helper()
	r := request(t, http.MethodGet, gatewayURL+"/metrics", "")
	if r.status != http.StatusOK {
		t.Fatalf("GET /metrics: status %d: %s", r.status, r.body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(r.body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var name string
		var v float64
		if _, err := fmt.Sscanf(line, "%s %g", &name, &v); err != nil {
			t.Fatalf("unparsable metrics line %q: %v", line, err)
		}
		out[name] = v
	}
	return out
}

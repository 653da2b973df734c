package gateway

import (
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
)

// Metrics are the gateway's counters, served in the Prometheus text format.
type Metrics struct {
	Received     atomic.Uint64 // alerts in valid requests
	Deduplicated atomic.Uint64 // accepted alerts that repeated an open signal
	Rejected     atomic.Uint64 // requests answered 400 or 413
	Forwarded    atomic.Uint64 // audit events datastorage stored
}

// WriteText writes the counters in the Prometheus text exposition format.
func (m *Metrics) WriteText(w io.Writer) error {
	counters := []struct {
		name, help string
		v          *atomic.Uint64
	}{
		{"gateway_signals_received_total", "Alerts received in valid webhook requests.", &m.Received},
		{"gateway_signals_deduplicated_total", "Accepted alerts that repeated an open signal.", &m.Deduplicated},
		{"gateway_requests_rejected_total", "Webhook requests rejected as malformed.", &m.Rejected},
		{"gateway_audit_events_forwarded_total", "Audit events stored by datastorage.", &m.Forwarded},
	}
	for _, c := range counters {
		if _, err := fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %d\n",
			c.name, c.help, c.name, c.name, c.v.Load()); err != nil {
			return err
		}
	}
	return nil
}

func (m *Metrics) serve(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_ = m.WriteText(w)
}

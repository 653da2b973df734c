package gateway

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"example.com/gateway-e2e/internal/server"
)

// SignalsPath receives Alertmanager webhooks.
const SignalsPath = "/api/v1/signals/prometheus"

const (
	maxBodyBytes  = 1 << 20
	readyzTimeout = time.Second
)

// Accepted is the 202 response body of SignalsPath.
type Accepted struct {
	Accepted int      `json:"accepted"`
	Signals  []Signal `json:"signals"`
}

// Unavailable is the 503 response body when datastorage cannot store an
// audit event. Accepted counts the alerts of the request handled before the
// failure (they are stored and counted); the rest are not.
type Unavailable struct {
	Error    string `json:"error"`
	Accepted int    `json:"accepted"`
}

// Handler is the gateway HTTP API.
type Handler struct {
	logger  *slog.Logger
	ds      *DatastorageClient
	dedup   *Dedup
	metrics *Metrics
	now     func() time.Time
	mux     *http.ServeMux

	// process serialises Next, Send and Commit so that the count in each
	// audit event is the count the signal really reached.
	process sync.Mutex
}

// NewHandler returns the gateway API. now is the clock (time.Now in production).
func NewHandler(logger *slog.Logger, ds *DatastorageClient, dedup *Dedup, now func() time.Time) *Handler {
	h := &Handler{logger: logger, ds: ds, dedup: dedup, metrics: &Metrics{}, now: now, mux: http.NewServeMux()}
	h.mux.HandleFunc("POST "+SignalsPath, h.postSignals)
	h.mux.HandleFunc("GET /healthz", server.Healthz)
	h.mux.HandleFunc("GET /readyz", h.readyz)
	h.mux.HandleFunc("GET /metrics", h.metrics.serve)
	return h
}

// Metrics returns the handler's counters.
func (h *Handler) Metrics() *Metrics { return h.metrics }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) postSignals(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		h.metrics.Rejected.Add(1)
		server.WriteError(w, http.StatusRequestEntityTooLarge, "body",
			fmt.Sprintf("request body larger than %d bytes", maxBodyBytes))
		return
	}
	wh, err := ParseWebhook(body)
	if err != nil {
		h.metrics.Rejected.Add(1)
		var fe *FieldError
		if errors.As(err, &fe) {
			server.WriteError(w, http.StatusBadRequest, fe.Field, fe.Msg)
		} else {
			server.WriteError(w, http.StatusBadRequest, "body", err.Error())
		}
		return
	}
	h.metrics.Received.Add(uint64(len(wh.Alerts)))

	resp := Accepted{Signals: make([]Signal, 0, len(wh.Alerts))}
	for _, a := range wh.Alerts {
		s, err := h.accept(r, a)
		if err != nil {
			h.logger.Error("audit event not stored, alert not accepted",
				"fingerprint", a.Fingerprint, "datastorage", h.ds.BaseURL, "err", err)
			server.WriteJSON(w, http.StatusServiceUnavailable, Unavailable{
				Error:    "datastorage unavailable, alert not accepted: " + err.Error(),
				Accepted: resp.Accepted,
			})
			return
		}
		resp.Accepted++
		resp.Signals = append(resp.Signals, s)
	}
	server.WriteJSON(w, http.StatusAccepted, resp)
}

// accept deduplicates one alert and stores its audit event; the dedup state
// changes only once datastorage has stored the event.
func (h *Handler) accept(r *http.Request, a Alert) (Signal, error) {
	h.process.Lock()
	defer h.process.Unlock()
	now := h.now()
	s := h.dedup.Next(a.Fingerprint, now)
	err := h.ds.Send(r.Context(), AuditEvent{
		Fingerprint: a.Fingerprint,
		AlertName:   a.Labels["alertname"],
		Status:      a.Status,
		Count:       s.Count,
		ReceivedAt:  now,
	})
	if err != nil {
		return Signal{}, err
	}
	h.dedup.Commit(s)
	h.metrics.Forwarded.Add(1)
	if s.Deduplicated {
		h.metrics.Deduplicated.Add(1)
	}
	return s, nil
}

// readyz: the gateway is ready when datastorage answers its /healthz.
func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	if err := h.ds.Healthy(r.Context(), readyzTimeout); err != nil {
		server.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{
			"status": "not ready",
			"error":  "datastorage unreachable at " + h.ds.BaseURL + ": " + err.Error(),
		})
		return
	}
	server.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

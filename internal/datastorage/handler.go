package datastorage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"example.com/gateway-e2e/internal/server"
)

// EventsPath is where audit events are written and read.
const EventsPath = "/api/v1/audit/events"

const maxBodyBytes = 64 << 10

// readyTimeout bounds how long /readyz waits for the store: a probe that hangs
// is worse than one that says "not ready".
const readyTimeout = 2 * time.Second

// NewHandler returns the datastorage HTTP API over store. now is the clock
// (time.Now in production); /readyz reports its reading at this call as
// startedAt, which tells one run of the service from the next.
func NewHandler(logger *slog.Logger, store Store, now func() time.Time) http.Handler {
	h := &handler{logger: logger, store: store, now: now, started: now()}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+EventsPath, h.postEvent)
	mux.HandleFunc("GET "+EventsPath, h.getEvents)
	mux.HandleFunc("GET /healthz", server.Healthz)
	mux.HandleFunc("GET /readyz", h.readyz)
	return mux
}

type handler struct {
	logger  *slog.Logger
	store   Store
	now     func() time.Time
	started time.Time
}

func (h *handler) postEvent(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		server.WriteError(w, http.StatusRequestEntityTooLarge, "body",
			fmt.Sprintf("request body larger than %d bytes", maxBodyBytes))
		return
	}
	var e Event
	if err := json.Unmarshal(body, &e); err != nil {
		server.WriteError(w, http.StatusBadRequest, "body", "malformed JSON: "+err.Error())
		return
	}
	if field, msg := validate(e); field != "" {
		server.WriteError(w, http.StatusBadRequest, field, msg)
		return
	}
	stored, err := h.store.Add(r.Context(), e, h.now())
	if errors.Is(err, ErrFull) {
		h.logger.Warn("audit store full, event refused", "fingerprint", e.Fingerprint, "max", h.store.Max())
		server.WriteError(w, http.StatusInsufficientStorage, "",
			fmt.Sprintf("store full: it holds its maximum of %d events (raise MAX_EVENTS)", h.store.Max()))
		return
	}
	if err != nil {
		h.unavailable(w, "storing an event", err)
		return
	}
	server.WriteJSON(w, http.StatusCreated, stored)
}

// validate returns the JSON name of the first invalid field and why, or "".
func validate(e Event) (field, msg string) {
	switch {
	case e.Fingerprint == "":
		return "fingerprint", "fingerprint is required"
	case e.Status != "firing" && e.Status != "resolved":
		return "status", `status must be "firing" or "resolved"`
	case e.Count < 1:
		return "count", "count must be at least 1"
	case e.ReceivedAt.IsZero():
		return "receivedAt", "receivedAt is required (RFC 3339 time)"
	}
	return "", ""
}

func (h *handler) getEvents(w http.ResponseWriter, r *http.Request) {
	fp := r.URL.Query().Get("fingerprint")
	if fp == "" {
		server.WriteError(w, http.StatusBadRequest, "fingerprint", "query parameter fingerprint is required")
		return
	}
	events, err := h.store.ByFingerprint(r.Context(), fp)
	if err != nil {
		h.unavailable(w, "reading events", err)
		return
	}
	server.WriteJSON(w, http.StatusOK, map[string][]Event{"events": events})
}

// unavailable answers 503 for a store that failed (Redis went away): the
// client may retry, and /readyz says the same meanwhile.
func (h *handler) unavailable(w http.ResponseWriter, doing string, err error) {
	h.logger.Error("store failed", "store", h.store.Kind(), "doing", doing, "err", err)
	server.WriteError(w, http.StatusServiceUnavailable, "", fmt.Sprintf("%s store unavailable: %v", h.store.Kind(), err))
}

// readyz: ready while the store answers. A full store is still ready: it
// answers reads, and writes get a clear 507.
func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	body := map[string]any{"store": h.store.Kind(), "startedAt": h.started}
	n, err := h.store.Len(ctx)
	if err != nil {
		body["status"], body["error"] = "not ready", err.Error()
		server.WriteJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	body["status"], body["events"] = "ready", n
	server.WriteJSON(w, http.StatusOK, body)
}

package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// AuditEvent is what the gateway sends to datastorage for each accepted alert.
type AuditEvent struct {
	Fingerprint string    `json:"fingerprint"`
	AlertName   string    `json:"alertname"`
	Status      string    `json:"status"`
	Count       int       `json:"count"`
	ReceivedAt  time.Time `json:"receivedAt"`
}

// DatastorageClient talks to datastorage.
type DatastorageClient struct {
	BaseURL string // such as http://localhost:8081, no trailing slash needed
	HTTP    *http.Client
}

// NewDatastorageClient returns a client with a short timeout: a slow
// datastorage must turn into a prompt 503, not a hanging webhook.
func NewDatastorageClient(baseURL string) *DatastorageClient {
	return &DatastorageClient{
		BaseURL: strings.TrimRight(baseURL, "/"),
		HTTP:    &http.Client{Timeout: 3 * time.Second},
	}
}

// Send stores e in datastorage; any answer but 201 Created is an error.
func (c *DatastorageClient) Send(ctx context.Context, e AuditEvent) error {
	body, err := json.Marshal(e)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+"/api/v1/audit/events", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("datastorage answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// Healthy reports whether datastorage answers /healthz with 200 within timeout.
func (c *DatastorageClient) Healthy(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("datastorage /healthz answered %s", resp.Status)
	}
	return nil
}

// Package gateway receives Alertmanager webhooks, deduplicates alerts by
// fingerprint, and records an audit event for each in datastorage.
package gateway

import (
	"encoding/json"
	"fmt"
)

// Webhook is the Alertmanager webhook payload (version 4). Fields the
// gateway does not use are left out; unknown fields are ignored.
type Webhook struct {
	Version  string  `json:"version"`
	GroupKey string  `json:"groupKey"`
	Status   string  `json:"status"`
	Receiver string  `json:"receiver"`
	Alerts   []Alert `json:"alerts"`
}

// Alert is one alert of a webhook.
type Alert struct {
	Status      string            `json:"status"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	Fingerprint string            `json:"fingerprint"`
}

// FieldError is a validation failure: which field, and why.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// ParseWebhook decodes and validates a webhook body. A *FieldError names the
// first offending field ("body" for malformed JSON).
func ParseWebhook(body []byte) (Webhook, error) {
	var wh Webhook
	if err := json.Unmarshal(body, &wh); err != nil {
		return Webhook{}, &FieldError{"body", "malformed JSON: " + err.Error()}
	}
	if wh.Version != "" && wh.Version != "4" {
		return Webhook{}, &FieldError{"version", fmt.Sprintf("unsupported webhook version %q, want \"4\"", wh.Version)}
	}
	if len(wh.Alerts) == 0 {
		return Webhook{}, &FieldError{"alerts", "alerts is required and must not be empty"}
	}
	for i := range wh.Alerts {
		a := &wh.Alerts[i]
		prefix := fmt.Sprintf("alerts[%d].", i)
		if len(a.Labels) == 0 {
			return Webhook{}, &FieldError{prefix + "labels", "labels are required"}
		}
		if a.Fingerprint == "" {
			return Webhook{}, &FieldError{prefix + "fingerprint", "fingerprint is required"}
		}
		if a.Status == "" {
			a.Status = wh.Status // Alertmanager sets both; accept either.
		}
		if a.Status != "firing" && a.Status != "resolved" {
			return Webhook{}, &FieldError{prefix + "status", `status must be "firing" or "resolved"`}
		}
	}
	return wh, nil
}

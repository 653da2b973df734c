//go:build e2e

package datastorage

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("datastorage", func() {
	Describe("health", Label("smoke"), func() {
		It("is alive and ready, with its events in Redis", func() {
			status, body := request(http.MethodGet, "/healthz", "")
			Expect(status).To(Equal(http.StatusOK), "GET /healthz: %s", body)
			r, err := readyz()
			Expect(err).NotTo(HaveOccurred())
			Expect(r.Status).To(Equal("ready"), "GET /readyz: %+v", r)
			Expect(r.Store).To(Equal("redis"),
				"datastorage keeps its events in %s: its Deployment must set DATASTORAGE_REDIS_ADDR", r.Store)
		})
	})

	Describe("events", func() {
		It("stores an event and reads it back", Label("smoke"), func() {
			fp := fingerprint("a")
			sent := newEvent(fp, 1)
			stored := postEvent(sent)
			Expect(stored.ID).To(BeNumerically(">", 0))
			Expect(stored.StoredAt).To(BeTemporally("~", time.Now(), time.Minute))
			sent.ID, sent.StoredAt = stored.ID, stored.StoredAt
			Expect(stored).To(sameEvent(sent))
			Expect(events(fp)).To(HaveExactElements(sameEvent(stored)))
		})

		It("lists a fingerprint's events in the order they were stored, with increasing IDs", Label("query"), func() {
			a, b := fingerprint("a"), fingerprint("b")
			var stored []event
			for i, fp := range []string{a, b, a, a} {
				stored = append(stored, postEvent(newEvent(fp, i+1)))
			}
			got := events(a)
			Expect(got).To(HaveExactElements(sameEvent(stored[0]), sameEvent(stored[2]), sameEvent(stored[3])))
			Expect(got[0].ID).To(BeNumerically("<", got[1].ID))
			Expect(got[1].ID).To(BeNumerically("<", got[2].ID))
			Expect(events(b)).To(HaveExactElements(sameEvent(stored[1])))
		})

		It("answers a fingerprint without events with an empty list", Label("query"), func() {
			status, body := request(http.MethodGet, eventsPath+"?fingerprint="+url.QueryEscape(fingerprint("none")), "")
			Expect(status).To(Equal(http.StatusOK))
			Expect(body).To(MatchJSON(`{"events":[]}`))
		})

		It("refuses a read without a fingerprint, naming the parameter", Label("query"), func() {
			status, body := request(http.MethodGet, eventsPath, "")
			Expect(status).To(Equal(http.StatusBadRequest))
			Expect(decode[errorBody](body)).To(HaveField("Field", "fingerprint"))
		})

		DescribeTable("refuses an invalid event, naming the field", Label("query"),
			func(body, field string) {
				status, reply := request(http.MethodPost, eventsPath, body)
				Expect(status).To(Equal(http.StatusBadRequest), "POST %s: %s", body, reply)
				got := decode[errorBody](reply)
				Expect(got.Field).To(Equal(field))
				Expect(got.Error).NotTo(BeEmpty())
			},
			Entry("malformed JSON", `{"fingerprint":`, "body"),
			Entry("no fingerprint", `{"status":"firing","count":1,"receivedAt":"2026-01-02T03:04:05Z"}`, "fingerprint"),
			Entry("unknown status", `{"fingerprint":"x","status":"pending","count":1,"receivedAt":"2026-01-02T03:04:05Z"}`, "status"),
			Entry("count 0", `{"fingerprint":"x","status":"firing","count":0,"receivedAt":"2026-01-02T03:04:05Z"}`, "count"),
			Entry("no receivedAt", `{"fingerprint":"x","status":"resolved","count":1}`, "receivedAt"),
		)
	})

	// Serial: the restart interrupts whatever else runs against datastorage.
	Describe("after a restart of datastorage", Label("persistence"), Serial, func() {
		It("serves the events stored before it, and numbers new ones after them", func() {
			Expect(restartCommand).NotTo(BeNil(), "DATASTORAGE_RESTART_COMMAND is not set: run this suite through "+
				"the xtask, or set it, or leave these specs out with --label-filter='!persistence'")
			fp := fingerprint("kept")
			before := []event{postEvent(newEvent(fp, 1)), postEvent(newEvent(fp, 2))}
			first, err := readyz()
			Expect(err).NotTo(HaveOccurred())

			By("restarting datastorage: " + strings.Join(restartCommand, " "))
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, restartCommand[0], restartCommand[1:]...).CombinedOutput()
			GinkgoWriter.Printf("%s", out)
			Expect(err).NotTo(HaveOccurred(), "the restart command %q failed: %s", restartCommand, out)

			By("waiting for a new datastorage process to be ready")
			Eventually(readyz).WithTimeout(2*time.Minute).WithPolling(500*time.Millisecond).Should(And(
				HaveField("Status", "ready"),
				HaveField("StartedAt", Not(BeTemporally("==", first.StartedAt))),
			), "no new datastorage process became ready: did %q restart it?", restartCommand)

			Expect(events(fp)).To(HaveExactElements(sameEvent(before[0]), sameEvent(before[1])),
				"the events stored before the restart")
			after := postEvent(newEvent(fp, 3))
			Expect(after.ID).To(BeNumerically(">", before[1].ID), "IDs go on after the restart")
			Expect(events(fp)).To(HaveLen(3))
		})
	})
})

const eventsPath = "/api/v1/audit/events"

type event struct {
	ID          int64     `json:"id"`
	Fingerprint string    `json:"fingerprint"`
	AlertName   string    `json:"alertname"`
	Status      string    `json:"status"`
	Count       int       `json:"count"`
	ReceivedAt  time.Time `json:"receivedAt"`
	StoredAt    time.Time `json:"storedAt"`
}

type readiness struct {
	Status    string    `json:"status"`
	Store     string    `json:"store"`
	Events    int       `json:"events"`
	StartedAt time.Time `json:"startedAt"`
	Error     string    `json:"error"`
}

type errorBody struct {
	Error string `json:"error"`
	Field string `json:"field"`
}

// request sends body (if any) to datastorage and returns the status and body;
// it fails the spec when datastorage does not answer.
func request(method, path, body string) (int, []byte) {
	GinkgoHelper()
	req, err := http.NewRequest(method, datastorageURL+path, strings.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	Expect(err).NotTo(HaveOccurred(), "%s %s", method, path)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	Expect(err).NotTo(HaveOccurred(), "%s %s: reading the body", method, path)
	return resp.StatusCode, b
}

// readyz reads /readyz; an error (for Eventually to retry) when datastorage
// does not answer or answers something else than its readiness.
func readyz() (readiness, error) {
	var r readiness
	resp, err := client.Get(datastorageURL + "/readyz")
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	return r, json.NewDecoder(resp.Body).Decode(&r)
}

func decode[T any](body []byte) T {
	GinkgoHelper()
	var v T
	Expect(json.Unmarshal(body, &v)).To(Succeed(), "not the expected JSON: %s", body)
	return v
}

func postEvent(e event) event {
	GinkgoHelper()
	b, err := json.Marshal(e)
	Expect(err).NotTo(HaveOccurred())
	status, body := request(http.MethodPost, eventsPath, string(b))
	Expect(status).To(Equal(http.StatusCreated), "POST %s: %s", eventsPath, body)
	return decode[event](body)
}

func events(fp string) []event {
	GinkgoHelper()
	status, body := request(http.MethodGet, eventsPath+"?fingerprint="+url.QueryEscape(fp), "")
	Expect(status).To(Equal(http.StatusOK), "GET events of %s: %s", fp, body)
	return decode[struct {
		Events []event `json:"events"`
	}](body).Events
}

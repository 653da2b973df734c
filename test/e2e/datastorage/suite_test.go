//go:build e2e

// Package datastorage is the end-to-end suite of datastorage with its events
// in Redis. It talks to an already running datastorage over HTTP; the xtask
// deploys it (with Redis) and sets:
//
//	DATASTORAGE_URL              where datastorage answers, e.g. http://127.0.0.1:18181
//	DATASTORAGE_RESTART_COMMAND  a JSON array, the argv of a command that makes the
//	                             running datastorage process stop gracefully (SIGTERM)
//	                             and a new one start, by the command itself or by the
//	                             cluster's restart policy. The suite then waits until
//	                             a process with another startedAt (/readyz) is ready,
//	                             so the command may return before that. Only the
//	                             specs labelled "persistence" need it.
//
// Labels: "smoke" (the service answers and keeps what it is given), "query"
// (the read API), "persistence" (events survive a restart; Serial, since the
// restart interrupts every other spec). Run with the ginkgo CLI pinned in
// tools/go.mod, from this directory:
//
//	go tool -modfile=../../../tools/go.mod ginkgo -tags e2e --label-filter=smoke .
//
// Datastorage is shared by every spec and process (and keeps its events
// between runs, in Redis), so each spec uses fingerprints of its own.
package datastorage

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var (
	datastorageURL string
	restartCommand []string // nil when DATASTORAGE_RESTART_COMMAND is not set
)

func TestDatastorage(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "datastorage")
}

var _ = BeforeSuite(func() {
	datastorageURL = strings.TrimRight(os.Getenv("DATASTORAGE_URL"), "/")
	Expect(datastorageURL).NotTo(BeEmpty(), "DATASTORAGE_URL is not set: run this suite through the xtask, "+
		"or set it to a running datastorage such as http://127.0.0.1:18181")
	if v := os.Getenv("DATASTORAGE_RESTART_COMMAND"); v != "" {
		Expect(json.Unmarshal([]byte(v), &restartCommand)).To(Succeed(),
			"DATASTORAGE_RESTART_COMMAND must be a JSON array of strings such as "+
				`["podman","kill","--signal","TERM","CONTAINER"], got %q`, v)
		Expect(restartCommand).NotTo(BeEmpty(), "DATASTORAGE_RESTART_COMMAND is an empty array")
	}
	// The services may still be starting when the suite does: wait, bounded.
	Eventually(readyz).WithTimeout(time.Minute).WithPolling(500*time.Millisecond).
		Should(HaveField("Status", "ready"), "datastorage at %s never became ready", datastorageURL)
})

// fingerprint returns a fingerprint no other spec, process or earlier run uses.
func fingerprint(suffix string) string {
	name := strings.NewReplacer(" ", "_", "/", "-").Replace(CurrentSpecReport().LeafNodeText)
	return fmt.Sprintf("%s-%s-p%d-%d", name, suffix, GinkgoParallelProcess(), time.Now().UnixNano())
}

// newEvent is a valid event for fp, as the gateway sends it.
func newEvent(fp string, count int) event {
	return event{
		Fingerprint: fp,
		AlertName:   "E2EDatastorage",
		Status:      "firing",
		Count:       count,
		ReceivedAt:  time.Now().UTC().Truncate(time.Millisecond),
	}
}

// sameEvent matches want field by field, and its times as instants (they went
// through JSON).
func sameEvent(want event) OmegaMatcher {
	return And(
		HaveField("ID", want.ID),
		HaveField("Fingerprint", want.Fingerprint),
		HaveField("AlertName", want.AlertName),
		HaveField("Status", want.Status),
		HaveField("Count", want.Count),
		HaveField("ReceivedAt", BeTemporally("==", want.ReceivedAt)),
		HaveField("StoredAt", BeTemporally("==", want.StoredAt)),
	)
}

var client = &http.Client{Timeout: 10 * time.Second}

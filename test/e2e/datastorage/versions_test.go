package datastorage

import (
	"os"
	"strings"
	"testing"
)

// The ginkgo CLI that runs this suite (pinned in tools/go.mod) must be the
// version of the library the suite is built with: the CLI and the library talk
// to each other and write the reports together. Not an E2E test: it runs
// without the e2e tag, with `go test ./...` in this directory.
func TestGinkgoCLIIsTheLibrarysVersion(t *testing.T) {
	const module = "github.com/onsi/ginkgo/v2"
	lib := requiredVersion(t, "go.mod", module)
	cli := requiredVersion(t, "../../../tools/go.mod", module)
	if lib != cli {
		t.Fatalf("this suite is built with ginkgo %s, but tools/go.mod pins the CLI at %s: "+
			"run `go get -tool %s/ginkgo@%s` in tools/", lib, cli, module, lib)
	}
}

// requiredVersion returns the version of module that the go.mod at path requires.
func requiredVersion(t *testing.T, path, module string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(fields) >= 2 && fields[0] == module {
			return fields[1]
		}
	}
	t.Fatalf("%s does not require %s", path, module)
	return ""
}

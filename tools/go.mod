// Tools the xtask runs, apart from the services' own module (which stays standard library
// only): `go tool -modfile=tools/go.mod gotestsum`, and `... ginkgo`, the Ginkgo CLI, at the
// version of github.com/onsi/ginkgo/v2 the Ginkgo suites require (test/e2e/datastorage/go.mod;
// its TestGinkgoCLIIsTheLibrarysVersion checks it).
module example.com/gateway-e2e/tools

go 1.25.0

tool (
	github.com/onsi/ginkgo/v2/ginkgo
	gotest.tools/gotestsum
)

require (
	github.com/Masterminds/semver/v3 v3.4.0 // indirect
	github.com/bitfield/gotestdox v0.2.2 // indirect
	github.com/dnephin/pflag v1.0.7 // indirect
	github.com/fatih/color v1.18.0 // indirect
	github.com/fsnotify/fsnotify v1.9.0 // indirect
	github.com/go-task/slim-sprig/v3 v3.0.0 // indirect
	github.com/google/pprof v0.0.0-20260402051712-545e8a4df936 // indirect
	github.com/google/shlex v0.0.0-20191202100458-e7afc7fbc510 // indirect
	github.com/mattn/go-colorable v0.1.13 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/onsi/ginkgo/v2 v2.34.0 // indirect
	golang.org/x/mod v0.35.0 // indirect
	golang.org/x/sync v0.20.0 // indirect
	golang.org/x/sys v0.43.0 // indirect
	golang.org/x/term v0.35.0 // indirect
	golang.org/x/text v0.36.0 // indirect
	golang.org/x/tools v0.44.0 // indirect
	gotest.tools/gotestsum v1.13.0 // indirect
)

//! Phase 6: a suite's tests, through gotestsum (which runs `go test -json`) or the ginkgo CLI
//! (which writes the same `go test -json` events with `--gojson-report`): the one structured
//! stream gives our test counts, beside the human-readable output and the JUnit file, whatever
//! the user passes after `--`. Both tools are pinned in `tools/go.mod`.

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::{
    cmd::{last_line, step},
    suite::{Runner, Suite},
};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TestReport {
    pub passed: usize,
    pub skipped: usize,
    /// The failed leaf tests, in the order they failed; those `go test`'s -timeout stopped last.
    pub failed_names: Vec<String>,
    /// The run was stopped by a signal: the counts are what ran before it.
    pub interrupted: bool,
    /// `go test`'s -timeout ended the suite: the counts are what ran before it.
    pub timeout: Option<Timeout>,
    /// Why the suite failed when no failed test says it (it did not compile, it crashed), and
    /// what to do.
    pub error: Option<String>,
    /// `junit.xml` in the run's log directory, when gotestsum wrote one.
    pub junit: Option<Utf8PathBuf>,
}

/// What the test binary's panic says when `go test`'s -timeout ends it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Timeout {
    /// As go says it: `10s`, `10m0s`.
    pub after: String,
    /// The leaf tests running at that moment: they get no result event of their own.
    pub running: Vec<String>,
}

impl TestReport {
    pub fn line(&self) -> String {
        let suffix = match &self.timeout {
            _ if self.interrupted => " before the interrupt".to_string(),
            Some(timeout) => {
                format!(" until `go test`'s -timeout ({}) ended the suite", timeout.after)
            }
            None => String::new(),
        };
        let (passed, failed, skipped) = (self.passed, self.failed_names.len(), self.skipped);
        format!("{passed} passed, {failed} failed, {skipped} skipped{suffix}")
    }

    /// `go test`'s -timeout stopped this test.
    pub fn timed_out(&self, name: &str) -> bool {
        self.timeout.as_ref().is_some_and(|t| t.running.iter().any(|n| n == name))
    }

    /// The failed tests as the summary names them: those the -timeout stopped say so.
    pub fn failed(&self) -> Vec<String> {
        let mark = |name: &String| match self.timed_out(name) {
            true => format!("{name} (timed out)"),
            false => name.clone(),
        };
        self.failed_names.iter().map(mark).collect()
    }
}

/// Runs the suite's tests with `env` (where to reach each component); `extra` are the arguments
/// after `--`. Returns the report also when the tests failed or were interrupted: the caller
/// decides.
pub fn run(
    sh: &Shell,
    suite: &Suite,
    env: &[(String, String)],
    extra: &[String],
    logs_dir: &Utf8Path,
) -> anyhow::Result<TestReport> {
    std::fs::create_dir_all(logs_dir)
        .with_context(|| format!("creating {logs_dir}: make target/ writable"))?;
    let (log, json, junit) =
        (logs_dir.join("go-test.log"), logs_dir.join("go-test.json"), logs_dir.join("junit.xml"));
    // gotestsum's `go test -json` stream is ours; ginkgo writes its own report beside its output.
    let (args, ignored) = match suite.tests.runner {
        Runner::GoTest => passthrough(extra),
        Runner::Ginkgo => (extra.to_vec(), Vec::new()),
    };
    if !ignored.is_empty() {
        let ignored = ignored.join(" ");
        println!("    ignoring {ignored} after `--`: the xtask needs every test's result from `go test -json`");
    }
    let package = &suite.tests.package;
    let test = match suite.tests.runner {
        Runner::GoTest => cmd!(
            sh,
            "go tool -modfile=tools/go.mod gotestsum --format standard-verbose --jsonfile {json} --junitfile {junit} -- -tags e2e -count=1 {package} {args...}"
        ),
        Runner::Ginkgo => {
            // The suite's defaults, unless given after `--`.
            let given = |flag: &str| args.iter().any(|a| a.trim_start_matches('-').starts_with(flag));
            let labels = suite.tests.labels.as_ref().filter(|_| !given("label-filter"));
            let labels = labels.map(|l| format!("--label-filter={l}"));
            let procs = suite.tests.procs.filter(|_| !given("procs")).map(|n| format!("--procs={n}"));
            let reports = [
                "--junit-report=junit.xml",
                "--gojson-report=go-test.json",
                "--json-report=ginkgo.json",
            ];
            cmd!(
                sh,
                "go tool -modfile=tools/go.mod ginkgo --no-color --keep-going {labels...} {procs...} {reports...} --output-dir={logs_dir} {args...} -tags e2e {package}"
            )
        }
    };
    let test = test.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    // Remove the previous run's files: a partial stream must not be mistaken for a whole one.
    let _ = std::fs::remove_file(&json);
    let result = step(test).echo().log(&log).output();
    let events = std::fs::read_to_string(&json).unwrap_or_default();
    let mut report = count_tests(&events);
    report.junit = junit.is_file().then_some(junit);
    let output = match result {
        Err(err) if err.is_interrupt() => return Ok(TestReport { interrupted: true, ..report }),
        result => result?,
    };
    if !output.success() && report.failed_names.is_empty() {
        let why = if let Some(timeout) = &report.timeout {
            let after = &timeout.after;
            format!("the suite hit `go test`'s -timeout ({after}) outside any test (in TestMain?): find where it hangs in the goroutine stacks, or pass `-- -timeout 30m`")
        } else if output.stdout.contains("[build failed]")
            || output.stdout.contains("[setup failed]")
        {
            format!("the suite does not compile: fix {package} (`go vet -tags e2e {package}`)")
        } else {
            "it ended without a failed test to show for it (a panic outside a test, os.Exit?)"
                .to_string()
        };
        let said =
            last_line(&output.stderr).map(|l| format!(" (it said: {l})")).unwrap_or_default();
        // The counts stay in the report: what ran before the failure is in the summary.
        report.error = Some(format!(
            "the suite failed ({}): {why}{said}; see the output above and {log}",
            output.status
        ));
    }
    Ok(report)
}

/// The user's `go test` arguments without those that would take the per-test results from the
/// JSON stream (`-json` is ours; `-v=false` silences the passes and skips).
fn passthrough(extra: &[String]) -> (Vec<String>, Vec<String>) {
    extra.iter().cloned().partition(|arg| {
        let flag = arg.trim_start_matches('-');
        !(arg.starts_with('-') && (flag == "json" || flag == "v" || flag.starts_with("v=")))
    })
}

/// Counts leaf tests from `go test -json` events: a test with subtests is counted through its
/// subtests, so a failing subtest is one failure, not two.
fn count_tests(events: &str) -> TestReport {
    let results: Vec<(String, String)> = events
        .lines()
        .filter_map(|line| Some((json_string(line, "Action")?, json_string(line, "Test")?)))
        .filter(|(action, _)| matches!(action.as_str(), "pass" | "fail" | "skip"))
        .collect();
    let mut report = TestReport::default();
    for (action, name) in &results {
        let parent = format!("{name}/");
        if results.iter().any(|(_, other)| other.starts_with(&parent)) {
            continue;
        }
        match action.as_str() {
            "pass" => report.passed += 1,
            "fail" => report.failed_names.push(name.clone()),
            _ => report.skipped += 1,
        }
    }
    // The test binary's own output, as test2json passes it on line by line.
    let output: String = events.lines().filter_map(|line| json_string(line, "Output")).collect();
    report.timeout = timeout(&output);
    // The tests it stopped get no result event: they failed, as gotestsum's JUnit file says.
    let stopped = report.timeout.iter().flat_map(|t| &t.running);
    let stopped = stopped.filter(|name| !results.iter().any(|(_, n)| n == *name)).cloned();
    report.failed_names.extend(stopped.collect::<Vec<_>>());
    report
}

/// The panic of a test binary that `go test`'s -timeout ended: `panic: test timed out after
/// 10s`, then `running tests:` and a `\t\t<name> (<time>)` line per test running then, parents
/// included.
fn timeout(output: &str) -> Option<Timeout> {
    let rest = output.split_once("panic: test timed out after ")?.1;
    let (after, rest) = rest.split_once('\n').unwrap_or((rest, ""));
    let list = rest.strip_prefix("\trunning tests:\n").unwrap_or("");
    let listed: Vec<&str> = list
        .lines()
        .map_while(|line| line.strip_prefix("\t\t"))
        .map(|line| line.rsplit_once(" (").map_or(line, |(name, _)| name))
        .collect();
    // A parent runs as long as its subtest: the subtest is the one that hung.
    let leaf = |name: &str| !listed.iter().any(|other| other.starts_with(&format!("{name}/")));
    let running = listed.iter().filter(|name| leaf(name)).map(|name| name.to_string()).collect();
    Some(Timeout { after: after.trim().to_string(), running })
}

/// The string value of `"key":"..."` in one line of JSON as test2json writes it (no spaces,
/// escapes as encoding/json writes them).
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let (mut value, mut chars) = (String::new(), line[start..].chars());
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => value.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                }
                other => other,
            }),
            c => value.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `go test -json` (Go 1.26) of a suite with subtests, a skip and a failure, trimmed.
    const EVENTS: &str = r#"{"Time":"2026-11-28T19:47:12.75Z","Action":"start","Package":"example.com/m/e2e"}
{"Time":"2026-11-28T19:47:12.75Z","Action":"run","Package":"example.com/m/e2e","Test":"TestA"}
{"Time":"2026-11-28T19:47:12.75Z","Action":"pass","Package":"example.com/m/e2e","Test":"TestA/sub_one","Elapsed":0}
{"Time":"2026-11-28T19:47:12.75Z","Action":"output","Package":"example.com/m/e2e","Test":"TestA/bad","Output":"    x_test.go:5: boom \"quoted\"\n"}
{"Time":"2026-11-28T19:47:12.75Z","Action":"fail","Package":"example.com/m/e2e","Test":"TestA/bad","Elapsed":0}
{"Time":"2026-11-28T19:47:12.75Z","Action":"fail","Package":"example.com/m/e2e","Test":"TestA","Elapsed":0}
{"Time":"2026-11-28T19:47:12.75Z","Action":"skip","Package":"example.com/m/e2e","Test":"TestB","Elapsed":0}
{"Time":"2026-11-28T19:47:12.75Z","Action":"pass","Package":"example.com/m/e2e","Test":"TestAx","Elapsed":0}
{"Time":"2026-11-28T19:47:12.75Z","Action":"fail","Package":"example.com/m/e2e","Elapsed":0.004}
"#;

    #[test]
    fn leaf_tests_are_counted_and_failures_named() {
        let report = count_tests(EVENTS);
        // TestA counts through its subtests; TestAx is not TestA's subtest; the package's own
        // result is no test.
        assert_eq!((report.passed, report.failed_names.len(), report.skipped), (2, 1, 1));
        assert_eq!(report.failed_names, ["TestA/bad"]);
        assert_eq!(report.line(), "2 passed, 1 failed, 1 skipped");
        let stopped = TestReport { interrupted: true, ..report };
        assert_eq!(stopped.line(), "2 passed, 1 failed, 1 skipped before the interrupt");
    }

    /// `go test -json -timeout 2s` (Go 1.26.8) of a suite whose `TestSleep/inner` sleeps an
    /// hour, as captured (the goroutine stacks trimmed): the panic is the hanging test's
    /// output, neither it nor its parent gets a result, `TestAfter` never runs.
    const TIMED_OUT: &str = r#"{"Time":"2026-12-07T19:24:56.53889369Z","Action":"start","Package":"example.com/m/e2e"}
{"Time":"2026-12-07T19:24:56.543186024Z","Action":"run","Package":"example.com/m/e2e","Test":"TestA"}
{"Time":"2026-12-07T19:24:56.543227452Z","Action":"output","Package":"example.com/m/e2e","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Time":"2026-12-07T19:24:56.543267306Z","Action":"output","Package":"example.com/m/e2e","Test":"TestA","Output":"--- PASS: TestA (0.00s)\n"}
{"Time":"2026-12-07T19:24:56.543271323Z","Action":"pass","Package":"example.com/m/e2e","Test":"TestA","Elapsed":0}
{"Time":"2026-12-07T19:24:56.543276894Z","Action":"run","Package":"example.com/m/e2e","Test":"TestB"}
{"Time":"2026-12-07T19:24:56.543283236Z","Action":"run","Package":"example.com/m/e2e","Test":"TestB/one"}
{"Time":"2026-12-07T19:24:56.543293705Z","Action":"pass","Package":"example.com/m/e2e","Test":"TestB/one","Elapsed":0}
{"Time":"2026-12-07T19:24:56.543296861Z","Action":"run","Package":"example.com/m/e2e","Test":"TestB/bad"}
{"Time":"2026-12-07T19:24:56.543302522Z","Action":"output","Package":"example.com/m/e2e","Test":"TestB/bad","Output":"    x_test.go:12: boom\n"}
{"Time":"2026-12-07T19:24:56.543312961Z","Action":"fail","Package":"example.com/m/e2e","Test":"TestB/bad","Elapsed":0}
{"Time":"2026-12-07T19:24:56.543319634Z","Action":"fail","Package":"example.com/m/e2e","Test":"TestB","Elapsed":0}
{"Time":"2026-12-07T19:24:56.54332279Z","Action":"run","Package":"example.com/m/e2e","Test":"TestSleep"}
{"Time":"2026-12-07T19:24:56.543325665Z","Action":"output","Package":"example.com/m/e2e","Test":"TestSleep","Output":"=== RUN   TestSleep\n"}
{"Time":"2026-12-07T19:24:56.543328731Z","Action":"run","Package":"example.com/m/e2e","Test":"TestSleep/inner"}
{"Time":"2026-12-07T19:24:56.543331586Z","Action":"output","Package":"example.com/m/e2e","Test":"TestSleep/inner","Output":"=== RUN   TestSleep/inner\n"}
{"Time":"2026-12-07T19:24:56.543334561Z","Action":"output","Package":"example.com/m/e2e","Test":"TestSleep/inner","Output":"    x_test.go:17: sleeping\n"}
{"Time":"2026-12-07T19:24:58.549010007Z","Action":"output","Package":"example.com/m/e2e","Test":"TestSleep/inner","Output":"panic: test timed out after 2s\n"}
{"Time":"2026-12-07T19:24:58.549480987Z","Action":"output","Package":"example.com/m/e2e","Test":"TestSleep/inner","Output":"\trunning tests:\n"}
{"Time":"2026-12-07T19:24:58.549589349Z","Action":"output","Package":"example.com/m/e2e","Test":"TestSleep/inner","Output":"\t\tTestSleep (2s)\n"}
{"Time":"2026-12-07T19:24:58.549597224Z","Action":"output","Package":"example.com/m/e2e","Test":"TestSleep/inner","Output":"\t\tTestSleep/inner (2s)\n"}
{"Time":"2026-12-07T19:24:58.549602554Z","Action":"output","Package":"example.com/m/e2e","Test":"TestSleep/inner","Output":"\n"}
{"Time":"2026-12-07T19:24:58.54961111Z","Action":"output","Package":"example.com/m/e2e","Test":"TestSleep/inner","Output":"goroutine 27 [running]:\n"}
{"Time":"2026-12-07T19:24:58.549615949Z","Action":"output","Package":"example.com/m/e2e","Test":"TestSleep/inner","Output":"testing.(*M).startAlarm.func1()\n"}
{"Time":"2026-12-07T19:24:58.550585489Z","Action":"output","Package":"example.com/m/e2e","Output":"FAIL\texample.com/m/e2e\t2.011s\n"}
{"Time":"2026-12-07T19:24:58.550608181Z","Action":"fail","Package":"example.com/m/e2e","Elapsed":2.012}
"#;

    #[test]
    fn a_test_the_timeout_stopped_is_a_failure_and_the_rest_still_counts() {
        let report = count_tests(TIMED_OUT);
        assert_eq!((report.passed, report.skipped), (2, 0));
        assert_eq!(report.failed_names, ["TestB/bad", "TestSleep/inner"]);
        let running = vec!["TestSleep/inner".to_string()];
        assert_eq!(report.timeout, Some(Timeout { after: "2s".into(), running }));
        assert_eq!(report.failed(), ["TestB/bad", "TestSleep/inner (timed out)"]);
        assert_eq!(
            report.line(),
            "2 passed, 2 failed, 0 skipped until `go test`'s -timeout (2s) ended the suite"
        );
        // A suite without the panic timed out nowhere.
        assert_eq!(count_tests(EVENTS).timeout, None);
    }

    #[test]
    fn json_strings_are_unescaped() {
        let line = r#"{"Action":"output","Test":"TestX/a\"b","Output":"tab\there \u00e9\n"}"#;
        assert_eq!(json_string(line, "Test").unwrap(), "TestX/a\"b");
        assert_eq!(json_string(line, "Output").unwrap(), "tab\there é\n");
        assert_eq!(json_string(line, "Package"), None);
    }

    #[test]
    fn flags_that_hide_results_are_dropped_and_the_rest_kept() {
        let args: Vec<String> =
            ["-run", "TestDedup", "-v=false", "-json", "--json", "-count=2", "-v"]
                .map(String::from)
                .to_vec();
        let (kept, ignored) = passthrough(&args);
        assert_eq!(kept, ["-run", "TestDedup", "-count=2"]);
        assert_eq!(ignored, ["-v=false", "-json", "--json", "-v"]);
    }
}

//! Phase 6: the Go E2E suite through gotestsum, which runs `go test -json`: the same structured
//! stream gives the human-readable output (as `go test -v` prints it), the JUnit file and our
//! test counts, whatever the user passes after `--`.

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::{
    cmd::{last_line, step},
    project::Services,
};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TestReport {
    pub passed: usize,
    pub skipped: usize,
    /// The failed leaf tests, in the order they failed.
    pub failed_names: Vec<String>,
    /// The run was stopped by a signal: the counts are what ran before it.
    pub interrupted: bool,
    /// `junit.xml` in the run's log directory, when gotestsum wrote one.
    pub junit: Option<Utf8PathBuf>,
}

impl TestReport {
    pub fn line(&self) -> String {
        let suffix = if self.interrupted { " before the interrupt" } else { "" };
        let (passed, failed, skipped) = (self.passed, self.failed_names.len(), self.skipped);
        format!("{passed} passed, {failed} failed, {skipped} skipped{suffix}")
    }
}

/// Runs the suite against the services' host ports; `extra` are the arguments after `--`.
/// Returns the report also when the tests failed or were interrupted: the caller decides.
pub fn run(
    sh: &Shell,
    services: &Services,
    extra: &[String],
    logs_dir: &Utf8Path,
) -> anyhow::Result<TestReport> {
    std::fs::create_dir_all(logs_dir)
        .with_context(|| format!("creating {logs_dir}: make target/ writable"))?;
    let (log, json, junit) =
        (logs_dir.join("go-test.log"), logs_dir.join("go-test.json"), logs_dir.join("junit.xml"));
    let (args, ignored) = passthrough(extra);
    if !ignored.is_empty() {
        let ignored = ignored.join(" ");
        println!("    ignoring {ignored} after `--`: the xtask needs every test's result from `go test -json`");
    }
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let test = cmd!(
        sh,
        "go tool -modfile=tools/go.mod gotestsum --format standard-verbose --jsonfile {json} --junitfile {junit} -- -tags e2e -count=1 ./test/e2e/gateway/... {args...}"
    )
    .env("GATEWAY_URL", url(services.gateway.host_port))
    .env("DATASTORAGE_URL", url(services.datastorage.host_port));
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
        let why = if output.stdout.contains("panic: test timed out") {
            "the suite hit `go test`'s -timeout (10m by default): find the hanging test in the log, or pass `-- -timeout 30m`"
        } else if output.stdout.contains("[build failed]")
            || output.stdout.contains("[setup failed]")
        {
            "the suite does not compile: fix test/e2e/gateway (`go vet -tags e2e ./test/e2e/...`)"
        } else {
            "it reported no test result"
        };
        let said =
            last_line(&output.stderr).map(|l| format!(" (it said: {l})")).unwrap_or_default();
        bail!("the suite failed ({}): {why}{said}; see the output above and {log}", output.status);
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
    report
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

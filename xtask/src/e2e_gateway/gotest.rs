//! Phase 6: the Go E2E suite, its output streamed and logged, its tests counted.

use anyhow::{bail, Context};
use camino::Utf8Path;
use xshell::{cmd, Shell};

use crate::{cmd::step, project::Services};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TestCounts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl TestCounts {
    pub fn line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// Runs the suite against the services' host ports; `extra` are the arguments after `--`.
pub fn run(
    sh: &Shell,
    services: &Services,
    extra: &[String],
    logs_dir: &Utf8Path,
) -> anyhow::Result<TestCounts> {
    std::fs::create_dir_all(logs_dir)
        .with_context(|| format!("creating {logs_dir}: make target/ writable"))?;
    let log = logs_dir.join("go-test.log");
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let test = cmd!(
        sh,
        "go test -tags e2e -count=1 -v ./test/e2e/gateway/... {extra...}"
    )
    .env("GATEWAY_URL", url(services.gateway.host_port))
    .env("DATASTORAGE_URL", url(services.datastorage.host_port));
    let output = step(test).echo().log(&log).output()?;
    let counts = count_tests(&output.stdout);
    if !output.success() && counts.failed == 0 {
        let why = if output.stdout.contains("panic: test timed out") {
            "the suite hit `go test`'s -timeout (10m by default): find the hanging test in the log, or pass `-- -timeout 30m`"
        } else if output.stdout.contains("[build failed]")
            || output.stdout.contains("[setup failed]")
        {
            "the suite does not compile: fix test/e2e/gateway (`go vet -tags e2e ./test/e2e/...`)"
        } else {
            "it reported no test result"
        };
        bail!(
            "`go test` exited with {}: {why}; see the output above and {log}",
            output.status
        );
    }
    Ok(counts)
}

/// Counts leaf tests: a test with subtests is counted through its subtests, so a failing
/// subtest is one failure, not two.
fn count_tests(stdout: &str) -> TestCounts {
    let results: Vec<(&str, &str)> = stdout
        .lines()
        .filter_map(|line| {
            let (status, rest) = line.trim_start().strip_prefix("--- ")?.split_once(": ")?;
            Some((status, rest.split_whitespace().next()?))
        })
        .collect();
    let mut counts = TestCounts::default();
    for (status, name) in &results {
        let has_subtests = results.iter().any(|(_, other)| {
            other.len() > name.len()
                && other.starts_with(name)
                && other[name.len()..].starts_with('/')
        });
        if has_subtests {
            continue;
        }
        match *status {
            "PASS" => counts.passed += 1,
            "FAIL" => counts.failed += 1,
            "SKIP" => counts.skipped += 1,
            _ => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_counts_are_leaf_tests() {
        let output = "\
=== RUN   TestA
--- PASS: TestA (0.00s)
    --- PASS: TestA/sub (0.00s)
--- FAIL: TestB (0.01s)
--- SKIP: TestC (0.00s)
--- FAIL: TestD (0.00s)
    --- FAIL: TestD/bad_JSON (0.00s)
    --- PASS: TestD/missing_alerts (0.00s)
--- PASS: TestDx (0.00s)
PASS: not a result line
";
        let counts = count_tests(output);
        // TestA and TestD count through their subtests; TestDx is not TestD's subtest.
        assert_eq!(
            counts,
            TestCounts {
                passed: 3,
                failed: 2,
                skipped: 1
            }
        );
        assert_eq!(counts.line(), "3 passed, 2 failed, 1 skipped");
    }
}

//! The phases of an E2E run, timed as they go, and the summary printed at the end (and kept in
//! `target/xtask/last-run.txt`).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use super::runner::TestReport;
use crate::{
    cmd,
    covdata_report::{self, Coverage},
    ui,
};

/// The phases in the order they run; their numbers and names come only from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Preflight,
    BuildImages,
    CreateCluster,
    LoadImages,
    Deploy,
    Test,
    Diagnostics,
    Coverage,
    Teardown,
    Summary,
}

const NAMES: [&str; 10] = [
    "preflight",
    "build images",
    "create cluster",
    "load images",
    "deploy",
    "test",
    "diagnostics",
    "coverage",
    "teardown",
    "summary",
];

impl Phase {
    /// `6. test`, as the banner and the summary name it.
    fn title(self) -> String {
        format!("{}. {}", self as usize + 1, NAMES[self as usize])
    }
}

/// What the summary reports; filled in as the phases go.
#[derive(Default)]
pub struct Summary {
    pub id: String,
    pub suite: String,
    pub backend: &'static str,
    /// In phase order: diagnostics may run after coverage failed.
    pub phases: BTreeMap<Phase, Duration>,
    pub idle_gap: Option<Duration>,
    pub tests: Option<TestReport>,
    pub coverage: Option<Coverage>,
    pub logs: Option<Utf8PathBuf>,
    /// What the run was doing when it failed: the failed phase and the contexts above the failed
    /// command (the `result` row shows its first line).
    pub error: Option<String>,
    /// The failed command, how it ended and the last line it printed.
    pub cause: Option<String>,
    /// What to do: for failures we recognise, else the failed command's own hint.
    pub fix: Option<String>,
    /// `last-run.txt` from `start` until `finish`: rewritten as each phase starts, so a run
    /// that never gets to its summary (a second Ctrl-C, kill -9) leaves what it did, not the
    /// summary of the run before it.
    pub unfinished: Option<Utf8PathBuf>,
}

impl Summary {
    /// Runs one phase under its banner (a folded group in GitHub Actions), recording its
    /// duration whether it succeeds or not.
    pub fn phase<T>(
        &mut self,
        phase: Phase,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        // What the phases before found (their test counts too) is kept before this one starts.
        self.save_unfinished();
        let (title, name) = (phase.title(), NAMES[phase as usize]);
        if ui::github_actions() {
            println!("::group::{title}");
        }
        println!("{}", ui::bold(&format!("==> {title}")));
        let (started, interrupted_before) = (Instant::now(), cmd::interrupted());
        // A step stopped by the interrupt fails with a misleading error of its own; a step run
        // after it (teardown) keeps its real error.
        let result = f().map_err(|err| match cmd::check_interrupted() {
            Err(interrupted) if !interrupted_before => interrupted,
            _ => err,
        });
        let number = phase as usize + 1;
        let result = result.with_context(|| format!("phase {number} ({name}) failed"));
        let (took, outcome) =
            (started.elapsed(), if result.is_ok() { "done in" } else { "failed after" });
        println!("    {name} {outcome} {}", ui::seconds(took));
        if ui::github_actions() {
            println!("::endgroup::");
        }
        self.phases.insert(phase, took);
        result
    }

    /// Replaces `dir`/last-run.txt with this run's summary so far (again as each phase starts),
    /// until `finish` writes the whole one.
    pub fn start(&mut self, dir: &Utf8Path) {
        self.unfinished = Some(dir.join("last-run.txt"));
        self.save_unfinished();
    }

    /// Best effort: `finish` says when last-run.txt cannot be written.
    fn save_unfinished(&self) {
        if let Some(path) = &self.unfinished {
            let _ = path.parent().map(std::fs::create_dir_all);
            let _ = std::fs::write(path, self.render());
        }
    }

    /// Phase 10: the summary on the terminal, in `dir`/last-run.txt and in GitHub's job summary.
    pub fn finish(&mut self, dir: &Utf8Path) {
        self.unfinished = None;
        let (text, markdown, last_run) = (self.render(), self.markdown(), dir.join("last-run.txt"));
        let written = self.phase(Phase::Summary, || {
            if let Err(err) = ui::append_step_summary(&markdown) {
                eprintln!("warning: {err:#}");
            }
            print!("{text}");
            let written =
                std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&last_run, &text));
            written.with_context(|| format!("writing {last_run} (the summary above is complete)"))
        });
        if let Err(err) = written {
            eprintln!("warning: {err:#}");
        }
    }

    /// The result and, on failure, the failed command and the fix: the summary's last rows.
    fn outcome(&self) -> [(&str, Option<String>); 3] {
        let result = match &self.error {
            _ if self.unfinished.is_some() => "unfinished: the run is still going, or ended before its summary (a second Ctrl-C skips it, kill -9 too): the rows above are what it did".to_string(),
            None => "passed (exit 0)".to_string(),
            Some(err) => format!("failed (exit 1): {}", err.lines().next().unwrap_or("")),
        };
        [("Result", Some(result)), ("Cause", self.cause.clone()), ("Fix", self.fix.clone())]
    }

    pub fn render(&self) -> String {
        let mut rows = vec![("run".to_string(), format!("{} ({} backend)", self.id, self.backend))];
        rows.extend(self.phases.iter().map(|(phase, took)| (phase.title(), ui::seconds(*took))));
        let mut row = |label: &str, value: String| rows.push((label.to_string(), value));
        if let Some(gap) = self.idle_gap {
            row("idle gap", format!("{} ms (cluster ready to first load)", gap.as_millis()));
        }
        let tests = self.tests.as_ref();
        row("tests", tests.map_or("not run".to_string(), TestReport::line));
        if let Some(t) = tests.filter(|t| !t.failed_names.is_empty()) {
            row("failed tests", t.failed().join(", "));
        }
        if let Some(junit) = tests.and_then(|t| t.junit.as_ref()) {
            row("junit", junit.to_string());
        }
        if let Some(coverage) = &self.coverage {
            for (service, pct) in &coverage.services {
                row(&format!("coverage {service}"), format!("{pct:.1}%"));
            }
            row("coverage total", format!("{:.1}%", coverage.total));
            row("coverage profile", coverage.profile.to_string());
        }
        if let Some(logs) = &self.logs {
            row("logs", logs.to_string());
        }
        for (label, value) in self.outcome() {
            if let Some(value) = value {
                // The Markdown labels are capitalised: `Error`, `Fix`.
                row(&label.to_lowercase(), value);
            }
        }
        rows.iter().map(|(label, value)| format!("  {label:<24} {value}\n")).collect()
    }

    /// The summary for GitHub's job summary page: the same facts as `render`, as Markdown,
    /// with the coverage table covdata-report writes.
    pub fn markdown(&self) -> String {
        let verdict = if self.error.is_some() { "failed" } else { "passed" };
        let mut out = format!(
            "### e2e {} {verdict}\n\nRun `{}` on the {} backend.\n\n| phase | took |\n| --- | ---: |\n",
            self.suite, self.id, self.backend
        );
        for (phase, took) in &self.phases {
            out += &format!("| {} | {} |\n", phase.title(), ui::seconds(*took));
        }
        out.push('\n');
        if let Some(gap) = self.idle_gap {
            out += &format!("Idle gap (cluster ready to first load): {} ms\n\n", gap.as_millis());
        }
        let tests = self.tests.as_ref().map_or("not run".into(), TestReport::line);
        out += &format!("Tests: {tests}\n\n");
        if let Some(t) = self.tests.as_ref().filter(|t| !t.failed_names.is_empty()) {
            let mark = |n: &str| if t.timed_out(n) { " (timed out)" } else { "" };
            let failed: String =
                t.failed_names.iter().map(|n| format!("- failed: `{n}`{}\n", mark(n))).collect();
            out += &format!("{failed}\n");
        }
        if let Some(coverage) = &self.coverage {
            out += &covdata_report::markdown_summary(coverage, None, None);
        }
        if let Some(logs) = &self.logs {
            out += &format!("Logs: `{logs}` (the `e2e-logs` artifact)\n\n");
        }
        // The result only when it failed: the heading says a pass.
        for (label, value) in self.outcome().into_iter().filter(|_| self.error.is_some()) {
            if let Some(value) = value {
                out += &format!("{label}: {value}\n\n");
            }
        }
        out
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::runner::Timeout;

    fn failed_run() -> Summary {
        Summary {
            id: "2026-11-26T05-45-00Z".into(),
            suite: "gateway".into(),
            backend: "kind",
            phases: BTreeMap::from([
                (Phase::Preflight, Duration::from_millis(300)),
                (Phase::Test, Duration::from_millis(1500)),
                (Phase::Coverage, Duration::from_millis(2000)),
                (Phase::Diagnostics, Duration::from_millis(100)),
            ]),
            idle_gap: Some(Duration::from_millis(40)),
            tests: Some(TestReport {
                passed: 12,
                skipped: 0,
                failed_names: vec!["TestDedup/same_fingerprint".into()],
                interrupted: false,
                timeout: None,
                error: None,
                junit: Some("/repo/target/xtask/logs/x/junit.xml".into()),
            }),
            coverage: Some(Coverage {
                services: vec![("datastorage".into(), 69.5), ("gateway".into(), 74.04)],
                total: 74.6,
                profile: "/repo/target/coverage/e2e.out".into(),
            }),
            logs: Some("/repo/target/xtask/logs/x".into()),
            error: Some("phase 6 (test) failed: 1 E2E test(s) failed\nmore".into()),
            cause: Some("`go test` exited with 1: FAIL".into()),
            fix: None,
            unfinished: None,
        }
    }

    #[test]
    fn summary_lists_phases_gap_tests_coverage_and_result() {
        let text = failed_run().render();
        // expect-test strips common indentation: check it here, compare the rest below.
        assert!(text.lines().all(|l| l.starts_with("  ")), "{text}");
        let unindented: String = text.lines().map(|l| format!("{}\n", &l[2..])).collect();
        expect_test::expect![[r#"
            run                      2026-11-26T05-45-00Z (kind backend)
            1. preflight             0.3s
            6. test                  1.5s
            7. diagnostics           0.1s
            8. coverage              2.0s
            idle gap                 40 ms (cluster ready to first load)
            tests                    12 passed, 1 failed, 0 skipped
            failed tests             TestDedup/same_fingerprint
            junit                    /repo/target/xtask/logs/x/junit.xml
            coverage datastorage     69.5%
            coverage gateway         74.0%
            coverage total           74.6%
            coverage profile         /repo/target/coverage/e2e.out
            logs                     /repo/target/xtask/logs/x
            result                   failed (exit 1): phase 6 (test) failed: 1 E2E test(s) failed
            cause                    `go test` exited with 1: FAIL
        "#]]
        .assert_eq(&unindented);
    }

    #[test]
    fn a_test_the_timeout_stopped_is_named_as_such_in_both_summaries() {
        let mut run = failed_run();
        let tests = run.tests.as_mut().unwrap();
        tests.failed_names.push("TestHangs".into());
        let running = vec!["TestHangs".to_string()];
        tests.timeout = Some(Timeout { after: "10s".into(), running });
        let text = run.render();
        assert!(
            text.contains("  tests                    12 passed, 2 failed, 0 skipped until `go test`'s -timeout (10s) ended the suite\n")
                && text.contains("  failed tests             TestDedup/same_fingerprint, TestHangs (timed out)\n")
                && text.contains("  junit                    /repo/target/xtask/logs/x/junit.xml\n"),
            "{text}"
        );
        let markdown = run.markdown();
        assert!(
            markdown.contains(
                "- failed: `TestDedup/same_fingerprint`\n- failed: `TestHangs` (timed out)\n"
            ),
            "{markdown}"
        );
    }

    #[test]
    fn the_job_summary_says_the_same_in_markdown() {
        // The coverage table is covdata-report's, tested there.
        let coverage =
            covdata_report::markdown_summary(&failed_run().coverage.unwrap(), None, None);
        expect_test::expect![[r#"
            ### e2e gateway failed

            Run `2026-11-26T05-45-00Z` on the kind backend.

            | phase | took |
            | --- | ---: |
            | 1. preflight | 0.3s |
            | 6. test | 1.5s |
            | 7. diagnostics | 0.1s |
            | 8. coverage | 2.0s |

            Idle gap (cluster ready to first load): 40 ms

            Tests: 12 passed, 1 failed, 0 skipped

            - failed: `TestDedup/same_fingerprint`

            {coverage}
            Logs: `/repo/target/xtask/logs/x` (the `e2e-logs` artifact)

            Result: failed (exit 1): phase 6 (test) failed: 1 E2E test(s) failed

            Cause: `go test` exited with 1: FAIL

        "#]]
        .assert_eq(&failed_run().markdown().replace(&coverage, "{coverage}\n"));
    }
}

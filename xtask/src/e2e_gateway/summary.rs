//! The phases of an E2E run, timed as they go, and the summary printed at the end (and kept in
//! `target/xtask/last-run.txt`).

use std::time::Duration;

use anyhow::Context;
use camino::Utf8PathBuf;

use super::gotest::TestReport;
use crate::{
    cmd,
    covdata_report::Coverage,
    ui::{self, Banner},
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

impl Phase {
    pub fn number(self) -> usize {
        self as usize + 1
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::BuildImages => "build images",
            Phase::CreateCluster => "create cluster",
            Phase::LoadImages => "load images",
            Phase::Deploy => "deploy",
            Phase::Test => "test",
            Phase::Diagnostics => "diagnostics",
            Phase::Coverage => "coverage",
            Phase::Teardown => "teardown",
            Phase::Summary => "summary",
        }
    }

    pub fn banner(self) -> Banner {
        Banner::start(self.number(), self.name())
    }
}

/// What the summary reports; filled in as the phases go.
#[derive(Default)]
pub struct Summary {
    pub id: String,
    pub backend: &'static str,
    pub phases: Vec<(Phase, Duration)>,
    pub idle_gap: Option<Duration>,
    pub tests: Option<TestReport>,
    pub coverage: Option<Coverage>,
    pub logs: Option<Utf8PathBuf>,
    pub error: Option<String>,
    /// The failed command and the last line it printed: the first line of `error` may not say.
    pub cause: Option<String>,
    /// What to do, for failures we recognise.
    pub fix: Option<String>,
}

impl Summary {
    /// Runs one phase, recording its duration whether it succeeds or not.
    pub fn phase<T>(
        &mut self,
        phase: Phase,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let banner = phase.banner();
        let interrupted_before = cmd::interrupted();
        let result = f().map_err(|err| {
            // A step stopped by the interrupt fails with a misleading error of its own; a step
            // run after it (teardown) keeps its real error.
            if !interrupted_before && cmd::interrupted() {
                anyhow::anyhow!("interrupted by a signal (Ctrl-C or SIGTERM)")
            } else {
                err
            }
        });
        let result =
            result.with_context(|| format!("phase {} ({}) failed", phase.number(), phase.name()));
        let took = banner.finish(result.is_ok());
        self.phases.push((phase, took));
        result
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line =
            |label: &str, value: String| out.push_str(&format!("  {label:<24} {value}\n"));
        line("run", format!("{} ({} backend)", self.id, self.backend));
        // Diagnostics may run after coverage failed; the table reads in phase order.
        let mut phases = self.phases.clone();
        phases.sort_by_key(|(phase, _)| *phase);
        for (phase, took) in &phases {
            line(&format!("{}. {}", phase.number(), phase.name()), ui::seconds(*took));
        }
        if let Some(gap) = self.idle_gap {
            line("idle gap", format!("{} ms (cluster ready to first load)", gap.as_millis()));
        }
        match &self.tests {
            Some(t) => {
                line("tests", t.line());
                if !t.failed_names.is_empty() {
                    line("failed tests", t.failed_names.join(", "));
                }
                if let Some(junit) = &t.junit {
                    line("junit", junit.to_string());
                }
            }
            None => line("tests", "not run".to_string()),
        }
        if let Some(coverage) = &self.coverage {
            for (service, pct) in &coverage.services {
                line(&format!("coverage {service}"), format!("{pct:.1}%"));
            }
            line("coverage total", format!("{:.1}%", coverage.total));
            line("coverage profile", coverage.profile.to_string());
        }
        if let Some(logs) = &self.logs {
            line("logs", logs.to_string());
        }
        match &self.error {
            None => line("result", "passed (exit 0)".to_string()),
            Some(err) => {
                line("result", format!("failed (exit 1): {}", err.lines().next().unwrap_or("")))
            }
        }
        if let Some(cause) = &self.cause {
            line("cause", cause.clone());
        }
        if let Some(fix) = &self.fix {
            line("fix", fix.clone());
        }
        out
    }
}

impl Summary {
    /// The summary for GitHub's job summary page: the same facts as `render`, as Markdown,
    /// with the coverage table covdata-report writes.
    pub fn markdown(&self) -> String {
        let verdict = if self.error.is_some() { "failed" } else { "passed" };
        let mut out = format!(
            "### e2e-gateway {verdict}\n\nRun `{}` on the {} backend.\n\n| phase | took |\n| --- | ---: |\n",
            self.id, self.backend
        );
        let mut phases = self.phases.clone();
        phases.sort_by_key(|(phase, _)| *phase);
        for (phase, took) in &phases {
            out.push_str(&format!(
                "| {}. {} | {} |\n",
                phase.number(),
                phase.name(),
                ui::seconds(*took)
            ));
        }
        out.push('\n');
        if let Some(gap) = self.idle_gap {
            out.push_str(&format!(
                "Idle gap (cluster ready to first load): {} ms\n\n",
                gap.as_millis()
            ));
        }
        match &self.tests {
            Some(t) => {
                out.push_str(&format!("Tests: {}\n\n", t.line()));
                for name in &t.failed_names {
                    out.push_str(&format!("- failed: `{name}`\n"));
                }
                if !t.failed_names.is_empty() {
                    out.push('\n');
                }
            }
            None => out.push_str("Tests: not run\n\n"),
        }
        if let Some(coverage) = &self.coverage {
            out.push_str(&crate::covdata_report::markdown_summary(coverage, None, None));
        }
        if let Some(logs) = &self.logs {
            out.push_str(&format!("Logs: `{logs}` (the `e2e-logs` artifact)\n\n"));
        }
        if let Some(err) = &self.error {
            out.push_str(&format!(
                "Result: failed (exit 1): {}\n\n",
                err.lines().next().unwrap_or("")
            ));
            for (label, value) in [("Cause", &self.cause), ("Fix", &self.fix)] {
                if let Some(value) = value {
                    out.push_str(&format!("{label}: {value}\n\n"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_numbered_in_order() {
        let all = [
            Phase::Preflight,
            Phase::BuildImages,
            Phase::CreateCluster,
            Phase::LoadImages,
            Phase::Deploy,
            Phase::Test,
            Phase::Diagnostics,
            Phase::Coverage,
            Phase::Teardown,
            Phase::Summary,
        ];
        let numbers: Vec<usize> = all.iter().map(|p| p.number()).collect();
        assert_eq!(numbers, (1..=10).collect::<Vec<_>>());
    }

    fn failed_run() -> Summary {
        Summary {
            id: "2026-11-26T05-45-00Z".into(),
            backend: "kind",
            phases: vec![
                (Phase::Preflight, Duration::from_millis(300)),
                (Phase::Test, Duration::from_millis(1500)),
                (Phase::Coverage, Duration::from_millis(2000)),
                (Phase::Diagnostics, Duration::from_millis(100)),
            ],
            idle_gap: Some(Duration::from_millis(40)),
            tests: Some(TestReport {
                passed: 12,
                failed: 1,
                skipped: 0,
                failed_names: vec!["TestDedup/same_fingerprint".into()],
                interrupted: false,
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
    fn the_job_summary_says_the_same_in_markdown() {
        expect_test::expect![[r#"
            ### e2e-gateway failed

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

            ### Coverage

            | service | coverage |
            | --- | ---: |
            | datastorage | 69.5% |
            | gateway | 74.0% |
            | **all services (merged)** | **74.6%** |

            Logs: `/repo/target/xtask/logs/x` (the `e2e-logs` artifact)

            Result: failed (exit 1): phase 6 (test) failed: 1 E2E test(s) failed

            Cause: `go test` exited with 1: FAIL

        "#]]
        .assert_eq(&failed_run().markdown());
    }
}

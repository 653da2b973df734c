//! Long steps run in a process group of their own, so Ctrl-C or SIGTERM stops them (and
//! whatever they started) at once instead of after their own timeouts.

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context};
use xshell::{cmd, Shell};

use crate::project;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

/// The process group of the step running now (0: none), for the second Ctrl-C to stop it.
pub(super) static RUNNING_GROUP: AtomicU32 = AtomicU32::new(0);

/// Publishes the running step's group in `RUNNING_GROUP` until dropped.
struct RunningGroup;

impl RunningGroup {
    fn set(group: u32) -> RunningGroup {
        RUNNING_GROUP.store(group, Ordering::SeqCst);
        RunningGroup
    }
}

impl Drop for RunningGroup {
    fn drop(&mut self) {
        RUNNING_GROUP.store(0, Ordering::SeqCst);
    }
}

/// SIGTERM to a whole process group: the step and whatever it started.
pub(super) fn stop_group(sh: &Shell, group: u32) {
    let group = format!("-{group}");
    let _ = cmd!(sh, "kill -TERM -- {group}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
}

/// Runs a long step and returns its output whatever its exit status; see `run_teed`.
pub(super) fn run_interruptible(sh: &Shell, cmd: xshell::Cmd<'_>) -> anyhow::Result<Output> {
    run_teed(sh, cmd, |_, _| {})
}

/// Runs a long step; a failure names the command, shows what it printed, and says `fix`.
pub(super) fn run_step(sh: &Shell, cmd: xshell::Cmd<'_>, fix: &str) -> anyhow::Result<String> {
    let shown = cmd.to_string();
    let output = run_interruptible(sh, cmd)?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}):\n{}\n{fix}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` in a process group of its own, handing each output line to `tee` as it arrives.
/// On Ctrl-C or SIGTERM the whole group is stopped (`go test` and its test binary, kind and
/// its podman calls) and the step fails at once instead of running to its own timeout.
pub(super) fn run_teed(
    sh: &Shell,
    cmd: xshell::Cmd<'_>,
    tee: impl Fn(Stream, &str) + Send + Sync + 'static,
) -> anyhow::Result<Output> {
    let shown = cmd.to_string();
    let mut child = Command::from(cmd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("starting `{shown}` failed: is it installed? (`cargo xtask doctor`)")
        })?;
    let _running = RunningGroup::set(child.id());
    let tee = Arc::new(tee);
    let read = |stream: Stream, pipe: Box<dyn Read + Send>| {
        let tee = Arc::clone(&tee);
        std::thread::spawn(move || {
            // Bytes, not `lines()`: one invalid UTF-8 byte must not stop the reading (the
            // child would then die of SIGPIPE).
            let mut reader = BufReader::new(pipe);
            let mut all = String::new();
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                tee(stream, line);
                all.push_str(line);
                all.push('\n');
                buf.clear();
            }
            all
        })
    };
    let stdout = read(
        Stream::Stdout,
        Box::new(child.stdout.take().expect("stdout is piped")),
    );
    let stderr = read(
        Stream::Stderr,
        Box::new(child.stderr.take().expect("stderr is piped")),
    );
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{shown}`"))?
        {
            break status;
        }
        if project::interrupted() {
            stop_group(sh, child.id());
            // Without the `kill` command (no procps) at least the step itself stops.
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted by a signal (Ctrl-C or SIGTERM) during `{shown}`");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default().into_bytes(),
        stderr: stderr.join().unwrap_or_default().into_bytes(),
    })
}

//! The one way the xtask runs an external command. Tasks build commands with `xshell::cmd!` and
//! run them here, so process groups, signals, time limits, logs and failure messages are handled
//! in one place.
//!
//! Every command runs in a process group of its own: the terminal's Ctrl-C reaches only the
//! xtask, which then stops the running commands itself (SIGINT first, so `go test` removes its
//! temporary build directory, then SIGTERM, then SIGKILL) and leaves the commands it starts
//! afterwards (teardown) alone.
//!
//! When the xtask dies without stopping them (kill -9, a crash), a small process of its own, the
//! reaper, stops the process groups of the commands still running. And `go` keeps its temporary
//! files (the build's work directory, the test binary) in a directory of the run under `target/`,
//! removed at its end, or by the next run when it died.

use std::{
    fmt,
    fs::{File, TryLockError},
    io::{BufRead, BufReader, Read, Write},
    os::unix::process::CommandExt,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Mutex, MutexGuard, OnceLock,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use camino::{Utf8Path, Utf8PathBuf};
use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};

/// How long a stopped command gets for each signal before the next, harder one.
const GRACE: Duration = Duration::from_secs(5);
/// Lines of a failed command's output quoted in its error.
const TAIL_LINES: usize = 20;

/// A command's outcome; its output as text (every tool we run prints text).
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    Start(std::io::Error),
    Exit(ExitStatus),
    TimedOut(Duration),
    Interrupted,
}

/// A failed command: what ran, how it failed, what it printed, and what to do about it.
#[derive(Debug)]
pub struct CmdError {
    pub command: String,
    pub failure: Failure,
    pub stdout: String,
    pub stderr: String,
    hint: String,
}

impl CmdError {
    pub fn is_interrupt(&self) -> bool {
        matches!(self.failure, Failure::Interrupted)
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self.failure, Failure::TimedOut(_))
    }

    /// The same failure with another fix, for a caller that knows the fix once it knows how
    /// the command failed (a registry that stopped answering, say).
    pub fn with_hint(self, hint: impl Into<String>) -> CmdError {
        CmdError { hint: hint.into(), ..self }
    }

    /// What the caller said to do when the command fails (may be empty).
    pub fn hint(&self) -> &str {
        &self.hint
    }

    /// The last line the tool printed on stderr (else stdout): usually the one that says why.
    pub fn cause(&self) -> Option<&str> {
        last_line(&self.stderr).or_else(|| last_line(&self.stdout))
    }

    /// The lines of the output's tail (what the error quotes) before the one `cause` quotes.
    pub fn earlier_lines(&self) -> Vec<String> {
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let lines: Vec<&str> = text.trim_end().lines().collect();
        let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
        let before = &tail[..tail.len().saturating_sub(1)];
        before.iter().map(|line| line.trim_end().to_string()).collect()
    }

    /// One line: the command, how it ended, and the last line it printed.
    pub fn one_line(&self) -> String {
        let command = &self.command;
        let ended = match &self.failure {
            Failure::Start(err) => return format!("`{command}` could not start: {err}"),
            Failure::Exit(status) => match status.code() {
                Some(code) => format!("exited with {code}"),
                None => format!("ended by {status}"),
            },
            Failure::TimedOut(limit) => format!("did not answer within {} s", limit.as_secs()),
            Failure::Interrupted => "was interrupted".to_string(),
        };
        let cause = self.cause().map(|cause| format!(": {cause}")).unwrap_or_default();
        format!("`{command}` {ended}{cause}")
    }
}

/// The last non-blank line of `text`, trimmed.
pub fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let command = &self.command;
        match &self.failure {
            Failure::Start(err) => {
                let program = command.split_whitespace().next().unwrap_or(command);
                write!(
                    f,
                    "`{command}` could not start ({err}): is {program} installed and on PATH? `cargo xtask doctor` checks the tools"
                )?;
            }
            Failure::Exit(status) => write!(f, "`{command}` failed ({status})")?,
            Failure::TimedOut(limit) => {
                let secs = limit.as_secs();
                write!(f, "`{command}` did not finish within {secs} s and was stopped")?
            }
            Failure::Interrupted => {
                return write!(f, "interrupted by a signal (Ctrl-C or SIGTERM) during `{command}`")
            }
        }
        // The last lines of stderr, or of stdout when stderr is empty.
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let lines: Vec<&str> = text.trim_end().lines().collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
        if !tail.is_empty() {
            write!(f, ":\n{tail}")?;
        }
        if !self.hint.is_empty() {
            write!(f, "\n{}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for CmdError {}

/// A command to run, with the options the tasks need. Built with `step(cmd!(...))`.
#[must_use]
pub struct Step {
    command: Command,
    shown: String,
    hint: String,
    echo: bool,
    log: Option<Utf8PathBuf>,
    limit: Option<Duration>,
}

pub fn step(cmd: xshell::Cmd<'_>) -> Step {
    let shown = cmd.to_string();
    let mut command: Command = cmd.into();
    if command.get_program() == "go" {
        if let Some(dir) = go_tmpdir() {
            command.env("GOTMPDIR", dir);
        }
    }
    Step { command, shown, hint: String::new(), echo: false, log: None, limit: None }
}

impl Step {
    /// What the user should do when the command fails; appended to the error.
    pub fn hint(self, hint: impl Into<String>) -> Step {
        Step { hint: hint.into(), ..self }
    }

    /// Prints the command's output as it arrives (it is captured as well).
    pub fn echo(self) -> Step {
        Step { echo: true, ..self }
    }

    /// Appends the command's output to `path` as it arrives.
    pub fn log(self, path: &Utf8Path) -> Step {
        Step { log: Some(path.to_path_buf()), ..self }
    }

    /// Stops the command (its whole process group) after `limit`.
    pub fn timeout(self, limit: Duration) -> Step {
        Step { limit: Some(limit), ..self }
    }

    /// Runs the command; an exit status other than 0 is an error.
    pub fn run(self) -> Result<Output, CmdError> {
        self.spawn().finish(true)
    }

    /// Runs the command and returns its output whatever its exit status; only a command that
    /// could not start, timed out or was interrupted is an error.
    pub fn output(self) -> Result<Output, CmdError> {
        self.spawn().finish(false)
    }

    /// The trimmed stdout of a successful run.
    pub fn read(self) -> Result<String, CmdError> {
        Ok(self.run()?.stdout.trim().to_string())
    }

    /// Starts the command without waiting for it (for checks that run side by side).
    pub fn spawn(mut self) -> Running {
        self.command.process_group(0).stdin(Stdio::null());
        let started = self.command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        let mut child = match started {
            Ok(child) => child,
            Err(err) => return Running(Err(self.fail(Failure::Start(err), "".into(), "".into()))),
        };
        let group = child.id() as i32;
        locked(&RUNNING).push(group);
        tell_reaper(format!("+{group}\n"));
        // Both readers append to the one file (a whole line per write), each through its handle.
        let logs = self.log.as_ref().and_then(|path| {
            let opened = File::options().create(true).append(true).open(path);
            let both = opened.and_then(|file| Ok((file.try_clone()?, file)));
            let shown = &self.shown;
            let warn = |err| eprintln!("warning: writing {path} failed ({err}): the output of `{shown}` is on the terminal only; make target/ writable");
            both.map_err(warn).ok()
        });
        let (out_log, log) = logs.unzip();
        let stdout = read_lines(child.stdout.take().expect("piped"), self.echo, false, out_log);
        let stderr = read_lines(child.stderr.take().expect("piped"), self.echo, true, log);
        // Stops the group once `limit` passes, unless told first that the command has ended.
        let watchdog = self.limit.map(|limit| {
            let (done, wait) = mpsc::channel::<()>();
            let fired = thread::spawn(move || {
                let fired = wait.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout);
                if fired {
                    signal_group(group, Signal::SIGKILL);
                }
                fired
            });
            (done, fired)
        });
        let interrupted_before = interrupted();
        Running(Ok(Started { step: self, child, stdout, stderr, watchdog, interrupted_before }))
    }

    fn fail(self, failure: Failure, stdout: String, stderr: String) -> CmdError {
        CmdError { command: self.shown, failure, stdout, stderr, hint: self.hint }
    }
}

/// A started command; `wait` for it.
pub struct Running(Result<Started, CmdError>);

struct Started {
    step: Step,
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Told when the command ended; answers whether the time limit stopped it.
    watchdog: Option<(mpsc::Sender<()>, JoinHandle<bool>)>,
    interrupted_before: bool,
}

impl Running {
    /// Stops a command that would run until stopped (`kubectl port-forward`): SIGTERM to its
    /// group, then waits for it to go.
    pub fn stop(self) {
        if let Ok(started) = &self.0 {
            signal_group(started.child.id() as i32, Signal::SIGTERM);
        }
        let _ = self.finish(false);
    }

    /// Waits for the command; an exit status other than 0 is an error.
    pub fn wait(self) -> Result<Output, CmdError> {
        self.finish(true)
    }

    /// Waits for the command; with `check`, an exit status other than 0 is an error.
    fn finish(self, check: bool) -> Result<Output, CmdError> {
        let Started { step, mut child, stdout, stderr, watchdog, interrupted_before } = self.0?;
        let waited = child.wait();
        locked(&RUNNING).retain(|g| *g != child.id() as i32);
        let timed_out = watchdog.is_some_and(|(done, fired)| {
            drop(done);
            fired.join().unwrap_or(false)
        });
        let stopped = timed_out || (!interrupted_before && interrupted());
        // What a stopped command started may still be in its group: should we end before it
        // is gone, the reaper stops it.
        if !stopped {
            tell_reaper(format!("-{}\n", child.id()));
        }
        // A stopped command's pipes may be held by something that outlived it: do not wait long.
        let collect = |rx: mpsc::Receiver<String>| match stopped {
            true => rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default(),
            false => rx.recv().unwrap_or_default(),
        };
        let (stdout, stderr) = (collect(stdout), collect(stderr));
        let failure = match waited {
            Err(err) => Failure::Start(err),
            Ok(_) if timed_out => Failure::TimedOut(step.limit.unwrap_or_default()),
            Ok(status) if stopped && !status.success() => Failure::Interrupted,
            Ok(status) if check && !status.success() => Failure::Exit(status),
            Ok(status) => return Ok(Output { status, stdout, stderr }),
        };
        Err(step.fail(failure, stdout, stderr))
    }
}

/// Reads a pipe line by line on a thread (so a chatty command never blocks on a full pipe),
/// passing each line on as it arrives, and sends the whole text when the pipe closes. Bytes,
/// not `lines()`: one invalid UTF-8 byte must not stop the reading.
fn read_lines(
    pipe: impl Read + Send + 'static,
    echo: bool,
    is_stderr: bool,
    mut log: Option<File>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut all, mut buf, mut reader) = (String::new(), Vec::new(), BufReader::new(pipe));
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf);
            let line = format!("{}\n", line.trim_end_matches(['\n', '\r']));
            match (echo, is_stderr) {
                (true, true) => eprint!("{line}"),
                (true, false) => print!("{line}"),
                _ => {}
            }
            if let Some(file) = &mut log {
                let _ = file.write_all(line.as_bytes());
            }
            all.push_str(&line);
            buf.clear();
        }
        let _ = tx.send(all);
    });
    rx
}

// ---- Signals ---------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Process groups of the commands running now.
static RUNNING: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// What a second signal leaves behind, and how to remove it (set by an e2e run).
static LEFTOVER: Mutex<Option<String>> = Mutex::new(None);

/// A lock that a panic elsewhere has not made useless.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ctrl-C, SIGTERM or SIGHUP arrived; the running task stops as soon as it can.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        anyhow::bail!("interrupted by a signal (Ctrl-C or SIGTERM)");
    }
    Ok(())
}

/// From now on a second signal skips the teardown and says how to remove what is left.
pub fn set_leftover(remove_with: String) {
    *locked(&LEFTOVER) = Some(remove_with);
}

/// The first signal stops the commands running at that moment (SIGINT, then SIGTERM, then
/// SIGKILL, `GRACE` apart) and lets the task clean up; a second one exits at once.
pub fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| {
        let leftover = locked(&LEFTOVER).clone();
        let running = locked(&RUNNING).clone();
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            running.iter().for_each(|g| signal_group(*g, Signal::SIGKILL));
            remove_go_tmpdir();
            let skipped =
                |command| format!("teardown skipped: remove what is left with `{command}`");
            eprintln!("{}", leftover.map_or("stopped".to_string(), skipped));
            std::process::exit(1);
        }
        let teardown = " and tearing down (press Ctrl-C again to skip teardown)";
        eprintln!("\ninterrupted: stopping{}", if leftover.is_some() { teardown } else { "" });
        // Only the commands running now: teardown commands started later must run. Until their
        // groups are empty: what a command started stays in its group when it ends first.
        thread::spawn(move || stop_groups(running, group_exists));
    });
}

/// Whether any process is left in `group`.
fn group_exists(group: i32) -> bool {
    killpg(Pid::from_raw(group), None).is_ok()
}

/// SIGINT to each group, then SIGTERM, then SIGKILL, `GRACE` apart, while it is `running`.
fn stop_groups(mut groups: Vec<i32>, running: impl Fn(i32) -> bool) {
    for (i, signal) in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL].into_iter().enumerate() {
        if i > 0 {
            thread::sleep(GRACE);
        }
        groups.retain(|g| running(*g));
        groups.iter().for_each(|g| signal_group(*g, signal));
    }
}

fn signal_group(group: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(group), signal);
}

// ---- The reaper ------------------------------------------------------------------------------

/// The hidden task `main` runs as the reaper.
pub const REAPER_TASK: &str = "__reaper";

/// The reaper's stdin; `None` once it could not be started or told.
static REAPER: Mutex<Option<Option<ChildStdin>>> = Mutex::new(None);

/// Tells the reaper that a command's group started (`+<group>`) or ended (`-<group>`); starts
/// the reaper first. Without one (it could not start) commands simply are not watched.
fn tell_reaper(line: String) {
    let mut reaper = locked(&REAPER);
    let stdin = reaper.get_or_insert_with(start_reaper);
    if stdin.as_mut().is_some_and(|stdin| stdin.write_all(line.as_bytes()).is_err()) {
        *stdin = None;
    }
}

/// This binary again, as the reaper, in a process group of its own (Ctrl-C at the terminal
/// does not reach it), reading what we tell it on its stdin. It is never waited for: it ends
/// after us.
fn start_reaper() -> Option<ChildStdin> {
    // A unit test's binary is no xtask.
    if cfg!(test) {
        return None;
    }
    let mut reaper = Command::new("/proc/self/exe");
    reaper.arg(REAPER_TASK).process_group(0).stdin(Stdio::piped());
    // Not our stdout: whoever reads it would wait for the reaper too.
    let started = reaper.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    let warn = |err| {
        eprintln!("warning: starting a watcher for the commands of this run failed ({err}): if it is killed, stop what it started by hand")
    };
    started.map_err(warn).ok()?.stdin.take()
}

/// The reaper: notes the groups the xtask says are running; when its stdin closes (the xtask
/// ended, however), stops those still listed as Ctrl-C would, so that nothing the xtask started
/// outlives it (gotestsum, `go test` and the test binary would run on until their own timeout).
pub fn reap() -> std::process::ExitCode {
    let mut groups = Vec::new();
    for line in std::io::stdin().lines().map_while(Result::ok) {
        let (sign, group) = line.split_at(line.len().min(1));
        match (sign, group.parse::<i32>()) {
            ("+", Ok(group)) if group > 0 => groups.push(group),
            ("-", Ok(group)) => groups.retain(|g| *g != group),
            _ => {}
        }
    }
    stop_groups(groups, group_exists);
    std::process::ExitCode::SUCCESS
}

// ---- Go's temporary files --------------------------------------------------------------------

/// The run's GOTMPDIR and the lock that says the run lives; `None` when it cannot be created
/// (go then uses the system's temporary directory, as before).
static GO_TMPDIR: OnceLock<Option<(Utf8PathBuf, File)>> = OnceLock::new();

/// `target/xtask/tmp/go-<pid>`, created on first use (after removing what dead runs left): where
/// every `go` we run keeps its temporary files, so that what a stopped go leaves is ours to
/// remove. Locked while the run lives: another run's directory is left alone.
fn go_tmpdir() -> Option<&'static Utf8Path> {
    // Unit tests run in the checkout, whose target/ is not theirs to write, and end without
    // `remove_go_tmpdir`.
    if cfg!(test) {
        return None;
    }
    let created = GO_TMPDIR.get_or_init(|| {
        let parent = crate::project::xtask_dir(&crate::project::root()).join("tmp");
        let created = create_locked_dir(&parent, &format!("go-{}", std::process::id()));
        created.map_err(|err| eprintln!("warning: creating go's temporary directory in {parent} failed ({err}): go uses the system's, where an interrupted build may leave files; {}", crate::project::WRITABLE_TARGET)).ok()
    });
    created.as_ref().map(|(dir, _)| dir.as_path())
}

/// Removes this run's GOTMPDIR (at its end): best effort, the next run removes what is left.
pub fn remove_go_tmpdir() {
    if let Some(Some((dir, _lock))) = GO_TMPDIR.get() {
        if let Err(err) = std::fs::remove_dir_all(dir) {
            eprintln!("warning: removing {dir} failed ({err}): the next run removes it");
        }
    }
}

/// `parent/name` (or `name-N` when a live process elsewhere holds that one), created and
/// locked; first every directory in `parent` that no live run has locked is removed. Another run
/// may remove ours between creating and locking it (it is not locked yet): only a locked
/// directory that is still at its path is ours.
fn create_locked_dir(parent: &Utf8Path, name: &str) -> std::io::Result<(Utf8PathBuf, File)> {
    std::fs::create_dir_all(parent)?;
    remove_unlocked(parent);
    for attempt in 0..10 {
        let dir = match attempt {
            0 => parent.join(name),
            n => parent.join(format!("{name}-{n}")),
        };
        std::fs::create_dir_all(&dir)?;
        let lock = File::open(&dir)?;
        match lock.try_lock() {
            Ok(()) if std::fs::metadata(&dir).is_ok_and(|now| same_file(&now, &lock)) => {
                return Ok((dir, lock))
            }
            Ok(()) | Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(err)) => return Err(err),
        }
    }
    Err(std::io::Error::other("another process keeps taking or removing it"))
}

/// Whether `lock` is the file whose metadata is `now`.
fn same_file(now: &std::fs::Metadata, lock: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    lock.metadata().is_ok_and(|locked| (locked.dev(), locked.ino()) == (now.dev(), now.ino()))
}

/// Removes the directories in `parent` that no live run holds locked: left by runs that died.
fn remove_unlocked(parent: &Utf8Path) {
    for entry in parent.read_dir_utf8().into_iter().flatten().flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.into_path();
        let Ok(lock) = File::open(&path) else { continue };
        // Held while removing: a run that takes the name meanwhile finds it locked.
        if lock.try_lock().is_ok() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use xshell::{cmd, Shell};

    #[test]
    fn output_status_and_tail() {
        let sh = Shell::new().unwrap();
        assert_eq!(step(cmd!(sh, "echo hi")).read().unwrap(), "hi");
        let err =
            step(cmd!(sh, "ls /nonexistent-xtask-cmd")).hint("check the path").run().unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("`ls /nonexistent-xtask-cmd` failed (exit status: 2):\n"),
            "{text}"
        );
        assert!(text.contains("nonexistent") && text.ends_with("\ncheck the path"));
        assert!(err.cause().unwrap().contains("No such file"));
        // `output` hands back a failed run instead.
        let output = step(cmd!(sh, "ls /nonexistent-xtask-cmd")).output().unwrap();
        assert!(!output.success());
    }

    #[test]
    fn the_lines_before_the_cause_are_the_tails_others() {
        let sh = Shell::new().unwrap();
        let err = step(cmd!(sh, "sh -c 'echo out; printf \"one\\ntwo\\nlast\\n\\n\" >&2; exit 3'"))
            .run()
            .unwrap_err();
        assert_eq!(err.cause(), Some("last"));
        assert_eq!(err.earlier_lines(), ["one", "two"]);
        let quiet = step(cmd!(sh, "sh -c 'echo only; exit 1'")).run().unwrap_err();
        assert_eq!((quiet.cause(), quiet.earlier_lines().len()), (Some("only"), 0));
    }

    #[test]
    fn a_missing_program_says_so() {
        let sh = Shell::new().unwrap();
        let err = step(cmd!(sh, "no-such-tool-xtask")).run().unwrap_err();
        assert!(matches!(err.failure, Failure::Start(_)));
        assert!(err.to_string().contains("is no-such-tool-xtask installed"));
    }

    #[test]
    fn a_time_limit_stops_the_whole_group() {
        let sh = Shell::new().unwrap();
        let started = Instant::now();
        // The grandchild `sleep` holds the pipes; it must be stopped with its parent.
        let err = step(cmd!(sh, "sh -c 'sleep 30 & sleep 30'"))
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(matches!(err.failure, Failure::TimedOut(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A run's directory is locked while it lives: the next run removes only the directories
    /// of runs that are gone, and takes another name when a live one holds its own.
    #[test]
    fn locked_directories_are_kept_and_the_others_removed() {
        let temp = Utf8PathBuf::from_path_buf(std::env::temp_dir()).unwrap();
        let parent = temp.join(format!("cmd-locked-dirs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        let (live, live_lock) = create_locked_dir(&parent, "go-1").unwrap();
        std::fs::write(live.join("a.out"), "running").unwrap();
        let dead = parent.join("go-2/go-build9");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("gateway.test"), "left by a killed go").unwrap();
        // Another run whose PID is the live one's (another PID namespace, say).
        let (other, _other_lock) = create_locked_dir(&parent, "go-1").unwrap();
        assert_eq!(other, parent.join("go-1-1"));
        assert!(live.join("a.out").exists(), "a live run's directory was removed");
        assert!(!parent.join("go-2").exists(), "a dead run's directory was left");
        drop(live_lock);
        let (_, _again) = create_locked_dir(&parent, "go-3").unwrap();
        assert!(!live.exists(), "once its run is gone, it goes too");
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn output_is_logged_and_invalid_utf8_is_kept_going() {
        let sh = Shell::new().unwrap();
        let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir()).unwrap();
        let log = dir.join(format!("cmd-log-{}.txt", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let output = step(cmd!(sh, "sh -c 'printf \"a\\377\\nb\\n\"; echo err >&2; seq 1 3000'"))
            .log(&log)
            .run()
            .unwrap();
        assert!(output.stdout.starts_with("a\u{fffd}\nb\n"));
        assert!(output.stdout.ends_with("3000\n"));
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("err\n") && logged.contains("2999\n"));
        std::fs::remove_file(&log).unwrap();
    }
}

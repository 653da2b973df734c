//! The one way the xtask runs an external command. Tasks build commands with `xshell::cmd!` and
//! run them here, so process groups, signals, time limits, logs and failure messages are handled
//! in one place.
//!
//! Every command runs in a process group of its own: the terminal's Ctrl-C reaches only the
//! xtask, which then stops the running commands itself (SIGINT first, so `go test` removes its
//! temporary build directory, then SIGTERM, then SIGKILL) and leaves the commands it starts
//! afterwards (teardown) alone.

use std::{
    fmt,
    io::{BufRead, BufReader, Read, Write},
    os::unix::process::CommandExt,
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
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

    /// The last line the tool printed on stderr (else stdout): usually the one that says why.
    pub fn cause(&self) -> Option<&str> {
        last_line(&self.stderr).or_else(|| last_line(&self.stdout))
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
        match self.cause() {
            Some(cause) => format!("`{command}` {ended}: {cause}"),
            None => format!("`{command}` {ended}"),
        }
    }

    /// The tool's stderr, or its stdout when stderr is empty, as the last `TAIL_LINES` lines.
    fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        tail(text, TAIL_LINES)
    }
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The last `n` lines of `text`, each ending in a newline.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| format!("{l}\n")).collect()
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
            Failure::TimedOut(limit) => write!(
                f,
                "`{command}` did not finish within {} s and was stopped",
                limit.as_secs()
            )?,
            Failure::Interrupted => {
                return write!(f, "interrupted by a signal (Ctrl-C or SIGTERM) during `{command}`")
            }
        }
        let tail = self.tail();
        if !tail.is_empty() {
            write!(f, ":\n{}", tail.trim_end())?;
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
    Step {
        shown: cmd.to_string(),
        command: Command::from(cmd),
        hint: String::new(),
        echo: false,
        log: None,
        limit: None,
    }
}

impl Step {
    /// What the user should do when the command fails; appended to the error.
    pub fn hint(mut self, hint: impl Into<String>) -> Step {
        self.hint = hint.into();
        self
    }

    /// Prints the command's output as it arrives (it is captured as well).
    pub fn echo(mut self) -> Step {
        self.echo = true;
        self
    }

    /// Appends the command's output to `path` as it arrives.
    pub fn log(mut self, path: &Utf8Path) -> Step {
        self.log = Some(path.to_path_buf());
        self
    }

    /// Stops the command (its whole process group) after `limit`.
    pub fn timeout(mut self, limit: Duration) -> Step {
        self.limit = Some(limit);
        self
    }

    /// Runs the command; an exit status other than 0 is an error.
    pub fn run(self) -> Result<Output, CmdError> {
        self.spawn().wait()
    }

    /// Runs the command and returns its output whatever its exit status; only a command that
    /// could not start, timed out or was interrupted is an error.
    pub fn output(self) -> Result<Output, CmdError> {
        self.spawn().finish()
    }

    /// The trimmed stdout of a successful run.
    pub fn read(self) -> Result<String, CmdError> {
        Ok(self.run()?.stdout.trim().to_string())
    }

    /// Starts the command without waiting for it (for checks that run side by side).
    pub fn spawn(mut self) -> Running {
        let started = self
            .command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match started {
            Ok(child) => child,
            Err(err) => {
                return Running {
                    state: Err(self.error(Failure::Start(err), String::new(), String::new())),
                }
            }
        };
        let group = child.id() as i32;
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push(group);
        let log = self.log.as_ref().and_then(|path| {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
            match file {
                Ok(file) => Some(Arc::new(Mutex::new(file))),
                Err(err) => {
                    eprintln!("warning: writing {path} failed ({err}): the output of `{}` is on the terminal only; make target/ writable", self.shown);
                    None
                }
            }
        });
        let stdout = read_lines(child.stdout.take(), self.echo, false, log.clone());
        let stderr = read_lines(child.stderr.take(), self.echo, true, log);
        let watchdog = self.limit.map(|limit| Watchdog::start(group, limit));
        Running {
            state: Ok(Started {
                step: self,
                child,
                group,
                stdout,
                stderr,
                watchdog,
                interrupted_before: interrupted(),
            }),
        }
    }

    fn error(&mut self, failure: Failure, stdout: String, stderr: String) -> CmdError {
        CmdError {
            command: std::mem::take(&mut self.shown),
            failure,
            stdout,
            stderr,
            hint: std::mem::take(&mut self.hint),
        }
    }
}

/// A started command; `wait` for it.
pub struct Running {
    state: Result<Started, CmdError>,
}

struct Started {
    step: Step,
    child: std::process::Child,
    group: i32,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    watchdog: Option<Watchdog>,
    interrupted_before: bool,
}

impl Running {
    /// Stops a command that would run until stopped (`kubectl port-forward`): SIGTERM to its
    /// group, then waits for it to go.
    pub fn stop(self) {
        if let Ok(started) = &self.state {
            signal_group(started.group, Signal::SIGTERM);
        }
        let _ = self.finish_step();
    }

    /// Waits for the command; an exit status other than 0 is an error.
    pub fn wait(self) -> Result<Output, CmdError> {
        let (mut step, output) = self.finish_step()?;
        if output.success() {
            return Ok(output);
        }
        Err(step.error(Failure::Exit(output.status), output.stdout, output.stderr))
    }

    fn finish(self) -> Result<Output, CmdError> {
        self.finish_step().map(|(_, output)| output)
    }

    fn finish_step(self) -> Result<(Step, Output), CmdError> {
        let Started { mut step, mut child, group, stdout, stderr, watchdog, interrupted_before } =
            self.state?;
        let waited = child.wait();
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).retain(|g| *g != group);
        let timed_out = watchdog.is_some_and(Watchdog::stop);
        let stopped = timed_out || (!interrupted_before && interrupted());
        // A stopped command's pipes may be held by something that outlived it: do not wait long.
        let collect = |rx: mpsc::Receiver<String>| {
            if stopped {
                rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
            } else {
                rx.recv().unwrap_or_default()
            }
        };
        let (out, err) = (collect(stdout), collect(stderr));
        let status = match waited {
            Ok(status) => status,
            Err(e) => return Err(step.error(Failure::Start(e), out, err)),
        };
        if timed_out {
            let limit = step.limit.unwrap_or_default();
            return Err(step.error(Failure::TimedOut(limit), out, err));
        }
        if stopped && !status.success() {
            return Err(step.error(Failure::Interrupted, out, err));
        }
        Ok((step, Output { status, stdout: out, stderr: err }))
    }
}

/// Reads a pipe line by line on a thread (so a chatty command never blocks on a full pipe),
/// passing each line on as it arrives, and sends the whole text when the pipe closes. Bytes,
/// not `lines()`: one invalid UTF-8 byte must not stop the reading.
fn read_lines(
    pipe: Option<impl Read + Send + 'static>,
    echo: bool,
    is_stderr: bool,
    log: Option<Arc<Mutex<std::fs::File>>>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut all = String::new();
        if let Some(pipe) = pipe {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                if echo && is_stderr {
                    eprintln!("{line}");
                } else if echo {
                    println!("{line}");
                }
                if let Some(log) = &log {
                    if let Ok(mut file) = log.lock() {
                        let _ = writeln!(file, "{line}");
                    }
                }
                all.push_str(line);
                all.push('\n');
                buf.clear();
            }
        }
        let _ = tx.send(all);
    });
    rx
}

/// Stops a process group that outlives its time limit.
struct Watchdog {
    done: mpsc::Sender<()>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(group: i32, limit: Duration) -> Watchdog {
        let (done, wait) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&fired);
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                flag.store(true, Ordering::SeqCst);
                signal_group(group, Signal::SIGKILL);
            }
        });
        Watchdog { done, fired }
    }

    /// Called once the command exited; returns whether the time limit stopped it.
    fn stop(self) -> bool {
        let _ = self.done.send(());
        self.fired.load(Ordering::SeqCst)
    }
}

// ---- Signals ---------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Process groups of the commands running now.
static RUNNING: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// What a second signal leaves behind, and how to remove it (set by e2e-gateway).
static LEFTOVER: Mutex<Option<String>> = Mutex::new(None);

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
    *LEFTOVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(remove_with);
}

/// The first signal stops the commands running at that moment (SIGINT, then SIGTERM, then
/// SIGKILL, `GRACE` apart) and lets the task clean up; a second one exits at once.
pub fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| {
        let leftover = LEFTOVER.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !INTERRUPTED.swap(true, Ordering::SeqCst) {
            match leftover {
                Some(_) => eprintln!(
                    "\ninterrupted: stopping and tearing down (press Ctrl-C again to skip teardown)"
                ),
                None => eprintln!("\ninterrupted: stopping"),
            }
            // Only the commands running now: teardown commands started later must run.
            thread::spawn(move || {
                for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL] {
                    let alive: Vec<i32> = running
                        .iter()
                        .copied()
                        .filter(|g| RUNNING.lock().unwrap_or_else(|e| e.into_inner()).contains(g))
                        .collect();
                    if alive.is_empty() {
                        break;
                    }
                    alive.iter().for_each(|g| signal_group(*g, signal));
                    thread::sleep(GRACE);
                }
            });
        } else {
            running.iter().for_each(|g| signal_group(*g, Signal::SIGKILL));
            match leftover {
                Some(command) => {
                    eprintln!("teardown skipped: remove what is left with `{command}`")
                }
                None => eprintln!("stopped"),
            }
            std::process::exit(1);
        }
    });
}

fn signal_group(group: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(group), signal);
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

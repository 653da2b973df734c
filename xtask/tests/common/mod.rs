//! Runs the real xtask binary against a scratch copy of the project, with fake
//! podman/kind/kubectl/go/docker/df on PATH (see tests/fakes/fake). Each sandbox has its own
//! directory, log and ports, so tests run in parallel.
//!
//! PATH holds only the sandbox's fakes and links to `BASIC_TOOLS`, never the system's bin
//! directories: a real kind, kubectl, podman or docker installed there must not stand in for a
//! fake the test left out on purpose.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::{
    io::Read as _,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Output},
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
};

use camino::{Utf8Path, Utf8PathBuf};
use nix::sys::signal::Signal;

pub mod real;

pub fn repo_root() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Everything besides the fakes that the fake script (bash, coreutils, busybox httpd for the
/// readiness endpoints) and xtask itself (`df -Pk`) run.
const BASIC_TOOLS: &[&str] =
    &["bash", "sh", "env", "basename", "cat", "mkdir", "rm", "grep", "sleep", "df", "busybox"];

/// `BASIC_TOOLS` resolved once from the test process's PATH.
fn basic_tools() -> &'static [(&'static str, PathBuf)] {
    static TOOLS: OnceLock<Vec<(&'static str, PathBuf)>> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        BASIC_TOOLS
            .iter()
            .map(|&tool| {
                let found = dirs.iter().map(|d| d.join(tool)).find(|p| {
                    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                });
                let found = found.unwrap_or_else(|| {
                    panic!(
                        "test setup: `{tool}` is not on PATH; the fake tools need it \
                         (busybox: `apt-get install -y busybox-static`)"
                    )
                });
                (tool, found)
            })
            .collect()
    })
}

pub struct Sandbox {
    pub dir: Utf8PathBuf,
    pub root: Utf8PathBuf,
    /// The fakes; first on PATH.
    pub bin: Utf8PathBuf,
    /// Links to `BASIC_TOOLS`; the rest of PATH.
    pub tools: Utf8PathBuf,
    pub log: Utf8PathBuf,
    pub state: Utf8PathBuf,
    env: Vec<(String, String)>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A port nobody listens on right now, and that no other test of this process gets: handed
/// out in turn from 20000 to 31999 (below the kernel's ephemeral ports), starting at a place of
/// this process's own and going round, so a port one test released is not given to another
/// while the first one's servers may still hold it.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static HANDED_OUT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = (std::process::id() % 400) * 30;
    for _ in 0..COUNT {
        let n = HANDED_OUT.fetch_add(1, Ordering::SeqCst);
        let port = (FIRST + (start + n) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("test setup: no free port from {FIRST} to {}", FIRST + COUNT - 1);
}

impl Sandbox {
    /// A scratch project with minimal Go mains, the real Dockerfiles and manifests, and fakes
    /// for `fakes` (a subset of podman, kind, kubectl, go, docker, df). A tool left out is
    /// simply missing: nothing else on PATH can answer in its place.
    pub fn new(name: &str, fakes: &[&str]) -> Sandbox {
        let sandbox = Sandbox::empty(name, fakes);
        let root = &sandbox.root;
        std::fs::write(root.join("go.mod"), "module example.com/gateway-e2e\n\ngo 1.25\n").unwrap();
        for svc in ["gateway", "datastorage"] {
            write(&root.join(format!("cmd/{svc}/main.go")), "package main\n\nfunc main() {}\n");
        }
        let repo = repo_root();
        for sub in ["docker", "test/infrastructure"] {
            copy_dir(&repo.join(sub), &root.join(sub));
        }
        // The gateway suite's file; its tests are the fake go's.
        let suite = "test/e2e/gateway/suite.toml";
        std::fs::create_dir_all(root.join("test/e2e/gateway")).unwrap();
        std::fs::copy(repo.join(suite), root.join(suite)).unwrap();
        sandbox
    }

    /// Like `new`, but the project directory is empty: for tests that bring a project of
    /// their own (write it below `root`).
    pub fn empty(name: &str, fakes: &[&str]) -> Sandbox {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = Utf8PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("project");
        let bin = dir.join("bin");
        let tools = dir.join("tools");
        for d in [&root, &bin, &tools] {
            std::fs::create_dir_all(d).unwrap();
        }
        for (tool, path) in basic_tools() {
            std::os::unix::fs::symlink(path, tools.join(tool)).unwrap();
        }
        let fake = repo_root().join("xtask/tests/fakes/fake");
        for fake_name in fakes {
            let target = bin.join(fake_name);
            std::fs::copy(&fake, &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let log = dir.join("calls.log");
        let state = dir.join("state");
        let env = vec![
            ("GATEWAY_HOST_PORT".to_string(), free_port().to_string()),
            ("DATASTORAGE_HOST_PORT".to_string(), free_port().to_string()),
        ];
        Sandbox { dir, root, bin, tools, log, state, env }
    }

    /// The value this sandbox gives `key` (the last one set).
    pub fn env_value(&self, key: &str) -> String {
        let found = self.env.iter().rev().find(|(k, _)| k == key);
        found.map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// Links the real `tool` from the test's PATH into the tools directory, for tests that
    /// need the real thing (`#[ignore = "needs go"]`); panics when it is not installed.
    pub fn use_real(&self, tool: &str) -> &Sandbox {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("test setup: this test needs the real `{tool}` on PATH"));
        std::os::unix::fs::symlink(found, self.tools.join(tool)).unwrap();
        self
    }

    pub fn env(&mut self, key: &str, value: &str) -> &mut Sandbox {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The xtask binary with `args`, in this sandbox's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_for(env!("CARGO_BIN_EXE_xtask").as_ref(), args)
    }

    /// The xtask with `args` through `wrapper` (`setpriv --reuid=...`, say: found on the test's
    /// PATH, not the sandbox's), in this sandbox's environment.
    pub fn run_through(&self, wrapper: &[&str], args: &[&str]) -> Run {
        let (program, before) = wrapper.split_first().expect("a wrapper command");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file());
        let found = found.unwrap_or_else(|| panic!("test setup: `{program}` is not on PATH"));
        let found = Utf8PathBuf::from_path_buf(found).expect("a UTF-8 path");
        let mut all: Vec<&str> = before.to_vec();
        all.push(env!("CARGO_BIN_EXE_xtask"));
        all.extend(args);
        Run::from(self.command_for(&found, &all).output().unwrap())
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().unwrap();
        Run::from(output)
    }

    /// Starts the xtask with `args` without waiting for it; `finish` it.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits (30 s at most) until a recorded call matches `when`; panics with what the xtask
    /// printed if it ends first.
    pub fn wait_for_call(&self, child: &mut std::process::Child, when: impl Fn(&str) -> bool) {
        let started = std::time::Instant::now();
        while !self.calls().iter().any(|c| when(c)) {
            if let Ok(Some(_)) = child.try_wait() {
                let mut out = String::new();
                for pipe in [
                    child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read>),
                    child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read>),
                ]
                .into_iter()
                .flatten()
                {
                    let mut pipe = pipe;
                    let _ = pipe.read_to_string(&mut out);
                }
                panic!(
                    "the xtask ended before the awaited call:\n{out}\ncalls:\n{}",
                    self.calls().join("\n")
                );
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the awaited call never came:\n{}",
                self.calls().join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `run` from the project root, where relative paths on the command line start.
    pub fn run_in_root(&self, args: &[&str]) -> Run {
        let output = self.command(args).current_dir(&self.root).output().unwrap();
        Run::from(output)
    }

    /// Runs one of the installed fakes directly, as xtask would (for tests of the harness).
    pub fn run_fake(&self, tool: &str, args: &[&str]) -> Run {
        let output = self.command_for(&self.bin.join(tool), args).output().unwrap();
        Run::from(output)
    }

    fn command_for(&self, program: &Utf8Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.dir)
            .env("PATH", format!("{}:{}", self.bin, self.tools))
            .env("XTASK_PROJECT_ROOT", &self.root)
            .env("FAKE_LOG", &self.log)
            .env("FAKE_STATE", &self.state)
            // The machine-wide lock of a cluster name lives in the temporary directory: each
            // sandbox is a machine of its own, so tests in parallel never share one.
            .env("TMPDIR", &self.dir)
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITHUB_STEP_SUMMARY")
            .env_remove("KIND_EXPERIMENTAL_PROVIDER")
            .env_remove("CONTAINERS_CONF")
            .env_remove("BUILDER_IMAGE")
            .env_remove("BASE_IMAGE")
            // What .ci/run exports for the real Kind tests: each test passes what it means.
            .env_remove("E2E_NODE_IMAGE")
            .env_remove("E2E_REGISTRY")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Every recorded call, one "<tool> <args>" line each.
    pub fn calls(&self) -> Vec<String> {
        self.calls_with_env().into_iter().map(|(c, _)| c).collect()
    }

    /// Every recorded call with the environment the fake noted for it (kind: the provider
    /// variable; go test: the service URLs), empty for other tools.
    pub fn calls_with_env(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (call, env) = l.split_once('\t').unwrap_or((l, ""));
                (call.to_string(), env.to_string())
            })
            .collect()
    }

    /// Index of the last call starting with `prefix`; panics with the call log if none.
    pub fn last_position(&self, prefix: &str) -> usize {
        let calls = self.calls();
        calls
            .iter()
            .rposition(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call starting with `{prefix}` in:\n{}", calls.join("\n")))
    }

    /// Index of the first call starting with `prefix`; panics with the call log if none.
    pub fn position(&self, prefix: &str) -> usize {
        let calls = self.calls();
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call starting with `{prefix}` in:\n{}", calls.join("\n")))
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.calls().iter().filter(|c| c.starts_with(prefix)).count()
    }
}

/// The fake starts HTTP servers for the readiness endpoints and stops them only when the
/// cluster goes away; a test that keeps the cluster, or panics, must not leave them running.
impl Drop for Sandbox {
    fn drop(&mut self) {
        for pid in self.server_pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

impl Sandbox {
    /// The fake's servers, one `server-<port>` file each.
    pub fn server_pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(&self.state) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("server-"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .collect()
    }
}

/// Sends `signal` to a spawned xtask.
pub fn signal(child: &std::process::Child, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// Waits for a spawned xtask.
pub fn finish(child: std::process::Child) -> Run {
    Run::from(child.wait_with_output().unwrap())
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// One table row: (status, detail, the `fix:` line under it if any).
#[derive(Debug)]
pub struct Row {
    pub status: String,
    pub detail: String,
    pub fix: Option<String>,
}

pub fn row(run: &Run, name: &str) -> Row {
    let lines: Vec<&str> = run.stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with("  ")))
        .unwrap_or_else(|| panic!("no row `{name}` in:\n{}", run.stdout));
    let (status, detail) = lines[i][name.len()..].trim_start().split_once("  ").unwrap();
    let fix =
        lines.get(i + 1).and_then(|l| l.trim_start().strip_prefix("fix: ")).map(str::to_string);
    Row { status: status.trim().to_string(), detail: detail.trim().to_string(), fix }
}

/// The value of a row of an e2e run's summary (`result`, `cause`, `fix`, ...).
pub fn summary_row<'a>(run: &'a Run, name: &str) -> &'a str {
    let prefix = format!("  {name} ");
    let line = run.stdout.lines().find(|l| l.starts_with(&prefix));
    line.unwrap_or_else(|| panic!("no summary row `{name}` in:\n{run}"))[prefix.len()..].trim()
}

pub fn has_row(run: &Run, name: &str) -> bool {
    run.stdout.lines().any(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with("  ")))
}

pub fn write(path: &Utf8Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Utf8Path, to: &Utf8Path) {
    let entries =
        from.read_dir_utf8().unwrap_or_else(|err| panic!("test setup: reading {from}: {err}"));
    std::fs::create_dir_all(to).unwrap();
    for entry in entries {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

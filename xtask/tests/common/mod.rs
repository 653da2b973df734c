//! Runs the real xtask binary against a scratch copy of the project, with fake
//! podman/kind/kubectl/go first on PATH (see tests/fakes/fake). Each sandbox has its own
//! directory, log and ports, so tests run in parallel.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

use camino::{Utf8Path, Utf8PathBuf};

pub fn repo_root() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub struct Sandbox {
    pub dir: Utf8PathBuf,
    pub root: Utf8PathBuf,
    pub bin: Utf8PathBuf,
    pub log: Utf8PathBuf,
    pub state: Utf8PathBuf,
    env: Vec<(String, String)>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sandbox {
    /// A scratch project with minimal Go mains, the real Dockerfiles and manifests, and fakes
    /// for `tools` (a subset of podman, kind, kubectl, go, docker).
    pub fn new(name: &str, tools: &[&str]) -> Sandbox {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = Utf8PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("project");
        let bin = dir.join("bin");
        for d in [&root, &bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            root.join("go.mod"),
            "module example.com/gateway-e2e\n\ngo 1.25\n",
        )
        .unwrap();
        for svc in ["gateway", "datastorage"] {
            write(
                &root.join(format!("cmd/{svc}/main.go")),
                "package main\n\nfunc main() {}\n",
            );
        }
        let repo = repo_root();
        for sub in ["docker", "test/infrastructure"] {
            copy_dir(&repo.join(sub), &root.join(sub));
        }
        let fake = repo.join("xtask/tests/fakes/fake");
        for tool in tools {
            let target = bin.join(tool);
            std::fs::copy(&fake, &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let log = dir.join("calls.log");
        let state = dir.join("state");
        let env = vec![
            ("GATEWAY_HOST_PORT".to_string(), free_port().to_string()),
            ("DATASTORAGE_HOST_PORT".to_string(), free_port().to_string()),
        ];
        Sandbox {
            dir,
            root,
            bin,
            log,
            state,
            env,
        }
    }

    pub fn env(&mut self, key: &str, value: &str) -> &mut Sandbox {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(args)
            .current_dir(&self.dir)
            .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin))
            .env("XTASK_PROJECT_ROOT", &self.root)
            .env("FAKE_LOG", &self.log)
            .env("FAKE_STATE", &self.state)
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITHUB_STEP_SUMMARY")
            .env_remove("KIND_EXPERIMENTAL_PROVIDER")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().unwrap();
        Run::from(output)
    }

    /// Every recorded call, one "<tool> <args>" line each.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
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
        self.calls()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }
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
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn write(path: &Utf8Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn copy_dir(from: &Utf8Path, to: &Utf8Path) {
    let Ok(entries) = from.read_dir_utf8() else {
        return;
    };
    std::fs::create_dir_all(to).unwrap();
    for entry in entries {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

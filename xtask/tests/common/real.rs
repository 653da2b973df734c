//! Helpers for the tests that run the xtask binary with the real podman and go, each on a
//! scratch copy of the project.
//!
//! A comment line unique to the run is appended to the scratch copy's Dockerfiles: it is part of
//! the image hash, so the tags are the test's own (no clash with the checkout's images or a
//! parallel test), while podman's layer cache and Go's build cache still apply. Every container,
//! pod and image a test creates is removed by a `Cleanup` guard, also when an assertion fails.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use camino::{Utf8Path, Utf8PathBuf};

use super::{copy_dir, repo_root, Run};

/// A copy of the project's Go sources, Dockerfiles and test assets in a directory of its own,
/// removed when the test passed and kept to look at when it failed.
pub struct Scratch {
    pub root: Utf8PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let id = unique(name);
        let root = Utf8PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&id);
        let _ = std::fs::remove_dir_all(&root);
        let repo = repo_root();
        std::fs::create_dir_all(&root).unwrap();
        for file in ["go.mod", "go.sum", ".containerignore", ".dockerignore"] {
            if repo.join(file).exists() {
                std::fs::copy(repo.join(file), root.join(file)).unwrap();
            }
        }
        for dir in ["cmd", "internal", "docker", "test", "tools"] {
            copy_dir(&repo.join(dir), &root.join(dir));
        }
        // Makes this run's image tags unique (the Dockerfiles are hashed) without changing what
        // is built: a comment creates no layer, so podman's layer cache still applies.
        for entry in root.join("docker").read_dir_utf8().unwrap() {
            let path = entry.unwrap().into_path();
            let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            writeln!(file, "# scratch copy for the test run {id}").unwrap();
        }
        std::fs::create_dir_all(root.join("target")).unwrap();
        Scratch { root }
    }

    /// The xtask binary with `args` on this copy; `env` is set on top of the test's environment,
    /// minus the variables that would change what xtask does.
    pub fn xtask(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run::from(self.command(args, env).output().unwrap())
    }

    /// The command `xtask` runs, to start it without waiting.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(args)
            .current_dir(&self.root)
            .env("XTASK_PROJECT_ROOT", &self.root)
            // The lock of a cluster name goes with the copy, not into the machine's /tmp (and not
            // the root itself: go ignores a go.mod in the temporary directory).
            .env("TMPDIR", self.root.join("target"))
            .env("NO_COLOR", "1")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITHUB_STEP_SUMMARY")
            .env_remove("BUILDER_IMAGE")
            .env_remove("BASE_IMAGE");
        cmd.envs(env.iter().copied());
        cmd
    }

    /// An empty directory any container user (65532 in host mode, 1001 in UBI9) can write.
    pub fn coverage_dir(&self, name: &str) -> Utf8PathBuf {
        let dir = self.root.join("target/cov").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Removes what a test started, whether it passed or panicked.
#[derive(Default)]
pub struct Cleanup {
    pub containers: Vec<String>,
    pub pods: Vec<String>,
    pub networks: Vec<String>,
    pub images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = podman(&["rm", "--force", "--time", "0", name]);
        }
        for pod in &self.pods {
            if podman(&["pod", "exists", pod]).status.success() {
                let _ = podman(&["pod", "rm", "--force", "--time", "0", pod]);
            }
        }
        for network in &self.networks {
            if podman(&["network", "exists", network]).status.success() {
                let _ = podman(&["network", "rm", "--force", network]);
            }
        }
        for image in &self.images {
            let _ = podman(&["rmi", image]);
        }
    }
}

pub struct Image {
    pub service: String,
    pub reference: String,
    pub status: String,
}

/// The `name  reference  built|cached  seconds  size` lines of the build phase.
pub fn images_of(run: &Run) -> Vec<Image> {
    run.stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [service, reference, status, ..] if reference.starts_with("localhost/") => {
                    Some(Image {
                        service: service.to_string(),
                        reference: reference.to_string(),
                        status: status.to_string(),
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// Panics unless `dir` holds the `covmeta.*` and `covcounters.*` files of a process that
/// exited normally; `context` (the xtask output, if any) goes into the message.
pub fn assert_covmeta_and_covcounters(dir: &Utf8Path, context: &str) {
    let names: Vec<String> = dir
        .read_dir_utf8()
        .unwrap_or_else(|err| panic!("reading {dir}: {err}\n{context}"))
        .map(|e| e.unwrap().file_name().to_string())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("covmeta.")), "no covmeta.* in {dir}: {names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("covcounters.")),
        "no covcounters.* in {dir} (the process did not exit normally): {names:?}"
    );
}

pub fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().unwrap()
}

/// Status, stdout and stderr of `out`, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A name no other test or test process uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

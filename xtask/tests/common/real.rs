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
        Run::from(self.command(&[], args, env).output().unwrap())
    }

    /// The command `xtask` runs, started through `wrapper` (e.g. `setpriv ...`) when not empty.
    pub fn command(&self, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = match wrapper {
            [] => Command::new(env!("CARGO_BIN_EXE_xtask")),
            [program, rest @ ..] => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(env!("CARGO_BIN_EXE_xtask"));
                cmd
            }
        };
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
            .env_remove("BASE_IMAGE")
            // What .ci/run exports for the real Kind tests: each test passes what it means.
            .env_remove("E2E_NODE_IMAGE")
            .env_remove("E2E_REGISTRY");
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

/// The registry references the build phase names (`  pushed: REF`, `  in the registry: REF`):
/// the engine holds each under that name afterwards (pushed from it, or pulled to verify it).
pub fn registry_references(run: &Run) -> Vec<String> {
    let mut references = Vec::new();
    for line in run.stdout.lines() {
        for mark in ["  pushed: ", "  in the registry: "] {
            if let Some((_, reference)) = line.split_once(mark) {
                references.push(reference.trim().to_string());
            }
        }
    }
    references
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

/// The stand-in for the UBI9 go-toolset image (see xtask/tests/standin/builder.Dockerfile) in
/// the store of `engine` (`podman` or `docker`), built unless it exists: it takes a while and
/// never changes between runs.
pub const STANDIN_BUILDER: &str = "localhost/standin-go-builder:test";

pub fn ensure_standin_builder(engine: &str) {
    // One build at a time: tests that start together would each build it.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let exists = Command::new(engine).args(["image", "inspect", STANDIN_BUILDER]).output().unwrap();
    if exists.status.success() {
        return;
    }
    let context =
        Utf8PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("standin-builder-context"));
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy("/bin/busybox", context.join("busybox"))
        .expect("a static busybox at /bin/busybox (Debian: apt-get install busybox-static)");
    let standin = repo_root().join("xtask/tests/standin");
    std::fs::copy(standin.join("dnf"), context.join("dnf")).unwrap();
    std::fs::set_permissions(context.join("dnf"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let goroot = Command::new("go").args(["env", "GOROOT"]).output().unwrap();
    assert!(goroot.status.success(), "go env GOROOT: {}", text(&goroot));
    let goroot = Utf8PathBuf::from(String::from_utf8(goroot.stdout).unwrap().trim());
    let go = context.join("go");
    std::fs::create_dir_all(&go).unwrap();
    for entry in goroot.read_dir_utf8().unwrap() {
        let entry = entry.unwrap();
        // Documentation and the toolchain's own tests are not needed to build.
        if ["api", "doc", "test", "misc"].contains(&entry.file_name()) {
            continue;
        }
        let copied = Command::new("cp").arg("-a").arg(entry.path()).arg(&go).output().unwrap();
        assert!(copied.status.success(), "copying GOROOT: {}", text(&copied));
    }

    let dockerfile = standin.join("builder.Dockerfile");
    let built = Command::new(engine)
        .args(["build", "-f", dockerfile.as_str(), "-t", STANDIN_BUILDER, context.as_str()])
        // docker's legacy builder would keep every step as an untagged image; BuildKit keeps none.
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&context);
    assert!(built.status.success(), "building the stand-in builder: {}", text(&built));
}

/// The third-party image of the datastorage suite, under the reference a user would pull.
pub const REDIS: &str = "docker.io/library/redis:7.4-alpine";

/// The stand-in for `REDIS` in the store of `engine`, built from Debian's redis-server by
/// xtask/tests/standin/build-redis.sh unless an image of that reference is there. Kept, like a
/// pulled image: the xtask uses it as it is and removes nothing it did not build.
pub fn ensure_redis_standin(engine: &str) {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let script = repo_root().join("xtask/tests/standin/build-redis.sh");
    let built = Command::new(script.as_str()).arg(engine).output().unwrap();
    assert!(built.status.success(), "{script} {engine}: {}", text(&built));
}

/// The CNCF Distribution registry on a free port, with storage of its own; stopped and
/// removed when dropped. `addr` is its loopback address; with `all_addresses` it listens on
/// every address, so a Kind node reaches it (as `host.containers.internal`).
pub struct RegistryServer {
    pub child: std::process::Child,
    pub addr: String,
    dir: camino::Utf8PathBuf,
}

impl RegistryServer {
    pub fn start(all_addresses: bool) -> RegistryServer {
        let dir = camino::Utf8PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("registry"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = super::free_port();
        let addr = format!("127.0.0.1:{port}");
        let listen = if all_addresses { format!("0.0.0.0:{port}") } else { addr.clone() };
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {dir}/data\nhttp:\n  addr: {listen}\n"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = std::process::Command::new("registry")
            .args(["serve", config.as_str()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the distribution registry as `registry` on PATH: `go install github.com/distribution/distribution/v3/cmd/registry@v3.1.2`");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(started.elapsed().as_secs() < 20, "the registry did not listen on {addr}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        RegistryServer { child, addr, dir }
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! Where things are: the project root and the paths and services every task shares.

use std::sync::atomic::{AtomicBool, Ordering};

use camino::{Utf8Path, Utf8PathBuf};

/// A service of the sample repository: its binary is `./cmd/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    pub name: &'static str,
    /// Port the process listens on inside its container.
    pub container_port: u16,
    /// Port on the host where the E2E suite reaches it (Kind port mapping or podman hostPort).
    pub host_port: u16,
}

/// In dependency order: datastorage must be ready before gateway.
pub const SERVICES: [Service; 2] = [
    Service {
        name: "datastorage",
        container_port: 8081,
        host_port: 18081,
    },
    Service {
        name: "gateway",
        container_port: 8080,
        host_port: 18080,
    },
];

pub fn service(name: &str) -> Option<Service> {
    SERVICES.iter().copied().find(|s| s.name == name)
}

pub fn service_names() -> String {
    SERVICES.map(|s| s.name).join(", ")
}

/// The repository root. `XTASK_PROJECT_ROOT` exists so tests can run the real binary against a
/// scratch copy of the project; everyone else gets the directory above this crate.
pub fn root() -> Utf8PathBuf {
    match std::env::var("XTASK_PROJECT_ROOT") {
        Ok(dir) if !dir.is_empty() => Utf8PathBuf::from(dir),
        _ => Utf8Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives one level below the project root")
            .to_path_buf(),
    }
}

/// Everything the xtask writes lives below `target/xtask/` (and `coverdata/`).
pub fn xtask_dir(root: &Utf8Path) -> Utf8PathBuf {
    root.join("target/xtask")
}

pub fn coverdata_dir(root: &Utf8Path) -> Utf8PathBuf {
    root.join("coverdata")
}

pub fn infrastructure_dir(root: &Utf8Path) -> Utf8PathBuf {
    root.join("test/infrastructure")
}

/// The Go module path, read from `go.mod`.
pub fn go_module(root: &Utf8Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = root.join("go.mod");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("reading {path}: run the xtask from a checkout of the repository")
    })?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("module "))
        .map(|m| m.trim().trim_matches('"').to_string())
        .with_context(|| {
            format!("{path} has no `module` line: add one, e.g. `module example.com/svc`")
        })
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Called from the Ctrl-C / SIGTERM handler; long-running steps poll `interrupted()`.
pub fn set_interrupted() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The first `name` on PATH, like `command -v`.
pub fn which(name: &str) -> Option<Utf8PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var("PATH").ok()?;
    path.split(':').filter(|d| !d.is_empty()).find_map(|dir| {
        let candidate = Utf8Path::new(dir).join(name);
        let meta = std::fs::metadata(&candidate).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
    })
}

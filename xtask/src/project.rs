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
        // Made absolute once, so commands run elsewhere (podman kube play) see the same paths.
        Ok(dir) if !dir.is_empty() => {
            absolute(Utf8Path::new(&dir)).unwrap_or_else(|_| Utf8PathBuf::from(dir))
        }
        _ => Utf8Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives one level below the project root")
            .to_path_buf(),
    }
}

/// A path the user typed (on the command line, or in `XTASK_PROJECT_ROOT`), made absolute
/// against the current directory, which is what their shell completed it against. Only for
/// such paths: everything the xtask names itself is anchored at `root()`. `..` is kept.
pub fn absolute(path: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
    use anyhow::Context;
    let path = std::path::absolute(path).with_context(|| {
        format!("making {path} absolute: the current directory is unreadable; cd to an existing directory and rerun")
    })?;
    Utf8PathBuf::from_path_buf(path)
        .map_err(|p| anyhow::anyhow!("{} is not UTF-8: use a UTF-8 path", p.display()))
}

/// Everything the xtask writes lives below `target/xtask/` (and `coverdata/`).
pub fn xtask_dir(root: &Utf8Path) -> Utf8PathBuf {
    root.join("target/xtask")
}

/// The kubeconfig of our Kind cluster `cluster_name`: every kind and kubectl call names it, so
/// nothing the xtask does (or tells the user to do) edits ~/.kube/config.
pub fn kubeconfig(root: &Utf8Path, cluster_name: &str) -> Utf8PathBuf {
    xtask_dir(root).join(format!("kubeconfig-{cluster_name}"))
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

/// The host port a service is reached on. `<SERVICE>_HOST_PORT` moves it when the default is
/// taken on this machine (and lets tests run in parallel).
pub fn host_port(service: Service) -> anyhow::Result<u16> {
    use anyhow::Context;
    let var = format!("{}_HOST_PORT", service.name.to_uppercase());
    match std::env::var(&var) {
        Ok(value) if !value.is_empty() => value.parse().with_context(|| {
            format!(
                "{var}={value} is not a port number: set it to a free port like {}",
                service.host_port
            )
        }),
        _ => Ok(service.host_port),
    }
}

/// A UTC timestamp like `2026-11-26T05-45-00Z`, for run ids and archive names: sortable, and
/// without colons, which `tar` and some file systems read specially.
pub fn utc_timestamp(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn absolute_joins_the_current_directory() {
        let cwd = Utf8PathBuf::from_path_buf(std::env::current_dir().unwrap()).unwrap();
        assert_eq!(
            absolute(Utf8Path::new("docker/x.Dockerfile")).unwrap(),
            cwd.join("docker/x.Dockerfile")
        );
        assert_eq!(absolute(Utf8Path::new("/a/b")).unwrap(), "/a/b");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |secs: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00-00-00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00-00-00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22-13-20Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23-59-59Z");
        assert_eq!(at(1_795_671_900), "2026-11-26T05-45-00Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23-59-59Z");
    }
}

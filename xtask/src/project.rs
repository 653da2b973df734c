//! Where things are: the project root and the paths every task shares.

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};

/// The fix for a file under target/ that cannot be written.
pub const WRITABLE_TARGET: &str = "make target/ writable and check free space (`df -h target`)";

/// The repository the xtask works on. `XTASK_PROJECT_ROOT` exists so tests can run the real
/// binary against a scratch copy. Otherwise the checkout being run, not the one the binary was
/// built in (a shared `CARGO_TARGET_DIR` serves several clones): `cargo run` sets
/// `CARGO_MANIFEST_DIR` at run time; a binary run directly looks up from the current directory.
pub fn root() -> Utf8PathBuf {
    if let Some(dir) = std::env::var("XTASK_PROJECT_ROOT").ok().filter(|d| !d.is_empty()) {
        // Made absolute once, so commands run elsewhere (podman kube play) see the same paths.
        return absolute(Utf8Path::new(&dir)).unwrap_or_else(|_| Utf8PathBuf::from(dir));
    }
    let is_root = |dir: &&Utf8Path| dir.join("xtask/Cargo.toml").is_file();
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").ok().map(Utf8PathBuf::from);
    let cwd = std::env::current_dir().ok().and_then(|d| Utf8PathBuf::from_path_buf(d).ok());
    let built_in = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    let from_manifest = manifest_dir.as_deref().and_then(Utf8Path::parent).filter(is_root);
    let from_cwd = cwd.as_deref().and_then(|dir| dir.ancestors().find(is_root));
    let root = from_manifest.or(from_cwd).or(built_in);
    root.expect("xtask lives one level below the project root").to_path_buf()
}

/// A path the user typed (on the command line, or in `XTASK_PROJECT_ROOT`), made absolute
/// against the current directory, which is what their shell completed it against. Only for
/// such paths: everything the xtask names itself is anchored at `root()`. `..` is kept.
pub fn absolute(path: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
    if path.as_str().is_empty() {
        bail!("an empty path was given: name a file or directory");
    }
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

pub fn coverdata_dir(root: &Utf8Path) -> Utf8PathBuf {
    root.join("coverdata")
}

/// Where a suite's services write their coverage counters: `coverdata/<suite>/<service>/`.
pub fn suite_coverdata(root: &Utf8Path, suite: &str) -> Utf8PathBuf {
    coverdata_dir(root).join(suite)
}

/// Writes `text` to `dir/name`, creating `dir` (below target/).
pub fn write_file(dir: &Utf8Path, name: &str, text: &str) -> anyhow::Result<Utf8PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}: {WRITABLE_TARGET}"))?;
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {path}: {WRITABLE_TARGET}"))?;
    Ok(path)
}

/// The Go module path, read from `go.mod`.
pub fn go_module(root: &Utf8Path) -> anyhow::Result<String> {
    let path = root.join("go.mod");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("reading {path}: run the xtask from a checkout of the repository")
    })?;
    let module = text.lines().find_map(|l| l.trim().strip_prefix("module "));
    let fix = || format!("{path} has no `module` line: add one, e.g. `module example.com/svc`");
    Ok(module.with_context(fix)?.trim().trim_matches('"').to_string())
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

/// Bytes (a digest) as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A UTC timestamp like `2026-11-26T05-45-00Z`, for run ids and archive names: sortable, and
/// without colons, which `tar` and some file systems read specially.
pub fn utc_timestamp(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string().replace(':', "-")
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
        let empty = absolute(Utf8Path::new("")).unwrap_err().to_string();
        assert_eq!(empty, "an empty path was given: name a file or directory");
    }

    #[test]
    fn timestamps_have_no_colons() {
        let at = |secs: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00-00-00Z");
        assert_eq!(at(1_795_671_900), "2026-11-26T05-45-00Z");
    }
}

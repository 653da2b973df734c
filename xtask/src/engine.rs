//! The container engine (podman or docker): which one, and what it knows about an image.

use anyhow::{ensure, Result};
use camino::Utf8Path;
use xshell::{cmd, Shell};

use crate::{cmd::step, lock, project};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Podman,
    Docker,
}

impl Engine {
    /// Each engine by the name of its program, as `--engine` takes it.
    pub const NAMES: &[(&str, Engine)] = &[("podman", Engine::Podman), ("docker", Engine::Docker)];

    pub fn program(self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Docker => "docker",
        }
    }
}

/// `--engine` if given, else podman if on PATH, else docker if on PATH, else podman (whose
/// missing row in the preflight says how to install it).
pub fn resolve(requested: Option<Engine>) -> Engine {
    let engines = [Engine::Podman, Engine::Docker];
    let on_path = || engines.into_iter().find(|e| project::which(e.program()).is_some());
    requested.or_else(on_path).unwrap_or(Engine::Podman)
}

/// The fix for an engine command that failed for no reason we know: the engine's own account.
pub fn answers(engine: Engine) -> String {
    let program = engine.program();
    format!("check that {program} answers: `{program} info` says why it does not")
}

/// What the engine's store holds under a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub size: u64,
}

/// `<engine> image inspect` of each image reference (at least one), in one call; `None` for
/// those the store does not have.
pub fn inspect(sh: &Shell, engine: Engine, images: &[String]) -> Result<Vec<Option<ImageInfo>>> {
    let program = engine.program();
    let format = "{{.Id}} {{.Size}} {{range .RepoTags}}{{.}} {{end}}";
    // A missing image makes the whole call fail, but the others are still printed.
    let output = step(cmd!(sh, "{program} image inspect --format {format} {images...}"))
        .hint(answers(engine))
        .output()?;
    let (status, stderr) = (&output.status, output.stderr.trim());
    let answered = output.success() || !output.stdout.trim().is_empty() || is_missing_image(stderr);
    ensure!(answered, "`{program} image inspect` failed ({status}): {stderr}\n{}", answers(engine));
    let info = |reference: &String| {
        let line = output.stdout.lines().find(|line| {
            line.split_whitespace().skip(2).any(|tag| same_reference(tag, reference))
        })?;
        let mut words = line.split_whitespace();
        Some(ImageInfo { id: words.next()?.to_string(), size: words.next()?.parse().ok()? })
    };
    Ok(images.iter().map(info).collect())
}

/// The ID of `image` in the engine's store and its label `key`, if it has one; None when the
/// store does not have the image.
pub fn label(
    sh: &Shell,
    engine: Engine,
    image: &str,
    key: &str,
) -> Result<Option<(String, Option<String>)>> {
    let program = engine.program();
    // `index` of a label the image lacks (or of no labels at all) prints nothing.
    let format = format!("{{{{.Id}}}} {{{{index .Config.Labels \"{key}\"}}}}");
    let output = step(cmd!(sh, "{program} image inspect --format {format} {image}"))
        .hint(answers(engine))
        .output()?;
    let stderr = output.stderr.trim();
    if !output.success() && is_missing_image(stderr) {
        return Ok(None);
    }
    ensure!(
        output.success(),
        "`{program} image inspect {image}` failed ({}): {stderr}\n{}",
        output.status,
        answers(engine)
    );
    let line = output.stdout.trim();
    let (id, label) = line.split_once(' ').unwrap_or((line, ""));
    Ok(Some((id.to_string(), Some(label.trim()).filter(|l| !l.is_empty()).map(str::to_string))))
}

/// The cluster name on the run label (`lock::LABEL`) of a podman pod or network (`kind`) that
/// exists, if it has one.
pub fn run_label(sh: &Shell, kind: &str, name: &str) -> Result<Option<String>> {
    let format = format!("{{{{index .Labels \"{}\"}}}}", lock::LABEL);
    let inspect = step(cmd!(sh, "podman {kind} inspect --format {format} {name}"));
    let label = inspect.hint(answers(Engine::Podman)).read()?;
    Ok(Some(label.trim().to_string()).filter(|l| !l.is_empty()))
}

/// Podman lists `localhost/x:1` as such; docker may list the short `x:1` for a local image.
fn same_reference(listed: &str, wanted: &str) -> bool {
    listed.trim_start_matches("localhost/") == wanted.trim_start_matches("localhost/")
}

fn is_missing_image(stderr: &str) -> bool {
    let stderr = stderr.to_lowercase();
    ["no such image", "image not known", "no such object"].iter().any(|m| stderr.contains(m))
}

/// The fix for an engine failure we know, read from what the engine printed.
pub fn known_fix(output: &str, root: &Utf8Path) -> Option<String> {
    let file = format!("{root}/.ci/containers.conf");
    let conf = format!("export CONTAINERS_CONF={file}");
    let no_runtime = output.contains("crun") && output.contains("not found")
        || output.contains("runc: executable file not found");
    let fix = if output.contains("unable to apply caps") {
        // Not transient: the same container is refused every time.
        "the OCI runtime was refused the capabilities of a privileged container (`unable to apply caps`): root here lacks some of them (CAP_SYS_RESOURCE, as in a sandbox or a nested container), so privileged containers cannot run, and Kind's nodes are privileged: Kind's docker provider cannot run on this machine; use podman (`--engine podman`, or `--cluster podman`)".into()
    } else if output.contains("error setting rlimit") {
        // The one line to run, last, with this checkout's absolute path: the user copies it.
        match std::env::var("CONTAINERS_CONF") {
            Ok(set) if set == file => format!("podman may not raise the containers' ulimits on this machine, not even to those CONTAINERS_CONF={file} sets: lower its `default_ulimits` to what `ulimit -Hn` and `ulimit -Hu` allow here"),
            _ => format!("podman may not raise the containers' ulimits on this machine; use this checkout's settings (runc, lower default ulimits) in the shell that runs the xtask: `{conf}`"),
        }
    } else if no_runtime {
        format!("the OCI runtime is missing: `apt-get install -y runc` and `{conf}`, then rerun")
    } else if output.contains("no space left on device") {
        "the disk is full: free space (`podman system prune`, `cargo clean`) and rerun".into()
    } else {
        return None;
    };
    Some(fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_match_with_or_without_localhost() {
        assert!(same_reference("localhost/gateway:e2e-1", "localhost/gateway:e2e-1"));
        assert!(same_reference("gateway:e2e-1", "localhost/gateway:e2e-1"));
        assert!(!same_reference("localhost/gateway:e2e-2", "localhost/gateway:e2e-1"));
        assert!(is_missing_image("Error: localhost/x:1: image not known\n"));
        assert!(is_missing_image("Error: No such image: x:1"));
        assert!(!is_missing_image("Error: cannot connect to podman"));
    }

    #[test]
    fn known_engine_errors_get_their_fix() {
        let root = Utf8Path::new("/repo");
        let rlimit = "Error: runc: runc create failed: unable to start container process: error during container init: error setting rlimits for ready process: error setting rlimit type 7: operation not permitted: OCI permission denied";
        let fix = known_fix(rlimit, root).unwrap();
        assert!(fix.ends_with(": `export CONTAINERS_CONF=/repo/.ci/containers.conf`"), "{fix}");
        assert!(known_fix("Error: default OCI runtime \"crun\" not found: invalid argument", root)
            .unwrap()
            .contains("apt-get install -y runc"));
        assert_eq!(known_fix("Error: image not known", root), None);
        // What kind v0.33 printed with docker 20.10 here, where root lacks CAP_SYS_RESOURCE.
        let caps = "Command Output: 4c163b4b0432\ndocker: Error response from daemon: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: unable to apply caps: operation not permitted: unknown";
        let fix = known_fix(caps, root).unwrap();
        assert!(fix.contains("privileged containers cannot run"), "{fix}");
        assert!(fix.ends_with("use podman (`--engine podman`, or `--cluster podman`)"), "{fix}");
    }
}

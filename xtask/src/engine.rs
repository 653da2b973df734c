//! The container engine (podman or docker): which one, and what it knows about an image.

use xshell::{cmd, Shell};

use crate::{cmd::step, flags::Engine, project};

/// `--engine` if given, else podman if on PATH, else docker.
pub fn resolve(requested: Option<Engine>) -> anyhow::Result<Engine> {
    if let Some(engine) = requested {
        return Ok(engine);
    }
    [Engine::Podman, Engine::Docker]
        .into_iter()
        .find(|e| project::which(e.program()).is_some())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no container engine: neither podman nor docker is on PATH; install podman with `apt-get install -y podman runc`"
            )
        })
}

/// What the engine's store holds under a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub size: u64,
}

/// `<engine> image inspect` of each reference, in one call; `None` for those the store does not
/// have.
pub fn inspect(
    sh: &Shell,
    engine: Engine,
    references: &[String],
) -> anyhow::Result<Vec<Option<ImageInfo>>> {
    if references.is_empty() {
        return Ok(Vec::new());
    }
    let program = engine.program();
    let format = "{{.Id}} {{.Size}} {{range .RepoTags}}{{.}} {{end}}";
    // A missing image makes the whole call fail, but the others are still printed.
    let output = step(cmd!(
        sh,
        "{program} image inspect --format {format} {references...}"
    ))
    .hint("check that the engine answers: `cargo xtask doctor`")
    .output()?;
    let found: Vec<(ImageInfo, Vec<&str>)> = output
        .stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next()?.to_string();
            let size = words.next()?.parse().ok()?;
            Some((ImageInfo { id, size }, words.collect()))
        })
        .collect();
    if !output.success() && found.is_empty() && !is_missing_image(&output.stderr) {
        anyhow::bail!(
            "`{program} image inspect` failed ({}): {}\ncheck that {program} answers: `cargo xtask doctor`",
            output.status,
            output.stderr.trim()
        );
    }
    Ok(references
        .iter()
        .map(|reference| {
            found
                .iter()
                .find(|(_, tags)| tags.iter().any(|t| same_reference(t, reference)))
                .map(|(info, _)| info.clone())
        })
        .collect())
}

/// Podman lists `localhost/x:1` as such; docker may list the short `x:1` for a local image.
fn same_reference(listed: &str, wanted: &str) -> bool {
    let short = |r: &str| r.strip_prefix("localhost/").unwrap_or(r).to_string();
    listed == wanted || short(listed) == short(wanted)
}

fn is_missing_image(stderr: &str) -> bool {
    let stderr = stderr.to_lowercase();
    stderr.contains("no such image")
        || stderr.contains("image not known")
        || stderr.contains("no such object")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_match_with_or_without_localhost() {
        assert!(same_reference(
            "localhost/gateway:e2e-1",
            "localhost/gateway:e2e-1"
        ));
        assert!(same_reference("gateway:e2e-1", "localhost/gateway:e2e-1"));
        assert!(!same_reference(
            "localhost/gateway:e2e-2",
            "localhost/gateway:e2e-1"
        ));
        assert!(is_missing_image("Error: localhost/x:1: image not known\n"));
        assert!(is_missing_image("Error: No such image: x:1"));
        assert!(!is_missing_image("Error: cannot connect to podman"));
    }
}

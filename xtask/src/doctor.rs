// Placeholder until the doctor branch lands; replaced wholesale by it.
use anyhow::Context;
use camino::Utf8Path;
use xshell::Shell;

use crate::flags::{self, Engine};

pub struct Needs {
    pub engine: Engine,
    pub go: bool,
    pub covdata: bool,
    pub kind: bool,
    pub kubectl: bool,
    pub ports: Vec<u16>,
    pub disk: bool,
    pub stale_cluster: Option<String>,
}

pub struct Report {
    pub stale_cluster_found: bool,
}

pub fn preflight(_sh: &Shell, _root: &Utf8Path, _needs: &Needs) -> anyhow::Result<Report> {
    Ok(Report {
        stale_cluster_found: false,
    })
}

pub fn resolve_engine(requested: Option<Engine>) -> anyhow::Result<Engine> {
    if let Some(e) = requested {
        return Ok(e);
    }
    crate::project::which("podman")
        .map(|_| Engine::Podman)
        .or_else(|| crate::project::which("docker").map(|_| Engine::Docker))
        .context("no container engine")
}

pub fn kind_host_ports(_root: &Utf8Path) -> anyhow::Result<Vec<u16>> {
    Ok(vec![18080, 18081])
}

pub fn kind_provider_env(engine: Engine) -> Option<(&'static str, &'static str)> {
    (engine == Engine::Podman).then_some(("KIND_EXPERIMENTAL_PROVIDER", "podman"))
}

pub fn run(_sh: &Shell, _flags: &flags::Doctor) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

//! `cargo xtask doctor`: every check the other tasks would run for this backend, shown as one
//! table, each problem with its fix; and one more, that a container starts.

use anyhow::Result;
use camino::Utf8Path;
use xshell::{cmd, Shell};

use crate::{
    check::{self, first_line, Check, Needs, GO_TOOL},
    cluster::{self, kind::KIND_INSTALL, ClusterBackend, Leftover, Target},
    cmd::step,
    engine::Engine,
    lock, manifests, project,
    suite::{self, Suite},
};

/// `cargo xtask doctor`'s flags: what a run of these suites on this target would need.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// None named: every suite.
    pub suites: Vec<String>,
    pub target: Target,
}

pub fn run(sh: &Shell, flags: &Options) -> Result<()> {
    let (root, target) = (project::root(), &flags.target);
    let mut notes = Vec::new();
    let suites = match flags.suites.is_empty() {
        true => suite::all(&root)?,
        false => flags.suites.iter().map(|name| suite::load(&root, name)).collect::<Result<_>>()?,
    };
    let env = |name: &str| std::env::var(name).ok();
    let suites: Vec<Suite> = suites
        .into_iter()
        .map(|suite| {
            suite.clone().with_host_ports(env).unwrap_or_else(|err| {
                let hint = "set each `<NAME>_HOST_PORT` named to a free port number, or unset it";
                notes.push(Check::fail("host ports", format!("{err:#}"), hint));
                suite
            })
        })
        .collect();
    let Some(first) = suites.first() else {
        anyhow::bail!(
            "there are no suites in {}: add one (test/e2e/<suite>/suite.toml)",
            suite::SUITES_DIR
        );
    };
    // The backend is chosen once; what an earlier run left is looked for under each suite's name.
    let name = |suite: &Suite| target.cluster_name.clone().unwrap_or(format!("{}-e2e", suite.name));
    let (settings, cluster) = cluster::pick(sh, target, &name(first), &root, first.clone())?;
    println!("cluster backend: {} ({})", settings.backend.name(), settings.why);
    if target.cluster == ClusterBackend::Auto && settings.backend == ClusterBackend::Podman {
        notes.push(match project::which("kind") {
            None => {
                let hint = format!("the podman backend will be used; for the Kind backend install kind >= v0.27: {KIND_INSTALL}");
                Check::warn("kind", "not found on PATH", hint)
            }
            Some(_) => {
                let why = settings.why.clone();
                let hint = "the podman backend will be used; for the Kind backend load or mirror a kindest/node image and pass it with --node-image IMAGE (or E2E_NODE_IMAGE)";
                Check::warn("node image", why, hint)
            }
        });
    }
    // What a coverage run of each suite would write (a plain run writes less).
    let mut writes = Vec::new();
    for suite in &suites {
        notes.push(manifests::check(&root, suite));
        let (settings, cluster) = cluster::pick(sh, target, &name(suite), &root, suite.clone())?;
        for place in settings.writes(true) {
            if !writes.contains(&place) {
                writes.push(place);
            }
        }
        let row = format!("earlier run ({})", suite.name);
        let remove = cluster.remove_command();
        let remove = format!(
            "remove it with `{remove}`, or let the next `cargo xtask e2e {}` replace it",
            suite.name
        );
        notes.extend(match cluster.leftover(sh) {
            Ok(Leftover::Nothing) => Some(Check::ok(&row, "nothing left behind")),
            // A run stops on it just the same.
            Ok(Leftover::Foreign { what, fix }) => Some(Check::fail(&row, what, fix)),
            // Doctor holds no lock: what a live run has is its own, not left.
            Ok(Leftover::Stale(what)) => Some(match lock::holder(&name(suite)) {
                Some(holder) => {
                    let detail =
                        format!("a live run is using the cluster name {} ({holder})", name(suite));
                    Check::warn(&row, detail, lock::RUN_BESIDE)
                }
                None => Check::warn(&row, what, remove),
            }),
            // A tool that cannot start is reported by its own row; there is nothing to look for then.
            Err(err) if err.downcast_ref().is_some_and(check::missing) => None,
            Err(err) => {
                let detail = format!("cannot look: {}", first_line(&err));
                Some(Check::warn(&row, detail, "run the command above by hand to see why"))
            }
        });
    }
    let preflight = cluster.preflight(sh);
    notes.extend(preflight.checks);
    // The host ports of every suite, each once (suites run one after another may share one),
    // where the backend publishes any.
    let mut ports: Vec<suite::Component> = Vec::new();
    if !preflight.needs.ports.is_empty() {
        for component in suites.iter().flat_map(|s| &s.components) {
            if !ports.iter().any(|p| p.host_port == component.host_port) {
                ports.push(component.clone());
            }
        }
    }
    writes.extend(preflight.needs.writes.iter().cloned());
    let needs = Needs { covdata: true, disk: true, ports, writes, ..preflight.needs };
    let mut checks = check::check(sh, &root, &needs, notes);
    // `info` answering does not mean a container can start (ulimits, the OCI runtime): start
    // one, once the engine and go (which builds it) are known to work.
    let engine = settings.engine;
    let ready = |name: &str| checks.iter().any(|c| c.name == name && c.is_ok());
    if ready(engine.program()) && ready("go") {
        checks.push(container_check(sh, &root, engine));
    }
    print!("{}", check::render(&checks));
    check::fail_on(&checks)
}

/// Builds a tiny image from `scratch` (a static Go program that exits at once; no pull) and
/// runs it.
fn container_check(sh: &Shell, root: &Utf8Path, engine: Engine) -> Check {
    let (image, program) = ("localhost/xtask-probe:1", engine.program());
    let dir = project::xtask_dir(root).join("probe");
    let result = (|| -> Result<()> {
        if crate::engine::inspect(sh, engine, &[image.to_string()])?[0].is_none() {
            let main = project::write_file(&dir, "main.go", "package main\n\nfunc main() {}\n")?;
            let containerfile = "FROM scratch\nCOPY probe /probe\nENTRYPOINT [\"/probe\"]\n";
            // Named explicitly: docker reads only a `Dockerfile` by default.
            let file = project::write_file(&dir, "Containerfile", containerfile)?;
            let probe = dir.join("probe");
            let env = [("CGO_ENABLED", "0"), ("GOOS", "linux"), ("GOWORK", "off")];
            step(cmd!(sh, "go build -trimpath -o {probe} {main}").envs(env)).run()?;
            step(cmd!(sh, "{program} build --file {file} --tag {image} {dir}")).run()?;
        }
        step(cmd!(sh, "{program} run --rm {image}")).timeout(GO_TOOL).run()?;
        Ok(())
    })();
    match result {
        Ok(()) => Check::ok("container", format!("{image} started and exited")),
        Err(err) => {
            let hint = crate::engine::known_fix(&format!("{err:#}"), root)
                .unwrap_or_else(|| check::engine_hint(engine, root));
            Check::fail("container", first_line(&err), hint)
        }
    }
}

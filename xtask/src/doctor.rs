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
    project::{self, Services},
};

pub fn run(sh: &Shell, target: &Target) -> Result<()> {
    let root = project::root();
    let mut notes = Vec::new();
    let services = Services::from_env().unwrap_or_else(|err| {
        let hint =
            "set GATEWAY_HOST_PORT / DATASTORAGE_HOST_PORT to free port numbers, or unset them";
        notes.push(Check::fail("host ports", format!("{err:#}"), hint));
        Services { datastorage: project::DATASTORAGE, gateway: project::GATEWAY }
    });
    let (settings, cluster) = cluster::pick(sh, target, &root, services)?;
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
    let remove = cluster.remove_command();
    let remove =
        format!("remove it with `{remove}`, or let the next `cargo xtask e2e-gateway` replace it");
    notes.extend(match cluster.leftover(sh) {
        Ok(Leftover::Nothing) => Some(Check::ok("earlier run", "nothing left behind")),
        Ok(Leftover::Stale(what)) => Some(Check::warn("earlier run", what, remove)),
        // A tool that cannot start is reported by its own row; there is nothing to look for then.
        Err(err) if err.downcast_ref().is_some_and(check::missing) => None,
        Err(err) => {
            let detail = format!("cannot look: {}", first_line(&err));
            Some(Check::warn("earlier run", detail, "run the command above by hand to see why"))
        }
    });
    let preflight = cluster.preflight(sh);
    notes.extend(preflight.checks);
    let needs = Needs { covdata: true, disk: true, ..preflight.needs };
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

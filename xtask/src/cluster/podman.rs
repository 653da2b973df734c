//! The podman backend: the same manifests run with `podman kube play`, without a Kubernetes
//! API. A fast inner loop, and what runs where Kind cannot.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;
use xshell::{cmd, Shell};

use super::{
    collect, Clear, Cluster, DeployError, Diagnose, Leftover, Preflight, Settings,
    STOP_GRACE_SECONDS,
};
use crate::{
    build_images::Image,
    check::Needs,
    cmd::step,
    engine::{self, Engine},
    manifests::{self, Placement},
    project,
    suite::Component,
};

pub struct Podman {
    settings: Settings,
    /// Ours alone, named after the cluster name: removing it never touches another run's pods.
    network: String,
}

/// `podman <kind> exists <name>`, for pods and networks.
fn exists(sh: &Shell, kind: &str, name: &str) -> Result<bool> {
    Ok(step(cmd!(sh, "podman {kind} exists {name}")).output()?.success())
}

impl Podman {
    pub fn new(settings: Settings) -> Podman {
        let network = format!("xtask-{}", settings.name);
        Podman { settings, network }
    }

    /// The Deployment is named `<cluster name>-<service>` (see `placement`), and podman
    /// names the pod of a one-replica Deployment `<name>-pod-0`.
    fn pod(&self, component: &Component) -> String {
        format!("{}-{}-pod-0", self.settings.name, component.name)
    }

    fn pods(&self) -> Vec<String> {
        self.settings.suite.components.iter().map(|c| self.pod(c)).collect()
    }

    /// Stops (gracefully: `kube down` alone gives no grace period) and removes every pod of
    /// ours, then checks none is left. Idempotent.
    fn remove_pods(&self, sh: &Shell) -> Result<()> {
        let dir = &self.settings.rendered;
        // `kube down` of a file resolves names like `kube play` does: run it from our directory.
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {dir}: make target/ writable"))?;
        let _dir = sh.push_dir(dir);
        let grace = STOP_GRACE_SECONDS.to_string();
        for component in &self.settings.suite.components {
            let pod = self.pod(component);
            if !exists(sh, "pod", &pod)? {
                continue;
            }
            let _ = step(cmd!(sh, "podman pod stop --time {grace} {pod}")).run();
            let manifest = dir.join(format!("{}.yaml", component.name));
            let downed =
                manifest.exists() && step(cmd!(sh, "podman kube down {manifest}")).run().is_ok();
            let remove = format!("remove it with `podman pod rm --force {pod}`");
            if !downed {
                step(cmd!(sh, "podman pod rm --force {pod}")).hint(&remove).run()?;
            }
            if exists(sh, "pod", &pod)? {
                bail!("the pod {pod} is still there after `podman kube down`: {remove}");
            }
        }
        let network = &self.network;
        if exists(sh, "network", network)? {
            step(cmd!(sh, "podman network rm {network}"))
                .hint(format!("remove it with `podman network rm {network}`"))
                .run()?;
        }
        Ok(())
    }
}

impl Podman {
    /// podman kube play has no Service DNS: a component reaches another through its host port
    /// (this machine is `host.containers.internal`); the pods are named after the run (pod
    /// names are machine-wide).
    fn placement(&self) -> Placement {
        let Settings { root, name, suite, .. } = &self.settings;
        Placement {
            coverdata_node_path: project::suite_coverdata(root, &suite.name).to_string(),
            name_prefix: format!("{name}-"),
            address: |c| format!("host.containers.internal:{}", c.host_port),
        }
    }
}

impl Cluster for Podman {
    fn preflight(&self, _sh: &Shell) -> Preflight {
        let ports = self.settings.suite.components.clone();
        let needs = Needs { engine: Some(Engine::Podman), ports, ..Needs::default() };
        Preflight { needs, checks: Vec::new(), archives: false }
    }

    fn leftover(&self, sh: &Shell) -> Result<Leftover> {
        let ours = self.pods().into_iter().map(|pod| ("pod", pod));
        let mut left = Vec::new();
        for (kind, name) in ours.chain([("network", self.network.clone())]) {
            if exists(sh, kind, &name)? {
                left.push(format!("the {kind} {name}"));
            }
        }
        Ok(match left.is_empty() {
            true => Leftover::Nothing,
            false => Leftover::Stale(format!("an earlier run left {}", left.join(", "))),
        })
    }

    /// Pods are not reused: they are started from this run's manifests, so reuse means the
    /// same names, ports and network, freshly made.
    fn clear_leftover(&mut self, sh: &Shell, how: Clear) -> Result<Clear> {
        match how {
            Clear::ReuseIfHealthy => println!("    removing what the earlier run left (the podman backend starts its pods afresh each run; --reuse-cluster saves nothing here)"),
            _ => println!("    removing what the earlier run left"),
        }
        self.remove_pods(sh)?;
        Ok(Clear::Remove)
    }

    fn create(&mut self, _sh: &Shell) -> Result<()> {
        println!("    podman backend: no cluster to create");
        Ok(())
    }

    fn load(&mut self, _sh: &Shell, _images: &[Image]) -> Result<Option<Duration>> {
        println!("    podman backend: the images are already in podman's store");
        Ok(None)
    }

    fn deploy(&mut self, sh: &Shell, images: &[Image]) -> Result<(), DeployError> {
        let settings = &self.settings;
        let vars = manifests::values(&settings.root, &settings.suite, &self.placement(), images);
        let files = manifests::write(
            &settings.rendered,
            &settings.root,
            &settings.suite,
            &vars,
            without_services,
        )
        .map_err(DeployError::before_start)?;
        let network = &self.network;
        let created = exists(sh, "network", network).and_then(|there| {
            if !there {
                step(cmd!(sh, "podman network create {network}"))
                    .hint(engine::answers(Engine::Podman))
                    .run()?;
            }
            Ok(())
        });
        created.map_err(DeployError::before_start)?;
        // podman kube play would treat a directory entry named like an image as a build
        // context: run it from a directory of our own.
        let _dir = sh.push_dir(&settings.rendered);
        // From a registry, kube play would pull what is not here with no time limit: pulled
        // first, with one (plain HTTP says so).
        if let Some(registry) = &settings.registry {
            let pulled = images.iter().try_for_each(|image| registry.pull(sh, &image.reference));
            pulled.map_err(DeployError::before_start)?;
        }
        let tls = settings.registry.as_ref().and_then(|r| r.tls_args());
        let mut started = false;
        for (Component { name, .. }, file) in files {
            let play = step(cmd!(sh, "podman kube play {tls...} --network {network} {file}"))
                .hint(format!("{name} could not be started: see its logs in the diagnostics"))
                .run();
            // Only services that started have counters to flush.
            play.map_err(|err| DeployError { error: err.into(), started })?;
            started = true;
        }
        Ok(())
    }

    /// Stops the pods of the services built with coverage: they exit normally and write their
    /// counters into the suite's coverdata/, which their pods mount.
    fn flush_coverage(&mut self, sh: &Shell) -> Result<()> {
        let covered = self.settings.suite.components.iter().filter(|c| c.covered());
        let pods: Vec<String> = covered.map(|c| self.pod(c)).collect();
        let grace = STOP_GRACE_SECONDS.to_string();
        // A service that never started has no pod: without --ignore, podman stops none at all.
        step(cmd!(sh, "podman pod stop --ignore --time {grace} {pods...}"))
            .hint("the pods could not be stopped, so their coverage counters may be missing")
            .run()?;
        Ok(())
    }

    /// The same on a failure and before stopping: each service's logs and its pod.
    fn diagnostics(&self, sh: &Shell, dir: &Utf8Path, _what: Diagnose) -> Result<bool> {
        let commands = self.settings.suite.components.iter().flat_map(|component| {
            let pod = self.pod(component);
            let container = format!("{pod}-{}", component.name);
            let logs = step(cmd!(sh, "podman logs --timestamps {container}"));
            let inspect = step(cmd!(sh, "podman pod inspect {pod}"));
            [(format!("{}.log", component.name), logs), (format!("{pod}-inspect.json"), inspect)]
        });
        collect(dir, commands)
    }

    fn teardown(&mut self, sh: &Shell, keep: bool) -> Result<()> {
        if keep {
            println!("    keeping the pods: remove them with: {}", self.remove_command());
            println!(
                "    if they were stopped to flush coverage, start them with: podman pod start {}",
                self.pods().join(" ")
            );
            return Ok(());
        }
        self.remove_pods(sh)?;
        println!("    removed the pods and the network {}", self.network);
        Ok(())
    }

    fn remove_command(&self) -> String {
        let (pods, network) = (self.pods().join(" "), &self.network);
        format!("podman pod rm --force {pods}; podman network rm {network}")
    }

    /// SIGTERM to its container: it exits normally (writing its counters), and `kube play`'s
    /// restart policy starts it again in the same pod. (`podman pod restart` races the pod's
    /// own exit policy and can leave it stopped.)
    fn restart_command(&self, component: &Component) -> Option<Vec<String>> {
        let container = format!("{}-{}", self.pod(component), component.name);
        Some(["podman", "kill", "--signal", "TERM", &container].map(str::to_string).to_vec())
    }
}

/// Drops the documents of a kind `podman kube play` does not run (Services).
fn without_services(manifest: String) -> String {
    let documents = manifest.split("\n---");
    let kept = documents.filter(|doc| !doc.lines().any(|l| l.trim() == "kind: Service"));
    kept.collect::<Vec<_>>().join("\n---")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_dropped() {
        let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gateway\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: gateway\n";
        let podman = without_services(manifest.to_string());
        assert!(podman.contains("kind: Deployment"));
        assert!(!podman.contains("kind: Service"));
    }
}

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
    check::{self, Needs},
    cmd::{step, CmdError},
    engine::{self, Engine},
    lock,
    manifests::{self, Document, Placement},
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

    /// Whether the pod or network (`kind`) `name` exists and is this run's name's: it carries
    /// our label. Something of our names can appear after the preflight looked.
    fn ours(&self, sh: &Shell, kind: &str, name: &str) -> Result<bool> {
        if !exists(sh, kind, name)? {
            return Ok(false);
        }
        if engine::run_label(sh, kind, name)?.as_deref() == Some(self.settings.name.as_str()) {
            return Ok(true);
        }
        let label = format!("{}={}", lock::LABEL, self.settings.name);
        println!(
            "    left the {kind} {name} alone: it is not this run's (it has no label {label})"
        );
        Ok(false)
    }

    /// Stops (gracefully: `kube down` alone gives no grace period) and removes every pod of
    /// ours, then checks none is left. Idempotent. What only has one of our names stays.
    fn remove_pods(&self, sh: &Shell) -> Result<()> {
        let dir = &self.settings.rendered;
        // `kube down` of a file resolves names like `kube play` does: run it from our directory.
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {dir}: make target/ writable"))?;
        let _dir = sh.push_dir(dir);
        let grace = STOP_GRACE_SECONDS.to_string();
        for component in &self.settings.suite.components {
            let pod = self.pod(component);
            if !self.ours(sh, "pod", &pod)? {
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
        if self.ours(sh, "network", network)? {
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

    /// Ours are labelled with our name: what is not stays, whoever made it.
    fn leftover(&self, sh: &Shell) -> Result<Leftover> {
        let ours = self.pods().into_iter().map(|pod| ("pod", pod));
        let (mut left, mut foreign) = (Vec::new(), Vec::new());
        for (kind, name) in ours.chain([("network", self.network.clone())]) {
            if !exists(sh, kind, &name)? {
                continue;
            }
            let label = engine::run_label(sh, kind, &name)?;
            if label.as_deref() == Some(self.settings.name.as_str()) {
                left.push(format!("the {kind} {name}"));
                continue;
            }
            let owner = lock::owner(label.as_deref());
            let remove = match (&owner, kind) {
                (lock::Owner::Live { .. }, _) => None,
                (_, "pod") => Some(format!("podman pod rm --force {name}")),
                _ => Some(format!("podman network rm {name}")),
            };
            foreign.push((format!("the {kind} {name} {owner}"), remove));
        }
        Ok(match (left.is_empty(), foreign.is_empty()) {
            (_, false) => Leftover::foreign(foreign),
            (true, true) => Leftover::Nothing,
            (false, true) => Leftover::Stale(format!("an earlier run left {}", left.join(", "))),
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
        match &self.settings.registry {
            Some(registry) => println!("    podman backend: the images come from {}: each is pulled into podman's store before `podman kube play`", registry.host),
            None => println!("    podman backend: the images are already in podman's store"),
        }
        Ok(None)
    }

    fn deploy(&mut self, sh: &Shell, images: &[Image]) -> Result<(), DeployError> {
        let settings = &self.settings;
        let vars = manifests::values(&settings.root, &settings.suite, &self.placement(), images);
        // Each pod says which run made it (podman gives a pod its template's labels).
        let adapt = |documents| with_run_label(without_services(documents), &settings.name);
        let files =
            manifests::write(&settings.rendered, &settings.root, &settings.suite, &vars, adapt)
                .map_err(DeployError::before_start)?;
        // The pods mount the suite's coverdata/ (hostPath, type Directory), which must exist
        // also when no service writes there (a run without --coverage prepares none).
        let coverdata = project::suite_coverdata(&settings.root, &settings.suite.name);
        std::fs::create_dir_all(&coverdata)
            .with_context(|| {
                format!("creating {coverdata}, which the pods mount: make the checkout writable")
            })
            .map_err(DeployError::before_start)?;
        let (network, label) = (&self.network, format!("{}={}", lock::LABEL, settings.name));
        // One of that name that is not ours makes `create` fail, saying so.
        let created = self.ours(sh, "network", network).and_then(|there| {
            if !there {
                step(cmd!(sh, "podman network create --label {label} {network}"))
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
        // first, with one (plain HTTP says so). Phase 2 pulled every image it verified: those
        // are played as verified, not pulled again by their tag.
        if let Some(registry) = &settings.registry {
            let pulled = (|| {
                let references: Vec<String> = images.iter().map(|i| i.reference.clone()).collect();
                let found = engine::inspect(sh, Engine::Podman, &references)?;
                let missing = references.iter().zip(found).filter(|(_, found)| found.is_none());
                missing.into_iter().try_for_each(|(r, _)| registry.pull(sh, Engine::Podman, r))
            })();
            pulled.map_err(DeployError::before_start)?;
        }
        let tls = settings.registry.as_ref().and_then(|r| r.tls_args());
        let mut started = false;
        for (component, file) in files {
            let name = &component.name;
            let play = step(cmd!(sh, "podman kube play {tls...} --network {network} {file}"))
                .hint(format!("{name} could not be started: see its logs in the diagnostics"))
                .run();
            // Only services that started have counters to flush.
            play.map_err(|err| DeployError { error: port_taken(sh, &component, err), started })?;
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

/// A `kube play` that failed because the host port was taken (by a pod that started since the
/// preflight, say: the run beside us) says so, whose pod holds it and what to do, instead of
/// podman's last line (`failed to start 2 containers`).
fn port_taken(sh: &Shell, component: &Component, err: CmdError) -> anyhow::Error {
    let port = component.host_port;
    let bind = format!(":{port}: bind: address already in use");
    if !(err.stderr.contains(&bind) || err.stdout.contains(&bind)) {
        return err.into();
    }
    let check = check::check_port(sh, component);
    if check.is_ok() {
        return err.into();
    }
    let (name, detail, fix) = (&component.name, &check.detail, &check.hint);
    let headline = format!("{name} could not start: its host port {port} is {detail}");
    anyhow::Error::new(err.with_hint(fix)).context(headline)
}

/// Drops the documents of a kind `podman kube play` does not run (Services), as read.
fn without_services(documents: Vec<Document>) -> Vec<Document> {
    documents.into_iter().filter(|d| d.kind.as_deref() != Some("Service")).collect()
}

/// Adds `lock::LABEL: "<name>"` to the labels of the pod each Deployment (its template) or Pod
/// makes. The manifests are block-style YAML as Kubernetes writes it; labels written inline, or
/// a Deployment without a template's metadata, are refused with the fix.
fn with_run_label(documents: Vec<Document>, name: &str) -> Result<Vec<Document>> {
    let label = format!("{}: \"{name}\"", lock::LABEL);
    let labelled = |d: Document| {
        Ok(Document { text: label_document(d.kind.as_deref(), &d.text, &label)?, ..d })
    };
    documents.into_iter().map(labelled).collect()
}

fn label_document(kind: Option<&str>, document: &str, label: &str) -> Result<String> {
    let mut lines: Vec<String> = document.split('\n').map(str::to_string).collect();
    let path: &[&str] = match kind {
        Some("Deployment") => &["spec", "template", "metadata"],
        Some("Pod") => &["metadata"],
        _ => return Ok(document.to_string()),
    };
    let mut metadata = None;
    for key in path {
        metadata = Some(child(&lines, metadata, key).with_context(|| {
            format!("the podman backend labels each pod it starts, but found no {} here: write the {} block-style, one key per line", path.join("."), kind.unwrap_or_default())
        })?);
    }
    let metadata = metadata.expect("the path has a key");
    let (at, pad) = match child(&lines, Some(metadata), "labels") {
        Some(labels) if lines[labels].trim_end().ends_with("labels:") => {
            (labels + 1, children_indent(&lines, labels))
        }
        Some(_) => bail!("the podman backend labels each pod it starts, but its labels are written inline: write them one `key: value` per line"),
        None => {
            let pad = children_indent(&lines, metadata);
            lines.insert(metadata + 1, format!("{}labels:", " ".repeat(pad)));
            (metadata + 2, pad + 2)
        }
    };
    lines.insert(at, format!("{}{label}", " ".repeat(pad)));
    Ok(lines.join("\n"))
}

/// The line of `key` among the children of the line `parent` (None: the top level).
fn child(lines: &[String], parent: Option<usize>, key: &str) -> Option<usize> {
    let (start, above) = parent.map_or((0, None), |p| (p + 1, Some(indent(&lines[p]))));
    let mut level = None;
    for (i, line) in lines.iter().enumerate().skip(start) {
        let text = line.trim_start();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if above.is_some_and(|above| indent(line) <= above) {
            break;
        }
        let at_level = *level.get_or_insert(indent(line)) == indent(line);
        if at_level && text.strip_prefix(key).is_some_and(|rest| rest.starts_with(':')) {
            return Some(i);
        }
    }
    None
}

/// The indentation of the children of the line `parent`: its first child's, else two more.
fn children_indent(lines: &[String], parent: usize) -> usize {
    let first = lines[parent + 1..].iter().find(|l| {
        let text = l.trim_start();
        !text.is_empty() && !text.starts_with('#')
    });
    let parent = indent(&lines[parent]);
    first.map(|l| indent(l)).filter(|&i| i > parent).unwrap_or(parent + 2)
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `manifest` read as documents and labelled for the run `e2e-1`, as text again.
    fn label(manifest: &str) -> Result<String> {
        let documents = manifests::documents("m.yaml".into(), manifest)?;
        Ok(with_run_label(documents, "e2e-1")?.into_iter().map(|d| d.text).collect())
    }

    #[test]
    fn services_are_dropped_by_their_kind_and_nothing_else() {
        let manifest = "# header\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gateway\n  annotations:\n    note: |\n      kind: Service\n--- # a Service, written another way\napiVersion: v1\nkind: \"Service\"\nmetadata: {name: gateway}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kind-service\n";
        let documents = manifests::documents("m.yaml".into(), manifest).unwrap();
        let kept: String = without_services(documents).into_iter().map(|d| d.text).collect();
        // The Deployment that mentions a Service in a value stays, as written; the quoted
        // Service goes.
        assert_eq!(
            kept,
            "# header\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gateway\n  annotations:\n    note: |\n      kind: Service\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kind-service\n"
        );
    }

    #[test]
    fn every_pod_a_manifest_makes_gets_the_run_label() {
        let deployment = "# a comment\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n  labels:\n    app: x\nspec:\n  selector:\n    matchLabels:\n      app: x\n  template:\n    # the pod\n    metadata:\n\n      labels:\n        app: x\n    spec:\n      containers:\n      - name: x\n";
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n    name: y\nspec:\n    containers: []\n";
        let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: z\n";
        let manifest = format!("{deployment}---\n{pod}---\n{claim}");
        let labelled: String = label(&manifest).unwrap();
        expect_test::expect![[r#"
            # a comment
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              name: x
              labels:
                app: x
            spec:
              selector:
                matchLabels:
                  app: x
              template:
                # the pod
                metadata:

                  labels:
                    e2e.xtask/cluster: "e2e-1"
                    app: x
                spec:
                  containers:
                  - name: x
            ---
            apiVersion: v1
            kind: Pod
            metadata:
                labels:
                  e2e.xtask/cluster: "e2e-1"
                name: y
            spec:
                containers: []
            ---
            apiVersion: v1
            kind: PersistentVolumeClaim
            metadata:
              name: z
        "#]]
        .assert_eq(&labelled);
    }

    #[test]
    fn labels_the_backend_cannot_extend_are_refused_with_the_fix() {
        let inline = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: y\n  labels: {app: y}\n";
        let err = label(inline).unwrap_err().to_string();
        assert!(err.ends_with("write them one `key: value` per line"), "{err}");
        let flow =
            "apiVersion: apps/v1\nkind: Deployment\nspec: {template: {metadata: {labels: {app: x}}}}\n";
        let err = label(flow).unwrap_err().to_string();
        assert!(
            err.contains("found no spec.template.metadata here: write the Deployment block-style"),
            "{err}"
        );
    }
}

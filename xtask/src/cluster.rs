//! Where the services run during an E2E run. Each backend owns every command it needs (create,
//! load, deploy, flush coverage, diagnose, tear down, find what an earlier run left), so the
//! pipeline in `e2e.rs` never asks which backend it has; the pipeline owns what it knows
//! of the run (what exists, what started). A new backend is one new file implementing `Cluster`,
//! and one line in `pick`. What backends share lives here: the diagnostics runner and the
//! kubectl steps of Kind and an existing cluster; the templates are `manifests.rs`.

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Cmd, Shell};

use crate::{
    build_images::Image,
    check::{Check, Needs, Writes},
    cmd::{step, Step},
    engine::{self, Engine},
    manifests::Manifests,
    project::{self, write_file},
    registry::Registry,
    suite::{Component, Suite},
    ui,
};

mod existing;
pub mod kind;
mod podman;

/// Grace period for the services to flush their coverage counters when stopped.
const STOP_GRACE_SECONDS: u32 = 30;
const ROLLOUT_TIMEOUT: &str = "180s";

/// Where a run's services go and how to reach them: what an e2e run runs on and doctor checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub cluster: ClusterBackend,
    /// `--cluster-name`; by default each suite's cluster is `<suite>-e2e`.
    pub cluster_name: Option<String>,
    pub engine: Option<Engine>,
    /// Kind's node image instead of its default (a local or mirrored one).
    pub node_image: Option<String>,
    pub registry: Option<Registry>,
    pub access: ClusterAccess,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterBackend {
    #[default]
    Auto,
    Kind,
    Podman,
    /// A cluster that exists already (`--kubeconfig`, `--context`): a namespace per run.
    Existing,
}

impl ClusterBackend {
    /// Each backend by its name, as `--cluster` takes it.
    pub const NAMES: &[(&str, ClusterBackend)] = &[
        ("auto", ClusterBackend::Auto),
        ("kind", ClusterBackend::Kind),
        ("podman", ClusterBackend::Podman),
        ("existing", ClusterBackend::Existing),
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClusterBackend::Auto => "auto",
            ClusterBackend::Kind => "kind",
            ClusterBackend::Podman => "podman",
            ClusterBackend::Existing => "existing",
        }
    }
}

/// How to reach an existing cluster: `--kubeconfig` and `--context`, else kubectl's defaults
/// (its current context, which the xtask never changes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterAccess {
    pub kubeconfig: Option<Utf8PathBuf>,
    pub context: Option<String>,
}

/// What every backend is told about the run, and what the pipeline knows of it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `kind`, `podman`, `existing`: `auto` resolved by `pick`.
    pub backend: ClusterBackend,
    pub root: Utf8PathBuf,
    /// `--cluster-name`: names the cluster (and everything else a backend creates).
    pub name: String,
    pub engine: Engine,
    /// What it deploys, with the ports the tests reach each on: host ports, or a shared
    /// cluster's forwards.
    pub suite: Suite,
    /// `--node-image`: Kind boots this instead of its default node image.
    pub node_image: Option<String>,
    /// `--registry`: the images come from there (and the manifests name it).
    pub registry: Option<Registry>,
    /// `--kubeconfig`, `--context` of an existing cluster.
    pub access: ClusterAccess,
    /// Why this backend: `--cluster kind`, or what `auto` found.
    pub why: String,
    /// Rendered manifests and configs: a directory of this cluster name's own (see
    /// `podman::deploy`), so runs side by side never write each other's.
    rendered: Utf8PathBuf,
}

impl Settings {
    /// What a run on these settings writes in the checkout, beside what its backend adds in
    /// its preflight: its summary and logs, the build's caches, binaries and contexts, go's
    /// temporary files, the rendered manifests; with coverage, the suite's coverdata/ and the
    /// report.
    pub fn writes(&self, coverage: bool) -> Vec<Writes> {
        let xtask = project::xtask_dir(&self.root);
        let mut dirs = vec![xtask.clone()];
        dirs.extend(["logs", "cache", "bin", "context", "tmp"].map(|dir| xtask.join(dir)));
        dirs.push(self.rendered.clone());
        if coverage {
            dirs.push(project::suite_coverdata(&self.root, &self.suite.name));
            dirs.push(self.root.join("target/coverage"));
        }
        dirs.into_iter().map(Writes::Dir).collect()
    }
}

/// What a backend asks of the run before anything starts.
pub struct Preflight {
    /// What it needs of this machine: the engine, kubectl, which host ports must be free.
    pub needs: Needs,
    /// Its own rows of the checks table (kind's version and node image, a cluster's API).
    pub checks: Vec<Check>,
    /// The build saves each image to an archive this backend loads.
    pub archives: bool,
}

/// What has the names this run gives what it creates. Only what carries our label (kind's own
/// for Kind's nodes, `lock::LABEL` for podman's pods and network) with this cluster name is an
/// earlier run's; the name's lock is ours by the time a run asks, so its owner is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    Nothing,
    /// An earlier run's cluster, pods, network, said in a few words: removed (or reused).
    Stale(String),
    /// Something else of those names (someone's own, another run's): never touched; the run
    /// stops before it creates anything. What it is and whose, and how to get past it.
    Foreign {
        what: String,
        fix: String,
    },
}

impl Leftover {
    /// `found`: each thing of our names that is not an earlier run's, said as `the pod X
    /// <whose>`, with the command that removes it, or None while a live run owns it.
    fn foreign(found: Vec<(String, Option<String>)>) -> Leftover {
        let what = found.iter().map(|(what, _)| what.as_str()).collect::<Vec<_>>().join("; ");
        let what = format!("{what}: a run removes only what an earlier run of its name left");
        let removals: Vec<&str> = found.iter().filter_map(|(_, rm)| rm.as_deref()).collect();
        let another = "run under another `--cluster-name`";
        let fix = match removals.len() {
            0 => format!("{another} (a live run's objects are never removed)"),
            1 => format!("remove it yourself if nobody needs it (`{}`), or {another}", removals[0]),
            _ => format!(
                "remove them yourself if nobody needs them (`{}`), or {another}",
                removals.join("; ")
            ),
        };
        Leftover::Foreign { what, fix }
    }
}

/// What the run does with a leftover, and what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clear {
    /// Remove it (its services stop in order, writing their last counters).
    Remove,
    /// `--reuse-cluster`: keep it if it is healthy, else remove it.
    ReuseIfHealthy,
    /// It was kept, and runs.
    Reused,
}

/// What diagnostics to collect: after a failure, everything; on a coverage run, each service's
/// logs and descriptions before they are stopped, whatever the coverage phase finds then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diagnose {
    Failure,
    BeforeStopping,
}

/// A deploy that failed, and whether any service had started by then (only those have
/// counters to flush).
pub struct DeployError {
    pub error: anyhow::Error,
    pub started: bool,
}

impl DeployError {
    fn before_start(error: impl Into<anyhow::Error>) -> DeployError {
        DeployError { error: error.into(), started: false }
    }
    fn after_start(error: impl Into<anyhow::Error>) -> DeployError {
        DeployError { error: error.into(), started: true }
    }
}

pub trait Cluster {
    /// What the run needs of this machine for this backend, and the backend's own checks.
    fn preflight(&self, sh: &Shell) -> Preflight;

    /// What an earlier run with our name left behind, or what else has our names.
    fn leftover(&self, sh: &Shell) -> Result<Leftover>;

    /// Removes the leftover (`Clear::Remove`), or keeps it when healthy
    /// (`Clear::ReuseIfHealthy`); says which it did (`Clear::Remove` or `Clear::Reused`).
    fn clear_leftover(&mut self, sh: &Shell, how: Clear) -> Result<Clear>;

    /// Creates the cluster (unless one is kept for reuse).
    fn create(&mut self, sh: &Shell) -> Result<()>;

    /// Makes the images available to the cluster; returns the idle gap between the cluster
    /// becoming ready and the first load, where there is one.
    fn load(&mut self, sh: &Shell, images: &[Image]) -> Result<Option<Duration>>;

    /// Starts the services with these images, in dependency order, and returns when they are
    /// rolled out.
    fn deploy(&mut self, sh: &Shell, images: &[Image]) -> Result<(), DeployError>;

    /// The services' coverage counters end up in coverdata/<service>/: stopped gracefully (the
    /// counters are written on a normal exit), or fetched from them where no disk is shared.
    fn flush_coverage(&mut self, sh: &Shell) -> Result<()>;

    /// Writes what explains a failure (or, before stopping, the services' logs) into `dir`; a
    /// command that fails here is noted in its file, not fatal. Returns false when there is
    /// nothing to collect (a cluster that never became ready).
    fn diagnostics(&self, sh: &Shell, dir: &Utf8Path, what: Diagnose) -> Result<bool>;

    /// Removes what this run created, or with `keep` says how to use and remove it later.
    fn teardown(&mut self, sh: &Shell, keep: bool) -> Result<()>;

    /// The command that removes everything this backend may have created.
    fn remove_command(&self) -> String;

    /// A command that makes `component` stop gracefully and start again (its data must
    /// survive, its counters be written), for tests that check just that; None where the
    /// backend cannot (a shared cluster's port-forward would not survive it).
    fn restart_command(&self, component: &Component) -> Option<Vec<String>>;
}

/// The backend for `--cluster`, the engine it runs with, and the run's settings (`name`: the
/// cluster's): `auto` means kind when `kind` is on PATH and can boot its node, else podman;
/// `Settings::why` says which and why.
pub fn pick(
    sh: &Shell,
    target: &Target,
    name: &str,
    root: &Utf8Path,
    mut suite: Suite,
) -> Result<(Settings, Box<dyn Cluster>)> {
    let engine = engine::resolve(target.engine);
    let (backend, why) = match target.cluster {
        ClusterBackend::Auto => match project::which("kind") {
            None => (ClusterBackend::Podman, "auto: kind is not on PATH".to_string()),
            // A Kind that cannot boot its node would fail only after the build.
            Some(path) => match kind::usable_node_image(sh, engine, target.node_image.as_deref()) {
                Ok(image) => {
                    let why = format!("auto: kind found at {path}, node image {image}");
                    (ClusterBackend::Kind, why)
                }
                Err(why) => {
                    (ClusterBackend::Podman, format!("auto: kind found at {path}, but {why}"))
                }
            },
        },
        other => (other, format!("--cluster {}", other.name())),
    };
    let engine = match backend {
        // The pods run the images of podman's own store, whatever builds them.
        ClusterBackend::Podman if target.engine == Some(Engine::Docker) => bail!(
            "the podman backend runs images from podman's store, so it builds with podman: drop --engine docker, or use --cluster kind to run docker-built images on Kind"
        ),
        ClusterBackend::Podman => Engine::Podman,
        _ => engine,
    };
    if backend == ClusterBackend::Existing {
        // The tests reach the components through forwards on free local ports.
        for component in &mut suite.components {
            let free = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
            component.host_port = free.map_or(component.host_port, |a| a.port());
        }
    }
    let settings = Settings {
        backend,
        root: root.to_path_buf(),
        name: name.to_string(),
        engine,
        suite,
        node_image: target.node_image.clone(),
        registry: target.registry.clone(),
        access: target.access.clone(),
        why,
        rendered: project::xtask_dir(root).join("rendered").join(name),
    };
    let cluster: Box<dyn Cluster> = match backend {
        ClusterBackend::Podman => Box::new(podman::Podman::new(settings.clone())),
        ClusterBackend::Existing => Box::new(existing::Existing::new(settings.clone())),
        _ => Box::new(kind::Kind::new(settings.clone())),
    };
    Ok((settings, cluster))
}

/// Runs each diagnostics command and saves what it printed (or why it could not run) to its
/// file in `dir`.
fn collect(dir: &Utf8Path, commands: impl IntoIterator<Item = (String, Step)>) -> Result<bool> {
    for (file, command) in commands {
        let text = match command.output() {
            Ok(out) => format!("{}{}", out.stdout, out.stderr),
            Err(err) => format!("could not collect: {err}\n"),
        };
        write_file(dir, &file, &text)?;
    }
    Ok(true)
}

/// kubectl as Kind and an existing cluster run it: on the given kubeconfig and context (never
/// changing either), its discovery cache under target/, and the services' steps in the run's
/// namespace where it has one.
struct Kubectl {
    /// `--kubeconfig`, `--context`.
    access: Vec<String>,
    cache: Utf8PathBuf,
    namespace: Option<String>,
}

impl Kubectl {
    fn new(root: &Utf8Path, access: &ClusterAccess, namespace: Option<String>) -> Kubectl {
        let kubeconfig =
            access.kubeconfig.iter().flat_map(|k| ["--kubeconfig".into(), k.to_string()]);
        let context = access.context.iter().flat_map(|c| ["--context".into(), c.clone()]);
        let access = kubeconfig.chain(context).collect();
        Kubectl { access, cache: project::xtask_dir(root).join("kube-cache"), namespace }
    }

    fn cmd<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        let (access, cache) = (&self.access, &self.cache);
        cmd!(sh, "kubectl {access...} --cache-dir {cache}")
    }

    /// kubectl where the services are.
    fn services<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        self.cmd(sh).args(self.namespace.iter().flat_map(|n| ["--namespace", n]))
    }

    /// Applies the manifests, then waits for each rollout.
    fn deploy(&self, sh: &Shell, files: &Manifests) -> Result<(), DeployError> {
        // On a shared cluster, our rights are limited and the images come from the registry.
        let (check, more) = if self.namespace.is_none() {
            ("the cluster (`cargo xtask doctor`)", "")
        } else {
            ("your permissions in the namespace", " (can the cluster pull from the registry?)")
        };
        // One apply for all: kubectl discovers the API of a new cluster once, not per file.
        let started = Instant::now();
        let apply =
            self.services(sh).arg("apply").args(files.iter().flat_map(|(_, f)| ["-f", f.as_str()]));
        let hint = format!("check the manifests and {check}");
        step(apply).hint(hint).run().map_err(DeployError::before_start)?;
        let names: Vec<&str> = files.iter().map(|(c, _)| c.name.as_str()).collect();
        println!("    applied {} ({})", names.join(", "), ui::seconds(started.elapsed()));
        for (component, _) in files {
            let name = &component.name;
            let started = Instant::now();
            let deployment = format!("deployment/{name}");
            let rollout = ["rollout", "status", &deployment, "--timeout", ROLLOUT_TIMEOUT];
            let fix = format!("{name} did not roll out within {ROLLOUT_TIMEOUT}: see the pod events and logs in the diagnostics{more}");
            step(self.services(sh).args(rollout))
                .hint(fix)
                .run()
                .map_err(DeployError::after_start)?;
            println!("    {name} rolled out ({})", ui::seconds(started.elapsed()));
        }
        Ok(())
    }

    /// What kubectl tells about the services: each service's logs and the pods' descriptions;
    /// after a failure also the pods and events, of all namespaces where the cluster is ours
    /// alone.
    fn diagnostics(&self, sh: &Shell, suite: &Suite, what: Diagnose) -> Vec<(String, Step)> {
        let scope = if self.namespace.is_none() { &["--all-namespaces"][..] } else { &[] };
        let get = |what: &[&str]| step(self.services(sh).args(what).args(scope));
        let mut commands = vec![(
            "describe-pods.txt".to_string(),
            step(self.services(sh).args(["describe", "pods"])),
        )];
        if what == Diagnose::Failure {
            commands.push(("pods.txt".into(), get(&["get", "pods", "--output", "wide"])));
            commands.push((
                "events.txt".into(),
                get(&["get", "events", "--sort-by", ".lastTimestamp"]),
            ));
        }
        for component in &suite.components {
            let deployment = format!("deployment/{}", component.name);
            let logs = ["logs", &deployment, "--all-containers", "--timestamps"];
            commands.push((format!("{}.log", component.name), step(self.services(sh).args(logs))));
        }
        commands
    }
}

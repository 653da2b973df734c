//! The Kind backend: a throwaway cluster in the container engine, created right after the
//! images are built and loaded at once, so the node never sits idle (the old flow's
//! "container state improper").

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use super::{
    collect, Clear, Cluster, ClusterAccess, DeployError, Diagnose, Kubectl, Leftover, Preflight,
    Settings, STOP_GRACE_SECONDS,
};
use crate::{
    build_images::Image,
    check::{self, Check, Needs, Writes},
    cmd::{step, Failure},
    engine,
    engine::Engine,
    manifests::{self, Placement},
    project::{self, write_file},
    suite::Component,
    ui,
};

/// Kind cluster creation is retried at most this many times, and only on these errors.
const CREATE_RETRIES: usize = 2;
const TRANSIENT_CREATE_ERRORS: &[&str] =
    &["OCI runtime", "container state improper", "could not find a log line that matches"];
/// The label kind gives its node containers, with the cluster's name: what `kind get clusters`
/// and `kind delete cluster` go by.
const KIND_LABEL: &str = "io.x-k8s.kind.cluster";
/// The suite's Kind config, rendered.
const CONFIG: &str = "kind-config.yaml";
/// The oldest kind whose `kind load` and node images the backend works with.
const MIN_KIND: &str = "v0.27";
pub const KIND_INSTALL: &str = "`go install sigs.k8s.io/kind@v0.33.0` (lands in $(go env GOPATH)/bin), or https://kind.sigs.k8s.io/docs/user/quick-start/#installation";
/// How long the node image's registry has to answer for its manifest.
const NODE_IMAGE_PROBE: Duration = Duration::from_secs(10);
/// A patch of one Deployment on a cluster that has just answered kind's readiness checks.
const PATCH_LIMIT: Duration = Duration::from_secs(60);

pub struct Kind {
    settings: Settings,
    /// Ours, under target/: no kind or kubectl call (or printed hint) edits ~/.kube/config.
    kubeconfig: Utf8PathBuf,
    kubectl: Kubectl,
    /// When the cluster became ready: nothing to diagnose before.
    ready_at: Option<Instant>,
    /// A healthy cluster of an earlier run is used instead of a new one (`--reuse-cluster`).
    reused: bool,
}

/// The state of a node container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeState {
    Running,
    /// In another state (`exited`, `paused`, ...), or `missing`.
    Down(String),
}

/// A clone of `sh` whose every command carries the Kind provider variable: every kind call
/// (create, get, load, export, delete) goes through it, since Kind drives podman only when
/// told to.
fn kind_shell(sh: &Shell, engine: Engine) -> Shell {
    let kind_sh = sh.clone();
    if let Some((key, value)) = provider(engine) {
        kind_sh.set_var(key, value);
    }
    kind_sh
}

fn provider(engine: Engine) -> Option<(&'static str, &'static str)> {
    (engine == Engine::Podman).then_some(("KIND_EXPERIMENTAL_PROVIDER", "podman"))
}

impl Kind {
    pub fn new(settings: Settings) -> Kind {
        let kubeconfig =
            project::xtask_dir(&settings.root).join(format!("kubeconfig-{}", settings.name));
        let access = ClusterAccess { kubeconfig: Some(kubeconfig.clone()), context: None };
        let kubectl = Kubectl::new(&settings.root, &access, None);
        Kind { settings, kubeconfig, kubectl, ready_at: None, reused: false }
    }

    /// The one definition of how our cluster is deleted: run, printed and suggested alike.
    fn delete_args(&self) -> [&str; 6] {
        let (name, kubeconfig) = (self.settings.name.as_str(), self.kubeconfig.as_str());
        ["delete", "cluster", "--name", name, "--kubeconfig", kubeconfig]
    }

    /// Idempotent: kind succeeds when there is no such cluster.
    fn delete_cluster(&mut self, sh: &Shell) -> Result<()> {
        let kind_sh = kind_shell(sh, self.settings.engine);
        step(cmd!(kind_sh, "kind").args(self.delete_args()))
            .hint(format!("delete it by hand and check `{} ps -a`", self.settings.engine.program()))
            .run()?;
        self.ready_at = None;
        Ok(())
    }

    /// Points every node's containerd at the registry (`hosts.toml`, as kind documents for a
    /// local registry). A registry on this machine's loopback is this machine for the nodes
    /// too: podman gives them its address as `host.containers.internal`.
    fn use_registry(&self, sh: &Shell) -> Result<()> {
        let Some(registry) = &self.settings.registry else {
            return Ok(());
        };
        // With docker, `checks` refused a loopback registry before anything ran.
        let reachable = match registry.host.split_once(':') {
            _ if !registry.is_loopback() => registry.host.clone(),
            Some((_, port)) => format!("host.containers.internal:{port}"),
            None => "host.containers.internal".to_string(),
        };
        let scheme = if registry.insecure { "http" } else { "https" };
        let hosts = format!(
            "server = \"{scheme}://{}\"\n\n[host.\"{scheme}://{reachable}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            registry.host
        );
        let file = write_file(&self.settings.rendered, "hosts.toml", &hosts)?;
        let dir = format!("/etc/containerd/certs.d/{}", registry.host);
        let program = self.settings.engine.program();
        for (name, _) in self.nodes(sh)? {
            let target = format!("{name}:{dir}/hosts.toml");
            step(cmd!(sh, "{program} exec {name} mkdir -p {dir}")).run()?;
            let copy = cmd!(sh, "{program} cp {file} {target}");
            step(copy).hint("check that the node container runs").run()?;
        }
        println!("    the nodes pull from {} (through {reachable})", registry.host);
        Ok(())
    }

    /// Every node container of the cluster with its state.
    fn nodes(&self, sh: &Shell) -> Result<Vec<(String, NodeState)>> {
        let (kind_sh, name) = (kind_shell(sh, self.settings.engine), &self.settings.name);
        let get = cmd!(kind_sh, "kind get nodes --name {name}");
        let program = self.settings.engine.program();
        let listed = step(get).hint(engine::answers(self.settings.engine)).read()?;
        let format = "{{.State.Status}}";
        let mut nodes = Vec::new();
        for node in listed.lines().map(str::trim).filter(|n| !n.is_empty()) {
            let output = step(cmd!(sh, "{program} inspect --format {format} {node}")).output()?;
            let state = match output.stdout.trim() {
                "running" if output.success() => NodeState::Running,
                other if output.success() && !other.is_empty() => NodeState::Down(other.into()),
                _ => NodeState::Down("missing".into()),
            };
            nodes.push((node.to_string(), state));
        }
        Ok(nodes)
    }

    /// The image references the node's containerd holds for Kubernetes.
    fn node_images(&self, sh: &Shell, node: &str) -> Result<Vec<String>> {
        let program = self.settings.engine.program();
        let list = cmd!(sh, "{program} exec {node} ctr --namespace k8s.io images list --quiet");
        let fix = format!("check that the node runs (`{program} ps -a`) and its containerd answers (`{program} exec {node} crictl info`)");
        let listed = step(list).hint(fix).read()?;
        Ok(listed.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
    }

    /// The node holds `reference` after a load. Some kind, podman and containerd versions import
    /// an archive under a made-up name (`import-<date>@sha256:...`, kind issue 4184), and pods
    /// then cannot find their image: a single new name of that shape is tagged with ours;
    /// anything else fails naming the image and the node. `known` is what the node held before
    /// this load, and is updated.
    fn verify_loaded(
        &self,
        sh: &Shell,
        node: &str,
        reference: &str,
        known: &mut Vec<String>,
    ) -> Result<()> {
        let now = self.node_images(sh, node)?;
        let imported: Vec<&String> =
            now.iter().filter(|r| r.starts_with("import-") && !known.contains(r)).collect();
        let wanted = containerd_name(reference);
        let found = now.contains(&wanted);
        *known = now.clone();
        match imported[..] {
            _ if found => Ok(()),
            [made_up] => {
                let program = self.settings.engine.program();
                let tag = cmd!(
                    sh,
                    "{program} exec {node} ctr --namespace k8s.io images tag {made_up} {wanted}"
                );
                step(tag).hint(format!("tag it by hand in the node, or load it again with `kind load image-archive` and check `{program} exec {node} ctr --namespace k8s.io images list`")).run()?;
                println!(
                    "    {node} imported {reference} as {made_up} (kind issue 4184): tagged it"
                );
                known.push(wanted);
                Ok(())
            }
            _ => {
                let seen = if imported.is_empty() {
                    "no new image".to_string()
                } else {
                    imported.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                };
                bail!("{reference} is not in the node {node} after `kind load image-archive` (it holds {seen} from this load): pods could not start; check the archive with `tar -tf` and the node's images with `ctr --namespace k8s.io images list`, or use --registry")
            }
        }
    }

    /// A new cluster's CoreDNS answers long after it could, and a component that finds another
    /// by name waits as long. Two causes, measured on new clusters: it probes its readiness every
    /// 10 s; and it reaches the API server through the `kubernetes` Service, which works only
    /// once kube-proxy runs (up to 11 s after the cluster, on our machines), after which its
    /// retries had backed off for up to 6 s more. So it is set to probe every second and to reach
    /// the API server at the address the Service leads to. Set at the deploy, not while the
    /// images load: restarting CoreDNS then slowed the loads down.
    fn speed_up_dns(&self, sh: &Shell) -> Result<()> {
        let started = Instant::now();
        let kubeconfig = &self.kubeconfig;
        let look = format!("kubectl --kubeconfig {kubeconfig}");
        let path = "jsonpath={.subsets[0].addresses[0].ip} {.subsets[0].ports[0].port}";
        let endpoints = ["--namespace", "default", "get", "endpoints", "kubernetes", "--output"];
        let hint = format!(
            "the new cluster's API stopped answering: see `{look} get endpoints kubernetes`"
        );
        let get = step(self.kubectl.cmd(sh).args(endpoints).arg(path)).hint(hint);
        let context = "finding the API server's address for CoreDNS";
        let address = get.timeout(PATCH_LIMIT).read().context(context)?;
        let parsed = address.split_once(' ').and_then(|(host, port)| {
            Some((host.parse::<IpAddr>().ok()?, port.parse::<u16>().ok()?))
        });
        let Some((host, port)) = parsed else {
            let read = if address.is_empty() { "nothing".into() } else { format!("`{address}`") };
            bail!("{context}: the `kubernetes` endpoints read {read}, not an IP address and a port: the new cluster's API server has not published its address; look with `{look} get endpoints kubernetes`, then rerun (a new cluster is made)");
        };
        let patch = format!(
            r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/readinessProbe/periodSeconds","value":1}},{{"op":"add","path":"/spec/template/spec/containers/0/env","value":[{{"name":"KUBERNETES_SERVICE_HOST","value":"{host}"}},{{"name":"KUBERNETES_SERVICE_PORT","value":"{port}"}}]}}]"#
        );
        let args = ["--namespace", "kube-system", "patch", "deployment", "coredns"];
        let command = self.kubectl.cmd(sh).args(args).args(["--type", "json", "--patch", &patch]);
        let hint = format!("the new cluster has no CoreDNS Deployment to patch, or its API stopped answering: see `{look} --namespace kube-system get deployment coredns`");
        step(command).hint(hint).timeout(PATCH_LIMIT).run().context(
            "setting CoreDNS to probe every second and to reach the API server directly",
        )?;
        println!(
            "    CoreDNS probed every second, reaching the API server at {} ({})",
            SocketAddr::new(host, port),
            ui::seconds(started.elapsed())
        );
        Ok(())
    }

    /// Why a cluster of an earlier run cannot be reused, if it cannot: a node that is not
    /// running, or an API that does not answer.
    fn unhealthy(&self, sh: &Shell) -> Result<Option<String>> {
        if let Some(trouble) = not_running(&self.nodes(sh)?) {
            return Ok(Some(trouble));
        }
        let (kind_sh, name) = (kind_shell(sh, self.settings.engine), &self.settings.name);
        let kubeconfig = &self.kubeconfig;
        let export =
            cmd!(kind_sh, "kind export kubeconfig --name {name} --kubeconfig {kubeconfig}");
        let answers = step(export).output()?.success()
            && step(self.kubectl.cmd(sh).args(["get", "--raw", "/readyz"])).output()?.success();
        Ok((!answers).then(|| "its API does not answer".to_string()))
    }
}

/// Whether kind would name a node of the cluster `cluster` so: `<cluster>-control-plane`,
/// `-control-plane2`, `-worker`, `-worker3`, `-external-load-balancer`.
fn is_node_name(cluster: &str, container: &str) -> bool {
    let Some(role) = container.strip_prefix(cluster).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let role = role.trim_end_matches(|c: char| c.is_ascii_digit());
    ["control-plane", "worker", "external-load-balancer"].contains(&role)
}

/// The name containerd gives a reference: Docker Hub's are written out in full
/// (`postgres:16` is `docker.io/library/postgres:16`).
fn containerd_name(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or_default();
    let has_host = reference.contains('/') && (first.contains(['.', ':']) || first == "localhost");
    match (has_host, reference.contains('/')) {
        (true, _) => reference.to_string(),
        (false, true) => format!("docker.io/{reference}"),
        (false, false) => format!("docker.io/library/{reference}"),
    }
}

/// The image in kind's `failed to pull image "..."`, if that is why creation failed.
fn unpullable_image(stderr: &str) -> Option<&str> {
    let rest = &stderr[stderr.find("failed to pull image \"")? + 22..];
    rest.split('"').next()
}

/// kind's default node image per kind minor release (`pkg/apis/config/defaults/image.go`).
const DEFAULT_NODE_IMAGES: [(u32, &str); 7] = [
    (27, "kindest/node:v1.32.2@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f"),
    (28, "kindest/node:v1.33.1@sha256:8d866994839cd096b3590681c55a6fa4a071fdaf33be7b9660e5697d2ed13002"),
    (29, "kindest/node:v1.33.1@sha256:050072256b9a903bd914c0b2866828150cb229cea0efe5892e2b644d5dd3b34f"),
    (30, "kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a"),
    (31, "kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f"),
    (32, "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"),
    (33, "kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5"),
];

/// The node image a cluster boots: `--node-image`, else kind's default for its release; None
/// when that release is not one we know.
fn node_image(kind_minor: u32, chosen: Option<&str>) -> Option<String> {
    let default = DEFAULT_NODE_IMAGES.iter().find(|(kind, _)| *kind == kind_minor);
    chosen.or(default.map(|(_, image)| *image)).map(str::to_string)
}

/// The Kubernetes minor version of a node image, from its tag (`kindest/node:v1.35.0`).
fn node_minor(image: &str) -> Option<u32> {
    let tag = image.split('@').next()?.rsplit_once(':')?.1;
    tag.strip_prefix("v1.")?.split('.').next()?.parse().ok()
}

/// Whether kind can boot `image`: in the engine's store already (`Ok(true)`), or its registry
/// gives its manifest within a few seconds (`Ok(false)`: kind pulls it at create). `Err` says
/// why neither.
fn node_image_ready(sh: &Shell, engine: Engine, image: &str) -> Result<bool, String> {
    let present = crate::engine::inspect(sh, engine, &[image.to_string()]);
    if present.map_err(|err| format!("{err:#}"))?[0].is_some() {
        return Ok(true);
    }
    let program = engine.program();
    let manifest = step(cmd!(sh, "{program} manifest inspect {image}"));
    match manifest.timeout(NODE_IMAGE_PROBE).run() {
        Ok(_) => Ok(false),
        Err(err) if matches!(err.failure, Failure::TimedOut(_)) => {
            Err(format!("its registry did not answer within {}s", NODE_IMAGE_PROBE.as_secs()))
        }
        Err(err) => Err(err.cause().unwrap_or("its registry refused").to_string()),
    }
}

/// The node image a cluster will boot: `chosen` (`--node-image`), else kind's default for the
/// kind on PATH; Err says why it is not known.
fn boot_image(sh: &Shell, engine: Engine, chosen: Option<&str>) -> Result<String, String> {
    if let Some(image) = chosen {
        return Ok(image.to_string());
    }
    let kind_sh = kind_shell(sh, engine);
    let out = step(cmd!(kind_sh, "kind version")).timeout(check::SHORT).read();
    let out =
        out.map_err(|err| format!("cannot tell which node image kind boots: {}", err.one_line()))?;
    let version = check::version(&out, "v").unwrap_or_default();
    let minor = check::numbers(&version).map(|(_, minor, _)| minor);
    minor
        .and_then(|minor| node_image(minor, None))
        .ok_or_else(|| format!("kind {version}'s default node image is not one the xtask knows"))
}

/// The node image kind would boot, if it can boot it; Err says why not (for `auto`).
pub fn usable_node_image(
    sh: &Shell,
    engine: Engine,
    chosen: Option<&str>,
) -> Result<String, String> {
    let image = boot_image(sh, engine, chosen)?;
    let program = engine.program();
    match node_image_ready(sh, engine, &image) {
        Ok(_) => Ok(image),
        Err(why) => {
            Err(format!("{image} is not in {program}'s store and cannot be pulled ({why})"))
        }
    }
}

/// The row for the node image of `Kind::preflight`; `auto` uses the same probe.
fn node_image_check(sh: &Shell, engine: Engine, image: &str) -> Check {
    let program = engine.program();
    match node_image_ready(sh, engine, image) {
        Ok(true) => Check::ok("node image", format!("{image}, in {program}'s store")),
        Ok(false) => Check::ok(
            "node image",
            format!("{image}: its registry answers; kind pulls it when it creates the cluster"),
        ),
        Err(why) => Check::fail(
            "node image",
            format!("{image} is not in {program}'s store and cannot be pulled: {why}"),
            format!("load a kindest/node image into {program} (`{program} load -i node.tar`) or mirror one, and pass it with --node-image IMAGE (or E2E_NODE_IMAGE); or use --cluster podman"),
        ),
    }
}

/// The names of the suite's services built with coverage: those scaled down to flush it.
fn covered(settings: &Settings) -> Vec<&str> {
    let components = settings.suite.components.iter().filter(|c| c.covered());
    components.map(|c| c.name.as_str()).collect()
}

/// What keeps the nodes from taking images, said in a few words: one is not running, or there
/// is none.
fn not_running(nodes: &[(String, NodeState)]) -> Option<String> {
    if nodes.is_empty() {
        return Some("it has no node containers".to_string());
    }
    if nodes.iter().all(|(_, state)| *state == NodeState::Running) {
        return None;
    }
    let described = nodes.iter().map(|(name, state)| match state {
        NodeState::Running => format!("{name} is running"),
        NodeState::Down(state) => format!("{name} is {state}"),
    });
    Some(described.collect::<Vec<_>>().join(", "))
}

impl Cluster for Kind {
    /// kind and its node image, kubectl near the node's Kubernetes, the host ports, disk for a
    /// node; and a registry on this machine's loopback is reachable from the nodes only
    /// through podman's `host.containers.internal`: with docker, say so before anything is built.
    fn preflight(&self, sh: &Shell) -> Preflight {
        let engine = self.settings.engine;
        let kind_sh = kind_shell(sh, engine);
        let version = step(cmd!(kind_sh, "kind version")).timeout(check::SHORT).output();
        let version = match version {
            Ok(out) if out.success() => Ok(out.stdout),
            Ok(out) => Err(format!(
                "`kind version` failed: {}",
                check::one_line(&format!("{}{}", out.stderr, out.stdout))
            )),
            Err(err) if check::missing(&err) => Err("not found on PATH".to_string()),
            Err(err) => Err(err.one_line()),
        };
        let hint = format!("install kind >= {MIN_KIND}: {KIND_INSTALL}; or use --cluster podman");
        let kind_row = ("kind version", "v", hint.as_str());
        let mut checks =
            vec![check::version_check("kind", version.clone(), kind_row, Some(MIN_KIND))];
        let kind = version.ok().and_then(|out| check::version(&out, "v"));
        let kind_minor = kind.as_deref().and_then(check::numbers).map(|(_, minor, _)| minor);
        let chosen = self.settings.node_image.as_deref();
        let image =
            kind_minor.and_then(|minor| node_image(minor, chosen)).or(chosen.map(str::to_string));
        let mut kubectl_skew = None;
        match (&image, &kind) {
            (Some(image), _) => {
                checks.push(node_image_check(sh, engine, image));
                let whose = match (chosen, &kind) {
                    (None, Some(kind)) => format!("kind {kind}'s default node"),
                    _ => format!("node image {image}"),
                };
                kubectl_skew = node_minor(image).map(|minor| (minor, whose));
            }
            (None, Some(kind)) => {
                let why = format!("kind {kind}'s default node image is not one the xtask knows");
                let fix = "pass the node image to use with --node-image IMAGE (or E2E_NODE_IMAGE)";
                checks.push(Check::warn("node image", why, fix));
            }
            // kind is missing or does not answer: its row says so.
            (None, None) => {}
        }
        if let Some(registry) = &self.settings.registry {
            if registry.is_loopback() && engine != Engine::Podman {
                let host = &registry.host;
                let detail = format!("{host} is on this machine's loopback, which kind's nodes cannot reach with docker");
                let fix = "give an address the nodes reach, or run the registry on the `kind` network as kind's local-registry guide does";
                checks.push(Check::fail("registry", detail, fix));
            }
        }
        let archives = self.settings.registry.is_none();
        let root = &self.settings.root;
        let mut writes =
            vec![Writes::File(self.kubeconfig.clone()), Writes::Dir(self.kubectl.cache.clone())];
        if archives {
            writes.push(Writes::Dir(project::xtask_dir(root).join("images")));
        }
        // The node mounts the suite's coverdata/, which `create` makes when it is missing.
        let coverdata = project::suite_coverdata(root, &self.settings.suite.name);
        if !coverdata.exists() {
            writes.push(Writes::Dir(coverdata));
        }
        let needs = Needs {
            engine: Some(engine),
            kubectl: true,
            kubectl_skew,
            ports: self.settings.suite.components.clone(),
            writes,
            node_disk: true,
            ..Needs::default()
        };
        Preflight { needs, checks, archives }
    }

    /// kind counts as its cluster's only the node containers with its label: a container of a
    /// node's name without it is someone else's, and would fail `kind create` besides.
    fn leftover(&self, sh: &Shell) -> Result<Leftover> {
        let (kind_sh, name) = (kind_shell(sh, self.settings.engine), &self.settings.name);
        let (program, format) = (self.settings.engine.program(), "{{.Names}}");
        let hint = engine::answers(self.settings.engine);
        let list = |filter: &[&str]| {
            let ps = cmd!(sh, "{program} ps --all {filter...} --format {format}");
            step(ps).hint(hint.clone()).read()
        };
        let label = format!("label={KIND_LABEL}={name}");
        let (all, kinds) = (list(&[])?, list(&["--filter", &label])?);
        let foreign: Vec<(String, Option<String>)> = all
            .lines()
            .map(str::trim)
            .filter(|c| is_node_name(name, c) && !kinds.lines().any(|k| k.trim() == *c))
            .map(|c| {
                let what = format!("the container {c} is named like a node of the Kind cluster {name} but is not one (it has no label {KIND_LABEL}={name})");
                (what, Some(format!("{program} rm --force {c}")))
            })
            .collect();
        if !foreign.is_empty() {
            return Ok(Leftover::foreign(foreign));
        }
        let clusters = step(cmd!(kind_sh, "kind get clusters")).hint(hint).read()?;
        Ok(match clusters.lines().any(|l| l.trim() == name) {
            true => Leftover::Stale(format!("a Kind cluster named {name} exists already")),
            false => Leftover::Nothing,
        })
    }

    fn clear_leftover(&mut self, sh: &Shell, how: Clear) -> Result<Clear> {
        let name = self.settings.name.clone();
        if how != Clear::ReuseIfHealthy {
            println!(
                "    deleting the stale cluster {name} of an earlier run (--reuse-cluster keeps a healthy one)"
            );
        } else if let Some(trouble) = self.unhealthy(sh)? {
            println!("    the cluster {name} is not healthy ({trouble}): recreating it");
        } else {
            println!("    the cluster {name} exists and is healthy: reusing it");
            self.reused = true;
            self.ready_at = Some(Instant::now());
            return Ok(Clear::Reused);
        }
        self.delete_cluster(sh)?;
        Ok(Clear::Remove)
    }

    fn create(&mut self, sh: &Shell) -> Result<()> {
        if self.reused {
            println!("    reusing the running cluster {}", self.settings.name);
            self.ready_at = Some(Instant::now());
            return Ok(());
        }
        let settings = &self.settings;
        let vars =
            manifests::values(&settings.root, &settings.suite, &Placement::own_cluster(), &[]);
        let mut text = manifests::render(&settings.root, &settings.suite.kind_config, &vars)?;
        manifests::documents(&settings.suite.kind_config, &text)?;
        if self.settings.registry.is_some() {
            // kind's local-registry set-up: containerd reads each registry's hosts.toml.
            text.push_str("containerdConfigPatches:\n  - |-\n    [plugins.\"io.containerd.grpc.v1.cri\".registry]\n      config_path = \"/etc/containerd/certs.d\"\n");
        }
        let config = write_file(&self.settings.rendered, CONFIG, &text)?;
        // The config mounts the suite's coverdata/ into the node, and podman refuses a missing
        // source (a run without --coverage prepares none).
        let coverdata = project::suite_coverdata(&self.settings.root, &self.settings.suite.name);
        std::fs::create_dir_all(&coverdata).with_context(|| {
            format!("creating {coverdata}, which the Kind node mounts: make the checkout writable")
        })?;
        let kind_sh = kind_shell(sh, self.settings.engine);
        let (name, kubeconfig) = (self.settings.name.clone(), self.kubeconfig.clone());
        for attempt in 0..=CREATE_RETRIES {
            let create = cmd!(
                kind_sh,
                "kind create cluster --name {name} --config {config} --kubeconfig {kubeconfig}"
            );
            let create = create.args(self.settings.node_image.iter().flat_map(|i| ["--image", i]));
            let program = self.settings.engine.program();
            let hint = format!("what kind printed says which step failed; to look at a node that would not start, run this command by hand with --retain added and read `{program} logs {name}-control-plane`, then `kind delete cluster --name {name}`");
            let Err(err) = step(create).hint(hint).run() else {
                self.ready_at = Some(Instant::now());
                return self.use_registry(sh);
            };
            if let Some(image) = unpullable_image(&err.stderr).map(str::to_string) {
                return Err(anyhow::Error::new(err).context(format!(
                    "kind could not pull the node image {image}: where registries are out of reach (offline, air-gapped, a mirror), \
                     load a kindest/node image into {} or mirror it, and pass it with --node-image (or E2E_NODE_IMAGE)",
                    self.settings.engine.program()
                )));
            }
            // An error with a known fix (`unable to apply caps`, rlimits) is refused every time.
            let known = engine::known_fix(&err.stderr, &self.settings.root).is_some();
            let transient =
                !known && TRANSIENT_CREATE_ERRORS.iter().any(|e| err.stderr.contains(e));
            if !transient || attempt == CREATE_RETRIES || err.is_interrupt() {
                let tries =
                    if transient { format!(" {} times", attempt + 1) } else { String::new() };
                let failed = format!("creating the Kind cluster {name} failed{tries}");
                return Err(anyhow::Error::new(err).context(failed));
            }
            let attempt = attempt + 1;
            println!("    transient container runtime error, deleting and retrying ({attempt}/{CREATE_RETRIES})");
            self.delete_cluster(sh)?;
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Checks every node is running (a stopped node is the "container state improper"
    /// failure), recreating the cluster once if not, then loads every archive.
    fn load(&mut self, sh: &Shell, images: &[Image]) -> Result<Option<Duration>> {
        if let Some(registry) = &self.settings.registry {
            println!("    nothing to load: the nodes pull from {}", registry.host);
            return Ok(None);
        }
        let program = self.settings.engine.program();
        let mut nodes = self.nodes(sh)?;
        if let Some(trouble) = not_running(&nodes) {
            println!(
                "    the Kind node containers are not all running ({trouble}): images cannot be loaded into a stopped node (the \"container state improper\" failure); recreating the cluster once"
            );
            self.delete_cluster(sh)?;
            self.create(sh)?;
            nodes = self.nodes(sh)?;
            if let Some(trouble) = not_running(&nodes) {
                bail!(
                    "the Kind node containers are still not running after recreating the cluster ({trouble}): check `{program} logs <node>`, free memory and disk (`cargo xtask doctor`), then retry"
                );
            }
        }
        let gap = self.ready_at.map(|t| t.elapsed()).unwrap_or_default();
        println!("    idle gap (cluster ready to first load): {} ms", gap.as_millis());
        let (kind_sh, name) = (kind_shell(sh, self.settings.engine), &self.settings.name);
        // What each node holds before our loads: a made-up name after a load is that load's.
        let mut before = Vec::new();
        for (node, _) in &nodes {
            before.push(self.node_images(sh, node)?);
        }
        for image in images {
            let service = &image.name;
            // A tag of ours is its content: a kept cluster (`--reuse-cluster`) that holds it in
            // every node holds this very image. A third-party tag may have moved: loaded again.
            let ours = self
                .settings
                .suite
                .components
                .iter()
                .any(|c| c.name == image.name && c.build().is_some());
            if ours && before.iter().all(|known| known.contains(&image.reference)) {
                println!("    {} is in the node already", image.reference);
                continue;
            }
            let archive = image.archive.as_ref().with_context(|| {
                format!("no image archive for {service}: this is a bug in the build phase")
            })?;
            let started = Instant::now();
            let load = step(cmd!(kind_sh, "kind load image-archive {archive} --name {name}"))
                .hint(format!("check that the cluster's nodes are running (`{program} ps -a`)"))
                .run();
            if let Err(err) = load {
                // A node that stopped after the check is the old flow's "container state
                // improper": say that, not kind's words alone.
                let stopped = self.nodes(sh).ok().as_deref().and_then(not_running);
                let err = anyhow::Error::new(err);
                return Err(match stopped {
                    Some(trouble) => err.context(format!("loading the image of {service} failed because a node stopped ({trouble}): images cannot be loaded into a stopped node (the \"container state improper\" failure); check the node's log (`{program} logs <node>`) and free memory, then rerun (the cluster is recreated)")),
                    None => err.context(format!("loading the image of {service}")),
                });
            }
            for ((node, _), known) in nodes.iter().zip(&mut before) {
                self.verify_loaded(sh, node, &image.reference, known)?;
            }
            println!("    loaded {} ({})", image.reference, ui::seconds(started.elapsed()));
        }
        Ok(Some(gap))
    }

    fn deploy(&mut self, sh: &Shell, images: &[Image]) -> Result<(), DeployError> {
        let settings = &self.settings;
        let vars =
            manifests::values(&settings.root, &settings.suite, &Placement::own_cluster(), images);
        let files =
            manifests::write(&settings.rendered, &settings.root, &settings.suite, &vars, Ok)
                .map_err(DeployError::before_start)?;
        if !self.reused {
            self.speed_up_dns(sh).map_err(DeployError::before_start)?;
        }
        self.kubectl.deploy(sh, &files)
    }

    /// Scales the services built with coverage to zero and waits until their pods are gone: they
    /// exit normally and write their counters into the node's /coverdata, which is the suite's
    /// coverdata/<suite>/ on this machine.
    fn flush_coverage(&mut self, sh: &Shell) -> Result<()> {
        let services: Vec<&str> = covered(&self.settings);
        let deployments: Vec<String> =
            services.iter().map(|name| format!("deployment/{name}")).collect();
        let scale = self.kubectl.cmd(sh).arg("scale").args(&deployments).arg("--replicas=0");
        let fix =
            "the services could not be scaled to zero, so their coverage counters are missing";
        step(scale).hint(fix).run()?;
        let selector = format!("app in ({})", services.join(","));
        let timeout = format!("{}s", STOP_GRACE_SECONDS + 30);
        let wait = ["wait", "--for=delete", "pod", "--selector", &selector, "--timeout", &timeout];
        let hint = format!(
            "the service pods were not gone within {timeout}: their counters may be incomplete"
        );
        match step(self.kubectl.cmd(sh).args(wait)).hint(hint).run() {
            // kubectl fails when the pods are gone before it looks: that is the goal reached.
            Err(err) if err.stderr.contains("no matching resources found") => Ok(()),
            result => result.map(drop).map_err(Into::into),
        }
    }

    fn diagnostics(&self, sh: &Shell, dir: &Utf8Path, what: Diagnose) -> Result<bool> {
        if self.ready_at.is_none() {
            println!(
                "    the cluster never became ready: nothing to collect; the summary below says why"
            );
            return Ok(false);
        }
        let kubectl = self.kubectl.diagnostics(sh, &self.settings.suite, what);
        if what == Diagnose::BeforeStopping {
            return collect(dir, kubectl);
        }
        let (kind_sh, name, logs) =
            (kind_shell(sh, self.settings.engine), &self.settings.name, dir.join("kind"));
        let export = step(cmd!(kind_sh, "kind export logs {logs} --name {name}"));
        collect(dir, [("kind-export.txt".to_string(), export)].into_iter().chain(kubectl))
    }

    /// `keep` includes `--reuse-cluster`: a reused cluster is kept for next time.
    fn teardown(&mut self, sh: &Shell, keep: bool) -> Result<()> {
        if !keep {
            // Everything the run needs from the nodes is out by now (diagnostics, coverage):
            // a node killed at once goes in a few seconds, one shut down in order takes ten
            // more. Best effort: `kind delete` removes it either way.
            let program = self.settings.engine.program();
            for (node, _) in self.nodes(sh).unwrap_or_default() {
                let _ = step(cmd!(sh, "{program} kill {node}")).output();
            }
            self.delete_cluster(sh)?;
            println!("    deleted the cluster {}", self.settings.name);
            return Ok(());
        }
        let (kubeconfig, remove) = (&self.kubeconfig, self.remove_command());
        println!(
            "    keeping the cluster: export KUBECONFIG={kubeconfig}\n    delete it with: {remove}"
        );
        let deployments: Vec<String> =
            covered(&self.settings).iter().map(|name| format!("deployment/{name}")).collect();
        let deployments = deployments.join(" ");
        println!("    if the services were scaled to zero to flush coverage, start them with: kubectl --kubeconfig {kubeconfig} scale {deployments} --replicas=1");
        Ok(())
    }

    fn remove_command(&self) -> String {
        let env = provider(self.settings.engine).map(|(key, value)| format!("{key}={value} "));
        format!("{}kind {}", env.unwrap_or_default(), self.delete_args().join(" "))
    }

    /// Deletes its pod: the Deployment starts a new one, and the old one is stopped gracefully
    /// (its counters land in coverdata/ like any).
    fn restart_command(&self, component: &Component) -> Option<Vec<String>> {
        let selector = format!("app={}", component.name);
        let kubeconfig = self.kubeconfig.to_string();
        let words = [
            "kubectl",
            "--kubeconfig",
            &kubeconfig,
            "delete",
            "pod",
            "--selector",
            &selector,
            "--wait=false",
        ];
        Some(words.map(str::to_string).to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_versions_come_from_the_image_tag_or_kinds_default() {
        let minor = |kind, chosen| node_minor(&node_image(kind, chosen)?);
        assert_eq!(minor(33, None), Some(37));
        assert_eq!(minor(27, None), Some(32));
        assert_eq!(node_image(99, None), None);
        assert_eq!(minor(33, Some("kindest/node:v1.33.1@sha256:0505")), Some(33));
        assert_eq!(minor(33, Some("mirror.local:5000/kindest/node:v1.35.0")), Some(35));
        assert_eq!(minor(33, Some("my-node")), None);
    }

    #[test]
    fn node_names_are_kinds() {
        assert!(is_node_name("e2e", "e2e-control-plane"));
        assert!(is_node_name("e2e", "e2e-control-plane2"));
        assert!(is_node_name("e2e", "e2e-worker"));
        assert!(is_node_name("e2e", "e2e-worker12"));
        assert!(is_node_name("e2e", "e2e-external-load-balancer"));
        assert!(!is_node_name("e2e", "e2e-gateway-pod-0"));
        assert!(!is_node_name("e2e", "e2e-x-control-plane"), "the cluster e2e-x's");
        assert!(!is_node_name("e2e", "e2e2-worker"));
    }

    #[test]
    fn containerd_names_docker_hub_images_in_full() {
        assert_eq!(containerd_name("localhost/gateway:e2e-1"), "localhost/gateway:e2e-1");
        assert_eq!(containerd_name("postgres:16"), "docker.io/library/postgres:16");
        assert_eq!(containerd_name("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(containerd_name("quay.io/x/y:1"), "quay.io/x/y:1");
        assert_eq!(containerd_name("127.0.0.1:5000/e2e/gateway:1"), "127.0.0.1:5000/e2e/gateway:1");
    }

    #[test]
    fn the_image_kind_could_not_pull_is_named() {
        let stderr = "ERROR: failed to create cluster: failed to pull image \"kindest/node:v1.37.0\": command \"podman pull kindest/node:v1.37.0\" failed with error: exit status 125";
        assert_eq!(unpullable_image(stderr), Some("kindest/node:v1.37.0"));
        assert_eq!(unpullable_image("ERROR: node image not found"), None);
    }

    #[test]
    fn nodes_are_described_by_state() {
        let node = |name: &str, state| (name.to_string(), state);
        let nodes = [
            node("cp", NodeState::Running),
            node("w1", NodeState::Down("exited".into())),
            node("w2", NodeState::Down("missing".into())),
        ];
        assert_eq!(not_running(&nodes).unwrap(), "cp is running, w1 is exited, w2 is missing");
        assert_eq!(not_running(&nodes[..1]), None);
        assert_eq!(not_running(&[]).unwrap(), "it has no node containers", "no nodes cannot load");
    }

    #[test]
    fn the_printed_delete_command_names_the_provider_and_our_kubeconfig() {
        let settings = |engine| Settings {
            backend: crate::cluster::ClusterBackend::Kind,
            root: "/repo".into(),
            name: "e2e".into(),
            engine,
            node_image: None,
            registry: None,
            access: Default::default(),
            why: String::new(),
            rendered: "/repo/target/xtask/rendered".into(),
            suite: crate::suite::Suite::empty("s"),
        };
        assert_eq!(
            Kind::new(settings(Engine::Podman)).remove_command(),
            "KIND_EXPERIMENTAL_PROVIDER=podman kind delete cluster --name e2e --kubeconfig /repo/target/xtask/kubeconfig-e2e"
        );
        assert_eq!(
            Kind::new(settings(Engine::Docker)).remove_command(),
            "kind delete cluster --name e2e --kubeconfig /repo/target/xtask/kubeconfig-e2e"
        );
    }
}

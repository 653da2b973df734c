//! The Kind backend: a throwaway cluster in the container engine, created right after the
//! images are built and loaded at once, so the node never sits idle (the old flow's
//! "container state improper").

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use super::{collect, write_file, Cluster, Kubectl, Settings, State, STOP_GRACE_SECONDS};
use crate::{
    build_images::Image,
    cmd::step,
    doctor::{Check, Needs},
    engine,
    flags::{ClusterAccess, Engine},
    project,
};

/// Kind cluster creation is retried at most this many times, and only on these errors.
const CREATE_RETRIES: usize = 2;
const TRANSIENT_CREATE_ERRORS: &[&str] =
    &["OCI runtime", "container state improper", "could not find a log line that matches"];
const CONFIG: &str = "kind-gateway-config.yaml";

pub struct Kind {
    settings: Settings,
    /// Ours, under target/: no kind or kubectl call (or printed hint) edits ~/.kube/config.
    kubeconfig: Utf8PathBuf,
    kubectl: Kubectl,
    /// When the cluster became ready: nothing to diagnose before.
    ready_at: Option<Instant>,
    /// A healthy cluster of an earlier run is used instead of a new one (`--reuse-cluster`).
    reused: bool,
    state: State,
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
pub fn kind_shell(sh: &Shell, engine: Engine) -> Shell {
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
        Kind {
            settings,
            kubeconfig,
            kubectl,
            ready_at: None,
            reused: false,
            state: State::default(),
        }
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
        self.state.exists = false;
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
        let listed = step(get).hint("run `cargo xtask doctor`").read()?;
        let (program, format) = (self.settings.engine.program(), "{{.State.Status}}");
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

/// The image in kind's `failed to pull image "..."`, if that is why creation failed.
fn unpullable_image(stderr: &str) -> Option<&str> {
    let rest = &stderr[stderr.find("failed to pull image \"")? + 22..];
    rest.split('"').next()
}

/// The Kubernetes minor version of the node image: from its tag (`kindest/node:v1.35.0`), else
/// kind's default for its version (`pkg/apis/config/defaults/image.go` of each release).
pub fn node_minor(kind_minor: u32, node_image: Option<&str>) -> Option<u32> {
    if let Some(image) = node_image {
        let tag = image.split('@').next()?.rsplit_once(':')?.1;
        return tag.strip_prefix("v1.")?.split('.').next()?.parse().ok();
    }
    const DEFAULTS: [(u32, u32); 7] =
        [(27, 32), (28, 33), (29, 33), (30, 34), (31, 35), (32, 36), (33, 37)];
    DEFAULTS.iter().find(|(kind, _)| *kind == kind_minor).map(|(_, node)| *node)
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
    fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A registry on this machine's loopback is reachable from the nodes only through podman's
    /// `host.containers.internal`: with docker, say so before anything is built.
    fn needs_and_checks(&self, _sh: &Shell, needs: &mut Needs) -> Vec<Check> {
        needs.kind = true;
        needs.kubectl = true;
        needs.node_image = self.settings.node_image.clone();
        match &self.settings.registry {
            Some(registry) if registry.is_loopback() && self.settings.engine != Engine::Podman => {
                let host = &registry.host;
                let detail = format!("{host} is on this machine's loopback, which kind's nodes cannot reach with docker");
                let fix = "give an address the nodes reach, or run the registry on the `kind` network as kind's local-registry guide does";
                vec![Check::fail("registry", detail, fix)]
            }
            _ => Vec::new(),
        }
    }

    fn leftover(&self, sh: &Shell) -> Result<Option<String>> {
        let (kind_sh, name) = (kind_shell(sh, self.settings.engine), &self.settings.name);
        let clusters =
            step(cmd!(kind_sh, "kind get clusters")).hint("run `cargo xtask doctor`").read()?;
        let found = clusters.lines().any(|l| l.trim() == name);
        Ok(found.then(|| format!("a Kind cluster named {name} exists already")))
    }

    fn clear_leftover(&mut self, sh: &Shell, reuse: bool, coverage: bool) -> Result<bool> {
        let name = self.settings.name.clone();
        self.state.exists = true;
        if !reuse {
            println!(
                "    deleting the stale cluster {name} of an earlier run (--reuse-cluster keeps a healthy one)"
            );
        } else if let Some(trouble) = self.unhealthy(sh)? {
            println!("    the cluster {name} is not healthy ({trouble}): recreating it");
        } else {
            println!("    the cluster {name} exists and is healthy: reusing it");
            self.reused = true;
            self.ready_at = Some(Instant::now());
            // Its services write their last counters before coverdata/ is archived.
            if coverage {
                if let Err(err) = self.stop_services(sh) {
                    println!("    could not stop its services: {err:#}");
                }
            }
            return Ok(true);
        }
        self.delete_cluster(sh)?;
        Ok(false)
    }

    fn create(&mut self, sh: &Shell) -> Result<()> {
        if self.reused {
            println!("    reusing the running cluster {}", self.settings.name);
            self.ready_at = Some(Instant::now());
            return Ok(());
        }
        let mut text = self.render(CONFIG, &[])?;
        if self.settings.registry.is_some() {
            // kind's local-registry set-up: containerd reads each registry's hosts.toml.
            text.push_str("containerdConfigPatches:\n  - |-\n    [plugins.\"io.containerd.grpc.v1.cri\".registry]\n      config_path = \"/etc/containerd/certs.d\"\n");
        }
        let config = write_file(&self.settings.rendered, CONFIG, &text)?;
        let kind_sh = kind_shell(sh, self.settings.engine);
        let (name, kubeconfig) = (self.settings.name.clone(), self.kubeconfig.clone());
        for attempt in 0..=CREATE_RETRIES {
            self.state.exists = true;
            let create = cmd!(
                kind_sh,
                "kind create cluster --name {name} --config {config} --kubeconfig {kubeconfig}"
            );
            let create = create.args(self.settings.node_image.iter().flat_map(|i| ["--image", i]));
            let Err(err) = step(create).hint("run `cargo xtask doctor`, then retry").run() else {
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

    fn needs_archives(&self) -> bool {
        self.settings.registry.is_none()
    }

    /// Checks every node is running (a stopped node is the "container state improper"
    /// failure), recreating the cluster once if not, then loads every archive.
    fn load(&mut self, sh: &Shell, images: &[Image]) -> Result<Option<Duration>> {
        if let Some(registry) = &self.settings.registry {
            println!("    nothing to load: the nodes pull from {}", registry.host);
            return Ok(None);
        }
        let program = self.settings.engine.program();
        if let Some(trouble) = not_running(&self.nodes(sh)?) {
            println!(
                "    the Kind node containers are not all running ({trouble}): images cannot be loaded into a stopped node (the \"container state improper\" failure); recreating the cluster once"
            );
            self.delete_cluster(sh)?;
            self.create(sh)?;
            if let Some(trouble) = not_running(&self.nodes(sh)?) {
                bail!(
                    "the Kind node containers are still not running after recreating the cluster ({trouble}): check `{program} logs <node>`, free memory and disk (`cargo xtask doctor`), then retry"
                );
            }
        }
        let gap = self.ready_at.map(|t| t.elapsed()).unwrap_or_default();
        println!("    idle gap (cluster ready to first load): {} ms", gap.as_millis());
        let (kind_sh, name) = (kind_shell(sh, self.settings.engine), &self.settings.name);
        for image in images {
            let service = image.service.name;
            let archive = image.archive.as_ref().with_context(|| {
                format!("no image archive for {service}: this is a bug in the build phase")
            })?;
            step(cmd!(kind_sh, "kind load image-archive {archive} --name {name}"))
                .hint(format!("check that the cluster's nodes are running (`{program} ps -a`)"))
                .run()
                .with_context(|| format!("loading the image of {service}"))?;
            println!("    loaded {}", image.reference);
        }
        Ok(Some(gap))
    }

    fn deploy(&mut self, sh: &Shell, images: &[Image]) -> Result<()> {
        let files = self.manifests(images, |text| text)?;
        self.kubectl.deploy(sh, &files, &mut self.state.deployed)
    }

    fn stop_services(&mut self, sh: &Shell) -> Result<()> {
        let services = self.settings.services.all();
        let deployments = services.map(|s| format!("deployment/{}", s.name));
        let scale = self.kubectl.cmd(sh).arg("scale").args(&deployments).arg("--replicas=0");
        let fix =
            "the services could not be scaled to zero, so their coverage counters are missing";
        step(scale).hint(fix).run()?;
        let selector = format!("app in ({})", services.map(|s| s.name).join(","));
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

    fn diagnostics(&self, sh: &Shell, dir: &Utf8Path) -> Result<bool> {
        if self.ready_at.is_none() {
            println!(
                "    the cluster never became ready: nothing to collect beyond the error above"
            );
            return Ok(false);
        }
        let (kind_sh, name, logs) =
            (kind_shell(sh, self.settings.engine), &self.settings.name, dir.join("kind"));
        let export = step(cmd!(kind_sh, "kind export logs {logs} --name {name}"));
        let kubectl = self.kubectl.diagnostics(sh, &self.settings.services);
        collect(dir, [("kind-export.txt".to_string(), export)].into_iter().chain(kubectl))
    }

    /// `keep` includes `--reuse-cluster`: a reused cluster is kept for next time.
    fn teardown(&mut self, sh: &Shell, keep: bool) -> Result<()> {
        if !keep {
            self.delete_cluster(sh)?;
            println!("    deleted the cluster {}", self.settings.name);
            return Ok(());
        }
        let (kubeconfig, remove) = (&self.kubeconfig, self.remove_command());
        println!(
            "    keeping the cluster: export KUBECONFIG={kubeconfig}\n    delete it with: {remove}"
        );
        if self.state.deployed {
            let deployments =
                self.settings.services.all().map(|s| format!("deployment/{}", s.name));
            let deployments = deployments.join(" ");
            println!("    if the services were scaled to zero to flush coverage, start them with: kubectl --kubeconfig {kubeconfig} scale {deployments} --replicas=1");
        }
        Ok(())
    }

    fn remove_command(&self) -> String {
        let env = provider(self.settings.engine).map(|(key, value)| format!("{key}={value} "));
        format!("{}kind {}", env.unwrap_or_default(), self.delete_args().join(" "))
    }

    fn state(&self) -> State {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_versions_come_from_the_image_tag_or_kinds_default() {
        assert_eq!(node_minor(33, None), Some(37));
        assert_eq!(node_minor(27, None), Some(32));
        assert_eq!(node_minor(99, None), None);
        assert_eq!(node_minor(33, Some("kindest/node:v1.33.1@sha256:0505")), Some(33));
        assert_eq!(node_minor(33, Some("mirror.local:5000/kindest/node:v1.35.0")), Some(35));
        assert_eq!(node_minor(33, Some("my-node")), None);
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
            backend: crate::flags::ClusterBackend::Kind,
            root: "/repo".into(),
            name: "e2e".into(),
            engine,
            node_image: None,
            registry: None,
            access: Default::default(),
            rendered: "/repo/target/xtask/rendered".into(),
            services: crate::project::Services {
                datastorage: project::DATASTORAGE,
                gateway: project::GATEWAY,
            },
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

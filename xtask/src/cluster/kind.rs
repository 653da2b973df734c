//! The Kind backend: a throwaway cluster in the container engine, created right after the
//! images are built and loaded at once, so the node never sits idle (the old flow's
//! "container state improper").

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Cmd, Shell};

use super::{
    kubectl_diagnostics, save, write_file, Cluster, Manifest, Settings, STOP_GRACE_SECONDS,
};
use crate::{
    build_images::Image,
    cmd::{step, CmdError},
    doctor::{Check, Needs},
    flags::Engine,
    project,
};

/// Kind cluster creation is retried at most this many times, and only on these errors.
const CREATE_RETRIES: usize = 2;
const TRANSIENT_CREATE_ERRORS: &[&str] =
    &["OCI runtime", "container state improper", "could not find a log line that matches"];
const ROLLOUT_TIMEOUT: &str = "180s";

pub struct Kind {
    settings: Settings,
    /// Ours, under target/: no kind or kubectl call (or printed hint) edits ~/.kube/config.
    kubeconfig: Utf8PathBuf,
    /// A cluster of ours may exist.
    exists: bool,
    /// A healthy cluster of an earlier run is used (and kept afterwards).
    reused: bool,
    ready_at: Option<Instant>,
    deployed: bool,
}

/// The state of a node container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeState {
    Running,
    /// Exists in another state (`exited`, `paused`, ...).
    Other(String),
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    name: String,
    state: NodeState,
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
        Kind { settings, kubeconfig, exists: false, reused: false, ready_at: None, deployed: false }
    }

    /// kubectl on our cluster; its discovery cache stays under target/ too.
    fn kubectl<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        let kubeconfig = &self.kubeconfig;
        let cache = project::xtask_dir(&self.settings.root).join("kube-cache");
        cmd!(sh, "kubectl --kubeconfig {kubeconfig} --cache-dir {cache}")
    }

    /// The one definition of how our cluster is deleted: run, printed and suggested alike.
    fn delete_args(&self) -> Vec<String> {
        let (name, kubeconfig) = (&self.settings.name, &self.kubeconfig);
        ["delete", "cluster", "--name", name, "--kubeconfig", kubeconfig.as_str()]
            .map(String::from)
            .to_vec()
    }

    /// Idempotent: kind succeeds when there is no such cluster.
    fn delete_cluster(&mut self, sh: &Shell) -> anyhow::Result<()> {
        let kind_sh = kind_shell(sh, self.settings.engine);
        let args = self.delete_args();
        step(cmd!(kind_sh, "kind {args...}"))
            .hint(format!("delete it by hand and check `{} ps -a`", self.settings.engine.program()))
            .run()?;
        self.exists = false;
        self.ready_at = None;
        Ok(())
    }

    fn create_cluster(&mut self, sh: &Shell) -> anyhow::Result<()> {
        let vars = super::template_vars(self, &self.settings, &[]);
        let mut text = super::render_file(&self.settings.root, "kind-gateway-config.yaml", &vars)?;
        if self.settings.registry.is_some() {
            // kind's local-registry set-up: containerd reads each registry's hosts.toml.
            text.push_str("containerdConfigPatches:\n  - |-\n    [plugins.\"io.containerd.grpc.v1.cri\".registry]\n      config_path = \"/etc/containerd/certs.d\"\n");
        }
        let config = write_file(&self.settings.rendered_dir(), "kind-gateway-config.yaml", &text)?;
        let kind_sh = kind_shell(sh, self.settings.engine);
        let (name, kubeconfig) = (self.settings.name.clone(), self.kubeconfig.clone());
        let image_args: Vec<String> = match &self.settings.node_image {
            Some(image) => vec!["--image".into(), image.clone()],
            None => Vec::new(),
        };
        let image_args = &image_args;
        for attempt in 0..=CREATE_RETRIES {
            self.exists = true;
            let create = cmd!(
                kind_sh,
                "kind create cluster --name {name} --config {config} --kubeconfig {kubeconfig} {image_args...}"
            );
            let err = match step(create).hint(CREATE_HINT).run() {
                Ok(_) => {
                    self.ready_at = Some(Instant::now());
                    return self.use_registry(sh);
                }
                Err(err) => err,
            };
            if let Some(image) = unpullable_image(&err.stderr).map(str::to_string) {
                return Err(anyhow::Error::new(err).context(format!(
                    "kind could not pull the node image {image}: where registries are out of reach (offline, air-gapped, a mirror), \
                     load a kindest/node image into {} or mirror it, and pass it with --node-image (or E2E_NODE_IMAGE)",
                    self.settings.engine.program()
                )));
            }
            let transient = TRANSIENT_CREATE_ERRORS.iter().any(|e| err.stderr.contains(e));
            if !transient || attempt == CREATE_RETRIES || err.is_interrupt() {
                let tries =
                    if transient { format!(" {} times", attempt + 1) } else { String::new() };
                return Err(anyhow::Error::new(err)
                    .context(format!("creating the Kind cluster {name} failed{tries}")));
            }
            println!(
                "    transient container runtime error, deleting and retrying ({}/{CREATE_RETRIES})",
                attempt + 1
            );
            self.delete_cluster(sh)?;
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Points every node's containerd at the registry (`hosts.toml`, as kind documents for a
    /// local registry). A registry on this machine's loopback is this machine for the nodes
    /// too: podman gives them its address as `host.containers.internal`.
    fn use_registry(&self, sh: &Shell) -> anyhow::Result<()> {
        let Some(registry) = &self.settings.registry else {
            return Ok(());
        };
        let port = registry.host.split_once(':').map(|(_, p)| format!(":{p}"));
        // With docker, `checks` refused a loopback registry before anything ran.
        let reachable = if registry.is_loopback() {
            format!("host.containers.internal{}", port.unwrap_or_default())
        } else {
            registry.host.clone()
        };
        let scheme = if registry.insecure { "http" } else { "https" };
        let hosts = format!(
            "server = \"{scheme}://{}\"\n\n[host.\"{scheme}://{reachable}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            registry.host
        );
        let file = write_file(&self.settings.rendered_dir(), "hosts.toml", &hosts)?;
        let dir = format!("/etc/containerd/certs.d/{}", registry.host);
        let program = self.settings.engine.program();
        for node in self.nodes(sh)? {
            let name = &node.name;
            let target = format!("{name}:{dir}/hosts.toml");
            step(cmd!(sh, "{program} exec {name} mkdir -p {dir}")).run()?;
            step(cmd!(sh, "{program} cp {file} {target}"))
                .hint("check that the node container runs")
                .run()?;
        }
        println!("    the nodes pull from {} (through {reachable})", registry.host);
        Ok(())
    }

    /// Every node container of the cluster with its state.
    fn nodes(&self, sh: &Shell) -> anyhow::Result<Vec<Node>> {
        let kind_sh = kind_shell(sh, self.settings.engine);
        let name = &self.settings.name;
        let listed = step(cmd!(kind_sh, "kind get nodes --name {name}"))
            .hint("run `cargo xtask doctor`")
            .read()?;
        let program = self.settings.engine.program();
        let format = "{{.State.Status}}";
        let mut nodes = Vec::new();
        for node in listed.lines().map(str::trim).filter(|n| !n.is_empty()) {
            let output = step(cmd!(sh, "{program} inspect --format {format} {node}")).output()?;
            let state = match output.stdout.trim() {
                _ if !output.success() => NodeState::Missing,
                "running" => NodeState::Running,
                "" => NodeState::Missing,
                other => NodeState::Other(other.to_string()),
            };
            nodes.push(Node { name: node.to_string(), state });
        }
        Ok(nodes)
    }

    fn api_answers(&self, sh: &Shell) -> anyhow::Result<bool> {
        let kind_sh = kind_shell(sh, self.settings.engine);
        let (name, kubeconfig) = (&self.settings.name, &self.kubeconfig);
        let exported =
            step(cmd!(kind_sh, "kind export kubeconfig --name {name} --kubeconfig {kubeconfig}"))
                .output()?;
        Ok(exported.success()
            && step(self.kubectl(sh).args(["get", "--raw", "/readyz"])).output()?.success())
    }

    fn kubectl_step(&self, sh: &Shell, args: &[&str], hint: &str) -> Result<(), CmdError> {
        step(self.kubectl(sh).args(args)).hint(hint).run().map(drop)
    }
}

const CREATE_HINT: &str = "run `cargo xtask doctor`, then retry";

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

fn all_running(nodes: &[Node]) -> bool {
    !nodes.is_empty() && nodes.iter().all(|n| n.state == NodeState::Running)
}

fn describe(nodes: &[Node]) -> String {
    if nodes.is_empty() {
        return "it has no node containers".to_string();
    }
    let described: Vec<String> = nodes
        .iter()
        .map(|n| match &n.state {
            NodeState::Running => format!("{} is running", n.name),
            NodeState::Other(state) => format!("{} is {state}", n.name),
            NodeState::Missing => format!("{} is missing", n.name),
        })
        .collect();
    described.join(", ")
}

impl Cluster for Kind {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn name(&self) -> &'static str {
        "kind"
    }

    fn needs(&self, needs: &mut Needs) {
        needs.engine = Some(self.settings.engine);
        needs.kind = true;
        needs.kubectl = true;
        needs.node_image = self.settings.node_image.clone();
    }

    /// A registry on this machine's loopback is reachable from the nodes only through podman's
    /// `host.containers.internal`: with docker, say so before anything is built.
    fn checks(&self, _sh: &Shell) -> Vec<Check> {
        match &self.settings.registry {
            Some(registry) if registry.is_loopback() && self.settings.engine != Engine::Podman => {
                vec![Check::fail(
                    "registry",
                    format!("{} is on this machine's loopback, which kind's nodes cannot reach with docker", registry.host),
                    "give an address the nodes reach, or run the registry on the `kind` network as kind's local-registry guide does",
                )]
            }
            _ => Vec::new(),
        }
    }

    fn needs_archives(&self) -> bool {
        self.settings.registry.is_none()
    }

    fn leftover(&self, sh: &Shell) -> anyhow::Result<Option<String>> {
        let kind_sh = kind_shell(sh, self.settings.engine);
        let clusters =
            step(cmd!(kind_sh, "kind get clusters")).hint("run `cargo xtask doctor`").read()?;
        let name = &self.settings.name;
        Ok(clusters
            .lines()
            .any(|l| l.trim() == name)
            .then(|| format!("a Kind cluster named {name} exists already")))
    }

    fn clear_leftover(&mut self, sh: &Shell, reuse: bool, coverage: bool) -> anyhow::Result<bool> {
        let name = self.settings.name.clone();
        self.exists = true;
        if reuse {
            let nodes = self.nodes(sh)?;
            if all_running(&nodes) && self.api_answers(sh)? {
                println!("    the cluster {name} exists and is healthy: reusing it");
                self.reused = true;
                if coverage {
                    // Its services write their last counters before coverdata/ is archived.
                    if let Err(err) = self.stop_services(sh) {
                        println!("    could not stop its services: {err:#}");
                    }
                }
                return Ok(true);
            }
            println!("    the cluster {name} is not healthy ({}): recreating it", describe(&nodes));
        } else {
            println!(
                "    deleting the stale cluster {name} of an earlier run (--reuse-cluster keeps a healthy one)"
            );
        }
        self.delete_cluster(sh)?;
        Ok(false)
    }

    fn create(&mut self, sh: &Shell) -> anyhow::Result<()> {
        if self.reused {
            println!("    reusing the running cluster {}", self.settings.name);
            self.ready_at = Some(Instant::now());
            return Ok(());
        }
        self.create_cluster(sh)
    }

    /// Checks every node is running (a stopped node is the "container state improper"
    /// failure), recreating the cluster once if not, then loads every archive.
    fn load(&mut self, sh: &Shell, images: &[Image]) -> anyhow::Result<Option<Duration>> {
        if let Some(registry) = &self.settings.registry {
            println!("    nothing to load: the nodes pull from {}", registry.host);
            return Ok(None);
        }
        let nodes = self.nodes(sh)?;
        if !all_running(&nodes) {
            println!(
                "    the Kind node containers are not all running ({}): images cannot be loaded into a stopped node (the \"container state improper\" failure); recreating the cluster once",
                describe(&nodes)
            );
            self.delete_cluster(sh)?;
            self.create_cluster(sh)?;
            let nodes = self.nodes(sh)?;
            if !all_running(&nodes) {
                bail!(
                    "the Kind node containers are still not running after recreating the cluster ({}): check `{} logs <node>`, free memory and disk (`cargo xtask doctor`), then retry",
                    describe(&nodes),
                    self.settings.engine.program()
                );
            }
        }
        let gap = self.ready_at.map(|t| t.elapsed()).unwrap_or_default();
        println!("    idle gap (cluster ready to first load): {} ms", gap.as_millis());
        let kind_sh = kind_shell(sh, self.settings.engine);
        let name = &self.settings.name;
        for image in images {
            let archive = image.archive.as_ref().with_context(|| {
                format!(
                    "no image archive for {}: this is a bug in the build phase",
                    image.service.name
                )
            })?;
            step(cmd!(kind_sh, "kind load image-archive {archive} --name {name}"))
                .hint(format!(
                    "check that the cluster's nodes are running (`{} ps -a`)",
                    self.settings.engine.program()
                ))
                .run()
                .with_context(|| format!("loading the image of {}", image.service.name))?;
            println!("    loaded {}", image.reference);
        }
        Ok(Some(gap))
    }

    fn template_vars(&self) -> Vec<(String, String)> {
        vec![
            // The Kind config mounts the host's coverdata/ at /coverdata in the node.
            ("COVERDATA_NODE_PATH".into(), "/coverdata".into()),
            // The cluster is ours alone: the Deployments keep their plain names.
            ("NAME_PREFIX".into(), String::new()),
            (
                "DATASTORAGE_URL".into(),
                format!("http://datastorage:{}", self.settings.services.datastorage.container_port),
            ),
        ]
    }

    fn deploy(&mut self, sh: &Shell, manifests: &[Manifest]) -> anyhow::Result<()> {
        self.deployed = true;
        let dir = self.settings.rendered_dir();
        for manifest in manifests {
            let file =
                write_file(&dir, &format!("{}.yaml", manifest.service.name), &manifest.text)?;
            self.kubectl_step(
                sh,
                &["apply", "-f", file.as_str()],
                "check the manifest and the cluster (`cargo xtask doctor`)",
            )?;
        }
        for manifest in manifests {
            let deployment = format!("deployment/{}", manifest.service.name);
            self.kubectl_step(
                sh,
                &["rollout", "status", &deployment, "--timeout", ROLLOUT_TIMEOUT],
                &format!(
                    "{} did not roll out within {ROLLOUT_TIMEOUT}: see the pod events and logs in the diagnostics",
                    manifest.service.name
                ),
            )?;
        }
        Ok(())
    }

    fn stop_services(&mut self, sh: &Shell) -> anyhow::Result<()> {
        let services = self.settings.services.all();
        let deployments = services.map(|s| format!("deployment/{}", s.name));
        step(self.kubectl(sh).arg("scale").args(&deployments).arg("--replicas=0"))
            .hint(
                "the services could not be scaled to zero, so their coverage counters are missing",
            )
            .run()?;
        let selector = format!("app in ({})", services.map(|s| s.name).join(","));
        let timeout = format!("{}s", STOP_GRACE_SECONDS + 30);
        let wait = self.kubectl(sh).args([
            "wait",
            "--for=delete",
            "pod",
            "--selector",
            &selector,
            "--timeout",
            &timeout,
        ]);
        match step(wait)
            .hint(format!(
                "the service pods were not gone within {timeout}: their counters may be incomplete"
            ))
            .run()
        {
            // kubectl fails when the pods are gone before it looks: that is the goal reached.
            Err(err) if err.stderr.contains("no matching resources found") => Ok(()),
            result => result.map(drop).map_err(Into::into),
        }
    }

    fn diagnostics(&self, sh: &Shell, dir: &Utf8Path) -> anyhow::Result<bool> {
        if self.ready_at.is_none() {
            println!(
                "    the cluster never became ready: nothing to collect beyond the error above"
            );
            return Ok(false);
        }
        let kind_sh = kind_shell(sh, self.settings.engine);
        let name = &self.settings.name;
        let kind_logs = dir.join("kind");
        save(
            dir,
            "kind-export.txt",
            step(cmd!(kind_sh, "kind export logs {kind_logs} --name {name}")).output(),
        )?;
        let kubectl = |args: &[&str]| step(self.kubectl(sh).args(args)).output();
        kubectl_diagnostics(dir, &self.settings.services, &["--all-namespaces"], kubectl)?;
        Ok(true)
    }

    fn teardown(&mut self, sh: &Shell, keep: bool) -> anyhow::Result<()> {
        if keep || self.reused {
            println!(
                "    keeping the cluster: export KUBECONFIG={}\n    delete it with: {}",
                self.kubeconfig,
                self.remove_command()
            );
            if self.deployed {
                let deployments =
                    self.settings.services.all().map(|s| format!("deployment/{}", s.name));
                println!(
                    "    if the services were scaled to zero to flush coverage, start them with: kubectl --kubeconfig {} scale {} --replicas=1",
                    self.kubeconfig,
                    deployments.join(" ")
                );
            }
            return Ok(());
        }
        self.delete_cluster(sh)?;
        println!("    deleted the cluster {}", self.settings.name);
        Ok(())
    }

    fn remove_command(&self) -> String {
        let env = provider(self.settings.engine)
            .map(|(key, value)| format!("{key}={value} "))
            .unwrap_or_default();
        format!("{env}kind {}", self.delete_args().join(" "))
    }

    fn exists(&self) -> bool {
        self.exists
    }

    fn deployed(&self) -> bool {
        self.deployed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, state: NodeState) -> Node {
        Node { name: name.into(), state }
    }

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
        let nodes = [
            node("cp", NodeState::Running),
            node("w1", NodeState::Other("exited".into())),
            node("w2", NodeState::Missing),
        ];
        assert_eq!(describe(&nodes), "cp is running, w1 is exited, w2 is missing");
        assert!(!all_running(&nodes));
        assert!(all_running(&nodes[..1]));
        assert!(!all_running(&[]), "a cluster without nodes cannot load");
        assert_eq!(describe(&[]), "it has no node containers");
    }

    #[test]
    fn the_printed_delete_command_names_the_provider_and_our_kubeconfig() {
        let settings = |engine| Settings {
            root: "/repo".into(),
            name: "e2e".into(),
            engine,
            node_image: None,
            registry: None,
            access: Default::default(),
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

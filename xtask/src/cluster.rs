//! Where the services run during an E2E run. Each backend owns its state and every command it
//! needs (create, load, deploy, stop, diagnose, tear down, find what an earlier run left), so the
//! pipeline in `e2e_gateway.rs` never asks which backend it has. A new backend is one new file
//! implementing `Cluster`, and one line in `pick`. What backends share lives here: the
//! templates, the diagnostics runner, and the kubectl steps of Kind and an existing cluster.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Cmd, Shell};

use crate::{
    build_images::Image,
    cmd::{step, Step},
    doctor::{Check, Needs},
    engine,
    flags::{ClusterAccess, ClusterBackend, Engine, Registry, Target},
    project::{self, Service, Services},
    ui,
};

mod existing;
mod kind;
mod podman;

pub use kind::{kind_shell, node_image as kind_node_image, node_minor as kind_node_minor};

/// Grace period for the services to flush their coverage counters when stopped.
const STOP_GRACE_SECONDS: u32 = 30;
const ROLLOUT_TIMEOUT: &str = "180s";

/// What every backend is told about the run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `kind`, `podman`, `existing`: `auto` resolved by `pick`.
    pub backend: ClusterBackend,
    pub root: Utf8PathBuf,
    /// `--cluster-name`: names the cluster (and everything else a backend creates).
    pub name: String,
    pub engine: Engine,
    pub services: Services,
    /// `--node-image`: Kind boots this instead of its default node image.
    pub node_image: Option<String>,
    /// `--registry`: the images come from there (and the manifests name it).
    pub registry: Option<Registry>,
    /// `--kubeconfig`, `--context` of an existing cluster.
    pub access: ClusterAccess,
    /// Why this backend: `--cluster kind`, or what `auto` found.
    pub why: String,
    /// Rendered manifests and configs: a directory of our own (see `podman::deploy`).
    rendered: Utf8PathBuf,
}

pub trait Cluster {
    fn settings(&self) -> &Settings;

    /// `kind`, `podman`, `existing`.
    fn name(&self) -> &'static str {
        self.settings().backend.name()
    }

    /// What the run needs of this machine (the engine, and what the backend adds to it), and
    /// the backend's own checks, beside doctor's: rows of the same table.
    fn preflight(&self, sh: &Shell, needs: &mut Needs) -> Vec<Check> {
        needs.engine = Some(self.settings().engine);
        self.needs_and_checks(sh, needs)
    }

    /// The tools this backend needs beside the engine, and its own checks.
    fn needs_and_checks(&self, _sh: &Shell, _needs: &mut Needs) -> Vec<Check> {
        Vec::new()
    }

    /// What an earlier run with our name left behind (a cluster, pods), said in a few words.
    /// None by default: a backend whose every run has a place of its own finds nothing.
    fn leftover(&self, _sh: &Shell) -> Result<Option<String>> {
        Ok(None)
    }

    /// Removes the leftover, or with `reuse` keeps it when healthy (stopping its services first
    /// when `coverage`, so they write their last counters). Returns whether it was kept. Called
    /// only when `leftover` found something.
    fn clear_leftover(&mut self, _sh: &Shell, _reuse: bool, _coverage: bool) -> Result<bool> {
        Ok(false)
    }

    /// Creates the cluster (unless one is kept for reuse).
    fn create(&mut self, sh: &Shell) -> Result<()>;

    /// The build phase saves each image to an archive this backend loads.
    fn needs_archives(&self) -> bool {
        false
    }

    /// Makes the images available to the cluster; returns the idle gap between the cluster
    /// becoming ready and the first load, where there is one.
    fn load(&mut self, sh: &Shell, images: &[Image]) -> Result<Option<Duration>>;

    /// The template values that differ between backends. By default those of a cluster (or a
    /// namespace) that is ours alone: the Kind config mounts coverdata/ at /coverdata in the
    /// node, the services find each other by name and keep their plain names.
    ///
    /// By name, through the cluster's DNS, although a new cluster makes that ready last: a pod
    /// that connects to a Service's cluster IP before kube-proxy has written its rules goes
    /// out of the node instead, and on machines whose network answers any address (a proxy) the
    /// wrong connection is kept alive for good. A name resolves only once the rules exist.
    fn template_vars(&self) -> Vec<(String, String)> {
        let port = self.settings().services.datastorage.container_port;
        vec![
            ("COVERDATA_NODE_PATH".into(), "/coverdata".into()),
            ("DATASTORAGE_URL".into(), format!("http://datastorage:{port}")),
            ("NAME_PREFIX".into(), String::new()),
        ]
    }

    /// Starts the services with these images, in dependency order, and returns when they are
    /// rolled out.
    fn deploy(&mut self, sh: &Shell, images: &[Image]) -> Result<()>;

    /// Stops the services gracefully and waits until they are gone: their coverage counters
    /// are written when they exit.
    fn stop_services(&mut self, sh: &Shell) -> Result<()>;

    /// Writes what explains a failure into `dir`; a command that fails here is noted in its
    /// file, not fatal. Returns false when there is nothing to collect (a cluster that never
    /// became ready).
    fn diagnostics(&self, sh: &Shell, dir: &Utf8Path) -> Result<bool>;

    /// Removes what this run created, or with `keep` says how to use and remove it later.
    /// Called only when something of ours may exist.
    fn teardown(&mut self, sh: &Shell, keep: bool) -> Result<()>;

    /// The command that removes everything this backend may have created.
    fn remove_command(&self) -> String;

    /// What of ours may exist now (see `State`).
    fn state(&self) -> State;

    /// test/infrastructure/`file` with its `${NAME}` tokens replaced by the backend's values and
    /// the run's; a token nobody provides is an error, not an empty string.
    fn render(&self, file: &str, images: &[Image]) -> Result<String> {
        let Settings { root, services, .. } = self.settings();
        let mut vars = self.template_vars();
        vars.push(("COVERDATA_HOST_PATH".into(), project::coverdata_dir(root).to_string()));
        vars.extend(services.all().map(|s| (s.port_variable(), s.host_port.to_string())));
        for image in images {
            let service = image.service.name.to_uppercase();
            vars.push((format!("{service}_IMAGE"), image.reference.clone()));
        }
        let source = project::infrastructure_dir(root).join(file);
        let mut text = std::fs::read_to_string(&source)
            .with_context(|| format!("reading {source}: restore it from version control"))?;
        for (name, value) in &vars {
            text = text.replace(&format!("${{{name}}}"), value);
        }
        if let Some(start) = text.find("${") {
            let token = text[start..].split('}').next().unwrap_or_default();
            let known = vars.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
            bail!("{source} uses {token}}}, which the xtask does not provide: use one of {known}");
        }
        Ok(text)
    }

    /// Each service's manifest, rendered for this backend and these images, `adapt`ed, and
    /// written to the rendered directory, in dependency order.
    fn manifests(&self, images: &[Image], adapt: fn(String) -> String) -> Result<Manifests> {
        let settings = self.settings();
        let mut files = Vec::new();
        for service in settings.services.all() {
            let name = format!("{}.yaml", service.name);
            let text = adapt(self.render(&name, images)?);
            files.push((service, write_file(&settings.rendered, &name, &text)?));
        }
        Ok(files)
    }
}

/// What of a backend's may exist, for the phases after a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct State {
    /// Something of ours may exist (diagnostics and teardown have work to do).
    pub exists: bool,
    /// The services were started (stopping them flushes coverage).
    pub deployed: bool,
}

/// The backend for `--cluster` and the engine it runs with: `auto` means kind when `kind` is on
/// PATH, else podman. Says which and why.
pub fn pick(
    sh: &Shell,
    target: &Target,
    root: &Utf8Path,
    services: Services,
) -> Result<Box<dyn Cluster>> {
    let engine = engine::resolve(target.engine);
    let (backend, why) = match target.cluster {
        ClusterBackend::Auto => match project::which("kind") {
            None => (ClusterBackend::Podman, "auto: kind is not on PATH".to_string()),
            // A Kind that cannot boot its node would fail only after the build.
            Some(path) => {
                let program = engine.program();
                let usable =
                    kind::boot_image(sh, engine, target.node_image.as_deref()).and_then(|image| {
                        let ready = kind::node_image_ready(sh, engine, &image);
                        ready.map(|_| image.clone()).map_err(|why| {
                            format!(
                                "{image} is not in {program}'s store and cannot be pulled ({why})"
                            )
                        })
                    });
                match usable {
                    Ok(image) => (
                        ClusterBackend::Kind,
                        format!("auto: kind found at {path}, node image {image}"),
                    ),
                    Err(why) => {
                        (ClusterBackend::Podman, format!("auto: kind found at {path}, but {why}"))
                    }
                }
            }
        },
        other => (other, format!("--cluster {}", other.name())),
    };
    let settings = |engine| Settings {
        backend,
        root: root.to_path_buf(),
        name: target.cluster_name.clone(),
        engine,
        services,
        node_image: target.node_image.clone(),
        registry: target.registry.clone(),
        access: target.access.clone(),
        why: why.clone(),
        rendered: project::xtask_dir(root).join("rendered"),
    };
    let cluster: Box<dyn Cluster> = match backend {
        // The pods run the images of podman's own store, whatever builds them.
        ClusterBackend::Podman if target.engine == Some(Engine::Docker) => bail!(
            "the podman backend runs images from podman's store, so it builds with podman: drop --engine docker, or use --cluster kind to run docker-built images on Kind"
        ),
        ClusterBackend::Podman => Box::new(podman::Podman::new(settings(Engine::Podman))),
        ClusterBackend::Existing => Box::new(existing::Existing::new(settings(engine))),
        _ => Box::new(kind::Kind::new(settings(engine))),
    };
    println!("cluster backend: {} ({why})", cluster.name());
    Ok(cluster)
}

/// Each service with its manifest file, in dependency order.
type Manifests = Vec<(Service, Utf8PathBuf)>;

/// Writes `text` to `dir/name`, creating `dir`.
pub fn write_file(dir: &Utf8Path, name: &str, text: &str) -> Result<Utf8PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {dir}: make target/ writable"))?;
    let path = dir.join(name);
    std::fs::write(&path, text)
        .with_context(|| format!("writing {path}: make target/ writable"))?;
    Ok(path)
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

    /// Applies each manifest (`deployed` once one is), then waits for each rollout.
    fn deploy(&self, sh: &Shell, files: &Manifests, deployed: &mut bool) -> Result<()> {
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
        step(apply).hint(format!("check the manifests and {check}")).run()?;
        *deployed = true;
        let names: Vec<&str> = files.iter().map(|(s, _)| s.name).collect();
        println!("    applied {} ({})", names.join(", "), ui::seconds(started.elapsed()));
        for (Service { name, .. }, _) in files {
            let started = Instant::now();
            let deployment = format!("deployment/{name}");
            let rollout = ["rollout", "status", &deployment, "--timeout", ROLLOUT_TIMEOUT];
            let fix = format!("{name} did not roll out within {ROLLOUT_TIMEOUT}: see the pod events and logs in the diagnostics{more}");
            step(self.services(sh).args(rollout)).hint(fix).run()?;
            println!("    {name} rolled out ({})", ui::seconds(started.elapsed()));
        }
        Ok(())
    }

    /// What kubectl tells about the services: pods, events, descriptions and each service's
    /// logs; of all namespaces where the cluster is ours alone.
    fn diagnostics(&self, sh: &Shell, services: &Services) -> Vec<(String, Step)> {
        let scope = if self.namespace.is_none() { &["--all-namespaces"][..] } else { &[] };
        let get = |what: &[&str]| step(self.services(sh).args(what).args(scope));
        let mut commands = vec![
            ("pods.txt".to_string(), get(&["get", "pods", "--output", "wide"])),
            ("events.txt".into(), get(&["get", "events", "--sort-by", ".lastTimestamp"])),
            ("describe-pods.txt".into(), step(self.services(sh).args(["describe", "pods"]))),
        ];
        for service in services.all() {
            let deployment = format!("deployment/{}", service.name);
            let logs = ["logs", &deployment, "--all-containers", "--timestamps"];
            commands.push((format!("{}.log", service.name), step(self.services(sh).args(logs))));
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            backend: ClusterBackend::Kind,
            root: Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf(),
            name: "gateway-e2e".into(),
            engine: Engine::Podman,
            node_image: None,
            registry: None,
            access: ClusterAccess::default(),
            why: String::new(),
            rendered: Utf8PathBuf::new(),
            services: Services {
                datastorage: project::DATASTORAGE,
                gateway: Service { host_port: 28080, ..project::GATEWAY },
            },
        }
    }

    fn images() -> Vec<Image> {
        project::SERVICES
            .iter()
            .map(|s| Image {
                service: *s,
                reference: format!("localhost/{}:e2e-0123456789ab", s.name),
                archive: None,
            })
            .collect()
    }

    /// The real templates: every token is provided on both backends, and the values that
    /// must differ do; a token nobody provides is named, with the ones we have.
    #[test]
    fn the_real_templates_render_for_both_backends() {
        let settings = settings();
        let kind = kind::Kind::new(settings.clone());
        let podman = podman::Podman::new(settings.clone());
        let mut rendered = Vec::new();
        for cluster in [&kind as &dyn Cluster, &podman] {
            let gateway = cluster.render("gateway.yaml", &images()).unwrap();
            assert!(gateway.contains("image: localhost/gateway:e2e-0123456789ab"));
            assert!(gateway.contains("hostPort: 28080"));
            assert!(gateway.contains("imagePullPolicy: IfNotPresent"));
            rendered.push(gateway);
        }
        let coverdata = project::coverdata_dir(&settings.root);
        assert!(rendered[0].contains("http://datastorage:8081"));
        assert!(rendered[0].contains("path: /coverdata\n"));
        assert!(rendered[1].contains("http://host.containers.internal:18081"));
        assert!(rendered[1].contains(&format!("path: {coverdata}\n")));
        let config = kind.render("kind-gateway-config.yaml", &[]).unwrap();
        assert!(config.contains(&format!("hostPath: {coverdata}\n")));
        assert!(config.contains("hostPort: 28080"));
        let err = kind.render("gateway.yaml", &[]).unwrap_err().to_string();
        assert!(err.contains("gateway.yaml uses ${GATEWAY_IMAGE}"), "{err}");
        assert!(err.contains("use one of COVERDATA_NODE_PATH, DATASTORAGE_URL"), "{err}");
    }
}

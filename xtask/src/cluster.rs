//! Where the services run during an E2E run. Each backend owns its state and every command it
//! needs (create, load, deploy, stop, diagnose, tear down, find what an earlier run left), so the
//! pipeline in `e2e_gateway.rs` never asks which backend it has. A new backend is one new file
//! implementing `Cluster`, and one line in `pick`.

use std::time::Duration;

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::Shell;

use crate::{
    build_images::Image,
    cmd::{CmdError, Output},
    doctor::{Check, Needs},
    engine,
    flags::{ClusterAccess, ClusterBackend, Engine, Registry, Target},
    project::{self, Service, Services},
};

mod existing;
mod kind;
mod podman;

pub use kind::{kind_shell, node_minor as kind_node_minor};

/// Grace period for the services to flush their coverage counters when stopped.
pub const STOP_GRACE_SECONDS: u32 = 30;

/// What every backend is told about the run.
#[derive(Debug, Clone)]
pub struct Settings {
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
}

impl Settings {
    /// Rendered manifests and configs: a directory of our own (see `podman::deploy`).
    pub fn rendered_dir(&self) -> Utf8PathBuf {
        project::xtask_dir(&self.root).join("rendered")
    }
}

/// A manifest of one service, rendered from test/infrastructure/<service>.yaml.
pub struct Manifest {
    pub service: Service,
    pub text: String,
}

pub trait Cluster {
    /// `kind`, `podman`.
    fn name(&self) -> &'static str;

    fn settings(&self) -> &Settings;

    /// The tools this backend needs, added to what every run needs.
    fn needs(&self, needs: &mut Needs);

    /// Checks of the backend's own, beside doctor's: rows of the same table.
    fn checks(&self, _sh: &Shell) -> Vec<Check> {
        Vec::new()
    }

    /// What an earlier run with our name left behind (a cluster, pods), said in a few words.
    fn leftover(&self, sh: &Shell) -> anyhow::Result<Option<String>>;

    /// Removes the leftover, or with `reuse` keeps it when healthy (stopping its services first
    /// when `coverage`, so they write their last counters). Returns whether it was kept.
    fn clear_leftover(&mut self, sh: &Shell, reuse: bool, coverage: bool) -> anyhow::Result<bool>;

    /// Creates the cluster (unless one is kept for reuse).
    fn create(&mut self, sh: &Shell) -> anyhow::Result<()>;

    /// The build phase saves each image to an archive this backend loads.
    fn needs_archives(&self) -> bool {
        false
    }

    /// Makes the images available to the cluster; returns the idle gap between the cluster
    /// becoming ready and the first load, where there is one.
    fn load(&mut self, sh: &Shell, images: &[Image]) -> anyhow::Result<Option<Duration>>;

    /// The template values that differ between backends (`COVERDATA_NODE_PATH`, ...).
    fn template_vars(&self) -> Vec<(String, String)>;

    /// Starts the services, in dependency order, and returns when they are rolled out.
    fn deploy(&mut self, sh: &Shell, manifests: &[Manifest]) -> anyhow::Result<()>;

    /// Stops the services gracefully and waits until they are gone: their coverage counters
    /// are written when they exit.
    fn stop_services(&mut self, sh: &Shell) -> anyhow::Result<()>;

    /// Writes what explains a failure into `dir`; a command that fails here is noted in its
    /// file, not fatal. Returns false when there is nothing to collect (a cluster that never
    /// became ready).
    fn diagnostics(&self, sh: &Shell, dir: &Utf8Path) -> anyhow::Result<bool>;

    /// Removes what this run created, or with `keep` says how to use and remove it later.
    /// Called only when something of ours may exist.
    fn teardown(&mut self, sh: &Shell, keep: bool) -> anyhow::Result<()>;

    /// The command that removes everything this backend may have created.
    fn remove_command(&self) -> String;

    /// Something of ours may exist (diagnostics and teardown have work to do).
    fn exists(&self) -> bool;

    /// The services were started (stopping them flushes coverage).
    fn deployed(&self) -> bool;
}

/// The backend for `--cluster` and the engine it runs with: `auto` means kind when `kind` is on
/// PATH, else podman. Says which and why.
pub fn pick(
    target: &Target,
    root: &Utf8Path,
    services: Services,
) -> anyhow::Result<Box<dyn Cluster>> {
    let settings = |engine| Settings {
        root: root.to_path_buf(),
        name: target.cluster_name.clone(),
        engine,
        services,
        node_image: target.node_image.clone(),
        registry: target.registry.clone(),
        access: target.access.clone(),
    };
    let engine = target.engine;
    let (backend, why) = match target.cluster {
        ClusterBackend::Auto => match project::which("kind") {
            Some(path) => (ClusterBackend::Kind, format!("auto: kind found at {path}")),
            None => (ClusterBackend::Podman, "auto: kind is not on PATH".to_string()),
        },
        other => (other, format!("--cluster {}", other.name())),
    };
    let cluster: Box<dyn Cluster> = match backend {
        ClusterBackend::Podman => {
            // The pods run the images of podman's own store, whatever builds them.
            if engine == Some(Engine::Docker) {
                bail!(
                    "the podman backend runs images from podman's store, so it builds with podman: drop --engine docker, or use --cluster kind to run docker-built images on Kind"
                );
            }
            Box::new(podman::Podman::new(settings(Engine::Podman)))
        }
        ClusterBackend::Existing => {
            Box::new(existing::Existing::new(settings(engine::resolve(engine))))
        }
        _ => Box::new(kind::Kind::new(settings(engine::resolve(engine)))),
    };
    println!("cluster backend: {} ({why})", cluster.name());
    Ok(cluster)
}

/// Values of the `${NAME}` tokens in test/infrastructure/: the backend's and the run's.
pub fn template_vars(
    cluster: &dyn Cluster,
    settings: &Settings,
    images: &[Image],
) -> Vec<(String, String)> {
    let mut vars = cluster.template_vars();
    vars.push((
        "COVERDATA_HOST_PATH".to_string(),
        project::coverdata_dir(&settings.root).to_string(),
    ));
    for service in settings.services.all() {
        vars.push((service.port_variable(), service.host_port.to_string()));
    }
    for image in images {
        vars.push((
            format!("{}_IMAGE", image.service.name.to_uppercase()),
            image.reference.clone(),
        ));
    }
    vars
}

/// The service manifests, rendered for this cluster and these images.
pub fn manifests(
    cluster: &dyn Cluster,
    settings: &Settings,
    images: &[Image],
) -> anyhow::Result<Vec<Manifest>> {
    let vars = template_vars(cluster, settings, images);
    settings
        .services
        .all()
        .into_iter()
        .map(|service| {
            let file = format!("{}.yaml", service.name);
            let text = render_file(&settings.root, &file, &vars)?;
            Ok(Manifest { service, text })
        })
        .collect()
}

/// test/infrastructure/`file` with its tokens replaced.
pub fn render_file(
    root: &Utf8Path,
    file: &str,
    vars: &[(String, String)],
) -> anyhow::Result<String> {
    let source = project::infrastructure_dir(root).join(file);
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("reading {source}: restore it from version control"))?;
    render(&source, &text, vars)
}

/// Replaces `${NAME}` tokens; a token nobody provides is an error, not an empty string.
fn render(source: &Utf8Path, text: &str, vars: &[(String, String)]) -> anyhow::Result<String> {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    if let Some(start) = out.find("${") {
        let token: String = out[start..].chars().take_while(|c| *c != '}').collect();
        let known: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        bail!(
            "{source} uses {token}}}, which the xtask does not provide: use one of {}",
            known.join(", ")
        );
    }
    Ok(out)
}

/// Writes `text` to `dir/name`, creating `dir`.
pub fn write_file(dir: &Utf8Path, name: &str, text: &str) -> anyhow::Result<Utf8PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {dir}: make target/ writable"))?;
    let path = dir.join(name);
    std::fs::write(&path, text)
        .with_context(|| format!("writing {path}: make target/ writable"))?;
    Ok(path)
}

/// What kubectl tells about the services, into `dir`: pods, events, descriptions and each
/// service's logs. `scope` is `--all-namespaces` where the cluster is ours alone.
fn kubectl_diagnostics(
    dir: &Utf8Path,
    services: &Services,
    scope: &[&str],
    kubectl: impl Fn(&[&str]) -> Result<Output, CmdError>,
) -> anyhow::Result<()> {
    let listed = |what: &[&str]| kubectl(&[what, scope].concat());
    save(dir, "pods.txt", listed(&["get", "pods", "--output", "wide"]))?;
    save(dir, "events.txt", listed(&["get", "events", "--sort-by", ".lastTimestamp"]))?;
    save(dir, "describe-pods.txt", kubectl(&["describe", "pods"]))?;
    for service in services.all() {
        let deployment = format!("deployment/{}", service.name);
        save(
            dir,
            &format!("{}.log", service.name),
            kubectl(&["logs", &deployment, "--all-containers", "--timestamps"]),
        )?;
    }
    Ok(())
}

/// Saves what a diagnostics command printed (or why it could not run) to `dir/file`.
fn save(dir: &Utf8Path, file: &str, result: Result<Output, CmdError>) -> anyhow::Result<()> {
    let text = match result {
        Ok(out) => format!("{}{}", out.stdout, out.stderr),
        Err(err) => format!("could not collect: {err}\n"),
    };
    write_file(dir, file, &text).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_replaces_tokens_and_rejects_unknown_ones() {
        let vars = vec![("GATEWAY_IMAGE".to_string(), "localhost/gateway:e2e-abc".to_string())];
        let source = Utf8Path::new("gateway.yaml");
        assert_eq!(
            render(source, "image: ${GATEWAY_IMAGE}\n", &vars).unwrap(),
            "image: localhost/gateway:e2e-abc\n"
        );
        let err = render(source, "url: ${NOPE}\n", &vars).unwrap_err().to_string();
        assert!(err.contains("gateway.yaml uses ${NOPE}"), "{err}");
        assert!(err.contains("GATEWAY_IMAGE"), "{err}");
    }

    fn settings() -> Settings {
        Settings {
            root: Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf(),
            name: "gateway-e2e".into(),
            engine: Engine::Podman,
            node_image: None,
            registry: None,
            access: ClusterAccess::default(),
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
    /// must differ do.
    #[test]
    fn the_real_templates_render_for_both_backends() {
        let settings = settings();
        let kind = kind::Kind::new(settings.clone());
        let podman = podman::Podman::new(settings.clone());
        let mut rendered = Vec::new();
        for cluster in [&kind as &dyn Cluster, &podman] {
            let manifests = manifests(cluster, &settings, &images()).unwrap();
            let gateway = &manifests[1];
            assert_eq!(gateway.service.name, "gateway");
            assert!(gateway.text.contains("image: localhost/gateway:e2e-0123456789ab"));
            assert!(gateway.text.contains("hostPort: 28080"));
            assert!(gateway.text.contains("imagePullPolicy: IfNotPresent"));
            rendered.push(gateway.text.clone());
        }
        let coverdata = project::coverdata_dir(&settings.root);
        assert!(rendered[0].contains("http://datastorage:8081"));
        assert!(rendered[0].contains("path: /coverdata\n"));
        assert!(rendered[1].contains("http://host.containers.internal:18081"));
        assert!(rendered[1].contains(&format!("path: {coverdata}\n")));
        let vars = template_vars(&kind, &settings, &[]);
        let config = render_file(&settings.root, "kind-gateway-config.yaml", &vars).unwrap();
        assert!(config.contains(&format!("hostPath: {coverdata}\n")));
        assert!(config.contains("hostPort: 28080"));
    }
}

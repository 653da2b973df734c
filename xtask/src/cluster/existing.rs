//! `--cluster existing`: a Kubernetes cluster that is already there, shared with other runs.
//! Each run gets a namespace of its own (`e2e-<time>-<hash>`), the images come from
//! `--registry`, the suite reaches the services through `kubectl port-forward`, and the
//! coverage counters come home through the services' own endpoint (coverage builds only; see
//! internal/server/coverdata.go) before the namespace goes: there is no disk to share.

use std::{io::Read as _, net::TcpStream, time::Duration};

use anyhow::{bail, Context};
use camino::Utf8Path;
use sha2::{Digest, Sha256};
use xshell::{cmd, Cmd, Shell};

use super::{kubectl_diagnostics, write_file, Cluster, Manifest, Settings};
use crate::{
    build_images::Image,
    cmd::{step, Running},
    doctor::{Check, Needs},
    project::{self, Service},
};

const ROLLOUT_TIMEOUT: &str = "180s";

pub struct Existing {
    settings: Settings,
    namespace: String,
    forwards: Vec<Running>,
    exists: bool,
    deployed: bool,
}

impl Existing {
    /// The services are reached on free local ports (the forwards), not on host ports.
    pub fn new(mut settings: Settings) -> Existing {
        let stamp = project::utc_timestamp(std::time::SystemTime::now()).to_lowercase();
        let run = format!("{}:{}:{stamp}", settings.root, std::process::id());
        let namespace = format!("e2e-{stamp}-{}", &project::hex(&Sha256::digest(run))[..6]);
        for service in [&mut settings.services.datastorage, &mut settings.services.gateway] {
            service.host_port = free_port().unwrap_or(service.host_port);
        }
        Existing { settings, namespace, forwards: Vec::new(), exists: false, deployed: false }
    }

    /// kubectl on the chosen kubeconfig and context (never changing either); its discovery
    /// cache stays under target/.
    fn kubectl<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        let cache = project::xtask_dir(&self.settings.root).join("kube-cache");
        let access = self.access_args();
        cmd!(sh, "kubectl {access...} --cache-dir {cache}")
    }

    fn access_args(&self) -> Vec<String> {
        let access = &self.settings.access;
        let mut args = Vec::new();
        if let Some(kubeconfig) = &access.kubeconfig {
            args.extend(["--kubeconfig".to_string(), kubeconfig.to_string()]);
        }
        if let Some(context) = &access.context {
            args.extend(["--context".to_string(), context.clone()]);
        }
        args
    }

    /// kubectl in our namespace.
    fn in_namespace<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        self.kubectl(sh).args(["--namespace", &self.namespace])
    }

    /// The Namespace, labelled so that a user can find the runs of a checkout or a user.
    fn namespace_manifest(&self) -> String {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let user: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(63)
            .collect();
        let checkout = &project::hex(&Sha256::digest(self.settings.root.as_str()))[..12];
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:\n    e2e.xtask/user: \"{user}\"\n    e2e.xtask/checkout: \"{checkout}\"\n  annotations:\n    e2e.xtask/checkout-path: \"{}\"\n",
            self.namespace, self.settings.root
        )
    }
}

impl Cluster for Existing {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn name(&self) -> &'static str {
        "existing"
    }

    fn needs(&self, needs: &mut Needs) {
        needs.engine = Some(self.settings.engine);
        needs.kubectl = true;
        // The services are reached through forwards on free local ports.
        needs.ports.clear();
    }

    /// The context, the API, the permission to create namespaces, and a registry.
    fn checks(&self, sh: &Shell) -> Vec<Check> {
        let mut checks = Vec::new();
        checks.push(match &self.settings.registry {
            Some(registry) => Check::ok("registry", format!("{} (the cluster pulls from it)", registry.host)),
            None => Check::fail(
                "registry",
                "none given: an existing cluster cannot see this machine's images",
                "give --registry HOST[:PORT][/PREFIX] (or E2E_REGISTRY) that the cluster can pull from",
            ),
        });
        let context = match &self.settings.access.context {
            Some(context) => Ok(context.clone()),
            None => step(self.kubectl(sh).args(["config", "current-context"])).read(),
        };
        let context = match context {
            Ok(context) => {
                checks.push(Check::ok("context", context.clone()));
                context
            }
            Err(err) => {
                checks.push(Check::fail(
                    "context",
                    err.one_line(),
                    "pass --context NAME (and --kubeconfig PATH) for the cluster to use",
                ));
                return checks;
            }
        };
        let version = step(self.kubectl(sh).args(["get", "--raw", "/version"]))
            .timeout(Duration::from_secs(30))
            .read();
        match version {
            Ok(_) => checks.push(Check::ok("cluster api", format!("{context} answers"))),
            Err(err) => {
                checks.push(Check::fail(
                    "cluster api",
                    err.one_line(),
                    format!("check that {context} is up and your credentials are valid: `kubectl --context {context} get --raw /version`"),
                ));
                return checks;
            }
        }
        let may = step(self.kubectl(sh).args(["auth", "can-i", "create", "namespaces"])).output();
        checks.push(match may {
            Ok(out) if out.stdout.trim() == "yes" => {
                Check::ok("namespaces", "this user may create them")
            }
            Ok(out) => Check::fail(
                "namespaces",
                format!("this user may not create namespaces on {context} ({})", out.stdout.trim()),
                "each run deploys into a namespace of its own: ask the cluster's admins for a role that may create namespaces, or use a context that has one",
            ),
            Err(err) => Check::fail("namespaces", err.one_line(), "run `kubectl auth can-i create namespaces` to see why"),
        });
        checks
    }

    /// Every run has a namespace of its own: nothing of another run is in our way.
    fn leftover(&self, _sh: &Shell) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    fn clear_leftover(
        &mut self,
        _sh: &Shell,
        _reuse: bool,
        _coverage: bool,
    ) -> anyhow::Result<bool> {
        Ok(false)
    }

    fn create(&mut self, sh: &Shell) -> anyhow::Result<()> {
        let file = write_file(
            &self.settings.rendered_dir(),
            "namespace.yaml",
            &self.namespace_manifest(),
        )?;
        self.exists = true;
        step(self.kubectl(sh).args(["create", "-f", file.as_str()]))
            .hint("check the permissions with `cargo xtask doctor --cluster existing`")
            .run()?;
        println!("    created the namespace {}", self.namespace);
        Ok(())
    }

    fn load(&mut self, _sh: &Shell, _images: &[Image]) -> anyhow::Result<Option<Duration>> {
        println!("    the cluster pulls the images from the registry");
        Ok(None)
    }

    fn template_vars(&self) -> Vec<(String, String)> {
        vec![
            // Replaced by an emptyDir (see `shared_cluster_manifest`): no disk is shared.
            ("COVERDATA_NODE_PATH".into(), "/coverdata".into()),
            (
                "DATASTORAGE_URL".into(),
                format!("http://datastorage:{}", self.settings.services.datastorage.container_port),
            ),
            ("NAME_PREFIX".into(), String::new()),
        ]
    }

    fn deploy(&mut self, sh: &Shell, manifests: &[Manifest]) -> anyhow::Result<()> {
        let dir = self.settings.rendered_dir();
        for manifest in manifests {
            let name = format!("{}.yaml", manifest.service.name);
            let file = write_file(&dir, &name, &shared_cluster_manifest(&manifest.text))?;
            step(self.in_namespace(sh).args(["apply", "-f", file.as_str()]))
                .hint("check the manifest and your permissions in the namespace")
                .run()?;
            self.deployed = true;
        }
        for manifest in manifests {
            let deployment = format!("deployment/{}", manifest.service.name);
            step(self.in_namespace(sh).args(["rollout", "status", &deployment, "--timeout", ROLLOUT_TIMEOUT]))
                .hint(format!(
                    "{} did not roll out within {ROLLOUT_TIMEOUT}: see the pod events and logs in the diagnostics (can the cluster pull from the registry?)",
                    manifest.service.name
                ))
                .run()?;
        }
        // The suite reaches each service on a local port of its own.
        for service in self.settings.services.all() {
            let deployment = format!("deployment/{}", service.name);
            let ports = format!("{}:{}", service.host_port, service.container_port);
            let forward = self.in_namespace(sh).args([
                "port-forward",
                "--address",
                "127.0.0.1",
                &deployment,
                &ports,
            ]);
            self.forwards.push(step(forward).spawn());
        }
        Ok(())
    }

    /// Fetches the counters from each service (they keep running; the namespace goes at
    /// teardown) into coverdata/<service>/, where covdata-report reads them as always.
    fn stop_services(&mut self, _sh: &Shell) -> anyhow::Result<()> {
        for service in self.settings.services.all() {
            let dir = project::coverdata_dir(&self.settings.root).join(service.name);
            fetch_counters(service, &dir)?;
        }
        Ok(())
    }

    fn diagnostics(&self, sh: &Shell, dir: &Utf8Path) -> anyhow::Result<bool> {
        let kubectl = |args: &[&str]| step(self.in_namespace(sh).args(args)).output();
        kubectl_diagnostics(dir, &self.settings.services, &[], kubectl)?;
        Ok(true)
    }

    fn teardown(&mut self, sh: &Shell, keep: bool) -> anyhow::Result<()> {
        for forward in self.forwards.drain(..) {
            forward.stop();
        }
        if keep {
            println!(
                "    keeping the namespace {}: delete it with: {}",
                self.namespace,
                self.remove_command()
            );
            return Ok(());
        }
        // The cluster finishes deleting in the background; nothing of ours waits on it.
        step(self.kubectl(sh).args(["delete", "namespace", &self.namespace, "--wait=false"]))
            .hint(format!("delete it with `{}`", self.remove_command()))
            .run()?;
        println!("    deleted the namespace {} (only it)", self.namespace);
        Ok(())
    }

    fn remove_command(&self) -> String {
        let mut words = vec!["kubectl".to_string()];
        words.extend(self.access_args());
        words.extend(["delete", "namespace", &self.namespace].map(String::from));
        words.join(" ")
    }

    fn exists(&self) -> bool {
        self.exists
    }

    fn deployed(&self) -> bool {
        self.deployed
    }
}

/// The manifest for a cluster we share: no host ports (nodes are not ours), and an emptyDir
/// instead of the hostPath into coverdata/ (no disk is shared; the counters come over HTTP).
fn shared_cluster_manifest(manifest: &str) -> String {
    let mut out = String::new();
    let mut skip_below: Option<usize> = None;
    for line in manifest.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(depth) = skip_below {
            if indent > depth {
                continue;
            }
            skip_below = None;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("hostPort:") {
            continue;
        }
        if trimmed == "hostPath:" {
            out.push_str(&format!("{}emptyDir: {{}}\n", &line[..indent]));
            skip_below = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// GETs the service's counters through its forward and unpacks them into `dir`.
fn fetch_counters(service: Service, dir: &Utf8Path) -> anyhow::Result<()> {
    let path = "/debug/coverdata";
    let fetch = || -> std::io::Result<(String, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", service.host_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        std::io::Write::write_all(
            &mut stream,
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(response.len());
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let body = response.get(split + 4..).unwrap_or_default().to_vec();
        Ok((head, body))
    };
    let (head, body) = fetch().with_context(|| {
        format!("fetching the coverage counters of {} through 127.0.0.1:{} failed: is its port-forward still up? see the diagnostics", service.name, service.host_port)
    })?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        bail!(
            "{} answered `{status}` on {path}: {}; was it built with --coverage (the endpoint is in coverage builds only)?",
            service.name,
            String::from_utf8_lossy(&body).trim()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {dir}: make coverdata/ writable"))?;
    tar::Archive::new(body.as_slice())
        .unpack(dir)
        .with_context(|| format!("unpacking the counters of {} into {dir}", service.name))?;
    println!("    fetched the coverage counters of {}", service.name);
    Ok(())
}

fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_cluster_manifests_have_no_host_ports_or_host_paths() {
        let manifest = [
            "          ports:",
            "            - containerPort: 8080",
            "              hostPort: 18080",
            "              protocol: TCP",
            "      volumes:",
            "        - name: coverdata",
            "          hostPath:",
            "            path: /coverdata",
            "            type: Directory",
            "---",
            "kind: Service",
        ]
        .join("\n");
        expect_test::expect![[r#"
                      ports:
                        - containerPort: 8080
                          protocol: TCP
                  volumes:
                    - name: coverdata
                      emptyDir: {}
            ---
            kind: Service
        "#]]
        .assert_eq(&shared_cluster_manifest(&manifest));
    }
}

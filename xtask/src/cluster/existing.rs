//! `--cluster existing`: a Kubernetes cluster that is already there, shared with other runs.
//! Each run gets a namespace of its own (`e2e-<time>-<hash>`), the images come from
//! `--registry`, the suite reaches the services through `kubectl port-forward`, and the
//! coverage counters come home through the services' own endpoint (coverage builds only; see
//! internal/server/coverdata.go) before the namespace goes: there is no disk to share.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;
use serde_norway::Value;
use sha2::{Digest, Sha256};
use xshell::Shell;

use super::{
    collect, Clear, Cluster, DeployError, Diagnose, Kubectl, Leftover, Preflight, Settings,
};
use crate::{
    build_images::Image,
    check::{Check, Needs, Writes},
    cmd::{step, Running},
    http,
    manifests::{self, Document, Placement},
    project::{self, write_file},
    suite::Component,
};

pub struct Existing {
    settings: Settings,
    namespace: String,
    kubectl: Kubectl,
    forwards: Vec<Running>,
}

impl Existing {
    /// The services' ports in `settings` are free local ones (`pick` chose them): the forwards.
    pub fn new(settings: Settings) -> Existing {
        let stamp = project::utc_timestamp(std::time::SystemTime::now()).to_lowercase();
        let run = format!("{}:{}:{stamp}", settings.root, std::process::id());
        let namespace = format!("e2e-{stamp}-{}", &project::hex(&Sha256::digest(run))[..6]);
        let kubectl = Kubectl::new(&settings.root, &settings.access, Some(namespace.clone()));
        Existing { settings, namespace, kubectl, forwards: Vec::new() }
    }
}

impl Existing {
    /// The backend's own rows: a registry, the context, the API, the right to make namespaces.
    fn checks(&self, sh: &Shell) -> Vec<Check> {
        let none = "none given: an existing cluster cannot see this machine's images";
        let fix =
            "give --registry HOST[:PORT][/PREFIX] (or E2E_REGISTRY) that the cluster can pull from";
        let mut checks = vec![match self.settings.registry.as_ref().map(|r| &r.host) {
            Some(host) => Check::ok("registry", format!("{host} (the cluster pulls from it)")),
            None => Check::fail("registry", none, fix),
        }];
        let kubectl = |args: &[&str]| step(self.kubectl.cmd(sh).args(args));
        let file = self.settings.access.kubeconfig.as_ref();
        // Every command we suggest reads the same file the run does.
        let with_file = file.map(|f| format!(" --kubeconfig {f}")).unwrap_or_default();
        let source = file
            .map_or("kubectl's configuration (KUBECONFIG, else ~/.kube/config)".into(), |f| {
                f.to_string()
            });
        let fix_file = "point --kubeconfig at a valid kubeconfig file (for a Kind cluster `kind get kubeconfig --name NAME > FILE` writes one)";
        // Each check needs the one before it: the first that fails is the last row.
        let mut rows = || -> Result<(), Check> {
            // kubectl reads a missing kubeconfig as an empty one, which has no current context.
            if let Some(Err(err)) = file.map(std::fs::metadata) {
                let detail = match err.kind() {
                    std::io::ErrorKind::NotFound => format!("{source} does not exist"),
                    _ => format!("{source} cannot be read: {err}"),
                };
                return Err(Check::fail("kubeconfig", detail, fix_file));
            }
            let names = "--output=jsonpath={.current-context}{\"\\n\"}{range .contexts[*]}{.name}{\"\\n\"}{end}";
            // Not `read`: its trim would take the empty first line of no current context.
            let read = kubectl(&["config", "view", names]).run().map(|out| out.stdout);
            let read = read.map_err(|err| {
                let said = err.cause().unwrap_or("(nothing)").trim_start_matches("error: ");
                let detail = format!("{source} is not a kubeconfig: kubectl says `{said}`");
                Check::fail("kubeconfig", detail, fix_file)
            })?;
            let mut lines = read.lines().map(str::trim);
            let current = lines.next().unwrap_or_default().to_string();
            let contexts: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
            if contexts.is_empty() {
                let detail =
                    format!("{source} has no contexts: it is not a kubeconfig, or an empty one");
                return Err(Check::fail("kubeconfig", detail, fix_file));
            }
            checks
                .push(Check::ok("kubeconfig", format!("{source}: {} context(s)", contexts.len())));
            let has = contexts.join(", ");
            let list = format!("`kubectl{with_file} config get-contexts` lists them");
            let context = match &self.settings.access.context {
                Some(given) if contexts.contains(&given.as_str()) => given.clone(),
                Some(given) => {
                    let detail = format!("{source} has no context {given}; its contexts: {has}");
                    let fix = format!("pass one of them with --context ({list}), or point --kubeconfig at the file that has {given}");
                    return Err(Check::fail("context", detail, fix));
                }
                None if current.is_empty() => {
                    let detail = format!("{source} sets no current context; its contexts: {has}");
                    return Err(Check::fail(
                        "context",
                        detail,
                        format!("pass one of them with --context ({list})"),
                    ));
                }
                None if !contexts.contains(&current.as_str()) => {
                    let detail = format!(
                        "{source}'s current context {current} is not one of its contexts: {has}"
                    );
                    return Err(Check::fail(
                        "context",
                        detail,
                        format!("pass one of them with --context ({list})"),
                    ));
                }
                None => current,
            };
            checks.push(Check::ok("context", &context));
            let access = format!("kubectl{with_file} --context {context}");
            let fix = format!("check that {context} is up and your credentials are valid: `{access} get --raw /version` says why");
            let version = kubectl(&["get", "--raw", "/version"]).timeout(Duration::from_secs(30));
            version.read().map_err(|err| Check::fail("cluster api", err.one_line(), fix))?;
            checks.push(Check::ok("cluster api", format!("{context} answers")));
            let fix = format!("run `{access} auth can-i create namespaces` to see why");
            let may = kubectl(&["auth", "can-i", "create", "namespaces"]).output();
            let may = may.map_err(|err| Check::fail("namespaces", err.one_line(), fix))?;
            let answer = may.stdout.trim();
            if answer != "yes" {
                let fix = "each run deploys into a namespace of its own: ask the cluster's admins for a role that may create namespaces, or use a context that has one";
                let detail = format!("this user may not create namespaces on {context} ({answer})");
                return Err(Check::fail("namespaces", detail, fix));
            }
            checks.push(Check::ok("namespaces", "this user may create them"));
            Ok(())
        };
        if let Err(failed) = rows() {
            checks.push(failed);
        }
        checks
    }
}

impl Cluster for Existing {
    /// kubectl, no host ports (the services are reached through forwards on free local
    /// ports); a registry, then the context, the API and the permission to create namespaces:
    /// each of these needs the one before it, so the first that fails is the last row.
    fn preflight(&self, sh: &Shell) -> Preflight {
        let writes = vec![Writes::Dir(self.kubectl.cache.clone())];
        let needs =
            Needs { engine: Some(self.settings.engine), kubectl: true, writes, ..Needs::default() };
        Preflight { needs, checks: self.checks(sh), archives: false }
    }

    /// Every run has a namespace of its own: nothing of an earlier one is in its way.
    fn leftover(&self, _sh: &Shell) -> Result<Leftover> {
        Ok(Leftover::Nothing)
    }

    fn clear_leftover(&mut self, _sh: &Shell, _how: Clear) -> Result<Clear> {
        Ok(Clear::Remove)
    }

    /// Creates the run's namespace, labelled so that a user can find the runs of a checkout or a
    /// user.
    fn create(&mut self, sh: &Shell) -> Result<()> {
        let (namespace, root) = (&self.namespace, &self.settings.root);
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        // A label value: letters, digits and dashes, at most 63 of them.
        let user = user.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
        let user = &user[..user.len().min(63)];
        let checkout = &project::hex(&Sha256::digest(root.as_str()))[..12];
        let manifest = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels:\n    e2e.xtask/user: \"{user}\"\n    e2e.xtask/checkout: \"{checkout}\"\n  annotations:\n    e2e.xtask/checkout-path: \"{root}\"\n"
        );
        let file = write_file(&self.settings.rendered, "namespace.yaml", &manifest)?;
        let access = self.kubectl.access.iter().map(|a| format!(" {a}")).collect::<String>();
        step(self.kubectl.cmd(sh).args(["create", "-f", file.as_str()]))
            .hint(format!("this user may need the right to create namespaces: `kubectl{access} auth can-i create namespaces` says whether it has it"))
            .run()?;
        println!("    created the namespace {namespace}");
        Ok(())
    }

    fn load(&mut self, _sh: &Shell, _images: &[Image]) -> Result<Option<Duration>> {
        println!("    the cluster pulls the images from the registry");
        Ok(None)
    }

    fn deploy(&mut self, sh: &Shell, images: &[Image]) -> Result<(), DeployError> {
        let settings = &self.settings;
        let vars =
            manifests::values(&settings.root, &settings.suite, &Placement::own_cluster(), images);
        let files = manifests::write(
            &settings.rendered,
            &settings.root,
            &settings.suite,
            &vars,
            |documents| documents.into_iter().map(shared_cluster_document).collect(),
        )
        .map_err(DeployError::before_start)?;
        self.kubectl.deploy(sh, &files)?;
        // The suite reaches each service on a local port of its own.
        for service in &self.settings.suite.components {
            let deployment = format!("deployment/{}", service.name);
            let ports = format!("{}:{}", service.host_port, service.port);
            let forward = ["port-forward", "--address", "127.0.0.1", &deployment, &ports];
            self.forwards.push(step(self.kubectl.services(sh).args(forward)).spawn());
        }
        Ok(())
    }

    /// GETs each service's counters through its forward (the services keep running; the
    /// namespace goes at teardown) and unpacks them into coverdata/<service>/, where
    /// covdata-report reads them as always.
    fn flush_coverage(&mut self, _sh: &Shell) -> Result<()> {
        let path = "/debug/coverdata";
        let covered = self.settings.suite.components.iter().filter(|c| c.covered());
        for component in covered {
            let (name, port) = (&component.name, component.host_port);
            let host = format!("127.0.0.1:{port}");
            let fetched = http::request(&host, &format!("GET {path}"), "", Duration::from_secs(60));
            let response = fetched.with_context(|| {
                format!("fetching the coverage counters of {name} through {host} failed: is its port-forward still up? see the diagnostics")
            })?;
            let (status, body) = (response.status, response.body.as_slice());
            let said = String::from_utf8_lossy(body);
            let said = said.trim();
            match response.code {
                200 => {}
                404 => bail!("{name} has no {path} (`{status}`): it was built without coverage; rebuild with `--coverage` (the endpoint is in coverage builds only)"),
                _ => bail!("{name} could not hand over its coverage counters (`{status}` on {path}): {said}; its log is in the diagnostics, and a coverage build of this checkout's internal/server serves them from memory (rebuild the image if it is older)"),
            }
            let suite = &self.settings.suite.name;
            let dir = project::suite_coverdata(&self.settings.root, suite).join(name);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating {dir}: make coverdata/ writable"))?;
            tar::Archive::new(body)
                .unpack(&dir)
                .with_context(|| format!("unpacking the counters of {name} into {dir}"))?;
            println!("    fetched the coverage counters of {name}");
        }
        Ok(())
    }

    fn diagnostics(&self, sh: &Shell, dir: &Utf8Path, what: Diagnose) -> Result<bool> {
        collect(dir, self.kubectl.diagnostics(sh, &self.settings.suite, what))
    }

    fn teardown(&mut self, sh: &Shell, keep: bool) -> Result<()> {
        self.forwards.drain(..).for_each(Running::stop);
        let (namespace, remove) = (&self.namespace, self.remove_command());
        if keep {
            println!("    keeping the namespace {namespace}: delete it with: {remove}");
            return Ok(());
        }
        // The cluster finishes deleting in the background; nothing of ours waits on it.
        let delete = self.kubectl.cmd(sh).args(["delete", "namespace", namespace, "--wait=false"]);
        step(delete).hint(format!("delete it with `{remove}`")).run()?;
        println!("    deleted the namespace {namespace} (only it)");
        Ok(())
    }

    fn remove_command(&self) -> String {
        let access = self.kubectl.access.iter().map(|a| format!(" {a}")).collect::<String>();
        format!("kubectl{access} delete namespace {}", self.namespace)
    }

    /// A restarted pod would take its port-forward with it.
    fn restart_command(&self, _component: &Component) -> Option<Vec<String>> {
        None
    }
}

/// A document for a cluster we share: no host ports (nodes are not ours), and an emptyDir
/// instead of the hostPath into coverdata/ (no disk is shared; the counters come over HTTP).
/// The change is made line by line, which sees block style only: the result is read again, and
/// a `hostPort` or `hostPath` it left (in flow style, say) is an error, not a pod that cannot
/// be scheduled.
fn shared_cluster_document(document: Document) -> Result<Document> {
    let text = shared_cluster_manifest(document.text);
    let value: Value = serde_norway::from_str(&text)
        .context("the manifest with its host ports and host paths removed is no YAML document: write its ports and volumes in block style, one key per line")?;
    let kind = document.kind.as_deref().unwrap_or("a");
    if let Some(key) = ["hostPort", "hostPath"].into_iter().find(|key| has_key(&value, key)) {
        bail!("its {kind} document keeps a {key} that the xtask could not remove for a shared cluster: write its ports and volumes in block style, one key per line");
    }
    Ok(Document { text, ..document })
}

/// Whether `key` is a key of any mapping in `value`.
fn has_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Mapping(map) => map.iter().any(|(k, v)| k.as_str() == Some(key) || has_key(v, key)),
        Value::Sequence(items) => items.iter().any(|item| has_key(item, key)),
        Value::Tagged(tagged) => has_key(&tagged.value, key),
        _ => false,
    }
}

/// `shared_cluster_document`'s change, line by line.
fn shared_cluster_manifest(manifest: String) -> String {
    let mut out = String::new();
    let mut skip_below: Option<usize> = None;
    for line in manifest.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if skip_below.is_some_and(|depth| indent > depth) {
            continue;
        }
        skip_below = (trimmed == "hostPath:").then_some(indent);
        if skip_below.is_some() {
            out += &format!("{}emptyDir: {{}}\n", &line[..indent]);
        } else if !trimmed.starts_with("hostPort:") {
            out += &format!("{line}\n");
        }
    }
    out
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
        .assert_eq(&shared_cluster_manifest(manifest));
    }

    /// The line-by-line change sees block style only: a host port written in flow style is
    /// found in the document read again, and refused with the fix.
    #[test]
    fn a_host_port_the_change_cannot_remove_is_refused() {
        let block = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: a\n      ports:\n        - containerPort: 8080\n          hostPort: 18080\n";
        let read = |text: &str| manifests::documents("m.yaml".into(), text).unwrap().remove(0);
        let shared = shared_cluster_document(read(block)).unwrap();
        assert!(!shared.text.contains("hostPort"), "{}", shared.text);
        let flow = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: a\n      ports: [{containerPort: 8080, hostPort: 18080}]\n";
        let err = shared_cluster_document(read(flow)).unwrap_err().to_string();
        assert_eq!(err, "its Pod document keeps a hostPort that the xtask could not remove for a shared cluster: write its ports and volumes in block style, one key per line");
    }
}

//! An E2E suite, declared in `test/e2e/<suite>/suite.toml`: the services it deploys (built from
//! this repository) and the third-party images it runs beside them, each with its manifest,
//! ports, readiness and dependencies; its Kind configuration; its tests and how they run. The
//! xtask knows suites only through these files: a new suite is a file, manifests and tests.
//!
//! A file that cannot be used fails with the file, the line and what to write instead.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Deserialize;
use toml::Spanned;

use crate::registry::image_reference;

/// Where the suites live, each in a directory of its own with its `suite.toml`.
pub const SUITES_DIR: &str = "test/e2e";
const FILE: &str = "suite.toml";

#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    /// The directory's name.
    pub name: String,
    /// `test/e2e/<name>/suite.toml`, relative to the project root.
    pub file: Utf8PathBuf,
    pub description: String,
    /// The Kind configuration template, relative to the project root.
    pub kind_config: Utf8PathBuf,
    pub tests: Tests,
    /// What it deploys, in dependency order: what another depends on comes first.
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tests {
    /// The Go package pattern of the tests, as `go test` takes it.
    pub package: String,
    pub runner: Runner,
    /// Ginkgo: the default `--label-filter`.
    pub labels: Option<String>,
    /// Ginkgo: the default `--procs`.
    pub procs: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runner {
    /// `go test -json` through gotestsum.
    #[default]
    GoTest,
    /// The ginkgo CLI.
    Ginkgo,
}

/// A service of ours or a third-party image, as the suite deploys it.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub name: String,
    pub source: Source,
    /// Its Kubernetes manifest template, relative to the project root.
    pub manifest: Utf8PathBuf,
    /// The port it listens on in its container.
    pub port: u16,
    /// Where the tests reach it on this machine (a Kind port mapping, a podman host port).
    pub host_port: u16,
    pub ready: Ready,
    pub depends_on: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Built from this repository.
    Build(Build),
    /// A third-party image, used as it is: never rebuilt.
    Image(String),
}

/// How a service of ours is built: `go build` of `package` (host mode), or `dockerfile`
/// (container mode); `coverage`: an instrumented build with `--coverage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub package: String,
    pub dockerfile: Utf8PathBuf,
    pub coverage: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// `GET` this path answers 200.
    Http(String),
    /// The port takes a connection.
    Tcp,
}

impl Component {
    /// `<NAME>_<what>`: the variables that carry this component's values, in the templates
    /// and for the tests (`DATASTORAGE_HOST_PORT`, `DATASTORAGE_URL`).
    pub fn variable(&self, what: &str) -> String {
        format!("{}_{what}", self.name.to_uppercase().replace('-', "_"))
    }

    pub fn build(&self) -> Option<&Build> {
        match &self.source {
            Source::Build(build) => Some(build),
            Source::Image(_) => None,
        }
    }

    /// A service of ours built with coverage: it writes counters.
    pub fn covered(&self) -> bool {
        self.build().is_some_and(|b| b.coverage)
    }
}

impl Suite {
    /// A suite that deploys nothing, for tests of what does not depend on one.
    #[cfg(test)]
    pub fn empty(name: &str) -> Suite {
        Suite {
            name: name.to_string(),
            file: Utf8PathBuf::new(),
            description: String::new(),
            kind_config: Utf8PathBuf::new(),
            tests: Tests {
                package: String::new(),
                runner: Runner::GoTest,
                labels: None,
                procs: None,
            },
            components: Vec::new(),
        }
    }

    /// The services built from this repository, in dependency order.
    pub fn services(&self) -> impl Iterator<Item = &Component> {
        self.components.iter().filter(|c| c.build().is_some())
    }

    /// With `<NAME>_HOST_PORT` from `env` where set: the way to move one when its default is
    /// taken on this machine (and to run suites side by side).
    pub fn with_host_ports(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Suite> {
        for component in &mut self.components {
            let var = component.variable("HOST_PORT");
            let Some(value) = env(&var).filter(|v| !v.is_empty()) else { continue };
            match value.parse::<u16>() {
                Ok(port) if port > 0 => component.host_port = port,
                _ => bail!("{var}={value} is not a port number from 1 to 65535: set it to a free port like {}", component.host_port),
            }
        }
        let mut seen: BTreeMap<u16, &Component> = BTreeMap::new();
        for component in &self.components {
            if let Some(other) = seen.insert(component.host_port, component) {
                let (a, b, port) = (&other.name, &component.name, component.host_port);
                let (var_a, var_b) = (other.variable("HOST_PORT"), component.variable("HOST_PORT"));
                bail!("{a} and {b} would both use host port {port}: set {var_a} or {var_b} to another free port");
            }
        }
        Ok(self)
    }
}

/// Every suite of the project, by name.
pub fn all(root: &Utf8Path) -> Result<Vec<Suite>> {
    let dir = root.join(SUITES_DIR);
    let entries = dir
        .read_dir_utf8()
        .with_context(|| format!("reading {dir}: run the xtask in a checkout of the project"))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join(FILE).is_file())
        .map(|e| e.file_name().to_string())
        .collect();
    names.sort();
    names.iter().map(|name| load(root, name)).collect()
}

/// The suite `name`, from its file.
pub fn load(root: &Utf8Path, name: &str) -> Result<Suite> {
    let file = Utf8Path::new(SUITES_DIR).join(name).join(FILE);
    let text = match std::fs::read_to_string(root.join(&file)) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let known = all_names(root).join(", ");
            bail!("there is no suite `{name}` ({file} does not exist): the suites are {known}; a new suite is a directory in {SUITES_DIR}/ with a {FILE}");
        }
        Err(err) => bail!("reading {file}: {err}: make it readable"),
    };
    parse(root, &file, name, &text)
}

fn all_names(root: &Utf8Path) -> Vec<String> {
    let entries = root.join(SUITES_DIR).read_dir_utf8().into_iter().flatten().flatten();
    let mut names: Vec<String> = entries
        .filter(|e| e.path().join(FILE).is_file())
        .map(|e| e.file_name().to_string())
        .collect();
    names.sort();
    names
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SuiteFile {
    #[serde(default)]
    description: String,
    kind_config: Spanned<String>,
    tests: TestsFile,
    #[serde(default)]
    service: Vec<ComponentFile>,
    #[serde(default)]
    image: Vec<ComponentFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TestsFile {
    package: Spanned<String>,
    #[serde(default)]
    runner: Runner,
    labels: Option<String>,
    procs: Option<u32>,
}

/// A `[[service]]` or an `[[image]]`: the keys that do not apply to one are refused by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ComponentFile {
    name: Spanned<String>,
    /// `[[service]]` only.
    package: Option<Spanned<String>>,
    dockerfile: Option<Spanned<String>>,
    coverage: Option<Spanned<bool>>,
    /// `[[image]]` only.
    reference: Option<Spanned<String>>,
    manifest: Spanned<String>,
    port: u16,
    host_port: Spanned<u16>,
    ready: Option<Spanned<String>>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
}

/// Reads a suite file: its syntax and keys (through the toml crate), then what must hold
/// between them.
fn parse(root: &Utf8Path, file: &Utf8Path, name: &str, text: &str) -> Result<Suite> {
    let line =
        |span: std::ops::Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
    let at = |span: std::ops::Range<usize>, message: String| {
        anyhow::anyhow!("{file}:{}: {message}", line(span))
    };
    let parsed: SuiteFile = toml::from_str(text).map_err(|err| {
        let message = err.message().trim_end_matches('\n').replace('\n', " ");
        let fix = "write it as the README's suite file section shows";
        match err.span() {
            Some(span) => at(span, format!("{message}: {fix}")),
            None => anyhow::anyhow!("{file}: {message}: {fix}"),
        }
    })?;
    let exists = |path: &Spanned<String>, what: &str| -> Result<Utf8PathBuf> {
        let relative = Utf8PathBuf::from(path.get_ref());
        match root.join(&relative).is_file() {
            true => Ok(relative),
            false => Err(at(
                path.span(),
                format!("the {what} {relative} does not exist: give a path from the project root"),
            )),
        }
    };
    let kind_config = exists(&parsed.kind_config, "Kind config")?;
    let package = &parsed.tests.package;
    let directory = package.get_ref().trim_end_matches("/...");
    if !root.join(directory).is_dir() {
        bail!(at(package.span(), format!("the tests' package {} is not a directory of this project: give it as `go test` takes it, e.g. ./{SUITES_DIR}/{name}/...", package.get_ref())));
    }
    let tests = Tests {
        package: package.get_ref().clone(),
        runner: parsed.tests.runner,
        labels: parsed.tests.labels,
        procs: parsed.tests.procs,
    };
    let mut components = Vec::new();
    let declared =
        parsed.service.iter().map(|c| (c, true)).chain(parsed.image.iter().map(|c| (c, false)));
    for (c, ours) in declared {
        let name = c.name.get_ref();
        let valid = name.starts_with(|ch: char| ch.is_ascii_lowercase())
            && name.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
        if !valid {
            bail!(at(c.name.span(), format!("`{name}` is not a name for a component: use lowercase letters, digits and `-`, starting with a letter (it names its variables, like {}_HOST_PORT)", name.to_uppercase())));
        }
        if components.iter().any(|other: &Component| &other.name == name) {
            bail!(at(
                c.name.span(),
                format!("{name} is declared twice: give each service and image a name of its own")
            ));
        }
        let refuse = |key: &str, span: std::ops::Range<usize>, table: &str| {
            at(span, format!("`{key}` does not belong to an [[{table}]]: remove it (a service of ours is built from `package`/`dockerfile`, an image is used as its `reference` names)"))
        };
        let source = if ours {
            if let Some(reference) = &c.reference {
                bail!(refuse("reference", reference.span(), "service"));
            }
            let package =
                c.package.as_ref().map_or(format!("./cmd/{name}"), |p| p.get_ref().clone());
            let dockerfile = match &c.dockerfile {
                Some(path) => exists(path, "Dockerfile")?,
                None => Utf8PathBuf::from(format!("docker/{name}-ubi9.Dockerfile")),
            };
            let coverage = c.coverage.as_ref().is_none_or(|c| *c.get_ref());
            Source::Build(Build { package, dockerfile, coverage })
        } else {
            for (key, span) in [
                ("package", c.package.as_ref().map(|p| p.span())),
                ("dockerfile", c.dockerfile.as_ref().map(|p| p.span())),
                ("coverage", c.coverage.as_ref().map(|p| p.span())),
            ] {
                if let Some(span) = span {
                    bail!(refuse(key, span, "image"));
                }
            }
            let Some(reference) = &c.reference else {
                bail!(at(c.name.span(), format!("the image {name} has no `reference`: name the image to use, e.g. reference = \"registry.example.com/team/store:1.0\"")));
            };
            image_reference(reference.get_ref()).map_err(|e| {
                at(reference.span(), format!("{e}: write it as a registry names it"))
            })?;
            Source::Image(reference.get_ref().clone())
        };
        let ready = match c.ready.as_ref() {
            None if ours => Ready::Http("/readyz".into()),
            None => Ready::Tcp,
            Some(ready) if ready.get_ref() == "tcp" => Ready::Tcp,
            Some(ready) if ready.get_ref().starts_with('/') => Ready::Http(ready.get_ref().clone()),
            Some(ready) => bail!(at(ready.span(), format!("ready = \"{}\": write an HTTP path that answers 200 when it is ready (\"/readyz\"), or \"tcp\" for a port that takes connections", ready.get_ref()))),
        };
        let host_port = *c.host_port.get_ref();
        if host_port == 0 {
            bail!(at(c.host_port.span(), "host-port = 0: give a port from 1 to 65535".to_string()));
        }
        if let Some(other) = components.iter().find(|o: &&Component| o.host_port == host_port) {
            bail!(at(
                c.host_port.span(),
                format!(
                    "{name} and {} both use host port {host_port}: give each its own host-port",
                    other.name
                )
            ));
        }
        components.push(Component {
            name: name.clone(),
            source,
            manifest: exists(&c.manifest, "manifest")?,
            port: c.port,
            host_port,
            ready,
            depends_on: c.depends_on.iter().map(|d| d.get_ref().clone()).collect(),
        });
    }
    if components.is_empty() {
        bail!("{file}: the suite deploys nothing: add a [[service]] (or an [[image]]) as the README's suite file section shows");
    }
    let all: Vec<&ComponentFile> = parsed.service.iter().chain(&parsed.image).collect();
    for c in &all {
        for dependency in &c.depends_on {
            let (name, wanted) = (c.name.get_ref(), dependency.get_ref());
            if !components.iter().any(|other| &other.name == wanted) {
                let known =
                    components.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ");
                bail!(at(dependency.span(), format!("{name} depends on {wanted}, which this suite does not declare: declare it as a [[service]] or an [[image]], or depend on one of {known}")));
            }
        }
    }
    let components = in_dependency_order(components).map_err(|cycle| {
        let first = all.iter().find(|c| c.name.get_ref() == &cycle[0]).expect("declared");
        at(
            first.name.span(),
            format!(
                "depends-on goes round in a circle ({}): one of them must not depend on the next",
                cycle.join(" -> ")
            ),
        )
    })?;
    Ok(Suite {
        name: name.to_string(),
        file: file.to_path_buf(),
        description: parsed.description,
        kind_config,
        tests,
        components,
    })
}

/// Dependencies before what depends on them, else in the order declared; `Err` is a cycle,
/// its first component again at its end.
fn in_dependency_order(mut left: Vec<Component>) -> Result<Vec<Component>, Vec<String>> {
    let mut ordered: Vec<Component> = Vec::new();
    while !left.is_empty() {
        let done = |name: &String| ordered.iter().any(|c| &c.name == name);
        match left.iter().position(|c| c.depends_on.iter().all(done)) {
            Some(next) => ordered.push(left.remove(next)),
            None => {
                // Every one left waits on another left: follow the waits until one repeats.
                let mut path = vec![left[0].name.clone()];
                loop {
                    let current = left.iter().find(|c| c.name == *path.last().unwrap()).unwrap();
                    let next = current.depends_on.iter().find(|d| !done(d)).unwrap().clone();
                    if let Some(start) = path.iter().position(|p| *p == next) {
                        let mut cycle = path[start..].to_vec();
                        cycle.push(next);
                        return Err(cycle);
                    }
                    path.push(next);
                }
            }
        }
    }
    Ok(ordered)
}

/// `--list`: each suite, what it deploys, and how its tests run.
pub fn list(suites: &[Suite]) -> String {
    let mut out = String::new();
    for suite in suites {
        let runner = match suite.tests.runner {
            Runner::GoTest => "go test",
            Runner::Ginkgo => "ginkgo",
        };
        let deploys: Vec<String> = suite
            .components
            .iter()
            .map(|c| match &c.source {
                Source::Build(_) => format!("{} ({})", c.name, c.host_port),
                Source::Image(reference) => format!("{} ({reference}, {})", c.name, c.host_port),
            })
            .collect();
        out += &format!("{:<14} {}\n", suite.name, suite.description);
        out += &format!(
            "{:<14} deploys {}; tests {} with {runner}\n",
            "",
            deploys.join(", "),
            suite.tests.package
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch project with the files a suite names.
    fn project(name: &str) -> Utf8PathBuf {
        let root = Utf8PathBuf::from_path_buf(std::env::temp_dir())
            .unwrap()
            .join(format!("xtask-suite-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for file in ["kind.yaml", "a.yaml", "b.yaml", "c.yaml", "test/e2e/s/x_test.go"] {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        root
    }

    const SUITE: &str = r#"
description = "two services and an image"
kind-config = "kind.yaml"

[tests]
package = "./test/e2e/s/..."

[[service]]
name = "front"
manifest = "a.yaml"
port = 8080
host-port = 18080
depends-on = ["back"]

[[service]]
name = "back"
manifest = "b.yaml"
port = 8081
host-port = 18081
depends-on = ["store"]
coverage = false

[[image]]
name = "store"
reference = "docker.io/library/redis:7.4-alpine"
manifest = "c.yaml"
port = 6379
host-port = 16379
"#;

    fn parsed(root: &Utf8Path, text: &str) -> Result<Suite> {
        parse(root, Utf8Path::new("test/e2e/s/suite.toml"), "s", text)
    }

    #[test]
    fn a_suite_is_read_in_dependency_order_with_its_defaults() {
        let root = project("ok");
        let suite = parsed(&root, SUITE).unwrap();
        let names: Vec<&str> = suite.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["store", "back", "front"]);
        let front = &suite.components[2];
        assert_eq!(
            front.source,
            Source::Build(Build {
                package: "./cmd/front".into(),
                dockerfile: "docker/front-ubi9.Dockerfile".into(),
                coverage: true,
            })
        );
        assert_eq!(front.ready, Ready::Http("/readyz".into()));
        assert_eq!(suite.components[0].ready, Ready::Tcp);
        assert!(!suite.components[1].covered());
        assert_eq!(suite.tests.runner, Runner::GoTest);
        assert_eq!(front.variable("HOST_PORT"), "FRONT_HOST_PORT");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_suite_file_that_cannot_be_used_names_the_line_and_what_to_write() {
        let root = project("bad");
        for (change, expected) in [
            (
                ("port = 8080", "port = 8080\ncolour = \"blue\""),
                "test/e2e/s/suite.toml:12: unknown field `colour`, expected one of",
            ),
            (
                ("host-port = 18081", "host-port = 18080"),
                "test/e2e/s/suite.toml:19: back and front both use host port 18080: give each its own host-port",
            ),
            (
                ("depends-on = [\"store\"]", "depends-on = [\"cache\"]"),
                "test/e2e/s/suite.toml:20: back depends on cache, which this suite does not declare: declare it as a [[service]] or an [[image]], or depend on one of front, back, store",
            ),
            (
                ("port = 6379", "port = 6379\ndepends-on = [\"front\"]"),
                "test/e2e/s/suite.toml:9: depends-on goes round in a circle (front -> back -> store -> front): one of them must not depend on the next",
            ),
            (
                ("reference = \"docker.io", "package = \"./cmd/x\"\nreference = \"docker.io"),
                "test/e2e/s/suite.toml:25: `package` does not belong to an [[image]]",
            ),
            (("manifest = \"b.yaml\"", "manifest = \"missing.yaml\""), "test/e2e/s/suite.toml:17: the manifest missing.yaml does not exist"),
            (("name = \"back\"", "name = \"Back\""), "test/e2e/s/suite.toml:16: `Back` is not a name for a component"),
            (("host-port = 16379", "host-port = \"16379\""), "test/e2e/s/suite.toml:28: invalid type: string \"16379\", expected u16"),
        ] {
            let text = SUITE.replacen(change.0, change.1, 1);
            let err = parsed(&root, &text).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{change:?}:\n{err}");
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn host_ports_move_with_the_environment_and_stay_apart() {
        let root = project("ports");
        let suite = parsed(&root, SUITE).unwrap();
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let moved = suite.clone().with_host_ports(env(&[("FRONT_HOST_PORT", "28080")])).unwrap();
        assert_eq!(moved.components[2].host_port, 28080);
        let err = suite.clone().with_host_ports(env(&[("FRONT_HOST_PORT", "http")])).unwrap_err();
        assert!(err.to_string().starts_with("FRONT_HOST_PORT=http is not a port number"), "{err}");
        let err = suite.with_host_ports(env(&[("FRONT_HOST_PORT", "18081")])).unwrap_err();
        assert!(
            err.to_string().starts_with("back and front would both use host port 18081: set BACK_HOST_PORT or FRONT_HOST_PORT"),
            "{err}"
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}

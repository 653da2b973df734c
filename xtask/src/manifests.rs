//! The templates a suite names: its Kubernetes manifests and its Kind config, with `${NAME}`
//! tokens. A backend says where the components run (`Placement`); the run says the rest
//! (images, host ports, coverdata/). A token nobody provides is an error, not an empty string;
//! comment lines, which document the tokens, are left as they are. Every rendered file is read
//! as YAML (serde_norway) before anything uses it: a broken document fails the run in its
//! preflight, on every backend, with the template's file, line and column.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::Deserialize;
use serde_norway::Value;

use crate::{
    build_images::Image,
    check::Check,
    project::{self, write_file},
    suite::{Component, Suite},
};

/// What differs between backends in the manifests: where the suite's coverdata/ is on the node,
/// how the components reach each other, and a prefix for names that must be unique on the
/// machine.
pub struct Placement {
    pub coverdata_node_path: String,
    pub name_prefix: String,
    /// How another component reaches `component` (`<NAME>_ADDR`: `host:port`).
    pub address: fn(&Component) -> String,
}

impl Placement {
    /// A cluster (or a namespace) that is ours alone: the Kind config mounts the suite's
    /// coverdata/ at /coverdata in the node, the components keep their plain names and find
    /// each other by them.
    ///
    /// By name, through the cluster's DNS, although a new cluster makes that ready last: a pod
    /// that connects to a Service's cluster IP before kube-proxy has written its rules goes
    /// out of the node instead, and on machines whose network answers any address (a proxy) the
    /// wrong connection is kept alive for good. A name resolves only once the rules exist.
    pub fn own_cluster() -> Placement {
        Placement {
            coverdata_node_path: "/coverdata".into(),
            name_prefix: String::new(),
            address: |c| format!("{}:{}", c.name, c.port),
        }
    }
}

/// Each component with its manifest as written for the backend, in dependency order.
pub type Manifests = Vec<(Component, Utf8PathBuf)>;

/// The values of every token: the placement's, and the run's (the suite's coverdata/ on this
/// machine; each component's host port, address, URL and image).
pub fn values(
    root: &Utf8Path,
    suite: &Suite,
    placement: &Placement,
    images: &[Image],
) -> Vec<(String, String)> {
    let coverdata = project::suite_coverdata(root, &suite.name);
    let mut vars = vec![
        ("COVERDATA_NODE_PATH".to_string(), placement.coverdata_node_path.clone()),
        ("NAME_PREFIX".to_string(), placement.name_prefix.clone()),
        ("COVERDATA_HOST_PATH".to_string(), coverdata.to_string()),
    ];
    for c in &suite.components {
        let address = (placement.address)(c);
        vars.push((c.variable("HOST_PORT"), c.host_port.to_string()));
        vars.push((c.variable("URL"), format!("http://{address}")));
        vars.push((c.variable("ADDR"), address));
    }
    for image in images {
        let Some(component) = suite.components.iter().find(|c| c.name == image.name) else {
            continue;
        };
        vars.push((component.variable("IMAGE"), image.reference.clone()));
    }
    vars
}

/// `file` (from the project root) with its tokens replaced by `vars`.
pub fn render(root: &Utf8Path, file: &Utf8Path, vars: &[(String, String)]) -> Result<String> {
    let source = root.join(file);
    let template = std::fs::read_to_string(&source).with_context(|| {
        format!(
            "reading {file}: restore it from version control, or fix the path in the suite's file"
        )
    })?;
    let mut text = String::new();
    for line in template.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            text += line;
            continue;
        }
        let mut line = line.to_string();
        for (name, value) in vars {
            line = line.replace(&format!("${{{name}}}"), value);
        }
        if let Some(start) = line.find("${") {
            let token = line[start..].split('}').next().unwrap_or_default();
            let known = vars.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
            bail!("{file} uses {token}}}, which the xtask does not provide: use one of {known}");
        }
        text += &line;
    }
    Ok(text)
}

/// Each component's manifest rendered with `vars`, read as YAML, its documents `adapt`ed for
/// the backend, and written to `dir` as `<component>.yaml`, in dependency order.
pub fn write(
    dir: &Utf8Path,
    root: &Utf8Path,
    suite: &Suite,
    vars: &[(String, String)],
    adapt: impl Fn(Vec<Document>) -> Result<Vec<Document>>,
) -> Result<Manifests> {
    let mut files = Vec::new();
    for component in &suite.components {
        let file = &component.manifest;
        let documents = documents(file, &render(root, file, vars)?)?;
        let adapted = adapt(documents).with_context(|| format!("adapting {file}"))?;
        let text: String = adapted.into_iter().map(|d| d.text).collect();
        let file = write_file(dir, &format!("{}.yaml", component.name), &text)?;
        files.push((component.clone(), file));
    }
    Ok(files)
}

/// The preflight's row for a suite's manifests: each renders (with stand-in image names: the
/// images are built later) and reads as YAML, every document with its `apiVersion` and `kind`.
/// What differs between backends is the tokens' values, never the documents' shape: one check
/// serves every backend.
pub fn check(root: &Utf8Path, suite: &Suite) -> Check {
    let name = format!("manifests ({})", suite.name);
    let images: Vec<Image> = (suite.components.iter())
        .map(|c| Image {
            name: c.name.clone(),
            reference: format!("localhost/{}:preflight", c.name),
            archive: None,
        })
        .collect();
    let vars = values(root, suite, &Placement::own_cluster(), &images);
    let mut count = 0;
    for component in &suite.components {
        let file = &component.manifest;
        match render(root, file, &vars).and_then(|text| documents(file, &text)) {
            Ok(documents) => count += documents.iter().filter(|d| d.kind.is_some()).count(),
            Err(err) => {
                let (detail, fix) = match err.downcast_ref::<YamlError>() {
                    Some(yaml) => (format!("{}: {}", yaml.at, yaml.problem), yaml.fix.clone()),
                    None => (format!("{err:#}"), format!("fix {file}")),
                };
                return Check::fail(&name, detail, fix);
            }
        }
    }
    let files = suite.components.len();
    Check::ok(&name, format!("{files} files, {count} documents, each with its apiVersion and kind"))
}

/// One YAML document of a manifest, as written (comments and all: the text is never written
/// out again from what was read, which could change what a Kubernetes reader makes of it).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Its `kind`; None for a document of comments alone.
    pub kind: Option<String>,
    /// Its text, from its `---` line (if any) to the next one.
    pub text: String,
}

/// A manifest that is not YAML, or a document without `apiVersion` or `kind`: where (the
/// template, whose lines the rendered text keeps), what, and the fix.
#[derive(Debug)]
pub struct YamlError {
    pub at: String,
    pub problem: String,
    pub fix: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.at, self.problem, self.fix)
    }
}

impl std::error::Error for YamlError {}

/// The documents of `text`, the rendered `file`, each read as YAML; every document that is not
/// comments alone must be a mapping with a string `apiVersion` and `kind`, as `kubectl apply`
/// requires.
pub fn documents(file: &Utf8Path, text: &str) -> Result<Vec<Document>> {
    let fix = format!("fix the YAML there in {file} (a template: its `${{NAME}}` tokens are replaced before use, lines stay where they are)");
    // The whole stream first, so that the reader's errors carry the file's own lines.
    for document in serde_norway::Deserializer::from_str(text) {
        if let Err(err) = Value::deserialize(document) {
            let (at, problem) = match err.location() {
                Some(l) => {
                    let (line, column) = (l.line(), l.column());
                    let problem =
                        err.to_string().replace(&format!(" at line {line} column {column}"), "");
                    (format!("{file}:{line}:{column}"), problem)
                }
                None => (file.to_string(), err.to_string()),
            };
            return Err(YamlError { at, problem, fix }.into());
        }
    }
    let mut documents = Vec::new();
    for (line, text) in split(text) {
        let value: Value = serde_norway::from_str(text).map_err(|err| YamlError {
            at: format!("{file}:{line}"),
            problem: err.to_string(),
            fix: fix.clone(),
        })?;
        let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_string);
        let kind = match (&value, field("apiVersion"), field("kind")) {
            (Value::Null, ..) => None,
            (_, Some(_), Some(kind)) => Some(kind),
            _ => {
                return Err(YamlError {
                    at: format!("{file}:{line}"),
                    problem: "this document has no `apiVersion` or no `kind` (each must be a string)".into(),
                    fix: format!("give it both in {file}, as every Kubernetes object has them (`apiVersion: v1`, `kind: Service`), or remove the document"),
                }
                .into())
            }
        };
        documents.push(Document { kind, text: text.to_string() });
    }
    Ok(documents)
}

/// The text of each document with the line it starts on. A line that starts with `---` and a
/// space (or ends there) begins a document wherever it is (YAML allows no such line inside a
/// scalar), so cutting the text there is exact.
fn split(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.trim().is_empty() || rest.starts_with([' ', '\t']));
        if marker && offset > start {
            documents.push((start_line, &text[start..offset]));
            (start, start_line) = (offset, index + 1);
        }
        offset += line.len();
    }
    if offset > start {
        documents.push((start_line, &text[start..]));
    }
    documents
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_nobody_provides_is_named_with_the_ones_there_are() {
        let root = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let vars = vec![("NAME_PREFIX".to_string(), String::new())];
        let file = Utf8Path::new("test/infrastructure/gateway.yaml");
        let err = render(root, file, &vars).unwrap_err().to_string();
        assert!(err.contains("gateway.yaml uses ${GATEWAY_IMAGE}"), "{err}");
        assert!(err.ends_with("which the xtask does not provide: use one of NAME_PREFIX"), "{err}");
    }

    const DEPLOYMENT: &str =
        "# a comment\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gateway\n";

    /// A YAML error in a later document is found (the podman backend used to drop every
    /// Service document unread) and named with the file's own line and column.
    #[test]
    fn a_broken_document_is_named_with_its_line_and_column_and_the_fix() {
        let service = "---\napiVersion: v1\nkind: Service\nspec:\n  selector:\n    app: gateway\n   ports:\n    - port: 8080\n";
        let err = documents("m.yaml".into(), &format!("{DEPLOYMENT}{service}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.yaml:12:4: did not find expected key, while parsing a block mapping at line 10 column 3: fix the YAML there in m.yaml (a template: its `${NAME}` tokens are replaced before use, lines stay where they are)"
        );
        let tab = format!("{DEPLOYMENT}---\napiVersion: v1\nkind: Service\nspec:\n\tports: []\n");
        let err = documents("m.yaml".into(), &tab).unwrap_err().to_string();
        assert!(
            err.starts_with("m.yaml:10:1: found character that cannot start any token"),
            "{err}"
        );
    }

    #[test]
    fn every_document_needs_an_api_version_and_a_kind() {
        for document in
            ["- a\n- b\n", "apiVersion: v1\nmetadata: {}\n", "kind: [Service]\napiVersion: v1\n"]
        {
            let text = format!("{DEPLOYMENT}---\n{document}");
            let err = documents("m.yaml".into(), &text).unwrap_err().to_string();
            assert_eq!(err, "m.yaml:6: this document has no `apiVersion` or no `kind` (each must be a string): give it both in m.yaml, as every Kubernetes object has them (`apiVersion: v1`, `kind: Service`), or remove the document", "{document}");
        }
    }

    /// Documents are cut at `---` lines only (not `----`, not `---` inside a line), each kept as
    /// written; comments alone make a document of no kind.
    #[test]
    fn documents_are_cut_at_their_markers_and_kept_as_written() {
        let text = format!("# only a header\n---\n{DEPLOYMENT}  annotations:\n    a: \"x --- y\"\n    b: ----\n--- # the Service\napiVersion: v1\nkind: Service\n---\n");
        let documents = documents("m.yaml".into(), &text).unwrap();
        let kinds: Vec<Option<&str>> = documents.iter().map(|d| d.kind.as_deref()).collect();
        assert_eq!(kinds, [None, Some("Deployment"), Some("Service"), None]);
        assert!(documents[1].text.ends_with("    b: ----\n"), "{documents:?}");
        assert_eq!(documents[2].text, "--- # the Service\napiVersion: v1\nkind: Service\n");
        assert_eq!(documents.iter().map(|d| d.text.as_str()).collect::<String>(), text);
    }

    /// The templates of this repository's suites pass the check every backend's preflight makes.
    #[test]
    fn the_suites_manifests_pass_the_check() {
        let root = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for suite in crate::suite::all(root).unwrap() {
            let check = check(root, &suite);
            assert!(check.is_ok(), "{check:?}");
        }
    }
}

//! The templates a suite names: its Kubernetes manifests and its Kind config, with `${NAME}`
//! tokens. A backend says where the components run (`Placement`); the run says the rest
//! (images, host ports, coverdata/). A token nobody provides is an error, not an empty string;
//! comment lines, which document the tokens, are left as they are.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::{
    build_images::Image,
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

/// Each component's manifest rendered with `vars`, `adapt`ed for the backend, and written to
/// `dir` as `<component>.yaml`, in dependency order.
pub fn write(
    dir: &Utf8Path,
    root: &Utf8Path,
    suite: &Suite,
    vars: &[(String, String)],
    adapt: impl Fn(String) -> Result<String>,
) -> Result<Manifests> {
    let mut files = Vec::new();
    for component in &suite.components {
        let file = &component.manifest;
        let text = adapt(render(root, file, vars)?).with_context(|| format!("{file}"))?;
        let file = write_file(dir, &format!("{}.yaml", component.name), &text)?;
        files.push((component.clone(), file));
    }
    Ok(files)
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
}

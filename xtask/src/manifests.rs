//! The templates of `test/infrastructure/`: Kubernetes manifests and the Kind config, with
//! `${NAME}` tokens. A backend says where the services run (`Placement`); the run says the rest
//! (images, host ports, coverdata/). A token nobody provides is an error, not an empty string.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::{
    build_images::Image,
    project::{self, write_file, Service, Services},
};

/// What differs between backends in the manifests: where coverdata/ is on the node, how the
/// services reach each other, and a prefix for names that must be unique on the machine.
pub struct Placement {
    pub coverdata_node_path: String,
    pub datastorage_url: String,
    pub name_prefix: String,
}

impl Placement {
    /// A cluster (or a namespace) that is ours alone: the Kind config mounts coverdata/ at
    /// /coverdata in the node, the services keep their plain names and find each other by them.
    ///
    /// By name, through the cluster's DNS, although a new cluster makes that ready last: a pod
    /// that connects to a Service's cluster IP before kube-proxy has written its rules goes
    /// out of the node instead, and on machines whose network answers any address (a proxy) the
    /// wrong connection is kept alive for good. A name resolves only once the rules exist.
    pub fn own_cluster(services: &Services) -> Placement {
        let port = services.datastorage.container_port;
        Placement {
            coverdata_node_path: "/coverdata".into(),
            datastorage_url: format!("http://datastorage:{port}"),
            name_prefix: String::new(),
        }
    }
}

/// Each service with its manifest file, in dependency order.
pub type Manifests = Vec<(Service, Utf8PathBuf)>;

/// The values of every token: the placement's, and the run's (coverdata/ on this machine, each
/// service's host port and image).
pub fn values(
    root: &Utf8Path,
    services: &Services,
    placement: &Placement,
    images: &[Image],
) -> Vec<(String, String)> {
    let mut vars = vec![
        ("COVERDATA_NODE_PATH".to_string(), placement.coverdata_node_path.clone()),
        ("DATASTORAGE_URL".to_string(), placement.datastorage_url.clone()),
        ("NAME_PREFIX".to_string(), placement.name_prefix.clone()),
        ("COVERDATA_HOST_PATH".to_string(), project::coverdata_dir(root).to_string()),
    ];
    vars.extend(services.all().map(|s| (s.port_variable(), s.host_port.to_string())));
    for image in images {
        let service = image.service.name.to_uppercase();
        vars.push((format!("{service}_IMAGE"), image.reference.clone()));
    }
    vars
}

/// test/infrastructure/`file` with its tokens replaced by `vars`; comment lines, which
/// document the tokens, are kept as they are.
pub fn render(root: &Utf8Path, file: &str, vars: &[(String, String)]) -> Result<String> {
    let source = project::infrastructure_dir(root).join(file);
    let template = std::fs::read_to_string(&source)
        .with_context(|| format!("reading {source}: restore it from version control"))?;
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
            bail!("{source} uses {token}}}, which the xtask does not provide: use one of {known}");
        }
        text += &line;
    }
    Ok(text)
}

/// Each service's manifest rendered with `vars`, `adapt`ed for the backend, and written to
/// `dir`, in dependency order.
pub fn write(
    dir: &Utf8Path,
    root: &Utf8Path,
    services: &Services,
    vars: &[(String, String)],
    adapt: fn(String) -> String,
) -> Result<Manifests> {
    let mut files = Vec::new();
    for service in services.all() {
        let name = format!("{}.yaml", service.name);
        let text = adapt(render(root, &name, vars)?);
        files.push((service, write_file(dir, &name, &text)?));
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
        let err = render(root, "gateway.yaml", &vars).unwrap_err().to_string();
        assert!(err.contains("gateway.yaml uses ${GATEWAY_IMAGE}"), "{err}");
        assert!(err.ends_with("which the xtask does not provide: use one of NAME_PREFIX"), "{err}");
    }
}

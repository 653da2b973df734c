//! test/infrastructure/ is one set of templates for both backends: the values that differ
//! (image references, addresses, paths, ports) are rendered here.

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};

use super::{Backend, Run};
use crate::{
    build_images::Image,
    project::{self, Service},
};

/// Values of the `${NAME}` tokens in test/infrastructure/.
pub(super) fn template_vars(run: &Run, images: &[Image]) -> Vec<(String, String)> {
    let host_path = project::coverdata_dir(&run.root).to_string();
    let node_path = match run.backend {
        // The Kind config mounts the host's coverdata/ at /coverdata in the node.
        Backend::Kind => "/coverdata".to_string(),
        Backend::Podman => host_path.clone(),
    };
    let mut vars = vec![
        ("COVERDATA_HOST_PATH".to_string(), host_path),
        ("COVERDATA_NODE_PATH".to_string(), node_path),
    ];
    for (service, port) in &run.ports {
        vars.push((
            format!("{}_HOST_PORT", service.name.to_uppercase()),
            port.to_string(),
        ));
    }
    let datastorage_port = project::SERVICES[0].container_port;
    let datastorage_url = match run.backend {
        Backend::Kind => format!("http://datastorage:{datastorage_port}"),
        // podman kube play has no Service DNS: the gateway reaches datastorage via its host port.
        Backend::Podman => format!("http://host.containers.internal:{}", run.ports[0].1),
    };
    vars.push(("DATASTORAGE_URL".to_string(), datastorage_url));
    for image in images {
        vars.push((
            format!("{}_IMAGE", image.service.name.to_uppercase()),
            image.reference.clone(),
        ));
    }
    vars
}

/// Replaces `${NAME}` tokens; a token nobody provides is an error, not an empty string.
pub(super) fn render(
    source: &Utf8Path,
    text: &str,
    vars: &[(String, String)],
) -> anyhow::Result<String> {
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

/// Drops the documents of a kind `podman kube play` does not run (Services).
pub(super) fn without_services(manifest: &str) -> String {
    manifest
        .split("\n---")
        .filter(|doc| !doc.lines().any(|l| l.trim() == "kind: Service"))
        .collect::<Vec<_>>()
        .join("\n---")
}

pub(super) fn write_rendered(run: &Run, name: &str, text: &str) -> anyhow::Result<Utf8PathBuf> {
    std::fs::create_dir_all(&run.rendered_dir)
        .with_context(|| format!("creating {}", run.rendered_dir))?;
    let path = run.rendered_dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
    Ok(path)
}

pub(super) fn rendered_manifests(
    run: &Run,
    images: &[Image],
) -> anyhow::Result<Vec<(Service, Utf8PathBuf)>> {
    let vars = template_vars(run, images);
    let mut manifests = Vec::new();
    for service in project::SERVICES {
        let source = project::infrastructure_dir(&run.root).join(format!("{}.yaml", service.name));
        let text = std::fs::read_to_string(&source).with_context(|| format!("reading {source}"))?;
        let mut rendered = render(&source, &text, &vars)?;
        if run.backend == Backend::Podman {
            rendered = without_services(&rendered);
        }
        manifests.push((
            service,
            write_rendered(run, &format!("{}.yaml", service.name), &rendered)?,
        ));
    }
    Ok(manifests)
}

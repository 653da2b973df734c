//! The Kind backend: create (or reuse) the cluster, check its nodes, load the images.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use camino::Utf8PathBuf;
use xshell::{cmd, Shell};

use super::{
    ensure_ports_free,
    manifests::{render, template_vars, write_rendered},
    process::run_interruptible,
    Deployed, Run,
};
use crate::{build_images::Image, doctor, project};

/// Kind cluster creation is retried at most this many times, and only on these errors.
const CREATE_RETRIES: usize = 2;
const TRANSIENT_CREATE_ERRORS: &[&str] = &[
    "OCI runtime",
    "container state improper",
    "could not find a log line that matches",
];

/// Creates the cluster (or reuses a healthy one) and returns when it became ready.
pub(super) fn create_cluster(
    sh: &Shell,
    run: &Run,
    deployed: &mut Deployed,
    reuse: bool,
) -> anyhow::Result<Instant> {
    let kind_sh = doctor::kind_shell(sh, run.engine);
    let name = &run.flags.cluster_name;
    if reuse {
        let nodes = node_states(sh, &kind_sh, run)?;
        let all_running = !nodes.is_empty() && nodes.iter().all(|(_, state)| state == "running");
        if all_running && api_answers(&kind_sh, sh, run)? {
            println!("    reusing the running cluster {name}");
            deployed.cluster = true;
            return Ok(Instant::now());
        }
        println!(
            "    the cluster {name} is not healthy ({}): recreating it",
            describe_nodes(&nodes)
        );
        delete_cluster(&kind_sh, run)?;
        ensure_ports_free(run)?;
    }
    let config = render_kind_config(run)?;
    let kubeconfig = &run.kubeconfig;
    for attempt in 0..=CREATE_RETRIES {
        deployed.cluster = true;
        let create = cmd!(
            kind_sh,
            "kind create cluster --name {name} --config {config} --kubeconfig {kubeconfig}"
        );
        let output = run_interruptible(sh, create)?;
        if output.status.success() {
            return Ok(Instant::now());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let transient = TRANSIENT_CREATE_ERRORS.iter().any(|e| stderr.contains(e));
        if !transient || attempt == CREATE_RETRIES {
            bail!(
                "`kind create cluster --name {name}` failed{}; kind said:\n{}\nrun `cargo xtask doctor`, then retry",
                if transient { format!(" {} times", attempt + 1) } else { String::new() },
                stderr.trim_end()
            );
        }
        println!(
            "    transient container runtime error, deleting and retrying ({}/{CREATE_RETRIES})",
            attempt + 1
        );
        delete_cluster(&kind_sh, run)?;
    }
    unreachable!("the loop returns or bails on its last attempt")
}

pub(super) fn cluster_exists(kind_sh: &Shell, name: &str) -> anyhow::Result<bool> {
    let clusters = cmd!(kind_sh, "kind get clusters")
        .quiet()
        .ignore_stderr()
        .read()
        .context("`kind get clusters` failed: run `cargo xtask doctor`")?;
    Ok(clusters.lines().any(|l| l.trim() == name))
}

/// Idempotent: kind succeeds when there is no such cluster. The kubeconfig is ours, so the
/// user's ~/.kube/config is never edited.
pub(super) fn delete_cluster(kind_sh: &Shell, run: &Run) -> anyhow::Result<()> {
    let name = &run.flags.cluster_name;
    let kubeconfig = &run.kubeconfig;
    cmd!(
        kind_sh,
        "kind delete cluster --name {name} --kubeconfig {kubeconfig}"
    )
    .quiet()
    .run()
    .with_context(|| {
        format!(
            "`kind delete cluster --name {name}` failed: delete it by hand and check `{} ps -a`",
            run.engine.program()
        )
    })
}

/// Every node container of the cluster with its state as the engine reports it.
pub(super) fn node_states(
    sh: &Shell,
    kind_sh: &Shell,
    run: &Run,
) -> anyhow::Result<Vec<(String, String)>> {
    let name = &run.flags.cluster_name;
    let nodes = cmd!(kind_sh, "kind get nodes --name {name}")
        .quiet()
        .ignore_stderr()
        .read()
        .with_context(|| {
            format!("`kind get nodes --name {name}` failed: run `cargo xtask doctor`")
        })?;
    let program = run.engine.program();
    let format = "{{.State.Status}}";
    let mut states = Vec::new();
    for node in nodes.lines().map(str::trim).filter(|n| !n.is_empty()) {
        let output = cmd!(sh, "{program} inspect --format {format} {node}")
            .quiet()
            .ignore_status()
            .output()
            .with_context(|| {
                format!("running `{program} inspect {node}` failed: is {program} installed?")
            })?;
        let state = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let state = if output.status.success() && !state.is_empty() {
            state
        } else {
            "missing".to_string()
        };
        states.push((node.to_string(), state));
    }
    Ok(states)
}

pub(super) fn describe_nodes(nodes: &[(String, String)]) -> String {
    if nodes.is_empty() {
        return "it has no node containers".to_string();
    }
    let described: Vec<String> = nodes
        .iter()
        .map(|(node, state)| format!("{node} is {state}"))
        .collect();
    described.join(", ")
}

pub(super) fn api_answers(kind_sh: &Shell, sh: &Shell, run: &Run) -> anyhow::Result<bool> {
    let name = &run.flags.cluster_name;
    let kubeconfig = &run.kubeconfig;
    let exported = cmd!(
        kind_sh,
        "kind export kubeconfig --name {name} --kubeconfig {kubeconfig}"
    )
    .quiet()
    .ignore_status()
    .output()
    .context("running `kind export kubeconfig` failed: run `cargo xtask doctor`")?;
    if !exported.status.success() {
        return Ok(false);
    }
    let readyz = kubectl(sh, run)
        .args(["get", "--raw", "/readyz"])
        .quiet()
        .ignore_status()
        .output()
        .context("running `kubectl get --raw /readyz` failed: run `cargo xtask doctor`")?;
    Ok(readyz.status.success())
}

/// kubectl on our cluster; its discovery cache stays under target/ too.
pub(super) fn kubectl<'a>(sh: &'a Shell, run: &Run) -> xshell::Cmd<'a> {
    let kubeconfig = &run.kubeconfig;
    let cache = project::xtask_dir(&run.root).join("kube-cache");
    cmd!(sh, "kubectl --kubeconfig {kubeconfig} --cache-dir {cache}")
}

/// Checks every node is running, then loads every archive; returns the idle gap between the
/// cluster becoming ready and the first load starting.
pub(super) fn load_images(
    sh: &Shell,
    run: &Run,
    images: &[Image],
    deployed: &mut Deployed,
    mut ready_at: Instant,
) -> anyhow::Result<Duration> {
    let kind_sh = doctor::kind_shell(sh, run.engine);
    let name = &run.flags.cluster_name;
    let running = |nodes: &[(String, String)]| {
        !nodes.is_empty() && nodes.iter().all(|(_, state)| state == "running")
    };
    let nodes = node_states(sh, &kind_sh, run)?;
    if !running(&nodes) {
        println!(
            "    the Kind node containers are not all running ({}): images cannot be loaded into a stopped node (the \"container state improper\" failure); recreating the cluster once",
            describe_nodes(&nodes)
        );
        delete_cluster(&kind_sh, run)?;
        ready_at = create_cluster(sh, run, deployed, false)?;
        let nodes = node_states(sh, &kind_sh, run)?;
        if !running(&nodes) {
            bail!(
                "the Kind node containers are still not running after recreating the cluster ({}): check `{} logs <node>`, free memory and disk (`cargo xtask doctor`), then retry",
                describe_nodes(&nodes),
                run.engine.program()
            );
        }
    }
    let gap = ready_at.elapsed();
    println!(
        "    idle gap (cluster ready to first load): {} ms",
        gap.as_millis()
    );
    for image in images {
        let archive = image.archive.as_ref().with_context(|| {
            format!(
                "no image archive for {}: this is a bug in the build phase",
                image.service.name
            )
        })?;
        let output = run_interruptible(
            sh,
            cmd!(kind_sh, "kind load image-archive {archive} --name {name}"),
        )?;
        if !output.status.success() {
            bail!(
                "`kind load image-archive {archive} --name {name}` failed for {}; kind said:\n{}\ncheck that the cluster's nodes are running (`{} ps -a`)",
                image.service.name,
                String::from_utf8_lossy(&output.stderr).trim_end(),
                run.engine.program()
            );
        }
        println!("    loaded {}", image.reference);
    }
    Ok(gap)
}

pub(super) fn render_kind_config(run: &Run) -> anyhow::Result<Utf8PathBuf> {
    let source = project::infrastructure_dir(&run.root).join("kind-gateway-config.yaml");
    let text = std::fs::read_to_string(&source).with_context(|| format!("reading {source}"))?;
    let rendered = render(&source, &text, &template_vars(run, &[]))?;
    write_rendered(run, "kind-gateway-config.yaml", &rendered)
}

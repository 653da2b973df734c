//! The podman backend's pods and network, named as `podman kube play` names them.

use anyhow::{bail, Context};
use xshell::{cmd, Shell};

use super::{Run, STOP_GRACE_SECONDS};
use crate::project::{self, Service};

/// The network `podman kube play` creates when it is missing.
pub(super) const KUBE_NETWORK: &str = "podman-default-kube-network";

/// Podman names the pod of a one-replica Deployment `<name>-pod-0`, its containers
/// `<pod>-<container>`.
pub(super) fn podman_pod(service: Service) -> String {
    format!("{}-pod-0", service.name)
}

/// Stops (gracefully: `kube down` alone gives no grace period) and removes every pod of ours,
/// then checks none is left. Idempotent: used for stale pods before a deploy and at teardown.
pub(super) fn remove_podman_pods(sh: &Shell, run: &Run) -> anyhow::Result<()> {
    // `kube down` of a file resolves names like `kube play` does: run it from our directory.
    let _dir = sh.push_dir(&run.rendered_dir);
    for service in project::SERVICES {
        let pod = podman_pod(service);
        if !podman_pod_exists(sh, &pod)? {
            continue;
        }
        let grace = STOP_GRACE_SECONDS.to_string();
        let _ = cmd!(sh, "podman pod stop --time {grace} {pod}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        let manifest = run.rendered_dir.join(format!("{}.yaml", service.name));
        let downed = manifest.exists()
            && cmd!(sh, "podman kube down {manifest}")
                .quiet()
                .ignore_stdout()
                .ignore_stderr()
                .run()
                .is_ok();
        if !downed {
            cmd!(sh, "podman pod rm --force {pod}")
                .quiet()
                .ignore_stdout()
                .run()
                .with_context(|| format!("removing the pod {pod} failed: remove it with `podman pod rm --force {pod}`"))?;
        }
        if podman_pod_exists(sh, &pod)? {
            bail!("the pod {pod} is still there after `podman kube down`: remove it with `podman pod rm --force {pod}`");
        }
    }
    Ok(())
}

pub(super) fn podman_pod_exists(sh: &Shell, pod: &str) -> anyhow::Result<bool> {
    podman_exists(sh, "pod", pod)
}

/// `podman <kind> exists <name>`, for pods and networks.
pub(super) fn podman_exists(sh: &Shell, kind: &str, name: &str) -> anyhow::Result<bool> {
    let output = cmd!(sh, "podman {kind} exists {name}")
        .quiet()
        .ignore_status()
        .output()
        .with_context(|| format!("running `podman {kind} exists` failed: is podman installed? (`cargo xtask doctor`)"))?;
    Ok(output.status.success())
}

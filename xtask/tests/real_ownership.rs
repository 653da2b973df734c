//! What a run may remove, with the real podman: a pod and a network that only have the names
//! of a run's are left alone and stop it (issue 19's repro). Every name and port is the test's
//! own; what it makes is removed by a `Cleanup` guard.

mod common;

use common::{
    free_port,
    real::{podman, text, unique, Cleanup, Scratch},
};

fn ok(args: &[&str]) {
    let out = podman(args);
    assert!(out.status.success(), "podman {args:?}: {}", text(&out));
}

#[test]
#[ignore = "needs podman and go"]
fn a_pod_and_a_network_of_our_names_without_our_label_survive_and_stop_the_run() {
    let scratch = Scratch::new("real-foreign");
    let name = unique("probe-d");
    let (pod, network) = (format!("{name}-gateway-pod-0"), format!("xtask-{name}"));
    let mut guard = Cleanup::default();
    guard.pods.push(pod.clone());
    guard.networks.push(network.clone());
    ok(&["pod", "create", "--name", &pod, "--label", "owner=me"]);
    ok(&["network", "create", &network]);

    let (gateway, datastorage) = (free_port().to_string(), free_port().to_string());
    let run = scratch.xtask(
        &["e2e-gateway", "--cluster", "podman", "--cluster-name", &name],
        &[("GATEWAY_HOST_PORT", &gateway), ("DATASTORAGE_HOST_PORT", &datastorage)],
    );
    assert_eq!(run.code, 1, "{run}");
    let said = format!("error: phase 1 (preflight) failed: the pod {pod} has no label e2e.xtask/cluster (an e2e run labels everything it creates); the network {network} has no label e2e.xtask/cluster (an e2e run labels everything it creates): a run removes only what an earlier run of its name left: remove them yourself if nobody needs them (`podman pod rm --force {pod}; podman network rm {network}`), or run under another `--cluster-name`");
    assert!(run.stderr.contains(&said), "{run}");
    assert!(!run.stdout.contains("2. build images"), "it stops before anything is made: {run}");
    let labels = podman(&["pod", "inspect", "--format", "{{.Labels}}", &pod]);
    assert!(labels.status.success(), "the pod {pod} was removed: {}", text(&labels));
    assert_eq!(String::from_utf8_lossy(&labels.stdout).trim(), "map[owner:me]");
    ok(&["network", "exists", &network]);
}

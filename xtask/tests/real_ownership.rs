//! What a run may remove, with the real podman: a pod and a network that only have the names
//! of a run's are left alone and stop it (issue 19's repro), and a host port another run's pod
//! holds is named with that pod and whether its run lives. Every name and port is the test's
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
    let said = format!("phase 1 (preflight) failed: the pod {pod} has no label e2e.xtask/cluster (an e2e run labels everything it creates); the network {network} has no label e2e.xtask/cluster (an e2e run labels everything it creates): a run removes only what an earlier run of its name left: remove them yourself if nobody needs them (`podman pod rm --force {pod}; podman network rm {network}`), or run under another `--cluster-name`");
    assert!(run.stdout.contains(&said), "{run}");
    assert!(!run.stdout.contains("2. build images"), "it stops before anything is made: {run}");
    let labels = podman(&["pod", "inspect", "--format", "{{.Labels}}", &pod]);
    assert!(labels.status.success(), "the pod {pod} was removed: {}", text(&labels));
    assert_eq!(String::from_utf8_lossy(&labels.stdout).trim(), "map[owner:me]");
    ok(&["network", "exists", &network]);
}

#[test]
#[ignore = "needs podman and go"]
fn a_host_port_another_runs_pod_holds_names_the_pod_and_whether_its_run_lives() {
    let scratch = Scratch::new("real-port-pod");
    let other = unique("holder");
    let pod = format!("{other}-gateway-pod-0");
    let mut guard = Cleanup::default();
    guard.pods.push(pod.clone());
    let port = free_port().to_string();
    let label = format!("e2e.xtask/cluster={other}");
    ok(&["pod", "create", "--name", &pod, "--label", &label, "--publish", &format!("{port}:8080")]);
    ok(&["pod", "start", &pod]);

    let name = unique("blocked");
    let env =
        [("GATEWAY_HOST_PORT", port.as_str()), ("DATASTORAGE_HOST_PORT", &free_port().to_string())];
    let args = ["e2e-gateway", "--cluster", "podman", "--cluster-name", &name];
    let run = scratch.xtask(&args, &env);
    assert_eq!(run.code, 1, "{run}");
    let over = format!("in use by the pod {pod}, which was left by an e2e run of the cluster name {other}, which is over");
    assert!(run.stdout.contains(&over), "{run}");
    let fix = format!("fix: remove the pod (`podman pod rm --force {pod}`: its run is over), or set GATEWAY_HOST_PORT to a free port");
    assert!(run.stdout.contains(&fix), "{run}");

    // While the run of that name lives (it holds its lock), the pod is never offered for removal.
    let lock = scratch.root.join(format!("target/xtask-e2e-{other}.lock"));
    std::fs::write(&lock, "pid 4242\ncheckout /elsewhere\nsince then\n").unwrap();
    let held = std::fs::File::open(&lock).unwrap();
    held.lock().unwrap();
    let run = scratch.xtask(&args, &env);
    assert_eq!(run.code, 1, "{run}");
    let live = format!("in use by the pod {pod}, which belongs to the live e2e run of the cluster name {other} (pid 4242, checkout /elsewhere, since then)");
    assert!(run.stdout.contains(&live), "{run}");
    assert!(
        run.stdout.contains(
            "fix: set GATEWAY_HOST_PORT to a free port: a live run's pod is never to be removed"
        ),
        "{run}"
    );
    assert!(!run.stdout.contains("pod rm"), "{run}");
    drop(held);
    ok(&["pod", "exists", &pod]);
}

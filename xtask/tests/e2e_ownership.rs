//! What a run may remove, against the fake tools: only what carries its label (kind's for Kind's
//! nodes, `e2e.xtask/cluster=<name>` for podman's pods and network) and has no live owner. A
//! pod, network or container that only has one of our names, or a host port another run's pod
//! holds, stops the run with what it is, whose, and what to do; nothing of it is touched.

mod common;

use common::{Run, Sandbox};
use nix::sys::signal::Signal;

const KIND_TOOLS: &[&str] = &["podman", "kind", "kubectl", "go"];
const PODMAN_TOOLS: &[&str] = &["podman", "go"];

/// Calls from the `from`th on that create, remove or stop something (the build included: it
/// comes after phase 1).
fn touching(sandbox: &Sandbox, from: usize) -> Vec<String> {
    let verbs = [
        "podman pod rm",
        "podman pod stop",
        "podman network rm",
        "podman network create",
        "podman kube",
        "podman rm",
        "podman kill",
        "podman build",
        "go build",
        "kind create",
        "kind delete",
    ];
    let calls = sandbox.calls().into_iter().skip(from);
    calls.filter(|c| verbs.iter().any(|v| c.starts_with(v))).collect()
}

/// The doctor row `name` and the `fix:` line under it.
fn doctor_row(run: &Run, name: &str) -> (String, String) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row `{name}`:\n{run}"));
    let fix = lines.get(i + 1).and_then(|l| l.trim_start().strip_prefix("fix: "));
    (lines[i][name.len()..].trim().to_string(), fix.unwrap_or_default().to_string())
}

/// The repro: a pod and a network someone made under the names of the run's
/// (`--cluster-name probe-d`), without our label.
#[test]
fn a_pod_and_a_network_of_our_names_without_our_label_stop_the_run_untouched() {
    let sandbox = Sandbox::new("foreign-podman", PODMAN_TOOLS);
    let made = sandbox.run_fake(
        "podman",
        &["pod", "create", "--name", "probe-d-gateway-pod-0", "--label", "owner=me"],
    );
    assert_eq!(made.code, 0, "{made}");
    assert_eq!(sandbox.run_fake("podman", &["network", "create", "xtask-probe-d"]).code, 0);
    let before = sandbox.calls().len();

    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "probe-d"]);
    assert_eq!(run.code, 1, "{run}");
    let what = "the pod probe-d-gateway-pod-0 has no label e2e.xtask/cluster (an e2e run labels everything it creates); the network xtask-probe-d has no label e2e.xtask/cluster (an e2e run labels everything it creates): a run removes only what an earlier run of its name left";
    let fix = "remove them yourself if nobody needs them (`podman pod rm --force probe-d-gateway-pod-0; podman network rm xtask-probe-d`), or run under another `--cluster-name`";
    assert!(run.stdout.contains(&format!("phase 1 (preflight) failed: {what}: {fix}")), "{run}");
    assert!(!run.stdout.contains("an earlier run left"), "{run}");
    assert_eq!(
        touching(&sandbox, before),
        Vec::<String>::new(),
        "nothing may be created or removed"
    );
    for kept in ["pod-probe-d-gateway-pod-0", "network-xtask-probe-d"] {
        assert!(sandbox.state.join(kept).exists(), "{kept} was removed");
    }
    assert_eq!(
        std::fs::read_to_string(sandbox.state.join("labels-pod-probe-d-gateway-pod-0")).unwrap(),
        "owner=me\n"
    );

    // Doctor says the same, and fails as the run would.
    let doctor = sandbox.run(&["doctor", "--cluster", "podman", "--cluster-name", "probe-d"]);
    assert_eq!(doctor.code, 1, "{doctor}");
    let (row, row_fix) = doctor_row(&doctor, "earlier run (gateway)");
    assert_eq!(row, format!("FAIL    {what}"), "{doctor}");
    assert_eq!(row_fix, fix, "{doctor}");
    let calls = sandbox.calls();
    assert!(
        !calls[before..].iter().any(|c| c.starts_with("podman pod rm") || c.contains("network rm")),
        "{calls:#?}"
    );
}

/// A leftover of our name with our label is still an earlier run's, and goes; what only has
/// one of our names stays, and then nothing of ours goes either (the run stops first).
#[test]
fn our_labelled_leftover_goes_but_not_while_a_stranger_stands_beside_it() {
    let sandbox = Sandbox::new("foreign-mixed", PODMAN_TOOLS);
    let ours = ["--label", "e2e.xtask/cluster=mixed"];
    let network =
        sandbox.run_fake("podman", &[&["network", "create"][..], &ours, &["xtask-mixed"]].concat());
    assert_eq!(network.code, 0, "{network}");
    let pod = ["pod", "create", "--name", "mixed-datastorage-pod-0"];
    assert_eq!(sandbox.run_fake("podman", &pod).code, 0);
    let before = sandbox.calls().len();
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "mixed"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("the pod mixed-datastorage-pod-0 has no label"), "{run}");
    assert!(!run.stdout.contains("the network xtask-mixed"), "ours is no stranger: {run}");
    assert!(run.stdout.contains("(`podman pod rm --force mixed-datastorage-pod-0`)"), "{run}");
    assert_eq!(touching(&sandbox, before), Vec::<String>::new());

    // Without the stranger, our network is an earlier run's: removed, and made again.
    assert_eq!(sandbox.run_fake("podman", &["pod", "rm", "mixed-datastorage-pod-0"]).code, 0);
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "mixed"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("an earlier run left the network xtask-mixed"), "{run}");
    let create = "podman network create --label e2e.xtask/cluster=mixed xtask-mixed";
    assert!(sandbox.position("podman network rm xtask-mixed") < sandbox.last_position(create));
}

/// A pod of our name that another run labelled, while that run lives: no command to remove
/// it is offered, only another name.
#[test]
fn a_pod_of_a_live_run_of_another_name_is_never_offered_for_removal() {
    let sandbox = Sandbox::new("foreign-live", PODMAN_TOOLS);
    let pod = ["pod", "create", "--name", "x-gateway-pod-0", "--label", "e2e.xtask/cluster=other"];
    assert_eq!(sandbox.run_fake("podman", &pod).code, 0);
    let before = sandbox.calls().len();
    // The run of `other` lives: it holds its name's lock (in the sandbox's temporary directory).
    let lock = sandbox.dir.join("xtask-e2e-other.lock");
    std::fs::write(&lock, "pid 4242\ncheckout /elsewhere\nsince 2026-12-07T00:00:00Z\n").unwrap();
    let held = std::fs::File::open(&lock).unwrap();
    held.lock().unwrap();

    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "x"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("the pod x-gateway-pod-0 belongs to the live e2e run of the cluster name other (pid 4242, checkout /elsewhere, since 2026-12-07T00:00:00Z): a run removes only what an earlier run of its name left: run under another `--cluster-name` (a live run's objects are never removed)"),
        "{run}"
    );
    assert!(!run.stdout.contains("rm --force"), "{run}");

    // Once that run is over, removing it is the fix.
    drop(held);
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "x"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("the pod x-gateway-pod-0 was left by an e2e run of the cluster name other, which is over"),
        "{run}"
    );
    assert!(run.stdout.contains("(`podman pod rm --force x-gateway-pod-0`)"), "{run}");
    assert_eq!(touching(&sandbox, before), Vec::<String>::new());
}

/// Kind counts as its own only the containers with its label: a container of its node's name
/// without it is not deleted (nor killed), and the run stops before the build.
#[test]
fn a_container_named_like_our_kind_node_without_kinds_label_is_not_deleted() {
    let sandbox = Sandbox::new("foreign-kind", KIND_TOOLS);
    std::fs::create_dir_all(&sandbox.state).unwrap();
    std::fs::write(sandbox.state.join("container-gateway-e2e-control-plane"), "").unwrap();
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("phase 1 (preflight) failed: the container gateway-e2e-control-plane is named like a node of the Kind cluster gateway-e2e but is not one (it has no label io.x-k8s.kind.cluster=gateway-e2e): a run removes only what an earlier run of its name left: remove it yourself if nobody needs it (`podman rm --force gateway-e2e-control-plane`), or run under another `--cluster-name`"),
        "{run}"
    );
    assert_eq!(touching(&sandbox, 0), Vec::<String>::new());
    assert!(sandbox.state.join("container-gateway-e2e-control-plane").exists());

    let doctor = sandbox.run(&["doctor", "--cluster", "kind"]);
    let (row, _) = doctor_row(&doctor, "earlier run (gateway)");
    assert!(
        row.starts_with("FAIL    the container gateway-e2e-control-plane is named like a node"),
        "{doctor}"
    );
}

/// What gets one of our names after the preflight looked (here: while the images build) is
/// not this run's either: the teardown leaves it alone, and says so.
#[test]
fn a_pod_of_our_name_made_after_the_preflight_is_left_alone_by_the_teardown() {
    let mut sandbox = Sandbox::new("foreign-late", PODMAN_TOOLS);
    sandbox.env("FAKE_SLOW", "^go build").env("FAKE_SLOW_SECONDS", "3");
    let mut xtask = sandbox.spawn(&["e2e-gateway", "--cluster", "podman"]);
    sandbox.wait_for_call(&mut xtask, |c| c.starts_with("go build"));
    let pod = ["pod", "create", "--name", "gateway-e2e-gateway-pod-0", "--label", "owner=me"];
    assert_eq!(sandbox.run_fake("podman", &pod).code, 0);
    let run = common::finish(xtask);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("\"gateway-e2e-gateway-pod-0\" is in use: pod already exists"),
        "{run}"
    );
    assert!(sandbox.state.join("pod-gateway-e2e-gateway-pod-0").exists(), "{run}");
    assert!(
        run.stdout.contains("    left the pod gateway-e2e-gateway-pod-0 alone: it is not this run's (it has no label e2e.xtask/cluster=gateway-e2e)"),
        "{run}"
    );
    let touched: Vec<String> = touching(&sandbox, 0)
        .into_iter()
        .filter(|c| c.contains("gateway-e2e-gateway-pod-0"))
        .collect();
    assert_eq!(touched, Vec::<String>::new());
    // Its own pod, which started, is removed.
    assert!(!sandbox.state.join("pod-gateway-e2e-datastorage-pod-0").exists(), "{run}");
}

fn is_test_call(call: &str) -> bool {
    call.contains(" gotestsum ")
}

/// A sandbox of the same machine as `first` (its lock directory and podman state) and the
/// same host ports.
fn beside(first: &Sandbox, name: &str) -> Sandbox {
    let mut second = Sandbox::new(name, PODMAN_TOOLS);
    second.env("TMPDIR", first.dir.as_str()).env("FAKE_STATE", first.state.as_str());
    for port in ["GATEWAY_HOST_PORT", "DATASTORAGE_HOST_PORT"] {
        second.env(port, &first.env_value(port));
    }
    second
}

/// Another live run's pods hold our host ports: the preflight names each port, the pod and that
/// its run lives, and the fix is another port, never removing that pod.
#[test]
fn host_ports_of_a_live_runs_pods_are_named_and_the_fix_is_another_port() {
    let mut first = Sandbox::new("ports-live-first", PODMAN_TOOLS);
    first.env("FAKE_TEST_SLEEP", "30");
    let mut running =
        first.spawn(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "first"]);
    first.wait_for_call(&mut running, is_test_call);

    let second = beside(&first, "ports-live-second");
    let run = second.run(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "second"]);
    let pid = running.id();
    common::signal(&running, Signal::SIGINT);
    let first_run = common::finish(running);
    assert_eq!(run.code, 1, "{run}");
    let (gateway, datastorage) =
        (first.env_value("GATEWAY_HOST_PORT"), first.env_value("DATASTORAGE_HOST_PORT"));
    let owner = format!(
        "which belongs to the live e2e run of the cluster name first (pid {pid}, checkout {}, since ",
        first.root
    );
    for (port, pod, variable) in [
        (&gateway, "first-gateway-pod-0", "GATEWAY_HOST_PORT"),
        (&datastorage, "first-datastorage-pod-0", "DATASTORAGE_HOST_PORT"),
    ] {
        let (row, fix) = doctor_row(&run, &format!("port {port}"));
        assert!(row.starts_with(&format!("FAIL    in use by the pod {pod}, {owner}")), "{run}");
        assert_eq!(
            fix,
            format!("set {variable} to a free port: a live run's pod is never to be removed")
        );
    }
    assert!(
        run.stdout.contains(&format!("preflight failed (port {datastorage}, port {gateway})")),
        "{run}"
    );
    assert!(!run.stdout.contains("pod rm"), "{run}");
    assert_eq!(touching(&second, 0), Vec::<String>::new());
    assert_eq!(first_run.code, 1, "{first_run}");
}

/// Pods that a finished run kept hold our host ports: removing them is a fix now (their run is
/// over), as is another port.
#[test]
fn host_ports_of_a_finished_runs_pods_may_be_freed_by_removing_them() {
    let first = Sandbox::new("ports-kept-first", PODMAN_TOOLS);
    let kept = first.run(&[
        "e2e-gateway",
        "--cluster",
        "podman",
        "--cluster-name",
        "kept",
        "--keep-cluster",
    ]);
    assert_eq!(kept.code, 0, "{kept}");
    let second = beside(&first, "ports-kept-second");
    let run = second.run(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "other"]);
    assert_eq!(run.code, 1, "{run}");
    let (row, fix) = doctor_row(&run, &format!("port {}", first.env_value("GATEWAY_HOST_PORT")));
    assert_eq!(row, "FAIL    in use by the pod kept-gateway-pod-0, which was left by an e2e run of the cluster name kept, which is over", "{run}");
    assert_eq!(fix, "remove the pod (`podman pod rm --force kept-gateway-pod-0`: its run is over), or set GATEWAY_HOST_PORT to a free port");
    assert_eq!(touching(&second, 0), Vec::<String>::new());
    // The fix works.
    let removed = first.run_fake("podman", &["pod", "rm", "--force", "kept-gateway-pod-0"]);
    assert_eq!(removed.code, 0);
    let rerun = second.run(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "other"]);
    let (row, _) = doctor_row(&rerun, &format!("port {}", first.env_value("GATEWAY_HOST_PORT")));
    assert_eq!(row, "ok      free", "{rerun}");
    assert!(
        first.run_fake("podman", &["pod", "rm", "--force", "kept-datastorage-pod-0"]).code == 0
    );
}

/// Two runs that pass the preflight together, the other one's pods start first: our
/// `kube play` fails on the port, and says so (not podman's `failed to start 2 containers`),
/// whose pod holds it, and that the fix is another port.
#[test]
fn a_port_taken_between_the_preflight_and_kube_play_is_named_with_its_pod() {
    let mut late = Sandbox::new("ports-race-late", PODMAN_TOOLS);
    late.env("FAKE_SLOW", "^go build").env("FAKE_SLOW_SECONDS", "6");
    let mut slow = late.spawn(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "late"]);
    late.wait_for_call(&mut slow, |c| c.starts_with("go build"));
    // Phase 1 of `late` is over: another run starts its pods on the same ports meanwhile.
    let mut early = beside(&late, "ports-race-early");
    early.env("FAKE_TEST_SLEEP", "30");
    let mut running =
        early.spawn(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "early"]);
    early.wait_for_call(&mut running, is_test_call);
    let pid = running.id();
    let run = common::finish(slow);
    common::signal(&running, Signal::SIGINT);
    let early_run = common::finish(running);
    assert_eq!(run.code, 1, "{run}");
    let port = late.env_value("DATASTORAGE_HOST_PORT");
    let said = format!("phase 5 (deploy) failed: datastorage could not start: its host port {port} is in use by the pod early-datastorage-pod-0, which belongs to the live e2e run of the cluster name early (pid {pid}, checkout {}, since ", early.root);
    assert!(common::summary_row(&run, "result").contains(&said), "{run}");
    assert!(
        common::summary_row(&run, "cause").starts_with("`podman kube play --network xtask-late "),
        "{run}"
    );
    let fix = "set DATASTORAGE_HOST_PORT to a free port: a live run's pod is never to be removed";
    assert_eq!(common::summary_row(&run, "fix"), fix, "{run}");
    assert_eq!(run.stdout.matches(fix).count(), 1, "said once: {run}");
    let last_run = std::fs::read_to_string(late.root.join("target/xtask/last-run.txt")).unwrap();
    assert!(last_run.contains(&format!("result                   failed (exit 1): phase 5 (deploy) failed: datastorage could not start: its host port {port} is in use by the pod early-datastorage-pod-0")), "{last_run}");
    // Its own pod that could not start is removed; the other run's are not touched.
    let calls = late.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("podman pod rm --force late-datastorage-pod-0")
            || c.contains("kube down")),
        "{calls:#?}"
    );
    let early_touched = touching(&late, 0).into_iter().filter(|c| c.contains("early-"));
    assert_eq!(early_touched.collect::<Vec<_>>(), Vec::<String>::new());
    assert_eq!(early_run.code, 1, "{early_run}");
}

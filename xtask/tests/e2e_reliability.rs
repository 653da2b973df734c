//! `cargo xtask e2e-gateway` against the fake tools, as a hostile tester would run it: two runs
//! at once, leftovers of another checkout, signals at bad moments, inputs that are wrong.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, Sandbox};
use nix::sys::signal::Signal;

const KIND_TOOLS: &[&str] = &["podman", "kind", "kubectl", "go"];
const PODMAN_TOOLS: &[&str] = &["podman", "go"];

fn is_test_call(call: &str) -> bool {
    call.contains(" gotestsum ")
}

#[test]
fn a_second_run_of_the_same_name_is_refused_and_touches_nothing_of_the_first() {
    let mut first = Sandbox::new("lock-first", PODMAN_TOOLS);
    first.env("FAKE_TEST_SLEEP", "30");
    let mut running = first.spawn(&["e2e-gateway", "--cluster", "podman"]);
    first.wait_for_call(&mut running, is_test_call);

    // The same machine (lock directory and podman state), another checkout.
    let mut second = Sandbox::new("lock-second", PODMAN_TOOLS);
    second.env("TMPDIR", first.dir.as_str()).env("FAKE_STATE", first.state.as_str());
    let started = Instant::now();
    let refused = second.run(&["e2e-gateway", "--cluster", "podman"]);
    assert_eq!(refused.code, 1, "{refused}");
    assert!(started.elapsed() < Duration::from_secs(10), "it waited");
    let holder = format!(
        "another e2e run is using the cluster name gateway-e2e (pid {}, checkout {}, since ",
        running.id(),
        first.root
    );
    assert!(refused.stdout.contains(&holder), "{refused}");
    assert!(refused.stdout.contains("--cluster-name <another name>"), "{refused}");
    let touched: Vec<String> = second
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("podman pod") || c.starts_with("podman kube"))
        .collect();
    assert!(touched.is_empty(), "the live run's pods were touched: {touched:?}");
    assert!(first.state.join("pod-gateway-e2e-gateway-pod-0").exists());

    // Another name and other ports run beside it.
    let mut beside = Sandbox::new("lock-beside", PODMAN_TOOLS);
    beside.env("TMPDIR", first.dir.as_str());
    let run = beside.run(&["e2e-gateway", "--cluster", "podman", "--cluster-name", "other"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(beside.position("podman kube play --network xtask-other") > 0);

    common::signal(&running, Signal::SIGINT);
    let first_run = common::finish(running);
    assert_eq!(first_run.code, 1, "{first_run}");
}

#[test]
fn a_fresh_clone_removes_what_another_clone_kept() {
    let kept = Sandbox::new("kept-by-clone-a", PODMAN_TOOLS);
    let run = kept.run(&["e2e-gateway", "--cluster", "podman", "--keep-cluster"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains(
            "podman pod rm --force gateway-e2e-datastorage-pod-0 gateway-e2e-gateway-pod-0; podman network rm xtask-gateway-e2e"
        ),
        "the printed cleanup names the pods and the network: {run}"
    );

    // Clone B: no target/ of its own, the same machine and ports.
    let mut fresh = Sandbox::new("fresh-clone-b", PODMAN_TOOLS);
    fresh.env("TMPDIR", kept.dir.as_str()).env("FAKE_STATE", kept.state.as_str());
    for port in ["GATEWAY_HOST_PORT", "DATASTORAGE_HOST_PORT"] {
        fresh.env(port, &kept.env_value(port));
    }
    assert!(!fresh.root.join("target").exists());
    let run = fresh.run(&["e2e-gateway", "--cluster", "podman"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains(
            "an earlier run left the pod gateway-e2e-datastorage-pod-0, the pod gateway-e2e-gateway-pod-0, the network xtask-gateway-e2e"
        ),
        "{run}"
    );
    let calls = fresh.calls();
    let removed = fresh.position("podman pod rm --force gateway-e2e-gateway-pod-0");
    assert!(removed < fresh.position("podman network rm xtask-gateway-e2e"));
    assert!(
        fresh.position("podman pod stop --time 30 gateway-e2e-gateway-pod-0") < removed,
        "stopped gracefully first: {calls:#?}"
    );
}

#[test]
fn a_binary_built_in_one_checkout_works_on_the_checkout_it_runs_in() {
    // Two clones sharing one target directory: the test binary is the shared one.
    let a = Sandbox::new("root-clone-a", PODMAN_TOOLS);
    let b = Sandbox::new("root-clone-b", PODMAN_TOOLS);
    for clone in [&a, &b] {
        common::write(&clone.root.join("xtask/Cargo.toml"), "[package]\n");
    }
    let build_in = |clone: &Sandbox, cwd: &camino::Utf8Path, manifest_dir: Option<&str>| {
        let mut cmd = clone.command(&["build-images"]);
        cmd.env_remove("XTASK_PROJECT_ROOT").env_remove("CARGO_MANIFEST_DIR").current_dir(cwd);
        if let Some(dir) = manifest_dir {
            cmd.env("CARGO_MANIFEST_DIR", dir);
        }
        common::Run::from(cmd.output().unwrap())
    };
    // Run directly from a directory of clone A: clone A's target/ gets the build.
    let run = build_in(&a, &a.root.join("cmd"), None);
    assert_eq!(run.code, 0, "{run}");
    assert!(a.root.join("target/xtask/context").is_dir(), "{run}");
    assert!(!b.root.join("target").exists());
    // Through `cargo run` in clone B (cargo sets CARGO_MANIFEST_DIR at run time).
    let run = build_in(&b, &a.root, Some(b.root.join("xtask").as_str()));
    assert_eq!(run.code, 0, "{run}");
    assert!(b.root.join("target/xtask/context").is_dir(), "{run}");
}

#[test]
fn an_engine_that_cannot_start_containers_stops_the_run_at_deploy_with_its_words_and_the_fix() {
    let mut sandbox = Sandbox::new("rlimits", PODMAN_TOOLS);
    sandbox
        .env("FAKE_FAIL", "^podman kube play")
        .env("FAKE_FAIL_CODE", "125")
        .env(
            "FAKE_FAIL_MESSAGE",
            "Error: runc: runc create failed: unable to start container process: error during container init: error setting rlimits for ready process: error setting rlimit type 7: operation not permitted: OCI permission denied",
        );
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--coverage"]);
    assert_eq!(run.code, 1, "{run}");
    let last_run = std::fs::read_to_string(sandbox.root.join("target/xtask/last-run.txt")).unwrap();
    let line = |label: &str| {
        last_run
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line:\n{last_run}"))
            .to_string()
    };
    assert!(line("cause").contains("exited with 125: Error: runc: runc create failed"));
    assert!(line("cause").contains("error setting rlimits"));
    let conf = format!("export CONTAINERS_CONF={}/.ci/containers.conf", sandbox.root);
    assert!(line("fix").contains(&conf), "{last_run}");
    assert!(run.stdout.contains("\n  fix                      podman may not raise"), "{run}");
    // Nothing started, so there is nothing to stop for coverage.
    assert_eq!(sandbox.count("podman pod stop"), 0, "{:#?}", sandbox.calls());
}

#[test]
fn the_podman_backend_needs_podman_whatever_builds_the_images() {
    let sandbox = Sandbox::new("docker-no-kind", &["docker", "go", "df"]);
    let run = sandbox.run(&["doctor"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("cluster backend: podman (auto: kind is not on PATH)"), "{run}");
    assert!(run.stderr.contains("preflight failed (podman)"), "{run}");
    let refused = sandbox.run(&["e2e-gateway", "--engine", "docker", "--cluster", "podman"]);
    assert_eq!(refused.code, 1, "{refused}");
    assert!(
        refused.stderr.contains("the podman backend runs images from podman's store"),
        "{refused}"
    );
    assert!(sandbox.calls().iter().all(|c| !c.starts_with("docker build --")));
}

#[test]
fn sigterm_during_the_build_stops_it_at_once() {
    let mut sandbox = Sandbox::new("sigterm-build", KIND_TOOLS);
    sandbox.env("FAKE_BUILD_SLEEP", "60");
    let mut child = sandbox.spawn(&["e2e-gateway", "--cluster", "kind"]);
    sandbox.wait_for_call(&mut child, |c| c.starts_with("go build"));
    let signalled = Instant::now();
    common::signal(&child, Signal::SIGTERM);
    let run = common::finish(child);
    assert_eq!(run.code, 1, "{run}");
    assert!(signalled.elapsed() < Duration::from_secs(10), "the build ran on");
    assert!(run.stdout.contains("phase 2 (build images) failed: interrupted"), "{run}");
    assert_eq!(sandbox.count("kind create"), 0);
}

#[test]
fn a_stopped_test_phase_gets_sigint_first_and_reports_what_ran() {
    let mut sandbox = Sandbox::new("sigint-first", KIND_TOOLS);
    sandbox.env("FAKE_TEST_SLEEP", "60");
    let mut child = sandbox.spawn(&["e2e-gateway", "--cluster", "kind"]);
    sandbox.wait_for_call(&mut child, is_test_call);
    // Let the suite report its first test before the signal.
    std::thread::sleep(Duration::from_millis(300));
    common::signal(&child, Signal::SIGTERM);
    let run = common::finish(child);
    assert_eq!(run.code, 1, "{run}");
    // `go` removes its temporary build directory on SIGINT, not on SIGTERM.
    let signals = std::fs::read_to_string(sandbox.state.join("signals")).unwrap();
    assert_eq!(signals.lines().next(), Some("INT"), "{signals}");
    let last_run = std::fs::read_to_string(sandbox.root.join("target/xtask/last-run.txt")).unwrap();
    assert!(last_run.contains("1 passed, 0 failed, 0 skipped before the interrupt"), "{last_run}");
}

#[test]
fn after_two_ctrl_cs_last_run_txt_is_this_runs_so_far() {
    let mut sandbox = Sandbox::new("two-ctrl-c", PODMAN_TOOLS);
    sandbox.env("FAKE_TEST_SLEEP", "60").env("FAKE_SLOW", "^podman kube down");
    let last_run = sandbox.root.join("target/xtask/last-run.txt");
    common::write(&last_run, "  run                      the-run-before (podman backend)\n");
    let mut child = sandbox.spawn(&["e2e-gateway", "--cluster", "podman"]);
    sandbox.wait_for_call(&mut child, is_test_call);
    std::thread::sleep(Duration::from_millis(300));
    common::signal(&child, Signal::SIGINT);
    // The teardown is under way (and slow): the second Ctrl-C skips it.
    sandbox.wait_for_call(&mut child, |c| c.starts_with("podman kube down"));
    common::signal(&child, Signal::SIGINT);
    let run = common::finish(child);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.contains("teardown skipped: remove what is left with `podman pod rm"),
        "{run}"
    );
    let text = std::fs::read_to_string(&last_run).unwrap();
    assert!(!text.contains("the-run-before"), "{text}");
    for row in [
        "  run                      ",
        "  6. test                  ",
        "  tests                    1 passed, 0 failed, 0 skipped before the interrupt\n",
        "  result                   unfinished: the run is still going, or ended before its summary",
    ] {
        assert!(text.contains(row), "no `{row}` in:\n{text}");
    }
    assert!(!text.contains("9. teardown"), "{text}");
}

#[test]
fn bad_host_ports_are_refused_before_anything_runs() {
    for (gateway, datastorage, expected) in [
        ("0", "28081", "GATEWAY_HOST_PORT=0 is not a port number from 1 to 65535"),
        ("28081", "28081", "datastorage and gateway would both use host port 28081"),
    ] {
        let mut sandbox = Sandbox::new("bad-ports", PODMAN_TOOLS);
        sandbox.env("GATEWAY_HOST_PORT", gateway).env("DATASTORAGE_HOST_PORT", datastorage);
        let run = sandbox.run(&["e2e-gateway", "--cluster", "podman"]);
        assert_eq!(run.code, 1, "{run}");
        assert!(run.stderr.contains(expected), "{run}");
        assert!(sandbox.calls().is_empty(), "{:#?}", sandbox.calls());
    }
}

#[test]
fn only_the_newest_run_logs_are_kept() {
    let sandbox = Sandbox::new("logs-pruned", PODMAN_TOOLS);
    let logs = sandbox.root.join("target/xtask/logs");
    for n in 0..25 {
        std::fs::create_dir_all(logs.join(format!("2020-01-01T00-00-{n:02}Z-gateway-e2e")))
            .unwrap();
    }
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman"]);
    assert_eq!(run.code, 0, "{run}");
    let mut left: Vec<String> =
        logs.read_dir_utf8().unwrap().map(|e| e.unwrap().file_name().to_string()).collect();
    left.sort();
    assert_eq!(left.len(), 20, "{left:?}");
    assert_eq!(left[0], "2020-01-01T00-00-06Z-gateway-e2e");
    assert!(left[19].ends_with("-gateway-e2e") && !left[19].starts_with("2020"));
}

#[test]
fn reusing_a_cluster_after_an_image_change_rolls_out_on_one_node() {
    let sandbox = Sandbox::new("reuse-new-image", KIND_TOOLS);
    let kept = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--keep-cluster"]);
    assert_eq!(kept.code, 0, "{kept}");
    common::write(
        &sandbox.root.join("cmd/gateway/main.go"),
        "package main\n\nfunc main() { println(\"changed\") }\n",
    );
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--reuse-cluster"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains(" built "), "a new gateway image: {run}");

    // On one node with a host port, a rolling update's new pod waits for the port the old pod
    // holds: the manifests applied recreate the Deployment instead (the real Kind test shows
    // the rollout finishing).
    let gateway = run.stdout.lines().find(|l| l.starts_with("gateway ")).unwrap();
    let image = gateway.split_whitespace().nth(1).unwrap();
    let applied = std::fs::read_to_string(
        sandbox.root.join("target/xtask/rendered/gateway-e2e/gateway.yaml"),
    );
    let applied = applied.unwrap();
    assert!(applied.contains(&format!("image: {image}")), "{applied}");
    assert!(applied.contains("strategy:\n    type: Recreate"), "{applied}");
}

#[test]
fn a_failed_cluster_creation_keeps_its_cause_and_collects_nothing_from_it() {
    let mut sandbox = Sandbox::new("create-fails", KIND_TOOLS);
    sandbox
        .env("FAKE_FAIL", "^kind create")
        .env("FAKE_FAIL_MESSAGE", "ERROR: failed to create cluster: node image not found");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    let last_run = std::fs::read_to_string(sandbox.root.join("target/xtask/last-run.txt")).unwrap();
    assert!(
        last_run.contains("cause                    `kind create cluster --name gateway-e2e")
            && last_run
                .contains("exited with 1: ERROR: failed to create cluster: node image not found"),
        "{last_run}"
    );
    assert_eq!(sandbox.count("kind export logs"), 0);
    assert_eq!(sandbox.count("kubectl --kubeconfig"), 0, "{:#?}", sandbox.calls());
    assert!(!last_run.contains("  logs "), "{last_run}");
    // What to do, not merely to run doctor.
    assert!(run.stdout.contains("run this command by hand with --retain added"), "{run}");
    assert!(!format!("{run}").contains("run `cargo xtask doctor`"), "{run}");
    // Each text once: what the run was doing in `result`, the command and kind's words in
    // `cause`, the fix in `fix`; the error after the summary repeats none of them.
    let all = format!("{}{}", run.stdout, run.stderr);
    let result = "  result                   failed (exit 1): phase 3 (create cluster) failed: creating the Kind cluster gateway-e2e failed\n";
    assert!(run.stdout.contains(result), "{run}");
    for once in [
        "node image not found",
        "kind create cluster --name",
        "with --retain added",
        "creating the Kind cluster",
    ] {
        assert_eq!(all.matches(once).count(), 1, "`{once}` in:\n{run}");
    }
    assert_eq!(
        run.stderr,
        "error: phase 3 (create cluster) failed: the summary above says why and what to do (also in target/xtask/last-run.txt)\n"
    );

    // What kind printed before its last line is the error's, once.
    let mut chatty = Sandbox::new("create-fails-chatty", KIND_TOOLS);
    let said = "Creating cluster \"gateway-e2e\" ...\n ✗ Preparing nodes\nERROR: failed to create cluster: command \"podman run --name gateway-e2e-control-plane\" failed with error: exit status 126\nCommand Output: Error: runc: runc create failed: unable to start container process: unable to apply caps: operation not permitted";
    chatty.env("FAKE_FAIL", "^kind create").env("FAKE_FAIL_MESSAGE", said);
    let run = chatty.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    let all = format!("{}{}", run.stdout, run.stderr);
    for once in [
        "Preparing nodes",
        "failed with error: exit status 126",
        "unable to start container process",
        "privileged containers cannot run",
    ] {
        assert_eq!(all.matches(once).count(), 1, "`{once}` in:\n{run}");
    }
    assert!(run.stdout.contains("exited with 1: Command Output: Error: runc"), "{run}");
    assert!(
        run.stderr.starts_with("error: phase 3 (create cluster) failed; before the line the cause quotes, `kind` printed:\n    Creating cluster \"gateway-e2e\" ...\n     ✗ Preparing nodes\n    ERROR: failed to create cluster:"),
        "{run}"
    );
}

#[test]
fn an_unpullable_node_image_names_it_and_offers_a_local_one() {
    let mut sandbox = Sandbox::new("node-image", KIND_TOOLS);
    sandbox.env("FAKE_FAIL", "^kind create").env(
        "FAKE_FAIL_MESSAGE",
        "ERROR: failed to create cluster: failed to pull image \"kindest/node:v1.37.0\": command \"podman pull kindest/node:v1.37.0\" failed with error: exit status 125",
    );
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("kind could not pull the node image kindest/node:v1.37.0")
            && run.stdout.contains("--node-image (or E2E_NODE_IMAGE)"),
        "{run}"
    );

    let mut local = Sandbox::new("node-image-local", KIND_TOOLS);
    local.env("E2E_NODE_IMAGE", "localhost/kindest-node:v1.33.1");
    let run = local.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    let create = &local.calls()[local.position("kind create cluster")];
    assert!(create.ends_with(" --image localhost/kindest-node:v1.33.1"), "{create}");
}

#[test]
fn doctor_warns_when_kubectl_is_too_far_from_the_node() {
    let mut sandbox = Sandbox::new("skew", &["podman", "go", "kind", "kubectl", "df"]);
    sandbox
        .env("FAKE_KIND_VERSION", "kind v0.33.0 go1.25.1 linux/amd64")
        .env("FAKE_KUBECTL_VERSION", "v1.32.4")
        .env("GATEWAY_HOST_PORT", &free_port().to_string());
    let skew_row = |run: &common::Run| {
        run.stdout
            .lines()
            .find(|l| l.starts_with("kubectl skew "))
            .unwrap_or_else(|| panic!("no skew row:\n{run}"))
            .split_whitespace()
            .skip(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let run = sandbox.run(&["doctor", "--cluster", "kind"]);
    assert!(
        skew_row(&run).starts_with("warn kubectl v1.32.4 and Kubernetes v1.37 (kind v0.33.0's default node) are further apart"),
        "{run}"
    );
    let matching =
        sandbox.run(&["doctor", "--cluster", "kind", "--node-image", "kindest/node:v1.33.1"]);
    assert!(skew_row(&matching).starts_with("ok "), "{matching}");
}

#[test]
fn kind_nodes_pull_from_the_registry_instead_of_loading_archives() {
    let sandbox = Sandbox::new("kind-registry", KIND_TOOLS);
    let run = sandbox.run(&[
        "e2e-gateway",
        "--cluster",
        "kind",
        "--registry",
        "registry.example.com:5000/e2e",
    ]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(sandbox.count("kind load"), 0, "{:#?}", sandbox.calls());
    assert_eq!(sandbox.count("podman save"), 0);
    assert_eq!(sandbox.count("podman push localhost/"), 2);
    let config = std::fs::read_to_string(
        sandbox.root.join("target/xtask/rendered/gateway-e2e/kind-config.yaml"),
    )
    .unwrap();
    assert!(config.contains("config_path = \"/etc/containerd/certs.d\""), "{config}");
    let hosts =
        std::fs::read_to_string(sandbox.root.join("target/xtask/rendered/gateway-e2e/hosts.toml"))
            .unwrap();
    assert!(hosts.starts_with("server = \"https://registry.example.com:5000\""), "{hosts}");
    let dir = "/etc/containerd/certs.d/registry.example.com:5000";
    let mkdir = sandbox.position(&format!("podman exec gateway-e2e-control-plane mkdir -p {dir}"));
    let copy = sandbox.position("podman cp ");
    assert!(mkdir < copy && copy < sandbox.position("kubectl --kubeconfig"));
    assert!(
        sandbox.calls()[copy].ends_with(&format!(" gateway-e2e-control-plane:{dir}/hosts.toml"))
    );
    let gateway = std::fs::read_to_string(
        sandbox.root.join("target/xtask/rendered/gateway-e2e/gateway.yaml"),
    )
    .unwrap();
    assert!(gateway.contains("image: registry.example.com:5000/e2e/gateway:e2e-"), "{gateway}");
}

#[test]
fn a_registry_that_refuses_stops_the_run_at_the_push_before_any_cluster() {
    let mut sandbox = Sandbox::new("registry-refuses", KIND_TOOLS);
    sandbox
        .env("FAKE_FAIL", "^podman push")
        .env("FAKE_FAIL_CODE", "125")
        .env(
            "FAKE_FAIL_MESSAGE",
            "Error: writing blob: initiating layer upload to /v2/e2e/datastorage/blobs/uploads/ in registry.example.com: unauthorized: authentication required",
        );
    let run = sandbox.run(&[
        "e2e-gateway",
        "--cluster",
        "kind",
        "--registry",
        "registry.example.com/e2e",
    ]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("phase 2 (build images) failed"), "{run}");
    assert!(run.stdout.contains("unauthorized: authentication required"), "{run}");
    assert!(run.stdout.contains("log in with `podman login registry.example.com`"), "{run}");
    assert_eq!(sandbox.count("kind create"), 0);
}

/// A registry that refuses the connection (nothing listens there) is named as such, with the
/// fix; --registry-insecure, given already, is not suggested again.
#[test]
fn a_registry_that_refuses_the_connection_is_named_and_insecure_not_suggested_again() {
    let mut sandbox = Sandbox::new("registry-refused", KIND_TOOLS);
    let host = format!("127.0.0.1:{}", free_port());
    let said = format!("Error: trying to reuse blob sha256:cd7192b2 at destination: pinging container registry {host}: Get \"http://{host}/v2/\": dial tcp {host}: connect: connection refused");
    sandbox
        .env("FAKE_FAIL", "^podman push")
        .env("FAKE_FAIL_CODE", "125")
        .env("FAKE_FAIL_MESSAGE", &said);
    let registry = format!("{host}/e2e");
    let args = ["e2e-gateway", "--cluster", "kind", "--registry", &registry, "--registry-insecure"];
    let run = sandbox.run(&args);
    assert_eq!(run.code, 1, "{run}");
    let fix = format!("the registry {host} refused the connection: nothing listens at that address and port; start the registry, or check the address and port given to --registry");
    assert!(run.stdout.contains(&fix) || run.stderr.contains(&fix), "{run}");
    assert!(!format!("{run}").contains("add --registry-insecure"), "{run}");
    assert_eq!(sandbox.count("kind create"), 0);

    // Over TLS, a registry that speaks plain HTTP: then it is the fix.
    let mut tls = Sandbox::new("registry-tls", KIND_TOOLS);
    let said = format!("Error: trying to reuse blob sha256:cd7192b2 at destination: pinging container registry {host}: Get \"https://{host}/v2/\": tls: first record does not look like a TLS handshake");
    tls.env("FAKE_FAIL", "^podman push")
        .env("FAKE_FAIL_CODE", "125")
        .env("FAKE_FAIL_MESSAGE", &said);
    let run = tls.run(&args[..5]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        format!("{run}").contains("a registry that serves plain HTTP needs --registry-insecure"),
        "{run}"
    );
}

#[test]
fn kind_with_docker_refuses_a_loopback_registry_before_anything_is_built() {
    let sandbox = Sandbox::new("kind-docker-loopback", &["docker", "kind", "kubectl", "go"]);
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--registry", "127.0.0.1:5000"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("preflight failed (registry)"), "{run}");
    assert!(run.stdout.contains("127.0.0.1:5000 is on this machine's loopback"), "{run}");
    assert_eq!(sandbox.count("docker build --"), 0);
    assert_eq!(sandbox.count("kind create"), 0);
}

/// With `--registry` the podman backend's images come from the registry, pulled at deploy:
/// the load phase says so, not that they are in podman's store already.
#[test]
fn the_podman_backend_says_its_images_come_from_the_registry() {
    let sandbox = Sandbox::new("registry-load-says", PODMAN_TOOLS);
    let args = ["e2e-gateway", "--cluster", "podman", "--registry", "registry.example.com/e2e"];
    let run = sandbox.run(&args);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains("    podman backend: the images come from registry.example.com: each is pulled into podman's store before `podman kube play`\n"),
        "{run}"
    );
    assert!(!run.stdout.contains("already in podman's store"), "{run}");
    // And it is true: each is pulled, before the first play.
    assert!(
        sandbox.last_position("podman pull registry.example.com/e2e/")
            < sandbox.position("podman kube play")
    );
}

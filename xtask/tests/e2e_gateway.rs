//! `cargo xtask e2e-gateway` against fake podman, kind, kubectl and go: the order of the calls,
//! the provider variable, failure handling and teardown.

mod common;

use std::time::{Duration, Instant};

use common::Sandbox;
use nix::sys::signal::Signal;

const KIND_TOOLS: &[&str] = &["podman", "kind", "kubectl", "go"];

fn kind_sandbox(name: &str) -> Sandbox {
    Sandbox::new(name, KIND_TOOLS)
}

#[test]
fn kind_pipeline_runs_in_strict_order() {
    let sandbox = kind_sandbox("kind-order");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--coverage"]);
    assert_eq!(run.code, 0, "{run}");
    let calls = sandbox.calls();
    let first = |prefix: &str| sandbox.position(prefix);
    let last = |prefix: &str| sandbox.last_position(prefix);
    let containing = |part: &str| {
        calls
            .iter()
            .position(|c| c.contains(part))
            .unwrap_or_else(|| panic!("no call containing `{part}` in:\n{}", calls.join("\n")))
    };

    // Every image is built and saved before the cluster exists.
    let create = first("kind create cluster");
    assert!(last("podman build") < create, "{calls:#?}");
    assert!(last("podman save") < create, "{calls:#?}");

    // Between creation and the first load: only the node check and what the node holds,
    // nothing slow.
    let load = first("kind load image-archive");
    let between = &calls[create + 1..load];
    let quick = [
        "podman inspect",
        "kind get nodes",
        "podman exec gateway-e2e-control-plane ctr --namespace k8s.io images list --quiet",
    ];
    assert!(
        between.iter().all(|c| quick.iter().any(|q| c.starts_with(q))),
        "only the node check may run between create and load: {between:?}"
    );
    assert_eq!(sandbox.count("kind load image-archive"), 2);
    // Each load is checked in the node.
    let listed =
        sandbox.count("podman exec gateway-e2e-control-plane ctr --namespace k8s.io images list");
    assert_eq!(listed, 3, "one listing before the loads and one after each: {calls:#?}");

    // Deploy after the last load, roll out in dependency order, test, scale down, delete.
    let apply = containing(" apply -f ");
    let datastorage = containing("rollout status deployment/datastorage");
    let gateway = containing("rollout status deployment/gateway");
    let test = first("go tool -modfile=tools/go.mod gotestsum ");
    let scale = containing(" scale ");
    let delete = first("kind delete cluster");
    let order = [last("kind load"), apply, datastorage, gateway, test, scale, delete];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?} in {calls:#?}");
    // A passing coverage run keeps each service's logs and the pods' descriptions, taken
    // before the services are scaled down: whatever phase 8 finds, the evidence is kept.
    for evidence in [" logs deployment/datastorage ", " logs deployment/gateway ", " describe pods"]
    {
        let at = containing(evidence);
        assert!(test < at && at < scale, "{evidence} after the tests, before the scale-down");
    }
    assert!(!calls.iter().any(|c| c.starts_with("kind export logs")), "no failure to explain");

    // The suite found the services through the environment.
    let (_, env) =
        sandbox.calls_with_env().into_iter().find(|(c, _)| c.contains(" gotestsum ")).unwrap();
    assert!(env.contains("GATEWAY_URL=http://127.0.0.1:"), "{env}");
    assert!(env.contains("DATASTORAGE_URL=http://127.0.0.1:"), "{env}");

    // Output: counts, summary, last-run.txt.
    assert!(run.stdout.contains("2 passed, 0 failed, 1 skipped"), "{run}");
    let last_run = std::fs::read_to_string(sandbox.root.join("target/xtask/last-run.txt")).unwrap();
    assert!(last_run.contains("passed (exit 0)"), "{last_run}");
    assert!(last_run.contains("coverage total"), "{last_run}");
    let phases: Vec<&str> = last_run
        .lines()
        .filter_map(|l| l.trim_start().split_once(". ").map(|(n, _)| n))
        .filter(|n| n.parse::<usize>().is_ok())
        .collect();
    assert_eq!(phases, ["1", "2", "3", "4", "5", "6", "7", "8", "9"], "{last_run}");
    let logs = sandbox.root.join("target/xtask/logs");
    let run_dir = std::fs::read_dir(logs).unwrap().next().unwrap().unwrap().path();
    for file in ["datastorage.log", "gateway.log", "describe-pods.txt"] {
        assert!(run_dir.join(file).is_file(), "{file} missing in {}", run_dir.display());
    }
}

#[test]
fn every_kind_call_carries_the_provider_variable() {
    let mut sandbox = kind_sandbox("kind-provider");
    sandbox.env("FAKE_TEST_FAIL", "1"); // also exercises export logs
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    let calls = sandbox.calls();
    let kind_calls: Vec<(String, String)> =
        sandbox.calls_with_env().into_iter().filter(|(c, _)| c.starts_with("kind ")).collect();
    for (call, env) in &kind_calls {
        assert_eq!(
            env, "KIND_EXPERIMENTAL_PROVIDER=podman",
            "`{call}` ran without the provider variable"
        );
    }
    for expected in [
        "kind create cluster",
        "kind load image-archive",
        "kind export logs",
        "kind delete cluster",
        "kind get clusters",
    ] {
        assert!(calls.iter().any(|c| c.starts_with(expected)), "{expected} missing");
    }
    assert!(kind_calls.len() >= 5);
}

#[test]
fn idle_gap_is_reported_under_a_second() {
    let sandbox = kind_sandbox("kind-gap");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    let line = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("idle gap"))
        .unwrap_or_else(|| panic!("no idle gap line: {run}"));
    let millis: u64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line}"));
    assert!(millis < 1000, "{line}");
}

#[test]
fn node_not_running_is_detected_before_any_load_and_fails_clearly() {
    let mut sandbox = kind_sandbox("kind-node-down");
    sandbox.env("FAKE_NODE_STATE", "exited");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(sandbox.count("kind load"), 0, "no load into a stopped node");
    assert_eq!(sandbox.count("kind create cluster"), 2, "recreated exactly once");
    assert!(run.stdout.contains("not all running (gateway-e2e-control-plane is exited)"), "{run}");
    assert!(
        run.stdout.contains(
            "still not running after recreating the cluster (gateway-e2e-control-plane is exited)"
        ),
        "{run}"
    );
    assert!(
        sandbox.last_position("kind delete cluster") > sandbox.last_position("kind create cluster")
    );
}

#[test]
fn node_down_once_is_recovered_by_one_recreation() {
    let mut sandbox = kind_sandbox("kind-node-once");
    sandbox.env("FAKE_NODE_STATE_ONCE", "exited");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(sandbox.count("kind create cluster"), 2);
    assert_eq!(sandbox.count("kind load image-archive"), 2);
}

/// kind issue 4184: an archive imported under a made-up name is tagged with ours in the node,
/// so the pods find their image.
#[test]
fn an_image_imported_under_a_made_up_name_is_tagged_with_ours() {
    let mut sandbox = kind_sandbox("kind-import-name");
    sandbox.env("FAKE_LOAD_AS_IMPORT", "1");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    let tags: Vec<String> =
        sandbox.calls().into_iter().filter(|c| c.contains(" images tag ")).collect();
    assert_eq!(tags.len(), 2, "{tags:#?}");
    // The fake numbers what the node holds: the first tag is the second entry.
    for (tag, (made_up, service)) in tags.iter().zip([(1, "datastorage"), (3, "gateway")]) {
        let from = format!("import-2026-12-07@sha256:{made_up:064}");
        let expected = format!("podman exec gateway-e2e-control-plane ctr --namespace k8s.io images tag {from} localhost/{service}:e2e-");
        assert!(tag.starts_with(&expected), "{tag}");
    }
    assert!(run.stdout.contains("imported localhost/gateway:e2e-"), "{run}");
    let apply = sandbox.calls().iter().position(|c| c.contains(" apply -f ")).unwrap();
    assert!(apply > sandbox.last_position("podman exec"), "tagged before deploy");
}

#[test]
fn an_image_missing_from_the_node_after_its_load_fails_naming_image_and_node() {
    let mut sandbox = kind_sandbox("kind-load-lost");
    sandbox.env("FAKE_LOAD_LOSES", "1");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("phase 4 (load images) failed: localhost/datastorage:e2e-"),
        "{run}"
    );
    assert!(
        run.stdout.contains(
            "is not in the node gateway-e2e-control-plane after `kind load image-archive`"
        ),
        "{run}"
    );
    assert_eq!(sandbox.count("kind load"), 1, "stops at the first image that is not there");
    assert!(!sandbox.calls().iter().any(|c| c.contains(" apply -f ")), "nothing deployed");
    assert!(sandbox.position("kind delete cluster") > sandbox.position("kind load"));
}

/// The old flow's failure: the node stops, and `kind load` fails in kind's words; ours say why.
#[test]
fn a_node_that_stops_during_the_load_is_named_as_the_cause() {
    let mut sandbox = kind_sandbox("kind-node-stops");
    sandbox.env("FAKE_NODE_STOPS_ON_LOAD", "1");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("loading the image of datastorage failed because a node stopped (gateway-e2e-control-plane is exited): images cannot be loaded into a stopped node (the \"container state improper\" failure)"),
        "{run}"
    );
    assert!(run.stdout.contains("container state improper"), "{run}");
    assert!(sandbox.position("kind delete cluster") > sandbox.position("kind load"));
}

#[test]
fn failing_build_creates_no_cluster() {
    let mut sandbox = kind_sandbox("kind-build-fails");
    sandbox.env("FAKE_FAIL", "^podman build");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(sandbox.count("kind create"), 0);
    assert!(run.stderr.contains("phase 2 (build images) failed"), "{run}");
    assert!(run.stdout.contains("image build failed for datastorage"), "{run}");
    assert!(run.stdout.contains("runtime.Dockerfile or its build context"), "{run}");
    // The command and what it said, once (in the summary's `cause`), not again in the error.
    let all = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(all.matches("exited with 1: fake podman failure: build --file").count(), 1, "{run}");
    assert_eq!(all.matches("`podman build --file").count(), 1, "{run}");
}

#[test]
fn failing_test_collects_diagnostics_before_scale_down_and_still_deletes() {
    let mut sandbox = kind_sandbox("kind-test-fails");
    sandbox.env("FAKE_TEST_FAIL", "1");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--coverage"]);
    assert_eq!(run.code, 1, "{run}");
    let calls = sandbox.calls();
    let export = sandbox.position("kind export logs");
    let describe = calls.iter().position(|c| c.contains("describe pods")).unwrap();
    let scale = calls.iter().position(|c| c.contains(" scale ")).unwrap();
    let delete = sandbox.position("kind delete cluster");
    assert!(export < scale && describe < scale, "diagnostics before scale-down");
    assert!(scale < delete);
    assert!(run.stdout.contains("1 passed, 1 failed, 1 skipped"), "{run}");
    assert!(run.stdout.contains("1 E2E test(s) failed"), "{run}");
    let logs: Vec<_> = std::fs::read_dir(sandbox.root.join("target/xtask/logs")).unwrap().collect();
    assert_eq!(logs.len(), 1);
    let run_dir = logs[0].as_ref().unwrap().path();
    for file in [
        "go-test.log",
        "pods.txt",
        "events.txt",
        "describe-pods.txt",
        "gateway.log",
        "datastorage.log",
    ] {
        assert!(run_dir.join(file).exists(), "{file} missing in {}", run_dir.display());
    }
    assert!(run.stdout.contains("diagnostics written to"), "{run}");
}

#[test]
fn keep_cluster_deletes_nothing_and_says_how() {
    let sandbox = kind_sandbox("kind-keep");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--keep-cluster"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(sandbox.count("kind delete"), 0);
    assert!(run.stdout.contains("kind delete cluster --name gateway-e2e"), "{run}");
    assert!(run.stdout.contains("KUBECONFIG="), "{run}");
}

#[test]
fn stale_cluster_is_deleted_before_creation() {
    let sandbox = kind_sandbox("kind-stale");
    std::fs::create_dir_all(&sandbox.state).unwrap();
    std::fs::write(sandbox.state.join("cluster"), "").unwrap();
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(sandbox.position("kind delete cluster") < sandbox.position("kind create cluster"));
    assert!(run.stdout.contains("deleting the stale cluster gateway-e2e"), "{run}");
    // A stale cluster's services stop in order, so they write their last counters; the run's
    // own nodes, whose counters are flushed, are killed at teardown.
    let kills: Vec<usize> = sandbox
        .calls()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.starts_with("podman kill gateway-e2e-control-plane"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(kills.len(), 1, "{:#?}", sandbox.calls());
    assert!(kills[0] > sandbox.position("go tool -modfile=tools/go.mod gotestsum"));
    assert_eq!(kills[0] + 1, sandbox.last_position("kind delete cluster"));
}

#[test]
fn reuse_cluster_keeps_a_healthy_one_and_keeps_it_afterwards() {
    let sandbox = kind_sandbox("kind-reuse");
    std::fs::create_dir_all(&sandbox.state).unwrap();
    std::fs::write(sandbox.state.join("cluster"), "").unwrap();
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--reuse-cluster"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(sandbox.count("kind create"), 0, "a healthy cluster is reused");
    assert!(run.stdout.contains("reusing the running cluster"), "{run}");
    assert_eq!(sandbox.count("kind delete"), 0, "--reuse-cluster keeps it for next time");
    assert!(sandbox.count("kind get nodes") >= 1, "every node is checked");
}

/// A kept cluster already holds our unchanged images (their tags are their content): the next
/// run loads only what changed.
#[test]
fn reuse_cluster_loads_only_the_images_the_node_lacks() {
    let sandbox = kind_sandbox("kind-reuse-load");
    let first = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--reuse-cluster"]);
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(sandbox.count("kind load image-archive"), 2, "{first}");
    let main = sandbox.root.join("cmd/gateway/main.go");
    let source = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, format!("{source}\n// a one-line change\n")).unwrap();
    let second = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--reuse-cluster"]);
    assert_eq!(second.code, 0, "{second}");
    let loads: Vec<String> =
        sandbox.calls().into_iter().filter(|c| c.starts_with("kind load image-archive")).collect();
    assert_eq!(loads.len(), 3, "{loads:#?}");
    assert!(loads[2].contains("/gateway-"), "only the changed gateway: {loads:#?}");
    assert!(second.stdout.contains("    localhost/datastorage:e2e-"), "{second}");
    assert!(second.stdout.contains(" is in the node already"), "{second}");
    // CoreDNS is set once, on the new cluster, before anything is applied: to probe every
    // second and to reach the API server at the address of the `kubernetes` endpoints.
    let patches: Vec<usize> = (sandbox.calls().iter().enumerate())
        .filter(|(_, c)| c.contains("patch deployment coredns"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(patches.len(), 1, "{:#?}", sandbox.calls());
    let patch = &sandbox.calls()[patches[0]];
    assert!(patch.contains(r#"readinessProbe/periodSeconds","value":1}"#), "{patch}");
    assert!(patch.contains(r#"{"name":"KUBERNETES_SERVICE_HOST","value":"10.89.0.2"}"#), "{patch}");
    assert!(patch.contains(r#"{"name":"KUBERNETES_SERVICE_PORT","value":"6443"}"#), "{patch}");
    assert!(first.stdout.contains("reaching the API server at 10.89.0.2:6443"), "{first}");
    let first_apply = sandbox.calls().iter().position(|c| c.contains(" apply ")).unwrap();
    assert!(patches[0] < first_apply, "{:#?}", sandbox.calls());
}

#[test]
fn reuse_cluster_recreates_an_unhealthy_one() {
    let mut sandbox = kind_sandbox("kind-reuse-unhealthy");
    std::fs::create_dir_all(&sandbox.state).unwrap();
    std::fs::write(sandbox.state.join("cluster"), "").unwrap();
    sandbox.env("FAKE_NODE_STATE_ONCE", "exited");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--reuse-cluster"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("is not healthy (gateway-e2e-control-plane is exited)"), "{run}");
    assert!(sandbox.position("kind delete cluster") < sandbox.position("kind create cluster"));
}

#[test]
fn a_kept_cluster_holding_our_ports_is_replaced_by_the_next_run() {
    let sandbox = kind_sandbox("kind-kept-then-rerun");
    let kept = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--keep-cluster"]);
    assert_eq!(kept.code, 0, "{kept}");
    // The kept cluster's services still listen on the host ports.
    let calls_before = sandbox.calls().len();
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains("deleting the stale cluster gateway-e2e of an earlier run"),
        "{run}"
    );
    let calls = &sandbox.calls()[calls_before..];
    let delete = calls.iter().position(|c| c.starts_with("kind delete cluster")).unwrap();
    let create = calls.iter().position(|c| c.starts_with("kind create cluster")).unwrap();
    assert!(delete < create, "{calls:?}");
    // The build phase's first engine call (`go list` is answered from a cache by now).
    let build = calls
        .iter()
        .position(|c| c.starts_with("podman image inspect") && c.contains("localhost/"))
        .unwrap();
    assert!(delete < build, "the old cluster goes before coverdata/ is archived: {calls:?}");
}

#[test]
fn kept_podman_pods_are_replaced_by_the_next_run() {
    let sandbox = Sandbox::new("podman-kept-then-rerun", &["podman", "go"]);
    let kept = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--keep-cluster"]);
    assert_eq!(kept.code, 0, "{kept}");
    assert!(
        kept.stdout
            .contains("podman pod rm --force gateway-e2e-datastorage-pod-0 gateway-e2e-gateway-pod-0; podman network rm xtask-gateway-e2e"),
        "{kept}"
    );
    let calls_before = sandbox.calls().len();
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman"]);
    assert_eq!(run.code, 0, "{run}");
    let calls = &sandbox.calls()[calls_before..];
    let down = calls.iter().position(|c| c.starts_with("podman kube down")).unwrap();
    // Before the build phase archives coverdata/: the old services write counters as they stop.
    // The build phase's first engine call (`go list` is answered from a cache by now).
    let build = calls
        .iter()
        .position(|c| c.starts_with("podman image inspect") && c.contains("localhost/"))
        .unwrap();
    assert!(down < build, "{calls:?}");
    let play = calls.iter().position(|c| c.starts_with("podman kube play")).unwrap();
    assert!(down < play, "stale pods are removed before the new ones start: {calls:?}");
}

#[test]
fn a_failed_load_is_diagnosed_before_the_cluster_is_deleted() {
    let mut sandbox = kind_sandbox("kind-load-fails");
    sandbox.env("FAKE_FAIL", "^kind load");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("phase 4 (load images) failed"), "{run}");
    assert!(sandbox.position("kind export logs") < sandbox.position("kind delete cluster"));
    assert!(run.stdout.contains("diagnostics written to"), "{run}");
}

#[test]
fn services_that_never_started_are_not_stopped_for_coverage() {
    let mut sandbox = kind_sandbox("kind-apply-fails");
    sandbox.env("FAKE_FAIL", "^kubectl.* apply");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--coverage"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("phase 5 (deploy) failed"), "{run}");
    assert!(!run.stdout.contains("8. coverage"), "{run}");
    assert!(!sandbox.calls().iter().any(|c| c.contains(" scale ")), "{run}");
    assert!(sandbox.position("kubectl") < sandbox.position("kind delete cluster"));
}

#[test]
fn a_coredns_patch_that_fails_stops_the_deploy_naming_the_step_and_the_command_to_look() {
    // The patch refused, the API server's address unreadable, or read as something else.
    let cases = [
        ("FAKE_FAIL", "^kubectl.* patch deployment coredns", "setting CoreDNS to probe every second and to reach the API server directly", "--namespace kube-system get deployment coredns"),
        ("FAKE_FAIL", "^kubectl.* get endpoints kubernetes", "finding the API server's address for CoreDNS", " get endpoints kubernetes"),
        ("FAKE_API_ENDPOINT", "", "finding the API server's address for CoreDNS: the `kubernetes` endpoints read nothing, not an IP address and a port", " get endpoints kubernetes"),
        ("FAKE_API_ENDPOINT", "10.89.0.2 https", "finding the API server's address for CoreDNS: the `kubernetes` endpoints read `10.89.0.2 https`, not an IP address and a port", " get endpoints kubernetes"),
        ("FAKE_API_ENDPOINT", "control-plane 6443", "finding the API server's address for CoreDNS: the `kubernetes` endpoints read `control-plane 6443`, not an IP address and a port", " get endpoints kubernetes"),
    ];
    for (i, (variable, value, failed, look)) in cases.into_iter().enumerate() {
        let mut sandbox = kind_sandbox(&format!("kind-coredns-patch-fails-{i}"));
        sandbox.env(variable, value);
        let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
        assert_eq!(run.code, 1, "{run}");
        let result = common::summary_row(&run, "result");
        assert!(result.contains(&format!("phase 5 (deploy) failed: {failed}")), "{run}");
        let fix =
            if common::has_row(&run, "  fix") { common::summary_row(&run, "fix") } else { "" };
        let said = format!("{result} {fix}");
        assert!(said.contains(look), "{run}");
        assert!(
            said.contains("kubectl --kubeconfig ") && said.contains("kubeconfig-gateway-e2e"),
            "{run}"
        );
        assert!(!sandbox.calls().iter().any(|c| c.contains(" apply ")), "nothing applied: {run}");
        // The cluster is deleted after the step that failed, not before it.
        let calls = sandbox.calls();
        let looked = calls.iter().rposition(|c| c.contains(" get endpoints kubernetes")).unwrap();
        assert!(looked < sandbox.position("kind delete cluster"), "{calls:#?}");
    }
}

#[test]
fn missing_counters_are_diagnosed_with_the_service_logs() {
    let mut sandbox = Sandbox::new("meta-only-diagnosed", &["podman", "go"]);
    sandbox.env("FAKE_META_ONLY", "datastorage");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--coverage"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(sandbox.position("podman logs") < sandbox.position("podman kube down"));
}

#[test]
fn sigterm_during_a_rollout_stops_waiting_and_deletes_the_cluster() {
    let mut sandbox = kind_sandbox("kind-sigterm");
    sandbox.env("FAKE_ROLLOUT_SLEEP", "60");
    let interrupted =
        interrupt_when(&sandbox, Signal::SIGTERM, |call| call.contains(" rollout status "));
    assert_eq!(interrupted.run.code, 1, "{}", interrupted.run.stderr);
    assert!(interrupted.took < Duration::from_secs(10), "waited for the rollout timeout");
    assert!(interrupted.run.stdout.contains("interrupted by a signal"), "{}", interrupted.run);
    assert_eq!(sandbox.count("kind export logs"), 0, "no diagnostics after an interrupt");
    assert!(sandbox.position("kind delete cluster") > sandbox.position("kubectl"));
}

#[test]
fn transient_create_errors_are_retried_at_most_twice() {
    let mut sandbox = kind_sandbox("kind-transient");
    sandbox.env("FAKE_FAIL", "^kind create").env(
        "FAKE_FAIL_MESSAGE",
        "ERROR: failed to create cluster: OCI runtime error: container state improper",
    );
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(sandbox.count("kind create cluster"), 3, "one try and two retries");
    assert!(run.stdout.contains("failed 3 times"), "{run}");

    let mut once = kind_sandbox("kind-transient-once");
    once.env("FAKE_FAIL", "^kind create")
        .env("FAKE_FAIL_TIMES", "1")
        .env("FAKE_FAIL_MESSAGE", "OCI runtime exec failed");
    let run = once.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(once.count("kind create cluster"), 2);
}

#[test]
fn other_create_errors_are_not_retried() {
    let mut sandbox = kind_sandbox("kind-create-fails");
    sandbox
        .env("FAKE_FAIL", "^kind create")
        .env("FAKE_FAIL_MESSAGE", "ERROR: node image not found");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(sandbox.count("kind create cluster"), 1);
    assert!(run.stdout.contains("node image not found"), "{run}");
    assert!(sandbox.count("kind delete cluster") >= 1, "a half-created cluster is removed");
}

/// What kind v0.33 printed with Debian's docker 20.10 on our machines, where root lacks
/// CAP_SYS_RESOURCE: an "OCI runtime" error, but one that comes back on every try.
const CAPS_REFUSED: &str = "ERROR: failed to create cluster: command \"docker run --name gateway-e2e-control-plane --privileged --security-opt seccomp=unconfined kindest/node:v1.37.0\" failed with error: exit status 125\n\nCommand Output: 4c163b4b0432\ndocker: Error response from daemon: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: unable to apply caps: operation not permitted: unknown";

#[test]
fn a_refused_privileged_container_is_not_retried_and_says_what_it_means() {
    let mut sandbox = Sandbox::new("kind-docker-caps", &["docker", "kind", "kubectl", "go"]);
    sandbox.env("FAKE_FAIL", "^kind create").env("FAKE_FAIL_MESSAGE", CAPS_REFUSED);
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--engine", "docker"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(sandbox.count("kind create cluster"), 1, "no retry:\n{run}");
    assert!(!run.stdout.contains("transient"), "{run}");
    assert!(run.stdout.contains("unable to apply caps"), "{run}");
    let fix = run.stdout.lines().find(|l| l.starts_with("  fix  ")).unwrap_or_default();
    assert!(fix.contains("privileged containers cannot run"), "{run}");
    assert!(fix.contains("Kind's docker provider cannot run on this machine; use podman"), "{run}");
    assert!(sandbox.count("kind delete cluster") >= 1, "a half-created cluster is removed");
}

#[test]
fn ctrl_c_during_tests_still_deletes_the_cluster() {
    let mut sandbox = kind_sandbox("kind-ctrl-c");
    sandbox.env("FAKE_TEST_SLEEP", "30");
    let interrupted = interrupt_when(&sandbox, Signal::SIGINT, |call| call.contains(" gotestsum "));
    assert_eq!(interrupted.run.code, 1, "{}", interrupted.run.stderr);
    assert!(interrupted.took < Duration::from_secs(10), "teardown did not wait for the tests");
    assert!(interrupted.run.stderr.contains("interrupted"), "{}", interrupted.run.stderr);
    assert!(
        sandbox.position("kind delete cluster")
            > sandbox.position("go tool -modfile=tools/go.mod gotestsum")
    );
    assert!(!sandbox.state.join("cluster").exists());
}

/// The outcome of a run that got a signal.
struct Interrupted {
    run: common::Run,
    /// From the signal to the exit.
    took: Duration,
}

/// Runs the Kind pipeline and sends `signal` to the xtask once a recorded call matches `when`.
fn interrupt_when(sandbox: &Sandbox, signal: Signal, when: impl Fn(&str) -> bool) -> Interrupted {
    let mut child = sandbox.spawn(&["e2e-gateway", "--cluster", "kind"]);
    sandbox.wait_for_call(&mut child, when);
    let signalled = Instant::now();
    common::signal(&child, signal);
    let run = common::finish(child);
    Interrupted { run, took: signalled.elapsed() }
}

#[test]
fn podman_backend_plays_and_removes_the_same_manifests() {
    let sandbox = Sandbox::new("podman-backend", &["podman", "go"]);
    let run = sandbox.run(&["e2e-gateway", "--coverage"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("cluster backend: podman (auto: kind is not on PATH"), "{run}");
    assert_eq!(sandbox.count("kind"), 0);
    assert_eq!(sandbox.count("podman kube play"), 2);
    let stop = sandbox.position(
        "podman pod stop --ignore --time 30 gateway-e2e-datastorage-pod-0 gateway-e2e-gateway-pod-0",
    );
    assert!(stop > sandbox.position("go tool -modfile=tools/go.mod gotestsum"));
    assert!(sandbox.last_position("podman kube down") > stop);
    // What it played is compared whole in tests/rendered.rs.
    assert!(
        sandbox.position("podman network rm xtask-gateway-e2e")
            > sandbox.last_position("podman kube down"),
        "the network of the run is removed after its pods"
    );
    assert!(!sandbox.state.join("network-xtask-gateway-e2e").exists());
    for pod in ["gateway-e2e-gateway-pod-0", "gateway-e2e-datastorage-pod-0"] {
        assert!(!sandbox.state.join(format!("pod-{pod}")).exists(), "{pod} left behind");
    }
}

#[test]
fn go_test_arguments_after_double_dash_are_passed_through() {
    let sandbox = Sandbox::new("passthrough", &["podman", "go"]);
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--", "-run", "TestDedup"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(sandbox.calls().iter().any(|c| c.contains(" gotestsum ")
        && c.ends_with(" -- -tags e2e -count=1 ./test/e2e/gateway/... -run TestDedup")));
}

#[test]
fn a_service_without_counters_is_named() {
    let mut sandbox = Sandbox::new("meta-only", &["podman", "go"]);
    sandbox.env("FAKE_META_ONLY", "gateway");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--coverage"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("phase 8 (coverage) failed"), "{run}");
    assert!(run.stderr.contains("coverdata/gateway/gateway"), "{run}");
    assert!(!run.stderr.contains("coverdata/gateway/datastorage"), "{run}");
    assert!(run.stderr.contains("the process never exited normally"), "{run}");
    assert!(sandbox.count("podman kube down") >= 2, "still torn down");
}

#[test]
fn a_service_that_never_started_is_named_and_the_others_counters_are_flushed() {
    let mut sandbox = Sandbox::new("never-started", &["podman", "go"]);
    sandbox.env("FAKE_FAIL", "^podman kube play .*/gateway\\.yaml$");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--coverage"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("phase 5 (deploy) failed"), "{run}");
    assert!(
        run.stderr.contains(
            "warning: phase 8 (coverage) failed: no coverage counters of gateway: it never started \
             in this run (coverdata/gateway/gateway holds no covmeta.*, which a coverage build writes as \
             it starts); the counters of datastorage were written: find why in the deploy \
             phase's error and rerun"
        ),
        "{run}"
    );
    // datastorage was stopped for its counters in phase 8, before the teardown.
    let stop = sandbox.position("podman pod stop --ignore --time 30 ");
    assert!(stop < sandbox.position("podman kube down"), "{:#?}", sandbox.calls());
    let counters = sandbox.root.join("coverdata/gateway/datastorage/covcounters.aa.1.2");
    assert!(counters.is_file(), "{run}");
}

#[test]
fn a_coverage_run_archives_the_previous_data_first() {
    let sandbox = Sandbox::new("archive-previous", &["podman", "go"]);
    common::write(&sandbox.root.join("coverdata/gateway/gateway/covmeta.old"), "old");
    common::write(&sandbox.root.join("coverdata/gateway/gateway/covcounters.old.1.2"), "old");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--coverage"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("previous coverage data archived to"), "{run}");
    let archives: Vec<_> =
        std::fs::read_dir(sandbox.root.join("coverdata/gateway/archive")).unwrap().collect();
    assert_eq!(archives.len(), 1);
    assert!(!sandbox.root.join("coverdata/gateway/gateway/covmeta.old").exists());
}

#[test]
fn the_report_of_archived_data_goes_with_it_even_when_no_new_report_comes() {
    let mut sandbox = Sandbox::new("archived-report", &["podman", "go"]);
    common::write(&sandbox.root.join("coverdata/gateway/gateway/covmeta.old"), "old");
    common::write(&sandbox.root.join("coverdata/gateway/gateway/covcounters.old.1.2"), "old");
    for earlier in ["e2e.out", "e2e.html", "services/gateway.out"] {
        common::write(
            &sandbox.root.join("target/coverage/gateway").join(earlier),
            "of the old data",
        );
    }
    // Nothing starts, so no coverage phase writes a new report.
    sandbox.env("FAKE_FAIL", "^podman kube play");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--coverage"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("previous coverage data archived to"), "{run}");
    let left: Vec<_> = walkdir::WalkDir::new(sandbox.root.join("target/coverage"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn another_runs_network_is_left_alone_and_a_leftover_of_ours_is_removed_first() {
    let sandbox = Sandbox::new("podman-networks", &["podman", "go"]);
    std::fs::create_dir_all(&sandbox.state).unwrap();
    for network in ["xtask-other", "xtask-gateway-e2e"] {
        std::fs::write(sandbox.state.join(format!("network-{network}")), "").unwrap();
    }
    // An earlier run's network carries its run's label.
    let label = "e2e.xtask/cluster=gateway-e2e\n";
    std::fs::write(sandbox.state.join("labels-network-xtask-gateway-e2e"), label).unwrap();
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("an earlier run left the network xtask-gateway-e2e"), "{run}");
    assert!(
        sandbox.position("podman network rm xtask-gateway-e2e")
            < sandbox.position(
                "podman network create --label e2e.xtask/cluster=gateway-e2e xtask-gateway-e2e"
            ),
        "{:#?}",
        sandbox.calls()
    );
    assert_eq!(sandbox.count("podman network rm xtask-other"), 0);
    assert!(sandbox.state.join("network-xtask-other").exists());
}

#[test]
fn pods_gone_before_kubectl_wait_looks_are_not_a_failure() {
    let mut sandbox = kind_sandbox("kind-pods-gone");
    sandbox.env("FAKE_PODS_ALREADY_GONE", "1");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--coverage"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(sandbox.calls().iter().any(|c| c.contains(" wait --for=delete pod ")));
}

#[test]
fn reusing_a_cluster_for_coverage_stops_its_old_services_before_archiving() {
    let sandbox = kind_sandbox("kind-reuse-coverage");
    std::fs::create_dir_all(&sandbox.state).unwrap();
    std::fs::write(sandbox.state.join("cluster"), "").unwrap();
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind", "--reuse-cluster", "--coverage"]);
    assert_eq!(run.code, 0, "{run}");
    let calls = sandbox.calls();
    let first_scale = calls.iter().position(|c| c.contains(" scale ")).unwrap();
    let build = calls
        .iter()
        .position(|c| c.starts_with("podman image inspect") && c.contains("localhost/"))
        .unwrap();
    assert!(first_scale < build, "{calls:?}");
    assert!(run.stdout.contains("previous coverage data archived to"), "{run}");
}

#[test]
fn invalid_utf8_in_the_test_output_does_not_stop_the_run() {
    let mut sandbox = Sandbox::new("test-noise", &["podman", "go"]);
    sandbox.env("FAKE_TEST_NOISE", "1");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("2 passed, 0 failed, 1 skipped"), "{run}");
    assert!(run.stdout.contains("noise line 2999"), "{run}");
}

#[test]
fn a_test_timeout_is_named_as_such() {
    let mut sandbox = Sandbox::new("test-timeout", &["podman", "go"]);
    sandbox.env("FAKE_TEST_TIMEOUT", "1");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--", "-timeout", "10s"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains(
            "1 E2E test(s) failed (TestDeduplication/same_fingerprint): \
             TestDeduplication/same_fingerprint hit `go test`'s -timeout (10s)"
        ),
        "{run}"
    );
    assert!(run.stdout.contains("-- -timeout 30m"), "{run}");
    // The summary counts what ran before the timeout, names the test it stopped, and keeps
    // the JUnit file, which gotestsum wrote.
    let last_run = std::fs::read_to_string(sandbox.root.join("target/xtask/last-run.txt")).unwrap();
    let row = |label: &str| {
        let line = last_run.lines().find(|l| l.trim_start().starts_with(&format!("{label}  ")));
        line.map(|l| l.trim_start()[label.len()..].trim().to_string())
    };
    assert_eq!(
        row("tests").as_deref(),
        Some("1 passed, 1 failed, 1 skipped until `go test`'s -timeout (10s) ended the suite"),
        "{last_run}"
    );
    assert_eq!(
        row("failed tests").as_deref(),
        Some("TestDeduplication/same_fingerprint (timed out)"),
        "{last_run}"
    );
    let junit = row("junit").unwrap_or_else(|| panic!("no junit row:\n{last_run}"));
    assert!(std::fs::read_to_string(junit).unwrap().contains("same_fingerprint"));
}

#[test]
fn a_failed_teardown_after_ctrl_c_keeps_its_own_error() {
    let mut sandbox = kind_sandbox("kind-ctrl-c-teardown-fails");
    sandbox.env("FAKE_TEST_SLEEP", "30").env("FAKE_FAIL", "^kind delete");
    let interrupted = interrupt_when(&sandbox, Signal::SIGINT, |call| call.contains(" gotestsum "));
    assert_eq!(interrupted.run.code, 1, "{}", interrupted.run.stderr);
    let stderr = &interrupted.run.stderr;
    assert!(
        stderr.contains("phase 9 (teardown) failed: `kind delete cluster --name gateway-e2e ")
            && stderr.contains("fake kind failure")
            && stderr.contains("delete it by hand"),
        "{stderr}"
    );
}

#[test]
fn in_github_actions_phases_are_groups_a_failure_an_error_line_and_the_summary_a_job_summary() {
    let mut sandbox = Sandbox::new("github-actions", &["podman", "go"]);
    let job_summary = sandbox.dir.join("step-summary.md");
    sandbox
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", job_summary.as_str())
        .env("FAKE_TEST_FAIL", "1");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--coverage"]);
    assert_eq!(run.code, 1, "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let groups: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("::group::")).collect();
    assert_eq!(
        groups,
        [
            "1. preflight",
            "2. build images",
            "3. create cluster",
            "4. load images",
            "5. deploy",
            "6. test",
            "7. diagnostics",
            "8. coverage",
            "9. teardown",
            "10. summary"
        ]
    );
    // Each group is closed before the next opens.
    let markers: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("::group::") || **l == "::endgroup::")
        .copied()
        .collect();
    assert!(
        markers.chunks(2).all(|pair| pair[0].starts_with("::group::") && pair[1] == "::endgroup::"),
        "{markers:?}"
    );
    let error = lines
        .iter()
        .find(|l| l.starts_with("::error "))
        .unwrap_or_else(|| panic!("no ::error:: line: {run}"));
    assert!(
        error.starts_with(
            "::error title=phase 6 (test) failed::1 E2E test(s) failed (TestDeduplication)"
        ),
        "{error}"
    );
    let markdown = std::fs::read_to_string(&job_summary).unwrap();
    for expected in [
        "### e2e gateway failed",
        "| 6. test | ",
        "Tests: 1 passed, 1 failed, 1 skipped",
        "- failed: `TestDeduplication`",
        "### Coverage",
        "| **all services (merged)** |",
        "Logs: `",
        "Result: failed (exit 1): phase 6 (test) failed",
    ] {
        assert!(markdown.contains(expected), "{expected} missing:\n{markdown}");
    }

    // Outside GitHub Actions: no workflow commands.
    let mut plain = Sandbox::new("not-github-actions", &["podman", "go"]);
    plain.env("FAKE_TEST_FAIL", "1");
    let run = plain.run(&["e2e-gateway", "--cluster", "podman"]);
    assert!(!run.stdout.contains("::"), "{run}");
}

#[test]
fn a_suite_that_crashes_keeps_the_counts_of_what_ran() {
    let mut sandbox = Sandbox::new("test-crash", &["podman", "go"]);
    sandbox.env("FAKE_TEST_CRASH", "1");
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("phase 6 (test) failed: the suite failed (exit status: 2): it ended without a failed test"),
        "{run}"
    );
    let last_run = std::fs::read_to_string(sandbox.root.join("target/xtask/last-run.txt")).unwrap();
    assert!(
        last_run.contains("  tests                    1 passed, 0 failed, 1 skipped\n"),
        "{last_run}"
    );
    assert!(last_run.contains("  junit  "), "{last_run}");
}

/// The real `go test -timeout` through the real gotestsum, against the fake services: the
/// summary agrees with the JSON events and the JUnit file go and gotestsum wrote.
#[test]
#[ignore = "needs go"]
fn a_real_test_timeout_is_counted_named_and_its_junit_kept() {
    let sandbox = Sandbox::new("real-test-timeout", &["podman"]);
    sandbox.use_real("go");
    let repo = common::repo_root();
    for file in ["tools/go.mod", "tools/go.sum"] {
        common::write(&sandbox.root.join(file), &std::fs::read_to_string(repo.join(file)).unwrap());
    }
    common::write(
        &sandbox.root.join("test/e2e/gateway/suite_test.go"),
        "//go:build e2e\n\npackage gateway\n\nimport (\n\t\"testing\"\n\t\"time\"\n)\n\n\
         func TestFirst(t *testing.T) {}\n\n\
         func TestSecond(t *testing.T) {\n\tt.Run(\"fine\", func(t *testing.T) {})\n\tt.Run(\"hangs\", func(t *testing.T) { time.Sleep(time.Hour) })\n}\n\n\
         func TestNeverRuns(t *testing.T) {}\n",
    );
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman", "--", "-timeout", "5s"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("TestSecond/hangs hit `go test`'s -timeout (5s)"), "{run}");
    let last_run = std::fs::read_to_string(sandbox.root.join("target/xtask/last-run.txt")).unwrap();
    assert!(
        last_run.contains(
            "  tests                    2 passed, 1 failed, 0 skipped until `go test`'s -timeout (5s) ended the suite\n"
        ) && last_run.contains("  failed tests             TestSecond/hangs (timed out)\n"),
        "{last_run}"
    );
    let junit = last_run
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("junit"))
        .unwrap_or_else(|| panic!("no junit row:\n{last_run}"));
    let junit = std::fs::read_to_string(junit.trim()).unwrap();
    assert!(junit.contains("name=\"TestSecond/hangs\""), "{junit}");
}

//! Suites are data (`test/e2e/<suite>/suite.toml`): a new suite runs without a change to the
//! xtask, several run in one call, third-party images and ginkgo suites, a suite file that
//! cannot be used. Against the fakes of tests/fakes.

mod common;

use camino::Utf8Path;
use common::{free_port, Sandbox};

const TOOLS: &[&str] = &["podman", "go"];

/// A copy of the gateway suite as `name`, with host ports of its own: a data file, and a
/// directory for its tests (the fake `go` runs them).
fn copy_gateway_suite(sandbox: &Sandbox, name: &str) -> (u16, u16) {
    let (gateway, datastorage) = (free_port(), free_port());
    let text = std::fs::read_to_string(sandbox.root.join("test/e2e/gateway/suite.toml")).unwrap();
    let text = text
        .replace("./test/e2e/gateway/...", &format!("./test/e2e/{name}/..."))
        .replace("host-port = 18080", &format!("host-port = {gateway}"))
        .replace("host-port = 18081", &format!("host-port = {datastorage}"));
    common::write(&sandbox.root.join(format!("test/e2e/{name}/suite.toml")), &text);
    (gateway, datastorage)
}

/// The datastorage suite as the repository has it: its file, manifests and Kind config; Redis
/// on a host port of its own (another test may hold the suite's).
fn with_datastorage_suite(sandbox: &mut Sandbox) -> u16 {
    let repo = common::repo_root();
    for file in
        ["suite.toml", "kind-config.yaml", "manifests/datastorage.yaml", "manifests/redis.yaml"]
    {
        let path = Utf8Path::new("test/e2e/datastorage").join(file);
        common::write(
            &sandbox.root.join(&path),
            &std::fs::read_to_string(repo.join(&path)).unwrap(),
        );
    }
    let redis = free_port();
    sandbox.env("REDIS_HOST_PORT", &redis.to_string());
    redis
}

#[test]
fn a_copied_suite_runs_under_its_own_name_and_ports_without_a_change_to_the_xtask() {
    let mut sandbox = Sandbox::new("suite-copy", TOOLS);
    let (gateway, datastorage) = copy_gateway_suite(&sandbox, "copied");
    // The suite's own ports, not the ones the sandbox moves the services to.
    sandbox.env("GATEWAY_HOST_PORT", "").env("DATASTORAGE_HOST_PORT", "");
    let run = sandbox.run(&["e2e", "copied", "--cluster", "podman", "--coverage"]);
    assert_eq!(run.code, 0, "{run}");
    // Its own cluster name, ports, coverage folder and report.
    assert!(sandbox.calls().iter().any(|c| c.contains("copied-e2e-gateway-pod-0")), "{run}");
    let (_, told) =
        sandbox.calls_with_env().into_iter().find(|(c, _)| c.contains(" gotestsum ")).unwrap();
    assert!(told.contains(&format!("GATEWAY_URL=http://127.0.0.1:{gateway}")), "{told}");
    assert!(told.contains(&format!("DATASTORAGE_ADDR=127.0.0.1:{datastorage}")), "{told}");
    let test = sandbox.calls().into_iter().find(|c| c.contains(" gotestsum ")).unwrap();
    assert!(test.contains(" -- -tags e2e -count=1 ./test/e2e/copied/..."), "{test}");
    for service in ["gateway", "datastorage"] {
        let counters = sandbox.root.join(format!("coverdata/copied/{service}/covcounters.aa.1.2"));
        assert!(counters.is_file(), "{counters}\n{run}");
    }
    assert!(sandbox.root.join("target/coverage/copied/e2e.out").is_file(), "{run}");
}

#[test]
fn list_names_every_suite_with_what_it_deploys() {
    let mut sandbox = Sandbox::new("suite-list", TOOLS);
    copy_gateway_suite(&sandbox, "copied");
    with_datastorage_suite(&mut sandbox);
    let run = sandbox.run(&["e2e", "--list"]);
    assert_eq!(run.code, 0, "{run}");
    let names: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(names, ["copied", "datastorage", "gateway"], "{run}");
    assert!(
        run.stdout.contains("deploys redis (docker.io/library/redis:7.4-alpine, 16379), datastorage (18181); tests ./test/e2e/datastorage with ginkgo"),
        "{run}"
    );
}

#[test]
fn a_suite_file_that_cannot_be_used_stops_the_run_with_its_line_and_the_fix() {
    let sandbox = Sandbox::new("suite-broken", TOOLS);
    copy_gateway_suite(&sandbox, "broken");
    let file = sandbox.root.join("test/e2e/broken/suite.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("depends-on = [\"datastorage\"]", "depends-on = [\"store\"]"),
    )
    .unwrap();
    let run = sandbox.run(&["e2e", "broken", "--cluster", "podman"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.contains("test/e2e/broken/suite.toml:27: gateway depends on store, which this suite does not declare: declare it as a [[service]] or an [[image]], or depend on one of datastorage, gateway"),
        "{run}"
    );
    assert!(sandbox.calls().is_empty(), "nothing ran: {:?}", sandbox.calls());
    let unknown = sandbox.run(&["e2e", "nope"]);
    assert_eq!(unknown.code, 1, "{unknown}");
    assert!(unknown.stderr.contains("there is no suite `nope`"), "{unknown}");
    assert!(unknown.stderr.contains("the suites are broken, gateway"), "{unknown}");
}

/// Two suites in one call: every image built once, before any cluster; each suite's run after
/// that (finding its images built); one table; exit 1 as one failed.
#[test]
fn several_suites_build_once_then_run_one_after_another_with_one_table() {
    let mut sandbox = Sandbox::new("suite-several", TOOLS);
    copy_gateway_suite(&sandbox, "copied");
    let run = sandbox.run(&["e2e", "gateway", "copied", "--cluster", "podman"]);
    assert_eq!(run.code, 0, "{run}");
    let calls = sandbox.calls();
    let builds: Vec<&String> = calls.iter().filter(|c| c.starts_with("podman build")).collect();
    assert_eq!(builds.len(), 2, "each service once: {builds:#?}");
    let first_play = calls.iter().position(|c| c.starts_with("podman kube play")).unwrap();
    assert!(calls.iter().rposition(|c| c.starts_with("podman build")).unwrap() < first_play);
    let table: Vec<&str> =
        run.stdout.lines().filter(|l| l.ends_with('-') || l.contains(" passed ")).collect();
    assert!(run.stdout.contains("\nsuite          result "), "{run}");
    assert!(table.iter().any(|l| l.starts_with("gateway        passed")), "{run}");
    assert!(table.iter().any(|l| l.starts_with("copied         passed")), "{run}");
    assert!(run.stdout.contains("2 suites in "), "{run}");
    let last_run = std::fs::read_to_string(sandbox.root.join("target/xtask/last-run.txt")).unwrap();
    assert!(last_run.starts_with("suite          result "), "{last_run}");

    sandbox.env("FAKE_TEST_FAIL", "1");
    let failed = sandbox.run(&["e2e", "gateway", "copied", "--cluster", "podman"]);
    assert_eq!(failed.code, 1, "{failed}");
    assert!(failed.stderr.contains("2 of 2 suites failed (gateway, copied)"), "{failed}");
    assert!(failed.stdout.contains("gateway        failed"), "{failed}");
}

/// Side by side: each on a cluster of its own, and a host port another suite uses moved.
#[test]
fn suites_side_by_side_keep_their_names_and_ports_apart() {
    let sandbox = Sandbox::new("suite-jobs", TOOLS);
    // The same ports as the gateway suite: they must not meet.
    let text = std::fs::read_to_string(sandbox.root.join("test/e2e/gateway/suite.toml")).unwrap();
    let port = |name: &str| sandbox.env_value(name);
    let text = text
        .replace("./test/e2e/gateway/...", "./test/e2e/twin/...")
        .replace("host-port = 18080", &format!("host-port = {}", port("GATEWAY_HOST_PORT")))
        .replace("host-port = 18081", &format!("host-port = {}", port("DATASTORAGE_HOST_PORT")));
    common::write(&sandbox.root.join("test/e2e/twin/suite.toml"), &text);
    let run = sandbox.run(&["e2e", "gateway", "twin", "--cluster", "podman", "--jobs", "2"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains("gateway: started on the cluster gateway-e2e, output in "),
        "{run}"
    );
    assert!(run.stdout.contains("twin: started on the cluster twin-e2e, output in "), "{run}");
    let host_port = |cluster: &str| {
        let file = sandbox.root.join(format!("target/xtask/rendered/{cluster}/gateway.yaml"));
        let text = std::fs::read_to_string(file).unwrap();
        let line = text.lines().find(|l| l.trim_start().starts_with("hostPort:")).unwrap();
        line.trim_start().trim_start_matches("hostPort:").trim().to_string()
    };
    assert_ne!(host_port("gateway-e2e"), host_port("twin-e2e"), "{run}");
}

/// A suite of a third-party image and a ginkgo suite (the datastorage suite's file): the image
/// is used as it is, the tests are told where everything is and how to restart a service.
#[test]
fn a_third_party_image_is_pulled_once_and_ginkgo_runs_the_specs() {
    let mut sandbox = Sandbox::new("suite-ginkgo", TOOLS);
    let redis = with_datastorage_suite(&mut sandbox);
    let run = sandbox.run(&["e2e", "datastorage", "--cluster", "podman"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(sandbox.count("podman pull docker.io/library/redis:7.4-alpine"), 1);
    assert!(!sandbox.calls().iter().any(|c| c.starts_with("podman build") && c.contains("redis")));
    // Redis first: datastorage depends on it.
    let play = |name: &str| {
        sandbox
            .calls()
            .iter()
            .position(|c| {
                c.starts_with("podman kube play") && c.ends_with(&format!("/{name}.yaml"))
            })
            .unwrap()
    };
    assert!(play("redis") < play("datastorage"));
    let (test, told) =
        sandbox.calls_with_env().into_iter().find(|(c, _)| c.contains(" ginkgo ")).unwrap();
    assert!(test.contains("--label-filter=smoke || query || persistence --procs=2"), "{test}");
    assert!(test.ends_with(" -tags e2e ./test/e2e/datastorage"), "{test}");
    assert!(told.contains(&format!("REDIS_ADDR=127.0.0.1:{redis}")), "{told}");
    assert!(
        told.contains(r#"DATASTORAGE_RESTART_COMMAND=["podman","kill","--signal","TERM","datastorage-e2e-datastorage-pod-0-datastorage"]"#),
        "{told}"
    );
    assert!(run.stdout.contains("1 passed, 0 failed, 1 skipped"), "{run}");
    // A second run finds the image: no pull.
    let again = sandbox.run(&["e2e", "datastorage", "--cluster", "podman"]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(sandbox.count("podman pull docker.io/library/redis:7.4-alpine"), 1);
}

#[test]
fn a_failed_spec_is_named_and_a_failed_pull_says_how_to_have_the_image() {
    let mut sandbox = Sandbox::new("suite-ginkgo-fails", TOOLS);
    with_datastorage_suite(&mut sandbox);
    sandbox.env("FAKE_TEST_FAIL", "1");
    let run = sandbox.run(&["e2e", "datastorage", "--cluster", "podman"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("1 E2E test(s) failed ([It] queries filter [query])"), "{run}");

    let mut offline = Sandbox::new("suite-no-pull", TOOLS);
    with_datastorage_suite(&mut offline);
    offline.env("FAKE_FAIL", "^podman pull").env("FAKE_FAIL_MESSAGE", "Error: initializing source docker://redis:7.4-alpine: pinging container registry registry-1.docker.io: dial tcp: lookup registry-1.docker.io: no such host");
    let run = offline.run(&["e2e", "datastorage", "--cluster", "podman"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("phase 2 (build images) failed: pulling the third-party image docker.io/library/redis:7.4-alpine failed"), "{run}");
    assert!(run.stdout.contains("load it into podman (`podman load -i image.tar`"), "{run}");
    assert!(run.stdout.contains("pass that with --registry"), "{run}");
}

/// On Kind the third-party image goes into the node with ours, from an archive named after its
/// image ID.
#[test]
fn kind_loads_a_third_party_image_with_ours() {
    let mut sandbox = Sandbox::new("suite-kind-redis", &["podman", "kind", "kubectl", "go"]);
    with_datastorage_suite(&mut sandbox);
    let run = sandbox.run(&["e2e", "datastorage", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    let loads: Vec<String> =
        sandbox.calls().into_iter().filter(|c| c.starts_with("kind load image-archive")).collect();
    assert_eq!(loads.len(), 2, "{loads:#?}");
    assert!(
        loads.iter().any(|l| l.contains("/images/docker.io-library-redis-7.4-alpine@1111.tar ")),
        "{loads:#?}"
    );
    assert!(run.stdout.contains("loaded docker.io/library/redis:7.4-alpine"), "{run}");
}

/// A third-party image mirrored into the registry has no label of ours: the mirror is checked
/// against the image in the engine's store by its ID, after the push and when found there.
#[test]
fn a_third_party_mirror_of_another_image_is_refused_by_its_id() {
    let mut sandbox = Sandbox::new("suite-mirror-id", TOOLS);
    with_datastorage_suite(&mut sandbox);
    let args =
        ["e2e", "datastorage", "--cluster", "podman", "--registry", "registry.example.com/e2e"];
    let first = sandbox.run(&args);
    assert_eq!(first.code, 0, "{first}");
    let mirror = "registry.example.com/e2e/docker.io/library/redis:7.4-alpine";
    assert!(first.stdout.contains(&format!("pushed: {mirror}")), "{first}");
    assert_eq!(sandbox.count(&format!("podman pull {mirror}")), 1, "verified once pushed");

    // Another image under the mirror's name.
    common::write(&sandbox.state.join("ids"), &format!("{mirror} sha256:2222\n"));
    let run = sandbox.run(&args);
    assert_eq!(run.code, 1, "{run}");
    let refused = format!("failed (exit 1): phase 2 (build images) failed: the registry's {mirror} is not the image it should be: it holds the image sha256:2222, while podman's docker.io/library/redis:7.4-alpine is sha256:1111; delete that tag in the registry registry.example.com/e2e (or push the right image under it), or use another --registry prefix");
    assert_eq!(common::summary_row(&run, "result"), refused, "{run}");
    assert_eq!(sandbox.count("podman kube play"), 2, "no pod of the second run:\n{run}");
}

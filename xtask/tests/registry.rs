//! `--registry` against a registry that stops answering: every step that talks to it (the tag
//! check, the push, the pull) gives up once its time limit passes, and says which registry
//! stopped answering and what to do. The fakes stand in for podman; a TCP listener that never
//! answers for a plain-HTTP registry (the real registry, stopped with SIGSTOP, is in
//! real_e2e_podman.rs).

mod common;

use std::{
    process::Child,
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{Run, Sandbox};
use nix::{sys::signal::Signal, unistd::Pid};

const PODMAN_TOOLS: &[&str] = &["podman", "go"];

/// Waits for the xtask, for `limit` at most: past it, the xtask is killed and the test fails,
/// as it hangs (without the time limits it would wait for ever).
fn finish_within(child: Child, limit: Duration) -> Run {
    let pid = Pid::from_raw(child.id() as i32);
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || done.send(common::finish(child)));
    finished.recv_timeout(limit).unwrap_or_else(|_| {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        panic!("the xtask did not finish within {limit:?}: it hangs on the registry")
    })
}

/// Whether the process `pid` has ended (a zombie has).
fn gone(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'))
}

/// The fake processes that hung, all gone once the xtask stopped them.
fn assert_hung_commands_are_gone(sandbox: &Sandbox) {
    let hung = std::fs::read_to_string(sandbox.state.join("hung")).expect("a command hung");
    let started = Instant::now();
    while !hung.lines().all(gone) {
        let left: Vec<&str> = hung.lines().filter(|pid| !gone(pid)).collect();
        assert!(started.elapsed() < Duration::from_secs(15), "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The case: the registry process is stopped (SIGSTOP), so the kernel still takes the
/// connection and nothing answers. Before, each service's tag check took 10 s to say "not
/// there" and the push then waited for ever in phase 2.
#[test]
fn a_registry_that_takes_connections_but_never_answers_stops_the_run_at_the_tag_check() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = silent.local_addr().unwrap().to_string();
    let mut sandbox = Sandbox::new("registry-silent", PODMAN_TOOLS);
    sandbox.env("E2E_REGISTRY_TIMEOUT", "2");
    let registry = format!("{host}/e2e");
    let args = ["e2e-gateway", "--coverage", "--cluster", "podman", "--registry", &registry];
    let xtask = sandbox.spawn(&[&args[..], &["--registry-insecure"]].concat());
    let run = finish_within(xtask, Duration::from_secs(60));
    assert_eq!(run.code, 1, "{run}");
    // The summary's result, which ends with the fix.
    let result = run.stdout.lines().find(|l| l.starts_with("  result ")).unwrap_or_default();
    let said = format!("failed (exit 1): phase 2 (build images) failed: the registry {host} stopped answering: it took the connection but sent no answer to `HEAD /v2/e2e/datastorage/manifests/e2e-");
    assert!(result.contains(&said), "{run}");
    let fix = format!("within 2 s; check that it runs and is not stopped or overloaded (`curl http://{host}/v2/` answers at once when it is well), then rerun");
    assert!(result.ends_with(&fix), "{run}");
    // The first service's check stopped the run: no second wait, no push, no pods.
    let calls = sandbox.calls();
    assert!(!calls.iter().any(|c| c.starts_with("podman push")), "{calls:#?}");
    assert!(!calls.iter().any(|c| c.starts_with("podman kube play")), "{calls:#?}");
}

/// A registry that answers the tag check and then stops answering: the push (with docker, its
/// tag first) and the engine's own tag check (a registry with TLS) are stopped at the limit,
/// with the registry's name and what to do, and nothing of theirs keeps running.
#[test]
fn a_push_or_an_engine_check_that_hangs_is_stopped_at_the_time_limit() {
    let fix = "the registry registry.example.com stopped answering: check that it runs and is not stopped or overloaded (`curl https://registry.example.com/v2/` answers at once when it is well), then rerun";
    let slow_link = "; on a slow link raise the time limit of each push and pull with E2E_REGISTRY_TIMEOUT=SECONDS (default 300)";
    for (hang, failed, ending) in [
        ("^podman push", "pushing localhost/datastorage:e2e-", format!("{fix}{slow_link}\n")),
        (
            "^podman manifest inspect",
            "`podman manifest inspect registry.example.com/e2e/datastorage:e2e-",
            format!("{fix}\n"),
        ),
    ] {
        let mut sandbox = Sandbox::new("registry-hang", PODMAN_TOOLS);
        sandbox.env("E2E_REGISTRY_TIMEOUT", "2").env("FAKE_HANG", hang);
        let xtask = sandbox.spawn(&["build-images", "--registry", "registry.example.com/e2e"]);
        let run = finish_within(xtask, Duration::from_secs(60));
        assert_eq!(run.code, 1, "{hang}: {run}");
        assert!(run.stderr.contains(failed), "{hang}: {run}");
        assert!(run.stderr.contains("did not finish within 2 s and was stopped"), "{hang}: {run}");
        assert!(run.stderr.ends_with(&ending), "{hang}: {run}");
        assert_hung_commands_are_gone(&sandbox);
    }
}

/// Every image from the registry is pulled, within the time limit, to verify it in phase 2
/// (`podman kube play` would pull what is not in podman's store with no time limit of its
/// own): a registry that stops answering then fails the run with its name, before any pod.
#[test]
fn a_pull_that_hangs_fails_the_run_with_the_registrys_name_before_any_pod() {
    let mut sandbox = Sandbox::new("registry-pull-hang", PODMAN_TOOLS);
    sandbox.env("E2E_REGISTRY_TIMEOUT", "2").env("FAKE_HANG", "^podman pull");
    let args = ["e2e-gateway", "--cluster", "podman", "--registry", "registry.example.com/e2e"];
    let run = finish_within(sandbox.spawn(&args), Duration::from_secs(60));
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("pulling registry.example.com/e2e/datastorage:e2e-"), "{run}");
    assert!(run.stdout.contains("from registry.example.com failed"), "{run}");
    assert!(run.stdout.contains("the registry registry.example.com stopped answering"), "{run}");
    assert!(run.stdout.contains("phase 2 (build images) failed"), "{run}");
    assert!(sandbox.position("podman push") < sandbox.position("podman pull"));
    assert!(!sandbox.calls().iter().any(|c| c.starts_with("podman kube play")));
    assert_hung_commands_are_gone(&sandbox);

    // A registry that answers: each image is pulled once (to verify it), then played as it
    // was verified, not pulled again.
    let sandbox = Sandbox::new("registry-pull", PODMAN_TOOLS);
    let run = sandbox.run(&args);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(sandbox.count("podman pull registry.example.com/e2e/"), 2, "{run}");
    assert!(
        sandbox.last_position("podman pull") < sandbox.position("podman kube play"),
        "{:#?}",
        sandbox.calls()
    );
}

/// A limit that is not a number of seconds is refused before anything runs long, with the fix.
#[test]
fn a_bad_time_limit_says_what_it_takes() {
    let mut sandbox = Sandbox::new("registry-bad-limit", PODMAN_TOOLS);
    sandbox.env("E2E_REGISTRY_TIMEOUT", "5m");
    let run = sandbox.run(&["build-images", "--registry", "registry.example.com/e2e"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.contains("E2E_REGISTRY_TIMEOUT=5m is not a number of seconds: set it to a whole number above 0 (default 300), or unset it"),
        "{run}"
    );
    assert!(!sandbox.calls().iter().any(|c| c.starts_with("podman push")));
}

/// The registry's name of `service` in a run's output (`... pushed: <name>` or `... in the
/// registry: <name>`), and its local tag.
fn names(run: &Run, service: &str) -> (String, String) {
    let line = run.stdout.lines().find(|l| l.starts_with(&format!("{service} "))).unwrap();
    let local = line.split_whitespace().nth(1).unwrap().to_string();
    let remote = line.rsplit_once(": ").unwrap().1.trim().to_string();
    (local, remote)
}

/// The case: another service's image pushed under our content tag was deployed, and
/// its coverage reported as ours. Every image from the registry is verified by the label it was
/// built with before any pod starts: another's label, or none, is refused with the registry's
/// name, what it holds and the fix.
#[test]
fn another_image_under_our_tag_in_the_registry_is_refused_before_any_pod() {
    let sandbox = Sandbox::new("registry-wrong-image", PODMAN_TOOLS);
    let args = ["e2e-gateway", "--cluster", "podman", "--registry", "registry.example.com/e2e"];
    let first = sandbox.run(&args);
    assert_eq!(first.code, 0, "{first}");
    let (gateway, remote) = names(&first, "gateway");
    let (datastorage, _) = names(&first, "datastorage");
    assert!(remote.starts_with("registry.example.com/e2e/gateway:e2e-"), "{first}");
    let content = |local: &str| local.trim_start_matches("localhost/").to_string();
    let plays = sandbox.count("podman kube play");

    // datastorage's image pushed under the gateway's tag, then one without our label.
    for (held, said) in [
        (content(&datastorage), format!("an image labelled e2e.xtask/content={}", content(&datastorage))),
        (String::new(), "an image without the label e2e.xtask/content (not built by this xtask, or by one older than the label)".to_string()),
    ] {
        let labels = sandbox.state.join("labels");
        let mut text = std::fs::read_to_string(&labels).unwrap();
        text += &format!("{remote} {held}\n");
        std::fs::write(&labels, text).unwrap();
        let run = sandbox.run(&args);
        assert_eq!(run.code, 1, "{run}");
        let refused = format!("failed (exit 1): phase 2 (build images) failed: the registry's {remote} is not the image it should be: it holds {said}, not {}; delete that tag in the registry registry.example.com/e2e (or push the right image under it), or use another --registry prefix", content(&gateway));
        assert_eq!(common::summary_row(&run, "result"), refused, "{run}");
        assert!(run.stdout.contains("nothing to tear down"), "{run}");
        assert_eq!(sandbox.count("podman kube play"), plays, "a pod was started:\n{run}");
    }
}

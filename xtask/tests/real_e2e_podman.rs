//! `cargo xtask e2e-gateway --coverage --cluster podman` for real: podman, go, gotestsum and the
//! Go E2E suite, each run on a scratch copy of the project under a cluster name of its own (the
//! pods, the network and the lock are named after it), so the runs here go side by side.

mod common;

use camino::Utf8Path;
use common::{
    free_port,
    real::{
        assert_covmeta_and_covcounters, images_of, podman, registry_references, text, unique,
        Cleanup, RegistryServer, Scratch,
    },
    Run,
};

/// A run of `e2e-gateway --coverage --cluster podman` on `scratch` under `name`.
fn e2e(scratch: &Scratch, name: &str, guard: &mut Cleanup) -> Run {
    e2e_with(scratch, name, guard, &[])
}

/// `e2e` with more flags.
fn e2e_with(scratch: &Scratch, name: &str, guard: &mut Cleanup, extra: &[&str]) -> Run {
    guard.pods = ["datastorage", "gateway"].map(|s| format!("{name}-{s}-pod-0")).to_vec();
    guard.networks = vec![format!("xtask-{name}")];
    let (gateway, datastorage) = (free_port().to_string(), free_port().to_string());
    let mut args = vec!["e2e-gateway", "--coverage", "--cluster", "podman", "--cluster-name", name];
    args.extend(extra);
    let run = scratch
        .xtask(&args, &[("GATEWAY_HOST_PORT", &gateway), ("DATASTORAGE_HOST_PORT", &datastorage)]);
    guard.images.extend(images_of(&run).into_iter().map(|i| i.reference));
    run
}

#[test]
#[ignore = "needs podman and go"]
fn e2e_with_coverage_on_podman_passes_and_leaves_nothing_behind() {
    let mut guard = Cleanup::default();
    let scratch = Scratch::new("real-e2e");
    let name = unique("e2e");
    let run = e2e(&scratch, &name, &mut guard);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(guard.images.len(), 2, "one image per service:\n{run}");
    assert_eq!(
        run.stdout.matches(" built ").count(),
        2,
        "a clean state builds both images:\n{run}"
    );

    let (passed, failed) =
        test_counts(&run.stdout).unwrap_or_else(|| panic!("no `N passed, N failed` line:\n{run}"));
    assert!(passed > 0, "no test passed:\n{run}");
    assert_eq!(failed, 0, "{run}");

    for service in ["gateway", "datastorage"] {
        let dir = scratch.root.join("coverdata/gateway").join(service);
        assert_covmeta_and_covcounters(&dir, &run.to_string());
    }

    let summary = std::fs::read_to_string(scratch.root.join("target/xtask/last-run.txt")).unwrap();
    for label in ["coverage gateway", "coverage datastorage", "coverage total"] {
        let pct = percentage(&summary, label)
            .unwrap_or_else(|| panic!("no `{label} N%` line in the summary:\n{summary}"));
        assert!(pct > 0.0, "{label} is {pct}%:\n{summary}");
    }
    assert!(summary.contains("passed (exit 0)"), "the summary must say the run passed:\n{summary}");
    let junit = JUnit::read(&summary);
    assert_eq!(junit.leaf_counts(), (passed, 0), "{summary}");

    for pod in &guard.pods {
        let exists = podman(&["pod", "exists", pod]);
        assert!(!exists.status.success(), "the pod {pod} was left behind");
    }
    for network in &guard.networks {
        let exists = podman(&["network", "exists", network]);
        assert!(!exists.status.success(), "the network {network} was left behind");
    }
    let left = podman(&["ps", "--all", "--format", "{{.Names}}"]);
    assert!(left.status.success(), "podman ps: {}", text(&left));
    let ours: Vec<String> = String::from_utf8_lossy(&left.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}-")))
        .map(str::to_string)
        .collect();
    assert!(ours.is_empty(), "containers left behind: {ours:?}");
}

/// Without --coverage, from a checkout with no coverdata/ at all (a fresh clone): the pods'
/// hostPath into coverdata/<suite>/ is made for them, and nothing is written there.
#[test]
#[ignore = "needs podman and go"]
fn a_plain_run_from_a_fresh_clone_passes() {
    let scratch = Scratch::new("real-e2e-plain");
    assert!(!scratch.root.join("coverdata").exists());
    let name = unique("plain");
    let mut guard = Cleanup::default();
    guard.pods = ["datastorage", "gateway"].map(|s| format!("{name}-{s}-pod-0")).to_vec();
    guard.networks = vec![format!("xtask-{name}")];
    let (gateway, datastorage) = (free_port().to_string(), free_port().to_string());
    let args = ["e2e-gateway", "--cluster", "podman", "--cluster-name", &name];
    let run = scratch
        .xtask(&args, &[("GATEWAY_HOST_PORT", &gateway), ("DATASTORAGE_HOST_PORT", &datastorage)]);
    guard.images.extend(images_of(&run).into_iter().map(|i| i.reference));
    assert_eq!(run.code, 0, "{run}");
    let written = std::fs::read_dir(scratch.root.join("coverdata/gateway")).unwrap().count();
    assert_eq!(written, 0, "a plain build writes no coverage data:\n{run}");
}

/// Two checkouts run at once under their own names and ports: neither touches the other, one
/// passes, and the other fails exactly where its own suite fails.
#[test]
#[ignore = "needs podman and go"]
fn two_runs_at_once_with_their_own_names_and_ports_each_finish_on_their_own() {
    let passing = Scratch::new("real-e2e-beside-a");
    let failing = Scratch::new("real-e2e-beside-b");
    // A test of the second checkout's own that fails in one subtest.
    std::fs::write(
        failing.root.join("test/e2e/gateway/zz_injected_test.go"),
        "//go:build e2e\n\npackage gateway\n\nimport \"testing\"\n\nfunc TestInjected(t *testing.T) {\n\tt.Run(\"fine\", func(t *testing.T) {})\n\tt.Run(\"broken\", func(t *testing.T) { t.Fatal(\"injected\") })\n}\n",
    )
    .unwrap();
    let names = [unique("a"), unique("b")];
    let (mut guard_a, mut guard_b) = (Cleanup::default(), Cleanup::default());
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| e2e(&passing, &names[0], &mut guard_a));
        let b = s.spawn(|| e2e(&failing, &names[1], &mut guard_b));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.code, 0, "{a}");
    assert_eq!(b.code, 1, "{b}");
    let summary = std::fs::read_to_string(failing.root.join("target/xtask/last-run.txt")).unwrap();
    assert!(summary.contains("failed tests             TestInjected/broken\n"), "{summary}");
    // The JUnit file says the same as the summary's count line.
    let (passed, failed) = test_counts(&b.stdout).unwrap();
    let junit = JUnit::read(&summary);
    assert_eq!(junit.leaf_counts(), (passed, failed), "{summary}");
    assert_eq!(junit.failed_leaves(), ["TestInjected/broken"]);
    // Its services were still stopped for their counters.
    for service in ["gateway", "datastorage"] {
        let dir = failing.root.join("coverdata/gateway").join(service);
        assert_covmeta_and_covcounters(&dir, &b.to_string());
    }
}

/// A run's JUnit file, read with a real XML parser (xmllint, from Debian's libxml2-utils).
struct JUnit {
    /// Every testcase: its name and whether it failed or was skipped.
    cases: Vec<(String, bool, bool)>,
}

impl JUnit {
    /// The file the summary's `junit` line names.
    fn read(summary: &str) -> JUnit {
        let path = summary
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("junit"))
            .unwrap_or_else(|| panic!("no junit line in the summary:\n{summary}"))
            .trim();
        let path = Utf8Path::new(path);
        let valid = xmllint(&["--noout", path.as_str()]);
        assert!(valid.is_empty(), "{path} is not well-formed XML: {valid}");
        let suites = xmllint(&["--xpath", "count(//testsuite)", path.as_str()]);
        assert!(suites.trim().parse::<u32>().unwrap() > 0, "no testsuite in {path}");
        let count: usize =
            xmllint(&["--xpath", "count(//testcase)", path.as_str()]).trim().parse().unwrap();
        let cases = (1..=count)
            .map(|i| {
                let case = format!("//testcase[{i}]");
                let name = xmllint(&["--xpath", &format!("string({case}/@name)"), path.as_str()]);
                let has = |child: &str| {
                    let n = xmllint(&["--xpath", &format!("count({case}/{child})"), path.as_str()]);
                    n.trim() != "0"
                };
                (name.trim().to_string(), has("failure"), has("skipped"))
            })
            .collect();
        JUnit { cases }
    }

    /// JUnit lists a test with subtests as a case of its own; the xtask counts leaves.
    fn leaves(&self) -> impl Iterator<Item = &(String, bool, bool)> {
        self.cases.iter().filter(|(name, _, _)| {
            let parent = format!("{name}/");
            !self.cases.iter().any(|(other, _, _)| other.starts_with(&parent))
        })
    }

    /// (passed, failed) leaves.
    fn leaf_counts(&self) -> (usize, usize) {
        let failed = self.leaves().filter(|(_, f, _)| *f).count();
        let passed = self.leaves().filter(|(_, f, s)| !f && !s).count();
        (passed, failed)
    }

    fn failed_leaves(&self) -> Vec<String> {
        self.leaves().filter(|(_, f, _)| *f).map(|(n, _, _)| n.clone()).collect()
    }
}

fn xmllint(args: &[&str]) -> String {
    let out = std::process::Command::new("xmllint")
        .args(args)
        .output()
        .expect("xmllint (Debian: apt-get install -y libxml2-utils)");
    assert!(out.status.success(), "xmllint {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// From the xtask's `N passed, N failed, N skipped` line.
fn test_counts(stdout: &str) -> Option<(usize, usize)> {
    stdout.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [passed, "passed,", failed, "failed,", ..] => {
                Some((passed.parse().ok()?, failed.parse().ok()?))
            }
            _ => None,
        }
    })
}

/// The percentage on the summary line `  <label>   12.3%`.
fn percentage(summary: &str, label: &str) -> Option<f64> {
    summary.lines().find_map(|line| {
        let value = line.trim_start().strip_prefix(label)?;
        value.trim().strip_suffix('%')?.parse().ok()
    })
}

/// Images through a real registry (CNCF Distribution, plain HTTP on loopback): the first run
/// pushes both, the second (its local copies removed) builds and pushes nothing, and its pods
/// pull from the registry; coverage is complete both times.
#[test]
#[ignore = "needs podman, go and the distribution registry (`registry` on PATH; .ci/run builds it)"]
fn images_go_through_a_registry_and_a_second_run_pushes_nothing() {
    let registry = RegistryServer::start(false);
    let scratch = Scratch::new("real-registry");
    let name = unique("reg");
    let mut guard = Cleanup::default();
    let flags = ["--registry", &format!("{}/e2e", registry.addr), "--registry-insecure"];
    let first = e2e_with(&scratch, &name, &mut guard, &flags);
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(first.stdout.matches("  pushed: ").count(), 2, "{first}");
    let remote = registry_references(&first);
    guard.images.extend(remote.iter().cloned());
    assert_coverage(&scratch, &first);

    // A fresh machine: neither the built images nor the pulled ones are here.
    for image in guard.images.clone() {
        let _ = podman(&["rmi", "--force", &image]);
    }
    let second = e2e_with(&scratch, &name, &mut guard, &flags);
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(second.stdout.matches("  pushed: ").count(), 0, "{second}");
    assert_eq!(second.stdout.matches("  in the registry: ").count(), 2, "{second}");
    assert!(!second.stdout.contains(" built "), "{second}");
    // The pods ran the registry's images: podman pulled them under the registry's names.
    for image in &remote {
        let here = podman(&["image", "exists", image]);
        assert!(here.status.success(), "{image} was not pulled:\n{second}");
    }
    assert_coverage(&scratch, &second);
}

/// Another service's image under our content tag in the registry, for real: datastorage's
/// image pushed as the gateway's registry reference (what a mistake in a shared registry does)
/// is refused in phase 2, naming the reference and what it holds (its label), before any pod.
/// Before, the run found the tag, deployed datastorage as the gateway, and reported its
/// coverage as the gateway's.
#[test]
#[ignore = "needs podman, go and the distribution registry (`registry` on PATH; .ci/run builds it)"]
fn another_services_image_under_our_tag_in_the_registry_is_refused() {
    let registry = RegistryServer::start(false);
    let scratch = Scratch::new("real-registry-wrong");
    let name = unique("regwrong");
    let mut guard = Cleanup::default();
    let target = format!("{}/e2e", registry.addr);
    let flags = ["--registry", target.as_str(), "--registry-insecure"];
    // The images of a coverage run, pushed (and verified: pulled under the registry's names).
    let built = scratch.xtask(&[&["build-images", "--coverage"][..], &flags].concat(), &[]);
    assert_eq!(built.code, 0, "{built}");
    let pushed = |service: &str| {
        let line = built.stdout.lines().find(|l| l.starts_with(&format!("{service} "))).unwrap();
        let local = line.split_whitespace().nth(1).unwrap().to_string();
        (local, line.split_once("  pushed: ").unwrap().1.trim().to_string())
    };
    let ((gateway, remote), (datastorage, other)) = (pushed("gateway"), pushed("datastorage"));
    guard.images.extend([gateway.clone(), datastorage.clone(), remote.clone(), other]);

    let wrong = podman(&["push", "--tls-verify=false", &datastorage, &remote]);
    assert!(wrong.status.success(), "{}", text(&wrong));
    let run = e2e_with(&scratch, &name, &mut guard, &flags);
    assert_eq!(run.code, 1, "{run}");
    let (ours, theirs) = (&gateway["localhost/".len()..], &datastorage["localhost/".len()..]);
    let refused = format!("the registry's {remote} is not the image it should be: it holds an image labelled e2e.xtask/content={theirs}, not {ours}; delete that tag in the registry {target} (or push the right image under it), or use another --registry prefix");
    assert!(run.stdout.contains(&refused), "{run}");
    assert!(run.stdout.contains("phase 2 (build images) failed"), "{run}");
    for pod in &guard.pods {
        assert!(!podman(&["pod", "exists", pod]).status.success(), "{pod} was created:\n{run}");
    }
}

/// The case for real: the registry process stopped (SIGSTOP), so the kernel takes the
/// connection and nothing answers. The run stops in phase 2 at the first tag check, within its
/// 10 s, with the registry's name; nothing is pushed and no pod is created. Before, it was still
/// in phase 2 after 150 s, 20 s of them in two tag checks and the rest in `podman push`.
#[test]
#[ignore = "needs podman, go and the distribution registry (`registry` on PATH; .ci/run builds it)"]
fn a_registry_that_stopped_answering_stops_the_run_in_phase_2_with_its_name() {
    let registry = RegistryServer::start(false);
    let pid = nix::unistd::Pid::from_raw(registry.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let scratch = Scratch::new("real-registry-stopped");
    let name = unique("regstop");
    let mut guard = Cleanup::default();
    guard.pods = ["datastorage", "gateway"].map(|s| format!("{name}-{s}-pod-0")).to_vec();
    guard.networks = vec![format!("xtask-{name}")];
    let (gateway, datastorage) = (free_port().to_string(), free_port().to_string());
    let registry_flag = format!("{}/e2e", registry.addr);
    let args = ["e2e-gateway", "--coverage", "--cluster", "podman", "--cluster-name", &name];
    let args = [&args[..], &["--registry", &registry_flag, "--registry-insecure"]].concat();
    let env = [("GATEWAY_HOST_PORT", &*gateway), ("DATASTORAGE_HOST_PORT", &*datastorage)];
    let mut xtask = scratch
        .command(&[], &args, &env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Without the time limits it would wait for ever: give up on it after 5 minutes.
    let started = std::time::Instant::now();
    while xtask.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(300) {
            let _ = xtask.kill();
            panic!("the run still waits on the stopped registry after 5 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let run = Run::from(xtask.wait_with_output().unwrap());
    assert_eq!(run.code, 1, "{run}");
    let host = &registry.addr;
    let said = format!("failed (exit 1): phase 2 (build images) failed: the registry {host} stopped answering: it took the connection but sent no answer to `HEAD /v2/e2e/datastorage/manifests/e2e-");
    assert!(run.stdout.contains(&said), "{run}");
    assert!(run.stdout.contains(&format!("(`curl http://{host}/v2/` answers at once")), "{run}");
    assert!(!run.stdout.contains("pushed: "), "{run}");
    for pod in &guard.pods {
        assert!(!podman(&["pod", "exists", pod]).status.success(), "{pod} was created:\n{run}");
    }
}

fn assert_coverage(scratch: &Scratch, run: &Run) {
    for service in ["gateway", "datastorage"] {
        let dir = scratch.root.join("coverdata/gateway").join(service);
        assert_covmeta_and_covcounters(&dir, &run.to_string());
    }
}

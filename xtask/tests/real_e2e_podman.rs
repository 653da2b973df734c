//! `cargo xtask e2e-gateway --coverage --cluster podman` for real: podman, go and the Go E2E
//! suite, on a scratch copy of the project.
//!
//! The podman backend names its pods `gateway-pod-0` and `datastorage-pod-0`, so this file has
//! exactly one test: two runs at once would share pods. The build-images real tests use no pods.

mod common;

use common::{
    free_port,
    real::{assert_covmeta_and_covcounters, images_of, podman, text, Cleanup, Scratch},
};

const PODS: [&str; 2] = ["datastorage-pod-0", "gateway-pod-0"];

#[test]
#[ignore = "needs podman and go"]
fn e2e_with_coverage_on_podman_passes_and_leaves_nothing_behind() {
    let mut guard = Cleanup::default();
    guard.pods = PODS.map(String::from).to_vec();
    let scratch = Scratch::new("real-e2e");
    let root = &scratch.root;
    let network = "podman-default-kube-network";
    let network_existed = podman(&["network", "exists", network]).status.success();

    let gateway_port = free_port().to_string();
    let datastorage_port = free_port().to_string();
    let run = scratch.xtask(
        &["e2e-gateway", "--coverage", "--cluster", "podman"],
        &[
            ("GATEWAY_HOST_PORT", &gateway_port),
            ("DATASTORAGE_HOST_PORT", &datastorage_port),
        ],
    );
    guard.images = images_of(&run)
        .into_iter()
        .filter(|i| i.status == "built" || i.status == "cached")
        .map(|i| i.reference)
        .collect();
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        guard.images.len(),
        2,
        "one image per service expected:\n{run}"
    );
    assert_eq!(
        run.stdout.matches(" built ").count(),
        2,
        "a clean state builds both images:\n{run}"
    );

    assert_eq!(
        podman(&["network", "exists", network]).status.success(),
        network_existed,
        "the run must leave {network} as it found it:\n{run}"
    );

    let (passed, failed) =
        test_counts(&run.stdout).unwrap_or_else(|| panic!("no `N passed, N failed` line:\n{run}"));
    assert!(passed > 0, "no test passed:\n{run}");
    assert_eq!(failed, 0, "{run}");

    for service in ["gateway", "datastorage"] {
        let dir = root.join("coverdata").join(service);
        assert_covmeta_and_covcounters(&dir, &run.to_string());
    }

    let summary = std::fs::read_to_string(root.join("target/xtask/last-run.txt")).unwrap();
    for label in ["coverage gateway", "coverage datastorage", "coverage total"] {
        let pct = percentage(&summary, label)
            .unwrap_or_else(|| panic!("no `{label} N%` line in the summary:\n{summary}"));
        assert!(pct > 0.0, "{label} is {pct}%:\n{summary}");
    }
    assert!(
        summary.contains("passed (exit 0)"),
        "the summary must say the run passed:\n{summary}"
    );

    for pod in PODS {
        let exists = podman(&["pod", "exists", pod]);
        assert!(!exists.status.success(), "the pod {pod} was left behind");
    }
    let left = podman(&["ps", "--all", "--format", "{{.Names}} {{.PodName}}"]);
    assert!(left.status.success(), "podman ps: {}", text(&left));
    let ours: Vec<String> = String::from_utf8_lossy(&left.stdout)
        .lines()
        .filter(|l| PODS.iter().any(|pod| l.contains(pod)))
        .map(str::to_string)
        .collect();
    assert!(ours.is_empty(), "containers left behind: {ours:?}");
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

//! `cargo xtask e2e-gateway --cluster kind` for real: kind v0.33, rootful podman, a node image
//! built offline (`E2E_NODE_IMAGE`, which `.ci/run` builds with `../shared/kind-node/build`),
//! kubectl, go and the Go E2E suite, on scratch copies of the project.
//!
//! The tests here run one at a time (a Kind node takes most of a core while it starts), each
//! under a cluster name and host ports of its own, and remove their clusters however they end.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use camino::{Utf8Path, Utf8PathBuf};
use common::{
    free_port,
    real::{
        assert_covmeta_and_covcounters, ensure_redis_standin, images_of, podman,
        registry_references, text, unique, RegistryServer, Scratch, REDIS,
    },
    Run,
};

/// One Kind test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `--node-image` with `E2E_NODE_IMAGE` (a node image podman has: `.ci/run` builds one with
/// `../shared/kind-node/build`, as no registry is reachable here); without it, nothing: kind
/// pulls its default node image, where a registry is reachable (GitHub's runners).
fn node_image_args() -> Vec<String> {
    match std::env::var("E2E_NODE_IMAGE").ok().filter(|v| !v.is_empty()) {
        Some(image) => vec!["--node-image".into(), image],
        None => Vec::new(),
    }
}

/// A Kind cluster of a test: its name, its host ports, and `kind delete` when dropped.
struct Cluster {
    name: String,
    ports: [(&'static str, String); 3],
    images: Vec<String>,
}

impl Cluster {
    fn new(prefix: &str) -> Cluster {
        // Short: the name goes into container and host names.
        let name = unique(prefix).replace('-', "").chars().take(24).collect::<String>();
        let ports = [
            ("GATEWAY_HOST_PORT", free_port().to_string()),
            ("DATASTORAGE_HOST_PORT", free_port().to_string()),
            ("REDIS_HOST_PORT", free_port().to_string()),
        ];
        Cluster { name, ports, images: Vec::new() }
    }

    fn kubeconfig(&self, scratch: &Scratch) -> Utf8PathBuf {
        scratch.root.join(format!("target/xtask/kubeconfig-{}", self.name))
    }

    /// `e2e-gateway --cluster kind` on `scratch` with `args`, in this cluster's name and ports.
    fn e2e(&mut self, scratch: &Scratch, args: &[&str]) -> Run {
        self.run(scratch, &["e2e-gateway"], args)
    }

    /// `<task> --cluster kind` (`task` like `["e2e", "datastorage"]`) on `scratch` with `args`,
    /// in this cluster's name and ports.
    fn run(&mut self, scratch: &Scratch, task: &[&str], args: &[&str]) -> Run {
        let image = node_image_args();
        let mut all = task.to_vec();
        all.extend(["--cluster", "kind", "--cluster-name", &self.name]);
        all.extend(image.iter().map(String::as_str));
        all.extend(args);
        let env = self.ports.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>();
        let run = scratch.xtask(&all, &env);
        self.track_images(&run);
        run
    }

    /// Remembers the images `run` built or pulled (under our names and the registry's), which
    /// the guard removes.
    fn track_images(&mut self, run: &Run) {
        self.images.extend(images_of(run).into_iter().map(|i| i.reference));
        self.images.extend(registry_references(run));
    }

    fn exists(&self) -> bool {
        let clusters = kind(&["get", "clusters"]);
        String::from_utf8_lossy(&clusters.stdout).lines().any(|l| l.trim() == self.name)
    }

    fn node(&self) -> String {
        format!("{}-control-plane", self.name)
    }

    /// Containers of this cluster that podman still has.
    fn containers(&self) -> Vec<String> {
        let all = podman(&["ps", "--all", "--format", "{{.Names}}"]);
        let prefix = format!("{}-", self.name);
        String::from_utf8_lossy(&all.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }

    fn assert_gone(&self, run: &Run) {
        assert!(!self.exists(), "the cluster {} was left behind:\n{run}", self.name);
        assert_eq!(self.containers(), Vec::<String>::new(), "containers left behind:\n{run}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.exists() {
            let _ = kind(&["delete", "cluster", "--name", &self.name]);
        }
        for image in &self.images {
            let _ = podman(&["rmi", image]);
        }
    }
}

fn kind(args: &[&str]) -> std::process::Output {
    Command::new("kind")
        .args(args)
        .env("KIND_EXPERIMENTAL_PROVIDER", "podman")
        .output()
        .expect("kind on PATH: `go install sigs.k8s.io/kind@v0.33.0`")
}

fn kubectl(kubeconfig: &Utf8Path, args: &[&str]) -> String {
    let out = Command::new("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args).output();
    let out = out.expect("kubectl on PATH");
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn passed(run: &Run) -> usize {
    let line = run.stdout.lines().find(|l| l.contains(" passed, ") && l.contains(" failed"));
    let line = line.unwrap_or_else(|| panic!("no `N passed, N failed` line:\n{run}"));
    line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap()
}

fn assert_coverage(scratch: &Scratch, run: &Run) {
    for service in ["gateway", "datastorage"] {
        assert_covmeta_and_covcounters(
            &scratch.root.join("coverdata/gateway").join(service),
            &run.stdout,
        );
    }
    let summary = std::fs::read_to_string(scratch.root.join("target/xtask/last-run.txt")).unwrap();
    for label in ["coverage gateway", "coverage datastorage", "coverage total"] {
        let line = summary.lines().find(|l| l.trim_start().starts_with(label));
        let pct: f64 = line
            .and_then(|l| l.split_whitespace().last()?.strip_suffix('%')?.parse().ok())
            .unwrap_or_else(|| panic!("no `{label} N%` line:\n{summary}"));
        assert!(pct > 0.0, "{label} is {pct}%:\n{summary}");
    }
}

#[test]
#[ignore = "needs podman, kind, kubectl, go and a Kind node image (E2E_NODE_IMAGE, which .ci/run builds, or a reachable registry)"]
fn a_coverage_run_on_kind_passes_and_leaves_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("kind-coverage");
    let mut cluster = Cluster::new("kcov");
    let run = cluster.e2e(&scratch, &["--coverage"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(passed(&run) > 0, "{run}");
    assert_coverage(&scratch, &run);
    // Strict order and the load checked in the node.
    assert!(run.stdout.contains("idle gap (cluster ready to first load): "), "{run}");
    // Deploy says where its time goes.
    assert!(run.stdout.contains("    applied datastorage, gateway ("), "{run}");
    for service in ["datastorage", "gateway"] {
        assert!(run.stdout.contains(&format!("    loaded localhost/{service}:e2e-")), "{run}");
        assert!(run.stdout.contains(&format!("    {service} rolled out (")), "{run}");
        assert!(run.stdout.contains(&format!("    {service} ready on 127.0.0.1:")), "{run}");
    }
    cluster.assert_gone(&run);
}

/// The datastorage suite on Kind: Redis, a third-party image used as it is, goes into the node
/// with ours from an archive named after its image ID; ginkgo's specs pass, the restart one too.
#[test]
#[ignore = "needs podman, kind, kubectl, go, redis-server (for the Redis stand-in) and a Kind node image (E2E_NODE_IMAGE, which .ci/run builds, or a reachable registry)"]
fn the_datastorage_suite_on_kind_loads_redis_with_ours_and_passes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    ensure_redis_standin("podman");
    let scratch = Scratch::new("kind-datastorage");
    let mut cluster = Cluster::new("kds");
    let run = cluster.run(&scratch, &["e2e", "datastorage"], &["--coverage"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains(&format!("    loaded {REDIS}")), "{run}");
    let archive = scratch
        .root
        .join("target/xtask/images")
        .read_dir_utf8()
        .unwrap()
        .any(|e| e.unwrap().file_name().starts_with("docker.io-library-redis-7.4-alpine@"));
    assert!(archive, "the Redis archive is kept by image ID:\n{run}");
    assert!(passed(&run) >= 10, "{run}");
    assert_covmeta_and_covcounters(
        &scratch.root.join("coverdata/datastorage/datastorage"),
        &run.stdout,
    );
    assert!(podman(&["image", "exists", REDIS]).status.success(), "{REDIS} was removed");
    cluster.assert_gone(&run);
}

/// `--reuse-cluster`, then a one-line change in cmd/gateway: the cluster is kept, only the
/// gateway's image is new, and its Deployment is recreated on the one node (no rollout
/// deadlock over the host port).
#[test]
#[ignore = "needs podman, kind, kubectl, go and a Kind node image (E2E_NODE_IMAGE, which .ci/run builds, or a reachable registry)"]
fn reuse_cluster_after_an_image_change_passes_on_the_kept_cluster() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("kind-reuse");
    let mut cluster = Cluster::new("kreuse");
    let first = cluster.e2e(&scratch, &["--reuse-cluster"]);
    assert_eq!(first.code, 0, "{first}");
    assert!(cluster.exists(), "--reuse-cluster keeps the cluster:\n{first}");
    let node_started = podman(&["inspect", "--format", "{{.State.StartedAt}}", &cluster.node()]);

    let main = scratch.root.join("cmd/gateway/main.go");
    let source = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, format!("{source}\n// a one-line change\n")).unwrap();
    let second = cluster.e2e(&scratch, &["--reuse-cluster"]);
    assert_eq!(second.code, 0, "{second}");
    assert!(second.stdout.contains("exists and is healthy: reusing it"), "{second}");
    assert!(!second.stdout.contains("kind create"), "{second}");
    let again = podman(&["inspect", "--format", "{{.State.StartedAt}}", &cluster.node()]);
    assert_eq!(text(&node_started), text(&again), "the same node container");
    let images = images_of(&second);
    let status = |svc: &str| images.iter().find(|i| i.service == svc).unwrap().status.clone();
    assert_eq!((status("gateway").as_str(), status("datastorage").as_str()), ("built", "cached"));
    // Only the changed image goes into the node.
    let datastorage = images.iter().find(|i| i.service == "datastorage").unwrap();
    let kept = format!("    {} is in the node already", datastorage.reference);
    assert!(second.stdout.contains(&kept), "{second}");
    assert_eq!(second.stdout.matches("    loaded localhost/").count(), 1, "{second}");
    // The pod runs the new image.
    let gateway = images.iter().find(|i| i.service == "gateway").unwrap().reference.clone();
    let kubeconfig = cluster.kubeconfig(&scratch);
    let running = kubectl(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=gateway",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
    );
    assert_eq!(running.trim(), gateway);
}

/// The old flow's failure, for real: the node container of a kept cluster stopped. A reuse
/// finds it unhealthy and recreates the cluster once; a node that stops right before the load
/// fails the load with a message that says so.
#[test]
#[ignore = "needs podman, kind, kubectl, go and a Kind node image (E2E_NODE_IMAGE, which .ci/run builds, or a reachable registry)"]
fn a_stopped_node_is_recreated_once_and_a_load_into_one_fails_clearly() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("kind-stopped");
    let mut cluster = Cluster::new("kstop");
    let kept = cluster.e2e(&scratch, &["--keep-cluster"]);
    assert_eq!(kept.code, 0, "{kept}");
    let stop = podman(&["stop", "--time", "0", &cluster.node()]);
    assert!(stop.status.success(), "{}", text(&stop));

    let reused = cluster.e2e(&scratch, &["--keep-cluster", "--reuse-cluster"]);
    assert_eq!(reused.code, 0, "{reused}");
    let unhealthy = format!("is not healthy ({} is exited): recreating it", cluster.node());
    assert!(reused.stdout.contains(&unhealthy), "{reused}");

    // A `kind` that stops the node just before it loads: the "container state improper" case.
    let wrapper = scratch.root.join("target/wrapped-bin");
    std::fs::create_dir_all(&wrapper).unwrap();
    let real = String::from_utf8(
        Command::new("sh").args(["-c", "command -v kind"]).output().unwrap().stdout,
    )
    .unwrap();
    let real = real.trim();
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = load ]; then podman stop --time 0 {} >/dev/null; fi\nexec {real} \"$@\"\n",
        cluster.node()
    );
    common::write(&wrapper.join("kind"), &script);
    std::fs::set_permissions(
        wrapper.join("kind"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{wrapper}:{}", std::env::var("PATH").unwrap());
    let image = node_image_args();
    let mut args = vec!["e2e-gateway", "--cluster", "kind", "--cluster-name", &cluster.name];
    args.extend(image.iter().map(String::as_str));
    let mut env: Vec<(&str, &str)> = cluster.ports.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("PATH", &path));
    let failed = scratch.xtask(&args, &env);
    cluster.track_images(&failed);
    assert_eq!(failed.code, 1, "{failed}");
    assert!(
        failed.stdout.contains("failed because a node stopped")
            && failed.stdout.contains("container state improper"),
        "{failed}"
    );
    cluster.assert_gone(&failed);
}

/// Images through a real registry that the node reaches: the first run pushes both and its
/// node pulls them; a run on that cluster as an existing one (a namespace of its own, port
/// forwards, counters over HTTP) pushes nothing and deletes only its namespace; a third run, on
/// a new cluster and with no local copies, pushes nothing and its node pulls.
#[test]
#[ignore = "needs podman, kind, kubectl, go and a Kind node image (E2E_NODE_IMAGE, which .ci/run builds, or a reachable registry)"]
fn a_registry_feeds_kind_and_an_existing_cluster_pushing_each_image_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let registry = RegistryServer::start(true);
    let scratch = Scratch::new("kind-registry");
    let mut cluster = Cluster::new("kreg");
    let prefix = format!("{}/e2e", registry.addr);
    let flags = ["--registry", prefix.as_str(), "--registry-insecure"];
    // All three runs build with coverage: the same images each time.
    let first = cluster.e2e(&scratch, &[&flags[..], &["--coverage", "--keep-cluster"]].concat());
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(first.stdout.matches("  pushed: ").count(), 2, "{first}");
    assert!(
        first.stdout.contains(&format!("nothing to load: the nodes pull from {}", registry.addr)),
        "{first}"
    );
    let kubeconfig = cluster.kubeconfig(&scratch);

    // The same cluster, as a shared one.
    let existing = scratch.xtask(
        &[
            "e2e-gateway",
            "--coverage",
            "--cluster",
            "existing",
            "--kubeconfig",
            kubeconfig.as_str(),
            flags[0],
            flags[1],
            flags[2],
        ],
        &[],
    );
    cluster.track_images(&existing);
    assert_eq!(existing.code, 0, "{existing}");
    assert_eq!(existing.stdout.matches("  pushed: ").count(), 0, "{existing}");
    assert_eq!(existing.stdout.matches("  in the registry: ").count(), 2, "{existing}");
    let namespace = existing
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("e2e-") && w.len() > 20)
        .unwrap_or_else(|| panic!("no namespace named:\n{existing}"))
        .to_string();
    assert!(
        existing.stdout.contains(&format!("deleted the namespace {namespace} (only it)")),
        "{existing}"
    );
    for service in ["gateway", "datastorage"] {
        assert!(
            existing.stdout.contains(&format!("fetched the coverage counters of {service}")),
            "{existing}"
        );
    }
    assert_coverage(&scratch, &existing);
    // Only its namespace went: the first run's Deployments are still in `default`.
    let left =
        kubectl(&kubeconfig, &["get", "deployments", "--namespace", "default", "-o", "name"]);
    assert!(
        left.contains("deployment.apps/gateway") && left.contains("deployment.apps/datastorage"),
        "{left}"
    );
    let phase = kubectl(
        &kubeconfig,
        &["get", "namespace", &namespace, "--ignore-not-found", "-o", "jsonpath={.status.phase}"],
    );
    assert!(phase.is_empty() || phase == "Terminating", "{namespace} is {phase}");

    // A new cluster, nothing local: nothing is built or pushed, the node pulls.
    for image in &cluster.images {
        let _ = podman(&["rmi", "--force", image]);
    }
    let third = cluster.e2e(&scratch, &[&flags[..], &["--coverage"]].concat());
    assert_eq!(third.code, 0, "{third}");
    assert!(third.stdout.contains("deleting the stale cluster"), "{third}");
    assert_eq!(third.stdout.matches("  pushed: ").count(), 0, "{third}");
    assert!(!third.stdout.contains(" built "), "{third}");
    assert!(third.stdout.contains("the nodes pull from"), "{third}");
    cluster.assert_gone(&third);
}

/// A failing test on Kind: the diagnostics hold kind's logs, the pods' logs, events and
/// descriptions with real content, taken while the services still ran.
#[test]
#[ignore = "needs podman, kind, kubectl, go and a Kind node image (E2E_NODE_IMAGE, which .ci/run builds, or a reachable registry)"]
fn a_failing_test_on_kind_leaves_real_diagnostics() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("kind-fails");
    common::write(
        &scratch.root.join("test/e2e/gateway/zz_fails_test.go"),
        "//go:build e2e\n\npackage gateway\n\nimport \"testing\"\n\nfunc TestThatFailsOnPurpose(t *testing.T) {\n\tt.Fatal(\"failing on purpose\")\n}\n",
    );
    let mut cluster = Cluster::new("kfail");
    let run = cluster.e2e(&scratch, &["--coverage"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("1 E2E test(s) failed (TestThatFailsOnPurpose)"), "{run}");
    let logs = scratch.root.join("target/xtask/logs");
    let dir = logs.read_dir_utf8().unwrap().next().unwrap().unwrap().into_path();
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}\n{run}"))
    };
    // Taken before anything was scaled down: both pods ran.
    let pods = read("pods.txt");
    assert_eq!(
        pods.lines()
            .filter(
                |l| (l.contains("gateway-") || l.contains("datastorage-")) && l.contains("Running")
            )
            .count(),
        2,
        "{pods}"
    );
    for service in ["gateway", "datastorage"] {
        let log = read(&format!("{service}.log"));
        assert!(log.contains("\"msg\":\"listening\""), "{service}.log: {log}");
    }
    let events = read("events.txt");
    assert!(events.contains("Started") && events.contains("Scheduled"), "{events}");
    assert!(read("describe-pods.txt").contains("Image:"), "describe-pods.txt");
    let exported: Vec<_> = walkdir::WalkDir::new(dir.join("kind"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .collect();
    assert!(
        exported.iter().any(|e| e.file_name() == "kubelet.log"),
        "kind export logs: {exported:?}"
    );
    cluster.assert_gone(&run);
}

/// Ctrl-C while the services deploy: the cluster is deleted and nothing is left.
#[test]
#[ignore = "needs podman, kind, kubectl, go and a Kind node image (E2E_NODE_IMAGE, which .ci/run builds, or a reachable registry)"]
fn ctrl_c_during_deploy_deletes_the_cluster() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("kind-ctrl-c");
    let mut cluster = Cluster::new("kint");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["e2e-gateway", "--cluster", "kind", "--cluster-name", &cluster.name])
        .args(node_image_args())
        .current_dir(&scratch.root)
        .env("XTASK_PROJECT_ROOT", &scratch.root)
        .env("TMPDIR", scratch.root.join("target"))
        .env("NO_COLOR", "1")
        .envs(cluster.ports.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    for line in lines.by_ref() {
        let line = line.unwrap();
        out += &format!("{line}\n");
        if line.contains("==> 5. deploy") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "no deploy phase:\n{out}");
    }
    assert!(out.contains("==> 5. deploy"), "no deploy phase:\n{out}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    for line in lines {
        out += &format!("{}\n", line.unwrap());
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "{out}");
    assert!(out.contains("deleted the cluster"), "{out}");
    let run = Run { code: status.code().unwrap_or(-1), stdout: out, stderr: String::new() };
    cluster.track_images(&run);
    cluster.assert_gone(&run);
}

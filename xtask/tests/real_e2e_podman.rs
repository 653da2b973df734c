//! `cargo xtask e2e-gateway --coverage --cluster podman` for real: podman, go and the Go E2E
//! suite, on a scratch copy of the project.
//!
//! The podman backend names its pods `gateway-pod-0` and `datastorage-pod-0`, so this file has
//! exactly one test: two runs at once would share pods. The build-images real tests use no pods.

mod common;

use std::{
    io::Write,
    process::{Command, Output},
    time::{SystemTime, UNIX_EPOCH},
};

use camino::{Utf8Path, Utf8PathBuf};
use common::{free_port, repo_root, Run};

const PODS: [&str; 2] = ["datastorage-pod-0", "gateway-pod-0"];

#[test]
#[ignore = "needs podman and go"]
fn e2e_with_coverage_on_podman_passes_and_leaves_nothing_behind() {
    let mut guard = Cleanup::default();
    let scratch = Scratch(scratch_project());
    let root = &scratch.0;
    let network = "podman-default-kube-network";
    let network_existed = podman(&["network", "exists", network]).status.success();

    let run = xtask(
        root,
        &["e2e-gateway", "--coverage", "--cluster", "podman"],
        &[
            ("GATEWAY_HOST_PORT", free_port().to_string()),
            ("DATASTORAGE_HOST_PORT", free_port().to_string()),
        ],
    );
    guard.images = image_references(&run.stdout);
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
        let names: Vec<String> = dir
            .read_dir_utf8()
            .unwrap_or_else(|err| panic!("reading {dir}: {err}\n{run}"))
            .map(|e| e.unwrap().file_name().to_string())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("covmeta.")),
            "no covmeta.* in {dir}: {names:?}"
        );
        assert!(
            names.iter().any(|n| n.starts_with("covcounters.")),
            "no covcounters.* in {dir}: {names:?}"
        );
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

/// The scratch project, removed when the test passed and kept to look at when it failed.
struct Scratch(Utf8PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A copy of the project in a directory of its own. A comment unique to the run is appended to
/// the Dockerfiles, which are hashed into the image tags: the run builds its own images (no
/// clash with the checkout's) and the guard can remove them.
fn scratch_project() -> Utf8PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let id = format!("real-e2e-{}-{nanos}", std::process::id());
    let root = Utf8PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&id);
    let _ = std::fs::remove_dir_all(&root);
    let repo = repo_root();
    std::fs::create_dir_all(&root).unwrap();
    for file in ["go.mod", "go.sum", ".containerignore", ".dockerignore"] {
        if repo.join(file).exists() {
            std::fs::copy(repo.join(file), root.join(file)).unwrap();
        }
    }
    for dir in ["cmd", "internal", "docker", "test"] {
        copy_dir(&repo.join(dir), &root.join(dir));
    }
    for entry in root.join("docker").read_dir_utf8().unwrap() {
        let path = entry.unwrap().into_path();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(file, "# scratch copy for the test run {id}").unwrap();
    }
    root
}

fn xtask(root: &Utf8Path, args: &[&str], env: &[(&str, String)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args)
        .current_dir(root)
        .env("XTASK_PROJECT_ROOT", root)
        .env("NO_COLOR", "1")
        .env_remove("GITHUB_ACTIONS")
        .env_remove("GITHUB_STEP_SUMMARY");
    for (key, value) in env {
        cmd.env(key, value);
    }
    Run::from(cmd.output().unwrap())
}

/// Removes the pods and images of the run, whether the test passed or panicked.
#[derive(Default)]
struct Cleanup {
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pod in PODS {
            if podman(&["pod", "exists", pod]).status.success() {
                let _ = podman(&["pod", "rm", "--force", "--time", "0", pod]);
            }
        }
        for image in &self.images {
            let _ = podman(&["rmi", image]);
        }
    }
}

/// The image references the build phase printed (`name  localhost/...  built|cached ...`).
fn image_references(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [_, reference, "built" | "cached", ..] if reference.starts_with("localhost/") => {
                    Some(reference.to_string())
                }
                _ => None,
            }
        })
        .collect()
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

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn copy_dir(from: &Utf8Path, to: &Utf8Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in from.read_dir_utf8().unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

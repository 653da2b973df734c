//! `cargo xtask build-images` with the real podman and go: the images it builds run, write
//! coverage on a graceful stop, and a second build is a cache hit.
//!
//! Each test works on its own scratch copy of the project, with its own image tags, and removes
//! what it created (see `common::real`).

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Output,
    time::{Duration, Instant},
};

use camino::Utf8Path;
use common::{
    free_port,
    real::{
        assert_covmeta_and_covcounters, ensure_standin_builder, images_of, podman, text, unique,
        Cleanup, Image, Scratch, STANDIN_BUILDER,
    },
    Run,
};

#[test]
#[ignore = "needs podman and go"]
fn host_mode_images_run_write_coverage_and_are_cached() {
    let mut guard = Cleanup::default();
    let scratch = Scratch::new("real-host");

    let first = scratch.xtask(&["build-images", "--coverage", "--no-cache"], &[]);
    let images = own_images(&first, &mut guard);
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(statuses(&images), [("datastorage", "built"), ("gateway", "built")], "{first}");
    let ids: Vec<String> = images.iter().map(|i| image_id(&i.reference)).collect();

    let gateway = &images[1].reference;
    let cov = scratch.coverage_dir("gateway");
    run_until_graceful_stop(&mut guard, gateway, 8080, &cov);
    assert_covmeta_and_covcounters(&cov, "");

    let second = scratch.xtask(&["build-images", "--coverage"], &[]);
    assert_eq!(second.code, 0, "{second}");
    let again = own_images(&second, &mut guard);
    assert_eq!(statuses(&again), [("datastorage", "cached"), ("gateway", "cached")], "{second}");
    assert!(!second.stdout.contains("go build ("), "a cache hit must not run go build:\n{second}");
    let same_refs: Vec<&str> = again.iter().map(|i| i.reference.as_str()).collect();
    let first_refs: Vec<&str> = images.iter().map(|i| i.reference.as_str()).collect();
    assert_eq!(same_refs, first_refs, "tags changed without a change");
    let ids_again: Vec<String> = again.iter().map(|i| image_id(&i.reference)).collect();
    assert_eq!(ids_again, ids, "a cache hit must not build a new image");
}

#[test]
#[ignore = "needs podman and go"]
fn container_mode_with_standin_base_images_writes_coverage() {
    let mut guard = Cleanup::default();
    ensure_standin_builder("podman");
    let scratch = Scratch::new("real-container");

    let env = [
        ("BUILDER_IMAGE", STANDIN_BUILDER),
        ("BASE_IMAGE", "scratch"),
        // Keep no intermediate images: the builder stage would stay behind, untagged (300 MB).
        ("BUILDAH_LAYERS", "false"),
    ];
    let args = ["build-images", "--build-mode", "container", "--coverage", "--service", "gateway"];
    // Sources of this run's own, so no layer of an earlier build is reused: a builder stage
    // left behind would be new.
    let main = scratch.root.join("cmd/gateway/main.go");
    let source = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, format!("{source}\n// {}\n", scratch.root)).unwrap();
    let dangling_before = dangling_on(STANDIN_BUILDER);
    let built = scratch.xtask(&args, &env);
    let images = own_images(&built, &mut guard);
    assert_eq!(built.code, 0, "{built}");
    assert_eq!(statuses(&images), [("gateway", "built")], "{built}");

    // The UBI9 Dockerfiles run the service as uid 1001.
    let cov = scratch.coverage_dir("gateway");
    run_until_graceful_stop(&mut guard, &images[0].reference, 8080, &cov);
    assert_covmeta_and_covcounters(&cov, "");
    // Nothing of this build is left untagged (its builder stage would be 300 MB).
    let left: Vec<String> = dangling_on(STANDIN_BUILDER)
        .into_iter()
        .filter(|id| !dangling_before.contains(id))
        .collect();
    assert!(left.is_empty(), "untagged images left behind: {left:?}");
}

/// Older images this checkout built are removed by tag, the 3 most recently used of the
/// service staying; one that a container uses stays too (podman refuses to remove it).
#[test]
#[ignore = "needs podman and go"]
fn older_images_go_and_one_a_container_uses_stays() {
    let mut guard = Cleanup::default();
    let scratch = Scratch::new("real-retention");
    let main = scratch.root.join("cmd/gateway/main.go");
    let mut gateway = Vec::new();
    let mut last = None;
    for i in 0..5 {
        let source = std::fs::read_to_string(&main).unwrap();
        std::fs::write(&main, format!("{source}\n// change {i}\n")).unwrap();
        let run = scratch.xtask(&["build-images", "--service", "gateway"], &[]);
        let images = own_images(&run, &mut guard);
        assert_eq!(run.code, 0, "{run}");
        gateway.push(images[0].reference.clone());
        if i == 0 {
            // A container of the first image, never started.
            let name = unique("retention");
            guard.containers.push(name.clone());
            let created = podman(&["create", "--name", &name, &gateway[0]]);
            assert!(created.status.success(), "{}", text(&created));
        }
        last = Some(run);
    }
    let last = last.unwrap();
    let exists = |image: &str| podman(&["image", "exists", image]).status.success();
    assert!(exists(&gateway[0]), "the image a container uses was removed:\n{last}");
    assert!(!exists(&gateway[1]), "{} is still there:\n{last}", gateway[1]);
    assert!(gateway[2..].iter().all(|image| exists(image)), "{last}");
    let kept = format!("still kept: {}, as `podman rmi` refused it (", gateway[0]);
    assert!(last.stdout.contains(&kept), "{last}");
    assert!(last.stdout.contains(&format!("removed 1 older image(s) this checkout built (it keeps the 3 most recently used of each service): {}\n", gateway[1])), "{last}");
}

/// Untagged images built on `base`: their chain of parents leads to it.
fn dangling_on(base: &str) -> Vec<String> {
    let base = image_id(base);
    let lines = |out: Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    };
    let dangling = lines(podman(&["images", "--quiet", "--no-trunc", "--filter", "dangling=true"]));
    dangling
        .into_iter()
        .filter(|id| {
            let mut current = id.clone();
            for _ in 0..100 {
                let parent =
                    lines(podman(&["image", "inspect", "--format", "{{.Parent}}", &current]));
                match parent.first().map(|p| p.trim().to_string()) {
                    Some(p) if !p.is_empty() && base.ends_with(&p) => return true,
                    Some(p) if !p.is_empty() => current = p,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

// ---- helpers ---------------------------------------------------------------------------------

/// Runs `image` with GOCOVERDIR on `cov`, waits for `/healthz`, stops it with SIGTERM and a
/// grace period, and checks it exited by itself with status 0 (SIGKILL would lose counters).
fn run_until_graceful_stop(guard: &mut Cleanup, image: &str, container_port: u16, cov: &Utf8Path) {
    let name = unique("xtask-real");
    let port = free_port();
    guard.containers.push(name.clone());
    let publish = format!("127.0.0.1:{port}:{container_port}");
    let volume = format!("{cov}:/cov");
    let started = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &publish,
        "-e",
        "GOCOVERDIR=/cov",
        "-e",
        "DATASTORAGE_URL=http://127.0.0.1:1",
        "-v",
        &volume,
        image,
    ]);
    assert!(started.status.success(), "podman run: {}", text(&started));

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        match http_status(port, "/healthz") {
            Ok(200) => break,
            Ok(code) => last = format!("HTTP {code}"),
            Err(err) => last = err.to_string(),
        }
        if Instant::now() > deadline {
            let logs = podman(&["logs", &name]);
            panic!(
                "{image} did not answer /healthz on port {port} within 30s ({last}); logs:\n{}",
                text(&logs)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let stopped = podman(&["stop", "-t", "10", &name]);
    assert!(stopped.status.success(), "podman stop: {}", text(&stopped));
    let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "the service must return from main on SIGTERM; logs:\n{}",
        text(&podman(&["logs", &name]))
    );
}

/// Like `images_of`; the images are this test's own (see `Scratch::new`), so the guard removes
/// them.
fn own_images(run: &Run, guard: &mut Cleanup) -> Vec<Image> {
    let images = images_of(run);
    guard.images.extend(images.iter().map(|i| i.reference.clone()));
    for image in &images {
        let expected = format!("localhost/{}:e2e-", image.service);
        assert!(
            image.reference.starts_with(&expected) && image.reference.len() == expected.len() + 12,
            "unexpected image reference {} in:\n{run}",
            image.reference
        );
    }
    images
}

fn statuses(images: &[Image]) -> Vec<(&str, &str)> {
    images.iter().map(|i| (i.service.as_str(), i.status.as_str())).collect()
}

fn image_id(reference: &str) -> String {
    let out = podman(&["image", "inspect", "--format", "{{.Id}}", reference]);
    assert!(out.status.success(), "inspect {reference}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn http_status(port: u16, path: &str) -> std::io::Result<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// Doctor starts a real container: with this machine's podman settings it starts; without
/// them podman cannot set the containers' ulimits, which `podman info` does not show, and
/// doctor says the fix.
#[test]
#[ignore = "needs podman and go"]
fn doctor_starts_a_container_and_names_the_fix_when_it_cannot() {
    let scratch = Scratch::new("real-doctor");
    let probe = "localhost/xtask-probe:1";
    let had_probe = podman(&["image", "exists", probe]).status.success();
    let ports = [
        ("GATEWAY_HOST_PORT", free_port().to_string()),
        ("DATASTORAGE_HOST_PORT", free_port().to_string()),
    ];
    let env: Vec<(&str, &str)> = ports.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = scratch.xtask(&["doctor", "--cluster", "podman"], &env);
    let row = |run: &Run| -> String {
        run.stdout
            .lines()
            .skip_while(|l| !l.starts_with("container "))
            .take(2)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(run.code, 0, "{run}");
    assert!(row(&run).contains("ok      localhost/xtask-probe:1 started and exited"), "{run}");

    // podman's own defaults on this machine (no CONTAINERS_CONF).
    let mut without: Vec<(&str, &str)> = env.clone();
    without.push(("CONTAINERS_CONF", "/dev/null"));
    let run = scratch.xtask(&["doctor", "--cluster", "podman"], &without);
    assert_eq!(run.code, 1, "{run}");
    let container = row(&run);
    assert!(container.contains("FAIL") && container.contains("rlimit"), "{run}");
    // The one line to run, with this checkout's path, closes the output too.
    let export = format!("`export CONTAINERS_CONF={}/.ci/containers.conf`", scratch.root);
    assert!(container.ends_with(&export), "{run}");
    let closing = run.stderr.trim_end().lines().last().unwrap_or_default();
    assert!(closing.starts_with("error: preflight failed (container): "), "{run}");
    assert!(closing.ends_with(&export), "{run}");
    if !had_probe {
        let _ = podman(&["rmi", probe]);
    }
}

/// A push to a registry that refuses the connection (nothing listens on the port) says so, in
/// podman's words and ours, with the fix; --registry-insecure, given, is not suggested again.
#[test]
#[ignore = "needs podman and go"]
fn a_push_to_a_port_nothing_listens_on_says_the_registry_refused_the_connection() {
    let mut guard = Cleanup::default();
    let scratch = Scratch::new("real-refused");
    let built = scratch.xtask(&["build-images", "--service", "gateway"], &[]);
    assert_eq!(built.code, 0, "{built}");
    own_images(&built, &mut guard);
    let host = format!("127.0.0.1:{}", free_port());
    let registry = format!("{host}/e2e");
    let args = ["build-images", "--service", "gateway", "--registry", &registry];
    let run = scratch.xtask(&[&args[..], &["--registry-insecure"]].concat(), &[]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains(&format!("dial tcp {host}: connect: connection refused")), "{run}");
    let fix = format!("the registry {host} refused the connection: nothing listens at that address and port; start the registry, or check the address and port given to --registry\n");
    assert!(run.stderr.ends_with(&fix), "{run}");
    assert!(!run.stderr.contains("--registry-insecure"), "{run}");
}

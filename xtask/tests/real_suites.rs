//! Suites as data for real, on podman: the datastorage suite (a third-party Redis image used as
//! it is, Ginkgo specs, data that survives a restart of datastorage), and a copy of the gateway
//! suite under a new name beside the gateway suite, with no change to the xtask. Each on a
//! scratch copy of the project, under cluster names and host ports of its own.

mod common;

use camino::Utf8Path;
use common::{
    free_port,
    real::{
        assert_covmeta_and_covcounters, ensure_redis_standin, images_of, podman, text, unique,
        Cleanup, RegistryServer, Scratch, REDIS,
    },
    Run,
};

/// The datastorage suite with coverage: Redis first, then datastorage; ginkgo runs every
/// labelled spec, its reports are in the run's logs, the counters in coverdata/datastorage/,
/// and nothing is left behind but the Redis image, which the run did not build.
#[test]
#[ignore = "needs podman, go and redis-server (for the Redis stand-in)"]
fn the_datastorage_suite_runs_its_ginkgo_specs_against_redis_with_coverage() {
    ensure_redis_standin("podman");
    let scratch = Scratch::new("real-suite-datastorage");
    let name = unique("ds");
    let mut guard = Cleanup::default();
    guard.pods = ["redis", "datastorage"].map(|c| format!("{name}-{c}-pod-0")).to_vec();
    guard.networks = vec![format!("xtask-{name}")];
    let (redis, datastorage) = (free_port().to_string(), free_port().to_string());
    let env = [("REDIS_HOST_PORT", &*redis), ("DATASTORAGE_HOST_PORT", &*datastorage)];
    let args = ["e2e", "datastorage", "--coverage", "--cluster", "podman", "--cluster-name", &name];
    let run = scratch.xtask(&args, &env);
    guard.images.extend(images_of(&run).into_iter().map(|i| i.reference));
    assert_eq!(run.code, 0, "{run}");
    // Only datastorage is built; Redis is used as it is.
    assert_eq!(images_of(&run).len(), 1, "{run}");
    assert!(podman(&["image", "exists", REDIS]).status.success(), "{REDIS} was removed");

    let (passed, failed) = counts(&run);
    assert!(passed >= 10, "the labelled specs ran:\n{run}");
    assert_eq!(failed, 0, "{run}");
    let summary = std::fs::read_to_string(scratch.root.join("target/xtask/last-run.txt")).unwrap();
    let logs = summary
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("logs"))
        .map(|l| Utf8Path::new(l.trim()).to_owned())
        .unwrap_or_else(|| panic!("no logs line:\n{summary}"));
    for report in ["junit.xml", "ginkgo.json"] {
        let text = std::fs::read_to_string(logs.join(report)).unwrap_or_default();
        assert!(
            text.contains("after a restart of datastorage"),
            "{report} names the restart spec:\n{run}"
        );
    }
    assert_covmeta_and_covcounters(
        &scratch.root.join("coverdata/datastorage/datastorage"),
        &run.to_string(),
    );
    assert!(summary.contains("coverage datastorage"), "{summary}");
    assert!(!summary.contains("coverage redis"), "Redis is not ours to cover:\n{summary}");
    for pod in &guard.pods {
        assert!(!podman(&["pod", "exists", pod]).status.success(), "{pod} was left behind");
    }
}

/// A copy of the gateway suite under a new name, beside the gateway suite with `--jobs 2`:
/// every image is built once before either cluster, the two runs keep their names and host
/// ports apart (both start from the same ones), one table, coverage per suite, merged after.
#[test]
#[ignore = "needs podman and go"]
fn a_copied_suite_runs_beside_the_gateway_suite_without_a_change_to_the_xtask() {
    let scratch = Scratch::new("real-suite-copy");
    let copy = scratch.root.join("test/e2e/copied");
    common::copy_dir(&scratch.root.join("test/e2e/gateway"), &copy);
    let suite = std::fs::read_to_string(copy.join("suite.toml")).unwrap();
    let suite = suite.replace("./test/e2e/gateway/...", "./test/e2e/copied/...");
    assert!(suite.contains("./test/e2e/copied/..."), "{suite}");
    std::fs::write(copy.join("suite.toml"), suite).unwrap();
    // The copy's tests are a package of their own.
    for entry in copy.read_dir_utf8().unwrap() {
        let path = entry.unwrap().into_path();
        if path.extension() == Some("go") {
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text.replace("package gateway", "package copied")).unwrap();
        }
    }

    let name = unique("cp");
    let mut guard = Cleanup::default();
    for cluster in ["gateway", "copied"].map(|s| format!("{name}-{s}")) {
        for service in ["datastorage", "gateway"] {
            guard.pods.push(format!("{cluster}-{service}-pod-0"));
        }
        guard.networks.push(format!("xtask-{cluster}"));
    }
    let (gateway, datastorage) = (free_port().to_string(), free_port().to_string());
    let env = [("GATEWAY_HOST_PORT", &*gateway), ("DATASTORAGE_HOST_PORT", &*datastorage)];
    let args = ["e2e", "gateway", "copied", "--coverage", "--cluster", "podman"];
    let args = [&args[..], &["--cluster-name", &name, "--jobs", "2"]].concat();
    let run = scratch.xtask(&args, &env);
    guard.images.extend(images_of(&run).into_iter().map(|i| i.reference));
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(images_of(&run).len(), 2, "each image built once for both suites:\n{run}");
    for suite in ["gateway", "copied"] {
        // The table's row: the suite, its result, its phases.
        let row = run.stdout.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|w| {
            w.first() == Some(&suite) && w.get(1).is_some_and(|r| ["passed", "failed"].contains(r))
        });
        let row = row.unwrap_or_else(|| panic!("no table row for {suite}:\n{run}"));
        assert_eq!(row[1], "passed", "{run}");
        for service in ["gateway", "datastorage"] {
            let dir = scratch.root.join(format!("coverdata/{suite}/{service}"));
            assert_covmeta_and_covcounters(&dir, &run.to_string());
        }
    }

    let merged = scratch.xtask(&["covdata-report", "--suite", "gateway", "--suite", "copied"], &[]);
    assert_eq!(merged.code, 0, "{merged}");
    let total = merged.stdout.lines().find(|l| l.contains("(merged total)"));
    let pct = total.and_then(|l| l.split_whitespace().find_map(|w| w.strip_suffix('%')));
    assert!(pct.and_then(|p| p.parse::<f64>().ok()).is_some_and(|p| p > 0.0), "{merged}");
    for pod in &guard.pods {
        assert!(!podman(&["pod", "exists", pod]).status.success(), "{pod} was left behind");
    }
}

/// From the `N passed, N failed, N skipped` line.
fn counts(run: &Run) -> (usize, usize) {
    let found = run.stdout.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [passed, "passed,", failed, "failed,", ..] => {
                Some((passed.parse().ok()?, failed.parse().ok()?))
            }
            _ => None,
        }
    });
    found.unwrap_or_else(|| panic!("no `N passed, N failed` line:\n{run}"))
}

/// The datastorage suite through a real registry: Redis, a third-party image with no label of
/// ours, is mirrored there and checked by its image ID (the same after a push and a pull), so
/// the run passes; another image pushed under the mirror's name is then refused, naming it and
/// both IDs, before any pod.
#[test]
#[ignore = "needs podman, go, redis-server (for the Redis stand-in) and the distribution registry (`registry` on PATH; .ci/run builds it)"]
fn a_third_party_mirror_is_checked_by_its_image_id() {
    ensure_redis_standin("podman");
    let registry = RegistryServer::start(false);
    let scratch = Scratch::new("real-suite-mirror");
    let name = unique("dsmirror");
    let mut guard = Cleanup::default();
    guard.pods = ["redis", "datastorage"].map(|c| format!("{name}-{c}-pod-0")).to_vec();
    guard.networks = vec![format!("xtask-{name}")];
    let (redis, datastorage) = (free_port().to_string(), free_port().to_string());
    let env = [("REDIS_HOST_PORT", &*redis), ("DATASTORAGE_HOST_PORT", &*datastorage)];
    let target = format!("{}/e2e", registry.addr);
    let args = ["e2e", "datastorage", "--coverage", "--cluster", "podman", "--cluster-name", &name];
    let args = [&args[..], &["--registry", &target, "--registry-insecure"]].concat();
    let mirror = format!("{target}/{REDIS}");
    let first = scratch.xtask(&args, &env);
    let built = images_of(&first).into_iter().map(|i| i.reference);
    guard.images.extend(built.chain([mirror.clone()]));
    let pushed = first.stdout.lines().filter_map(|l| l.split_once("  pushed: ")).map(|(_, r)| r);
    guard.images.extend(pushed.map(|r| r.trim().to_string()).collect::<Vec<_>>());
    assert_eq!(first.code, 0, "{first}");
    assert!(first.stdout.contains(&format!("pushed: {mirror}")), "{first}");

    let ours = images_of(&first).remove(0).reference;
    let wrong = podman(&["push", "--tls-verify=false", &ours, &mirror]);
    assert!(wrong.status.success(), "{}", text(&wrong));
    let id = |image: &str| text(&podman(&["image", "inspect", "--format", "{{.Id}}", image]));
    let (theirs, redis_id) = (id(&ours), id(REDIS));
    let second = scratch.xtask(&args, &env);
    assert_eq!(second.code, 1, "{second}");
    let refused = format!(
        "the registry's {mirror} is not the image it should be: it holds the image {}, while podman's {REDIS} is {}; delete that tag",
        theirs.lines().nth(1).unwrap(),
        redis_id.lines().nth(1).unwrap()
    );
    assert!(second.stdout.contains(&refused), "{second}");
    for pod in &guard.pods {
        assert!(!podman(&["pod", "exists", pod]).status.success(), "{pod} was left behind");
    }
}

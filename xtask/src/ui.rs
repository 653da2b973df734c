//! Terminal output shared by the tasks: phase banners, GitHub Actions groups, annotations and
//! the job summary, `NO_COLOR`.

use std::{
    borrow::Cow,
    io::{IsTerminal, Write},
    time::Duration,
};

use anyhow::Context;

/// Running as a GitHub Actions step: print `::group::` and annotation workflow commands.
pub fn github_actions() -> bool {
    std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

/// `text` in bold on a terminal, unless `NO_COLOR` asks for none.
pub fn bold(text: &str) -> String {
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    if color && std::io::stdout().is_terminal() {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.into()
    }
}

/// An `::error::` annotation: GitHub shows it on the run's page. Its data may not hold raw
/// newlines (or `%`), which the workflow command syntax escapes.
pub fn error_annotation(title: &str, message: &str) -> String {
    let escape = |s: &str| s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
    let title = escape(title).replace(':', "%3A").replace(',', "%2C");
    format!("::error title={title}::{}", escape(message))
}

/// Appends Markdown to the job summary when GitHub Actions gives one (`GITHUB_STEP_SUMMARY`).
pub fn append_step_summary(markdown: &str) -> anyhow::Result<()> {
    let Some(path) = std::env::var("GITHUB_STEP_SUMMARY").ok().filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let fix = || {
        format!(
            "appending to GITHUB_STEP_SUMMARY ({path}): point it at a writable file, or unset it"
        )
    };
    let file = std::fs::File::options().create(true).append(true).open(&path);
    file.and_then(|mut file| file.write_all(markdown.as_bytes())).with_context(fix)
}

/// A name we did not choose (a file name, a path) fit for a line of output: its control
/// characters escaped as Rust escapes them (`\n`), so that it cannot start a line of its own,
/// which GitHub Actions would read as a workflow command if it began with `::`.
pub fn escaped(name: &str) -> Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return Cow::Borrowed(name);
    }
    let escape = |c: char| if c.is_control() { c.escape_default().to_string() } else { c.into() };
    Cow::Owned(name.chars().map(escape).collect())
}

/// A relative path that starts a line, escaped, and made to start with `./` when it would
/// otherwise start the line with `::` (a workflow command) or with blanks (which GitHub Actions
/// skips before looking for `::`).
pub fn line_start_path(path: &str) -> String {
    let path = escaped(path);
    let risky = path.starts_with(char::is_whitespace) || path.starts_with(':');
    if risky {
        format!("./{path}")
    } else {
        path.into_owned()
    }
}

pub fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_escape_what_would_end_them() {
        assert_eq!(
            error_annotation("phase 5 (deploy): failed, twice", "100% wrong\nfix: this"),
            "::error title=phase 5 (deploy)%3A failed%2C twice::100%25 wrong%0Afix: this"
        );
    }

    #[test]
    fn names_cannot_start_a_line_of_their_own() {
        assert_eq!(escaped("docker/a.Dockerfile"), "docker/a.Dockerfile");
        assert_eq!(escaped("a\n::error::x\r\t\u{1b}"), "a\\n::error::x\\r\\t\\u{1b}");
        assert_eq!(line_start_path("::error::x.Dockerfile"), "./::error::x.Dockerfile");
        assert_eq!(line_start_path(" ::x"), "./ ::x");
        assert_eq!(line_start_path("x\n::error::y"), "x\\n::error::y");
        assert_eq!(line_start_path("/abs/::x"), "/abs/::x");
    }
}

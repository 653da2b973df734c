//! Terminal output shared by the tasks: phase banners, GitHub Actions groups, `NO_COLOR`.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

/// Running as a GitHub Actions step: print `::group::` and annotation workflow commands.
pub fn github_actions() -> bool {
    std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

pub fn bold(text: &str) -> String {
    if color() {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// A numbered pipeline phase on the terminal: its banner when started and its duration when
/// finished (a `::group::` in GitHub Actions).
pub struct Banner {
    name: &'static str,
    started: Instant,
}

impl Banner {
    pub fn start(number: usize, name: &'static str) -> Banner {
        if github_actions() {
            println!("::group::{number}. {name}");
        }
        println!("{}", bold(&format!("==> {number}. {name}")));
        Banner {
            name,
            started: Instant::now(),
        }
    }

    /// Ends the phase and returns how long it took.
    pub fn finish(self, succeeded: bool) -> Duration {
        let took = self.started.elapsed();
        let outcome = if succeeded { "done in" } else { "failed after" };
        println!("    {} {outcome} {}", self.name, seconds(took));
        if github_actions() {
            println!("::endgroup::");
        }
        took
    }
}

pub fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

use xshell::Shell;

use crate::flags;

pub fn run(_sh: &Shell, _flags: &flags::LintDockerfiles) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

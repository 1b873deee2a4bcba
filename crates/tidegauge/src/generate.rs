//! Shell completions and manual pages, generated from the clap definitions (so they
//! cannot drift from the commands).

use std::io::{self, Write};
use std::path::Path;

use clap::CommandFactory as _;
use clap_complete::Shell;
use roff::{Roff, bold, italic, roman};

use crate::Cli;

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tidegauge", &mut out);
    out
}

/// Exit statuses, for the man page.
const EXIT_STATUS: [(&str, &str); 3] = [
    (
        "0",
        "Success. Also when the reader of the output goes away (a closed pipe, as with \
         `tidegauge components | head -1`): tidegauge stops quietly, as a pipeline would.",
    ),
    (
        "1",
        "A pipeline ran and failed: a component could not start (its server unreachable, \
         its file unreadable) or failed while running. Running it again may succeed; the \
         systemd unit restarts on this status.",
    ),
    (
        "2",
        "Usage or configuration error: bad arguments, a pipeline file that is unreadable or \
         invalid (every problem is listed, with its line), an input another command needs \
         that is unavailable. Nothing was run.",
    ),
];

const ENVIRONMENT: [(&str, &str); 4] = [
    (
        "TIDEGAUGE_LOG",
        "Log filter for standard error, as --log (error, warn, info, debug, trace, or \
         per-module directives).",
    ),
    (
        "TIDEGAUGE_ADMIN",
        "Address of the admin API that tidegauge top talks to.",
    ),
    (
        "NO_COLOR",
        "When set to anything but the empty string, no colour is used anywhere. Colours are \
         used only when the output is a terminal.",
    ),
    (
        "${NAME}, ${NAME:-default}",
        "Pipeline files read variables of the environment in their values; passwords and \
         tokens belong there rather than in the file.",
    ),
];

const FILES: [(&str, &str); 3] = [
    (
        "/etc/tidegauge/pipeline.toml",
        "The pipeline the systemd unit tidegauge.service runs (installed by the package as \
         the embedded default; `systemctl reload tidegauge` applies changes).",
    ),
    (
        "/etc/tidegauge/NAME.toml",
        "The pipeline of instance NAME of the template unit tidegauge@.service.",
    ),
    (
        "/var/lib/tidegauge",
        "State directory of the service: change history, logs (logs/), relative paths of \
         the pipeline (checkpoints, output files).",
    ),
];

fn definitions(roff: &mut Roff, heading: &str, items: &[(&str, &str)]) {
    roff.control("SH", [heading]);
    for (term, text) in items {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*text)]);
    }
}

/// The page of `tidegauge` itself: the clap sections, then exit status, environment,
/// files and the pages of the subcommands.
pub fn man_page() -> io::Result<Vec<u8>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone()).date(env!("TIDEGAUGE_BUILD_DATE"));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;

    let mut roff = Roff::new();
    if let Some(examples) = cmd.get_after_help() {
        roff.control("SH", ["EXAMPLES"]);
        for line in examples.to_string().lines().skip(1) {
            roff.control("nf", []);
            roff.text([roman(line.trim_start())]);
            roff.control("fi", []);
        }
    }
    definitions(&mut roff, "EXIT STATUS", &EXIT_STATUS);
    definitions(&mut roff, "ENVIRONMENT", &ENVIRONMENT);
    definitions(&mut roff, "FILES", &FILES);
    roff.control("SH", ["SEE ALSO"]);
    let pages: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| format!("tidegauge-{}(1)", s.get_name()))
        .collect();
    roff.text([roman(pages.join(", "))]);
    roff.control("PP", []);
    roff.text([
        roman("The README and the architecture notes in "),
        italic("/usr/share/doc/tidegauge"),
        roman("."),
    ]);
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Writes `tidegauge.1` and one `tidegauge-COMMAND.1` per subcommand into `dir`.
pub fn man_pages(dir: &Path) -> io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = vec!["tidegauge.1".to_string()];
    std::fs::write(dir.join("tidegauge.1"), man_page()?)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = clap_mangen::Man::new(sub.clone()).date(env!("TIDEGAUGE_BUILD_DATE"));
        let mut page = Vec::new();
        man.render(&mut page)?;
        let mut roff = Roff::new();
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roman("tidegauge(1)")]);
        roff.to_writer(&mut page)?;
        let name = man.get_filename();
        let mut file = std::fs::File::create(dir.join(&name))?;
        file.write_all(&page)?;
        written.push(name);
    }
    Ok(written)
}

//! Behaviour in a shell, as ripgrep's: a closed pipe ends quietly with status 0, colours
//! only on a terminal and never with NO_COLOR, errors on standard error, exit statuses
//! 0/1/2; and the generated extras (`--version`, `completions`, `man`, `init`).

use std::io::Read as _;
use std::os::fd::FromRawFd as _;
use std::process::{Command, ExitStatus, Stdio};

use crate::common::*;

/// A pipeline that prints every event it makes (as fast as it can, to the end).
const PRINTS_EVERYTHING: &str = "[sources.fleet]\ntype = \"simulate\"\nsensors = 5\nevents = 200000\nrealtime = false\n\n[sinks.console]\ntype = \"stdout\"\ninputs = [\"fleet\"]\n";

/// A pipeline that prints anomalies (there are some: the simulator injects spikes).
const PRINTS_ANOMALIES: &str = "[sources.fleet]\ntype = \"simulate\"\nsensors = 5\nevents = 20000\nrealtime = false\n\n[transforms.spikes]\ntype = \"zscore\"\ninputs = [\"fleet\"]\nwindow = 50\nthreshold = 4.0\n\n[transforms.anomalies]\ntype = \"filter\"\ninputs = [\"spikes\"]\ncondition = \"is_anomaly\"\n\n[sinks.console]\ntype = \"stdout\"\ninputs = [\"anomalies\"]\n";

/// Runs `cmd` with its standard output a pipe whose reader is already closed (every
/// write fails with EPIPE), and with `stderr_too`, standard error the same pipe.
fn with_closed_stdout(mut cmd: Command, stderr_too: bool) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    if stderr_too {
        cmd.stderr(writer.try_clone().unwrap());
    } else {
        cmd.stderr(Stdio::piped());
    }
    cmd.stdin(Stdio::null()).stdout(writer);
    let child = cmd.spawn().unwrap();
    // The command's copies of the pipe's ends are dropped with it.
    drop(cmd);
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_pipe_ends_every_command_quietly_with_status_0() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("print.toml");
    std::fs::write(&pipeline, PRINTS_EVERYTHING).unwrap();
    let default = root().join("examples/default.toml");
    let commands: Vec<Vec<&str>> = vec![
        vec!["components"],
        vec!["components", "--json"],
        vec!["describe", "zscore"],
        vec!["describe", "file", "--json"],
        vec!["schema"],
        vec!["--help"],
        vec!["--version"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["init"],
        vec!["check", default.to_str().unwrap()],
        vec!["run", pipeline.to_str().unwrap()],
    ];
    for args in commands {
        let mut cmd = tidegauge();
        cmd.args(&args);
        let out = with_closed_stdout(cmd, false);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("error:"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

#[test]
fn a_running_pipeline_stops_in_order_when_its_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("print.toml");
    std::fs::write(&pipeline, PRINTS_EVERYTHING).unwrap();
    let mut cmd = tidegauge();
    cmd.arg("run").arg(&pipeline);
    let out = with_closed_stdout(cmd, false);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // It stopped early (the sink wrote nothing), in order: the summary is there.
    assert!(err.contains("finished after"), "{err}");
    let sink = err.lines().find(|l| l.contains("console")).unwrap();
    let columns: Vec<&str> = sink.split_whitespace().collect();
    assert!(
        ["0", "-"].contains(&columns[4]),
        "the sink delivered nothing: {sink}"
    );
    assert_eq!(columns[5], "0", "no error is counted: {sink}");

    // Standard error closed as well (`2>&1 | head`): still no panic, status 0.
    let mut cmd = tidegauge();
    cmd.arg("run").arg(&pipeline);
    let out = with_closed_stdout(cmd, true);
    assert_eq!(out.status.code(), Some(0));
}

/// Runs `cmd` with standard output and error on a new pseudo-terminal; returns the
/// status and everything written to the terminal.
fn on_terminal(mut cmd: Command) -> (ExitStatus, String) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the integers it is given; the name,
    // termios and window size pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
    let (mut master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    cmd.stdin(Stdio::null())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    // Read while it runs (a terminal holds little); EIO means every writer is gone.
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let status = child.wait().unwrap();
    (status, reader.join().unwrap())
}

/// Whether `text` holds an SGR (colour or text attribute) escape sequence.
fn has_sgr(text: &str) -> bool {
    text.split("\x1b[").skip(1).any(|rest| {
        let params: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ';')
            .collect();
        rest[params.len()..].starts_with('m')
    })
}

#[test]
fn colours_on_a_terminal_only_and_never_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("anomalies.toml");
    std::fs::write(&pipeline, PRINTS_ANOMALIES).unwrap();
    let command = |no_color: Option<&str>| {
        let mut c = tidegauge();
        // Info logs on standard error too, so that the log lines are checked as well.
        c.arg("--log").arg("info").arg("run").arg(&pipeline);
        match no_color {
            Some(v) => c.env("NO_COLOR", v),
            None => c.env_remove("NO_COLOR"),
        };
        c
    };

    // On a terminal: the anomaly marker and the log levels are coloured.
    let (status, text) = on_terminal(command(None));
    assert!(status.success(), "{text}");
    assert!(text.contains("\x1b[1;31mANOMALY\x1b[0m"), "{text}");
    assert!(text.contains("pipeline started"), "{text}");

    // NO_COLOR: the same output without any colour.
    let (status, text) = on_terminal(command(Some("1")));
    assert!(status.success(), "{text}");
    assert!(text.contains("ANOMALY"), "{text}");
    assert!(text.contains("pipeline started"), "{text}");
    assert!(!has_sgr(&text), "{text:?}");

    // An empty NO_COLOR does not count (no-color.org).
    let (_, text) = on_terminal(command(Some("")));
    assert!(text.contains("\x1b[1;31mANOMALY"), "{text}");

    // Not a terminal: no colour either.
    let out = command(None).output().unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains("ANOMALY"));
    assert!(!has_sgr(&stdout(&out)) && !has_sgr(&stderr(&out)));

    // Help follows the same rule.
    let help = |no_color: Option<&str>| {
        let mut c = tidegauge();
        c.arg("--help");
        match no_color {
            Some(v) => c.env("NO_COLOR", v),
            None => c.env_remove("NO_COLOR"),
        };
        on_terminal(c).1
    };
    assert!(has_sgr(&help(None)));
    assert!(!has_sgr(&help(Some("1"))));
}

#[test]
fn exit_status_is_0_ok_1_failed_run_2_usage_or_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("missing.toml");
    let invalid = d.join("invalid.toml");
    std::fs::write(&invalid, "[sources.s]\ntype = \"simulate\"\nsensors = 0\n").unwrap();
    // Valid, but its sink cannot be opened: the run fails while building.
    let unbuildable = d.join("unbuildable.toml");
    std::fs::write(
        &unbuildable,
        "[sources.s]\ntype = \"simulate\"\nevents = 10\nrealtime = false\n\n[sinks.out]\ntype = \"jsonl\"\ninputs = [\"s\"]\npath = \"/dev/null/not-a-directory/out.jsonl\"\n",
    )
    .unwrap();
    let existing = d.join("existing.toml");
    std::fs::write(&existing, "").unwrap();
    let csv = d.join("in.csv");
    std::fs::write(&csv, "ts,value\n1,1.0\n").unwrap();

    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (vec!["components".into()], 0, ""),
        (vec!["no-such-command".into()], 2, "unrecognized subcommand"),
        (
            vec!["run".into(), "--no-such-flag".into()],
            2,
            "unexpected argument",
        ),
        (
            vec!["check".into(), missing.display().to_string()],
            2,
            "cannot read pipeline file",
        ),
        (
            vec!["run".into(), missing.display().to_string()],
            2,
            "cannot read pipeline file",
        ),
        (
            vec!["check".into(), invalid.display().to_string()],
            2,
            "sources.s.sensors",
        ),
        (
            vec!["run".into(), invalid.display().to_string()],
            2,
            "nothing was run",
        ),
        (vec!["describe".into(), "nothing".into()], 2, "no component"),
        (
            vec![
                "score".into(),
                "--detector".into(),
                "nothing".into(),
                "--out".into(),
                d.join("pred").display().to_string(),
                csv.display().to_string(),
            ],
            2,
            "no detector called `nothing`",
        ),
        (
            vec!["init".into(), "-o".into(), existing.display().to_string()],
            2,
            "--force",
        ),
        (
            vec!["init".into(), "--source".into(), "nothing".into()],
            2,
            "invalid value",
        ),
        (
            vec!["run".into(), unbuildable.display().to_string()],
            1,
            "not-a-directory",
        ),
    ];
    for (args, code, says) in cases {
        let out = tidegauge()
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: `{says}` not in: {err}");
        if code != 0 {
            // Errors go to standard error, nothing to standard output.
            assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
        }
    }
}

#[test]
fn version_names_the_commit_and_the_features() {
    let short = stdout(&run(&["-V"]));
    assert!(short.starts_with("tidegauge "), "{short}");
    let long = stdout(&run(&["--version"]));
    let line = |name: &str| {
        long.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no `{name}` in {long}"))
            .to_string()
    };
    let commit = line("commit: ");
    // Built from this repository, the commit is known: 40 hex digits and a date.
    if std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let hash = commit.split_whitespace().next().unwrap();
        assert_eq!(hash.len(), 40, "{commit}");
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{commit}");
        assert!(short.contains(&hash[..12]), "{short}");
    }
    let features = line("features: ");
    for (name, on) in [
        ("mqtt", cfg!(feature = "mqtt")),
        ("kafka", cfg!(feature = "kafka")),
        ("nats", cfg!(feature = "nats")),
        ("postgres", cfg!(feature = "postgres")),
        ("parquet", cfg!(feature = "parquet")),
        ("http", cfg!(feature = "http")),
    ] {
        let shown = format!("{}{name}", if on { '+' } else { '-' });
        assert!(
            features.split_whitespace().any(|f| f == shown),
            "{shown} not in {features}"
        );
    }
}

#[test]
fn completions_cover_every_command_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _tidegauge"),
        ("zsh", "#compdef tidegauge"),
        ("fish", "complete -c tidegauge"),
        ("elvish", "edit:completion:arg-completer[tidegauge]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(marker), "{shell}: no `{marker}`");
        for command in ["run", "check", "init", "completions", "man", "score"] {
            assert!(text.contains(command), "{shell}: no `{command}`");
        }
    }
    // The bash script is valid bash.
    let out = run(&["completions", "bash"]);
    let check = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    if let Ok(mut child) = check {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
        let result = child.wait_with_output().unwrap();
        assert!(result.status.success(), "{}", stderr(&result));
    }
}

#[test]
fn man_pages_document_commands_exit_status_and_files() {
    let out = run(&["man"]);
    assert!(out.status.success());
    let page = stdout(&out);
    assert!(page.contains("\n.TH tidegauge 1 "), "{}", &page[..200]);
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "SUBCOMMANDS",
        "EXAMPLES",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "SEE ALSO",
    ] {
        assert!(
            page.contains(&format!(".SH {section}\n"))
                || page.contains(&format!(".SH \"{section}\"\n")),
            "no section {section}"
        );
    }
    assert!(page.contains("NO_COLOR") && page.contains("/etc/tidegauge/pipeline.toml"));

    let dir = tempfile::tempdir().unwrap();
    let out = tidegauge()
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for name in [
        "tidegauge.1",
        "tidegauge-run.1",
        "tidegauge-init.1",
        "tidegauge-check.1",
    ] {
        assert!(pages.iter().any(|p| p == name), "{name} not in {pages:?}");
    }
    let run_page = std::fs::read_to_string(dir.path().join("tidegauge-run.1")).unwrap();
    assert!(run_page.contains("no\\-watch"), "{run_page}");
}

#[test]
fn init_writes_a_pipeline_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for (source, detector, sink) in [
        ("simulate", "zscore", "stdout"),
        ("file", "mad", "jsonl"),
        ("http_poll", "ensemble", "http"),
        ("stdin", "seasonal", "parquet"),
    ] {
        let path = dir.path().join(format!("{source}-{detector}-{sink}.toml"));
        let out = tidegauge()
            .args([
                "init",
                "--source",
                source,
                "--detector",
                detector,
                "--sink",
                sink,
                "-o",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let check = tidegauge().arg("check").arg(&path).output().unwrap();
        assert!(check.status.success(), "{}", stderr(&check));
        assert!(stdout(&check).contains(": ok (1 sources, 2 transforms, 1 sinks)"));
        // Again: refused without --force, written with it.
        let again = |force: bool| {
            let mut c = tidegauge();
            c.args(["init", "--source", source, "-o"]).arg(&path);
            if force {
                c.arg("--force");
            }
            c.output().unwrap().status.code()
        };
        assert_eq!(again(false), Some(2));
        assert_eq!(again(true), Some(0));
    }
    // --all-events leaves the anomaly filter out.
    let text = stdout(&run(&["init", "--all-events"]));
    assert!(text.contains("[sources.input]") && !text.contains("[transforms.anomalies]"));
}

#[test]
fn services_start_piped_to_tail_ends_when_the_script_does() {
    // The servers started must not hold the pipe: `tail` sees its end when the script
    // exits, not when the servers do. Run in a directory of its own, stopped after.
    let dir = tempfile::tempdir().unwrap();
    let script = root().join("scripts/services");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' start mqtt nats 2>&1 | tail -n 5",
            script.display()
        ))
        .env("TIDEGAUGE_SERVICES_DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ended = None;
    wait_until("`scripts/services start | tail` to end", || {
        ended = child.try_wait().unwrap();
        ended.is_some()
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let stop = Command::new(&script)
        .args(["stop", "mqtt", "nats"])
        .env("TIDEGAUGE_SERVICES_DIR", dir.path())
        .status()
        .unwrap();
    assert!(ended.unwrap().success(), "{out}");
    assert!(out.contains("services: nats on 127.0.0.1:"), "{out}");
    assert!(stop.success());
}

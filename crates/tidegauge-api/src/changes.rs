//! The history of parameter changes: an append-only JSON Lines file, one change a line,
//! synced before the change is acknowledged, so it outlives the process.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tidegauge_core::live::ParamChange;

/// File name of the history inside the state directory.
pub const FILE_NAME: &str = "changes.jsonl";

/// One recorded change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// When, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Component id.
    pub component: String,
    /// Parameter name.
    pub parameter: String,
    /// Value before.
    pub old: serde_json::Value,
    /// Value after.
    pub new: serde_json::Value,
    /// Who: the name the caller gave (`X-Tidegauge-Actor`), or `reload` for a change
    /// made by reloading the pipeline file.
    pub actor: String,
}

impl ChangeRecord {
    /// A record of `change` made now by `actor`.
    pub fn now(change: ParamChange, actor: &str) -> Self {
        ChangeRecord {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            component: change.component,
            parameter: change.parameter,
            old: change.old,
            new: change.new,
            actor: actor.to_string(),
        }
    }
}

/// Appends to and reads the history file.
pub struct ChangeLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl ChangeLog {
    /// Opens (creating) the history in `dir`.
    pub fn open(dir: &Path) -> io::Result<ChangeLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        // A torn last line (a crash mid-write) is closed, so the next record starts clean.
        if ends_torn(&mut file)? {
            file.write_all(b"\n")?;
        }
        Ok(ChangeLog {
            path,
            file: Mutex::new(file),
        })
    }

    /// Where the history is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` and syncs the file.
    pub fn append(&self, records: &[ChangeRecord]) -> io::Result<()> {
        let mut text = Vec::new();
        for r in records {
            serde_json::to_writer(&mut text, r).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        // One write per call under the lock: lines of concurrent callers never interleave.
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        (&*file).write_all(&text)?;
        file.sync_data()
    }

    /// Every recorded change, oldest first.
    pub fn read(&self) -> io::Result<Vec<ChangeRecord>> {
        read(&self.path)
    }
}

fn ends_torn(file: &mut File) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Every change recorded in the history file at `path`, oldest first. A line that is not
/// a record (a torn last line after a crash) is skipped with a warning.
pub fn read(path: &Path) -> io::Result<Vec<ChangeRecord>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("{}:{}: not a change record: {e}", path.display(), n + 1),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(new: f64) -> ParamChange {
        ParamChange {
            component: "spikes".into(),
            parameter: "threshold".into(),
            old: 4.0.into(),
            new: new.into(),
        }
    }

    #[test]
    fn records_survive_reopening_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = ChangeLog::open(dir.path()).unwrap();
        log.append(&[ChangeRecord::now(change(5.0), "alice")])
            .unwrap();
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap()
            .write_all(b"{\"time\":\"2026")
            .unwrap();
        let log = ChangeLog::open(dir.path()).unwrap();
        log.append(&[ChangeRecord::now(change(6.0), "bob")])
            .unwrap();
        let all = log.read().unwrap();
        let actors: Vec<&str> = all.iter().map(|r| r.actor.as_str()).collect();
        assert_eq!(actors, ["alice", "bob"]);
        assert_eq!(all[1].old, serde_json::json!(4.0));
        assert_eq!(all[1].new, serde_json::json!(6.0));
    }
}

//! The file sink: JSON lines, one file at a time, rotated by size and by age, old files pruned.
//!
//! The live file is the configured path (`decisions.jsonl`). It is rotated, by renaming it to
//! `decisions.jsonl.<UTC time of rotation>` (`decisions.jsonl.20270115T080000.123Z`, with a
//! `-N` suffix should two rotations share a millisecond), before a record that would take it
//! past `--decision-log-max-size`, and before any record once its first record is
//! `--decision-log-max-age` old. After each rotation (and at start) rotated files beyond
//! `--decision-log-keep`, or rotated longer ago than `--decision-log-retention`, are deleted.
//! Every time is the server's clock, so tests drive rotation with a manual clock; the time in
//! a rotated file's name is when it was closed, which is all pruning and reading back need.

use super::super::record::{parse_rfc3339_ms, rfc3339_ms, Line};
use super::super::settings::Rotation;
use super::Formatted;
use spillway_core::time::{Clock, Micros};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Length of the time stamp in a rotated file's name.
const STAMP_LEN: usize = "20270115T080000.123Z".len();

/// An open, rotating log file.
pub struct FileSink {
    path: PathBuf,
    rotation: Rotation,
    clock: Arc<dyn Clock>,
    file: Option<BufWriter<File>>,
    size: u64,
    /// When the live file's first record was written; `None` while it is empty.
    started: Option<Micros>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl FileSink {
    /// Opens (or creates, with its directory) the live file at `path` and prunes old files.
    pub fn open(path: PathBuf, rotation: Rotation, clock: Arc<dyn Clock>) -> Result<Self, String> {
        if path.file_name().is_none() {
            return Err(format!(
                "{}: the decision log needs a file name",
                path.display()
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!(
                    "{}: cannot create the decision log's directory: {e}",
                    dir.display()
                )
            })?;
        }
        let mut sink = Self {
            path,
            rotation,
            clock,
            file: None,
            size: 0,
            started: None,
        };
        sink.reopen()?;
        sink.prune(sink.clock.now());
        Ok(sink)
    }

    fn reopen(&mut self) -> Result<(), String> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("{}: cannot open the decision log: {e}", self.path.display()))?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.started = if self.size > 0 {
            first_time(&self.path).or(Some(self.clock.now()))
        } else {
            None
        };
        self.file = Some(BufWriter::new(file));
        Ok(())
    }

    /// Appends a batch, rotating before any record that would overstep a limit.
    pub fn write(&mut self, batch: &[Formatted]) -> Result<(), String> {
        let now = self.clock.now();
        if self.file.is_none() {
            self.reopen()?;
        }
        let max_age = u64::try_from(self.rotation.max_age.as_micros()).unwrap_or(u64::MAX);
        for record in batch {
            let len = record.json.len() as u64 + 1;
            let full = self.size + len > self.rotation.max_size;
            let old = self
                .started
                .is_some_and(|t| now.saturating_sub(t) >= max_age);
            if self.size > 0 && (full || old) {
                self.rotate(now)?;
            }
            let result = match self.file.as_mut() {
                Some(file) => file
                    .write_all(record.json.as_bytes())
                    .and_then(|()| file.write_all(b"\n")),
                None => Ok(()),
            };
            if let Err(e) = result {
                self.file = None;
                return Err(format!("{}: {e}", self.path.display()));
            }
            self.size += len;
            self.started.get_or_insert(now);
        }
        if let Some(Err(e)) = self.file.as_mut().map(Write::flush) {
            self.file = None;
            return Err(format!("{}: {e}", self.path.display()));
        }
        Ok(())
    }

    /// Flushes the buffer.
    pub fn flush(&mut self) {
        if let Some(file) = self.file.as_mut() {
            let _ = file.flush();
        }
    }

    fn rotate(&mut self, now: Micros) -> Result<(), String> {
        if let Some(mut file) = self.file.take() {
            file.flush()
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
        }
        let base = format!("{}.{}", file_name(&self.path), stamp(now));
        let mut target = self.path.with_file_name(&base);
        let mut n = 0;
        while target.exists() {
            n += 1;
            target = self.path.with_file_name(format!("{base}-{n}"));
        }
        std::fs::rename(&self.path, &target).map_err(|e| {
            format!(
                "{}: cannot rotate to {}: {e}",
                self.path.display(),
                target.display()
            )
        })?;
        self.reopen()?;
        self.prune(now);
        Ok(())
    }

    /// Deletes rotated files past the count or the age the settings allow.
    fn prune(&self, now: Micros) {
        let retention = u64::try_from(self.rotation.retention.as_micros()).unwrap_or(u64::MAX);
        let mut files = rotated(&self.path);
        files.reverse(); // newest first
        for (i, (path, at)) in files.iter().enumerate() {
            if i >= self.rotation.keep || now.saturating_sub(*at) > retention {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!("decision log: cannot delete {}: {e}", path.display());
                }
            }
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `now` as it appears in a rotated file's name.
fn stamp(now: Micros) -> String {
    rfc3339_ms(now).replace(['-', ':'], "")
}

/// The time a rotated file's name carries.
fn parse_stamp(text: &str) -> Option<Micros> {
    let s = text.get(..STAMP_LEN)?;
    let rest = &text[STAMP_LEN..];
    if !(rest.is_empty() || rest.starts_with('-')) {
        return None;
    }
    let full = format!(
        "{}-{}-{}T{}:{}:{}",
        s.get(0..4)?,
        s.get(4..6)?,
        s.get(6..8)?,
        s.get(9..11)?,
        s.get(11..13)?,
        s.get(13..)?
    );
    (s.as_bytes().get(8) == Some(&b'T'))
        .then(|| parse_rfc3339_ms(&full))
        .flatten()
}

/// The rotated files of the live file `path`, with their rotation times, oldest first.
pub fn rotated(path: &Path) -> Vec<(PathBuf, Micros)> {
    let prefix = format!("{}.", file_name(path));
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, Micros)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let at = parse_stamp(name.strip_prefix(&prefix)?)?;
            Some((entry.path(), at))
        })
        .collect();
    files.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    files
}

/// The time of the first record in `path`, if it has a readable one.
fn first_time(path: &Path) -> Option<Micros> {
    let mut line = String::new();
    BufReader::new(File::open(path).ok()?)
        .read_line(&mut line)
        .ok()?;
    let record: Line = serde_json::from_str(&line).ok()?;
    parse_rfc3339_ms(&record.time)
}

#[cfg(test)]
mod tests;

//! The catalog snapshot a node keeps on its own disk, so it can boot with the catalog it
//! last had when the database is down.
//!
//! Format 1 is JSON lines:
//!
//! ```text
//! {"format":1,"version":42}
//! {"key":{"kind":"tenant","tenant":"acme"},"entry":{"kind":"tenant","body":{"tier":"paid"}}}
//! ...
//! {"end":1}
//! ```
//!
//! a header with the catalog version the entries are consistent with, one line per entry,
//! and an end line with the number of entries. A file without its end line, or whose count
//! disagrees, is truncated, and is refused rather than half-loaded. [`save`] writes a
//! temporary file in the same directory, fsyncs it, renames it over the old one and fsyncs
//! the directory, so a crash leaves the old snapshot or the new one, never a mix.
//!
//! Both functions block (plain file I/O): call them from `spawn_blocking` in async code.

use serde::{Deserialize, Serialize};
use spillway_core::catalog::{Entry, EntryKey};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The format [`save`] writes and [`load`] reads.
pub const FORMAT: u64 = 1;

/// What can go wrong reading or writing a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file (or its directory) could not be read or written.
    #[error("catalog snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not a snapshot this build can read: a bad or unknown header, a line that
    /// does not decode, a missing end line.
    #[error("catalog snapshot {path}: line {line}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line where it went wrong.
        line: u64,
        /// What was wrong there.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: u64,
    version: u64,
}

/// One entry's line, as written (also the line format of `spillway catalog export`).
#[derive(Serialize)]
pub struct LineOut<'a> {
    /// Which entry.
    pub key: &'a EntryKey,
    /// Its content.
    pub entry: &'a Entry,
}

/// One entry's line, as read (also the line format of `spillway catalog import`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineIn {
    /// Which entry.
    pub key: EntryKey,
    /// Its content.
    pub entry: Entry,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    end: u64,
}

/// Writes `entries` at catalog `version` to `path`, atomically (see the module docs).
pub fn save<'a, I>(path: &Path, version: u64, entries: I) -> Result<(), SnapshotError>
where
    I: IntoIterator<Item = (&'a EntryKey, &'a Entry)>,
{
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp{}", std::process::id()));
    let temp = dir.join(temp_name);
    let written = write_file(&temp, version, entries).map_err(io);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(io(e));
    }
    // The rename is durable once the directory is.
    File::open(&dir).and_then(|d| d.sync_all()).map_err(io)
}

fn write_file<'a, I>(temp: &Path, version: u64, entries: I) -> std::io::Result<()>
where
    I: IntoIterator<Item = (&'a EntryKey, &'a Entry)>,
{
    // Readable by this user only: it holds every API key's digest, and keys chosen by hand
    // can be guessed offline from one.
    let file = {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(temp)?;
        // A temporary file left by an earlier run keeps its mode through `open`.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file
    };
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let json = |e: serde_json::Error| std::io::Error::other(e);
    serde_json::to_writer(
        &mut out,
        &Header {
            format: FORMAT,
            version,
        },
    )
    .map_err(json)?;
    out.write_all(b"\n")?;
    let mut count = 0u64;
    for (key, entry) in entries {
        serde_json::to_writer(&mut out, &LineOut { key, entry }).map_err(json)?;
        out.write_all(b"\n")?;
        count += 1;
    }
    serde_json::to_writer(&mut out, &End { end: count }).map_err(json)?;
    out.write_all(b"\n")?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Reads a snapshot: the catalog version and every entry. Refuses a truncated or corrupt file
/// with the line where it went wrong.
pub fn load(path: &Path) -> Result<(u64, Vec<(EntryKey, Entry)>), SnapshotError> {
    let corrupt = |line: u64, reason: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let mut line = String::new();
    let mut number = 0u64;
    let mut next_line = |line: &mut String| -> Result<bool, SnapshotError> {
        line.clear();
        number += 1;
        let n = reader.read_line(line).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => corrupt(number, "not UTF-8 text".into()),
            _ => io(e),
        })?;
        if n > 0 && !line.ends_with('\n') {
            return Err(corrupt(
                number,
                "the file ends in the middle of a line (truncated)".into(),
            ));
        }
        Ok(n > 0)
    };
    if !next_line(&mut line)? {
        return Err(corrupt(1, "the file is empty".into()));
    }
    let header: Header = serde_json::from_str(&line).map_err(|e| {
        corrupt(
            1,
            format!("not a catalog snapshot header ({{\"format\":{FORMAT},\"version\":N}}): {e}"),
        )
    })?;
    if header.format != FORMAT {
        return Err(corrupt(
            1,
            format!(
                "snapshot format {} is not the {FORMAT} this build reads",
                header.format
            ),
        ));
    }
    let mut entries = Vec::new();
    let mut at = 1u64;
    loop {
        if !next_line(&mut line)? {
            return Err(corrupt(
                at + 1,
                format!("no end line after {} entries (truncated)", entries.len()),
            ));
        }
        at += 1;
        if line.starts_with("{\"end\"") {
            let end: End = serde_json::from_str(&line)
                .map_err(|e| corrupt(at, format!("bad end line: {e}")))?;
            if end.end != entries.len() as u64 {
                return Err(corrupt(
                    at,
                    format!(
                        "the end line counts {} entries but {} were read",
                        end.end,
                        entries.len()
                    ),
                ));
            }
            break;
        }
        let entry: LineIn =
            serde_json::from_str(&line).map_err(|e| corrupt(at, format!("bad entry: {e}")))?;
        if entry.key.kind() != entry.entry.kind() {
            return Err(corrupt(
                at,
                format!(
                    "{} holds a {} entry",
                    entry.key,
                    entry.entry.kind().as_str()
                ),
            ));
        }
        entries.push((entry.key, entry.entry));
    }
    if next_line(&mut line)? {
        return Err(corrupt(at + 1, "text after the end line".into()));
    }
    Ok((header.version, entries))
}

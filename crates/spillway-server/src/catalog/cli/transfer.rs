//! `import` and `export`: the catalog as JSON lines, one entry a line,
//!
//! ```text
//! {"key":{"kind":"tenant","tenant":"acme"},"entry":{"kind":"tenant","body":{"tier":"paid"}}}
//! {"key":{"kind":"user","tenant":"acme","user":"u1"},"entry":{"kind":"user","body":{"tier":"free"}}}
//! {"key":{"kind":"api_key","digest":"<64 hex>"},"entry":{"kind":"api_key","body":{"tenant":"acme"}}}
//! ```
//!
//! the lines of a node's snapshot file (whose header and end lines `import` skips), so an
//! export, a snapshot, or a file written by hand all import the same way. Empty lines and
//! lines starting with `#` are skipped too.

use super::{Context, Failure, ImportArgs};
use crate::config::PolicySource;
use serde_json::{json, Value};
use spillway_catalog::snapshot::{LineIn, LineOut};
use spillway_core::catalog::{Catalog, Entry, EntryKey, FieldIssue};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};

/// Entries to import, each with its line number in the file (`None`: from a policy).
type Numbered = Vec<(Option<usize>, (EntryKey, Entry))>;

/// `spillway catalog export`.
pub async fn export(ctx: &Context) -> Result<(), Failure> {
    let (version, mut entries) = ctx.db.load().await.map_err(|e| ctx.db_failure(e))?;
    // A backup missing rows must not look like a good one: nothing is printed.
    let unreadable = ctx.db.unreadable();
    if unreadable > 0 {
        return Err(Failure::Database(format!(
            "{unreadable} stored rows could not be read (each named above): an export without \
             them would be incomplete, so nothing was exported; fix or delete them first"
        )));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (key, entry) in &entries {
        let line = serde_json::to_string(&LineOut { key, entry }).unwrap_or_default();
        writeln!(out, "{line}")
            .map_err(|e| Failure::Usage(format!("cannot write the export: {e}")))?;
    }
    out.flush()
        .map_err(|e| Failure::Usage(format!("cannot write the export: {e}")))?;
    eprintln!(
        "exported {} entries at catalog version {version}",
        entries.len()
    );
    Ok(())
}

/// `spillway catalog import`.
pub async fn import(ctx: &Context, args: ImportArgs) -> Result<(), Failure> {
    let (origin, entries) = match (&args.from_policy, &args.file) {
        (Some(path), _) => {
            let policy = super::load_policy(&PolicySource::File(path.clone()))?;
            let mut entries: Vec<_> = policy.catalog().entries().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let origin = path.display().to_string();
            let numbered = entries.into_iter().map(|e| (None, e)).collect();
            (origin, numbered)
        }
        (None, Some(path)) if path.as_os_str() == "-" => {
            let stdin = std::io::stdin();
            ("stdin".to_owned(), read_lines(stdin.lock(), "stdin")?)
        }
        (None, Some(path)) => {
            let file = std::fs::File::open(path)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
            let origin = path.display().to_string();
            let entries = read_lines(std::io::BufReader::new(file), &origin)?;
            (origin, entries)
        }
        (None, None) => {
            return Err(Failure::Usage(
                "import what? give a FILE or --from-policy".into(),
            ))
        }
    };
    check_all(ctx, &origin, &entries).await?;
    let count = entries.len();
    if args.dry_run {
        ctx.print(&json!({ "checked": count, "written": 0 }), || {
            format!("{count} entries from {origin} are valid; nothing written (--dry-run)")
        });
        return Ok(());
    }
    if count == 0 {
        ctx.print(&json!({ "imported": 0, "version": Value::Null }), || {
            format!("{origin} holds no entries; nothing written")
        });
        return Ok(());
    }
    let entries: Vec<_> = entries.into_iter().map(|(_, e)| e).collect();
    let version = ctx
        .db
        .put_many(entries)
        .await
        .map_err(|e| ctx.db_failure(e))?;
    ctx.print(&json!({ "imported": count, "version": version }), || {
        format!("imported {count} entries from {origin}: catalog version {version}")
    });
    Ok(())
}

/// The entries of a JSON-lines file, each with its line number. A snapshot (a node's
/// `--catalog-snapshot`, or a file framed like one) must be whole: its header first, its end
/// line last, counting the entries between; a file cut short is refused, as a node refuses
/// it, rather than imported in part.
fn read_lines(reader: impl BufRead, origin: &str) -> Result<Numbered, Failure> {
    let mut out = Vec::new();
    // The snapshot header's line, and the end line's (with its count), once seen.
    let (mut header, mut end): (Option<usize>, Option<(usize, u64)>) = (None, None);
    let bad = |number: usize, what: String| Failure::Usage(format!("{origin}:{number}: {what}"));
    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| bad(number, e.to_string()))?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if let Some((at, _)) = end {
            return Err(bad(
                number,
                format!("a line after the snapshot's end line (line {at})"),
            ));
        }
        match serde_json::from_str::<LineIn>(text) {
            Ok(LineIn { key, entry }) => out.push((Some(number), (key, entry))),
            Err(err) => match snapshot_frame(text) {
                Some(Frame::Header) if header.is_none() && out.is_empty() => header = Some(number),
                Some(Frame::Header) => {
                    return Err(bad(
                        number,
                        "a snapshot header that is not the file's first line".into(),
                    ))
                }
                Some(Frame::End(_)) if header.is_none() => {
                    return Err(bad(number, "a snapshot end line without its header".into()))
                }
                Some(Frame::End(count)) if count != out.len() as u64 => {
                    return Err(bad(
                        number,
                        format!(
                            "the snapshot's end line counts {count} entries but {} came before \
                             it: the file is not whole; nothing imported",
                            out.len()
                        ),
                    ))
                }
                Some(Frame::End(count)) => end = Some((number, count)),
                None => {
                    return Err(bad(
                        number,
                        format!(
                            "not an entry ({err}); each line must be \
                             {{\"key\":{{...}},\"entry\":{{...}}}}, as `spillway catalog export` \
                             prints"
                        ),
                    ))
                }
            },
        }
    }
    if let (Some(at), None) = (header, end) {
        return Err(Failure::Usage(format!(
            "{origin}: a snapshot (header on line {at}) without its end line after {} entries: \
             the file is cut short; nothing imported",
            out.len()
        )));
    }
    Ok(out)
}

/// A snapshot's framing line.
enum Frame {
    /// `{"format":1,"version":n}`.
    Header,
    /// `{"end":n}`: the number of entries.
    End(u64),
}

fn snapshot_frame(text: &str) -> Option<Frame> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    let keys: BTreeSet<&str> = map.keys().map(String::as_str).collect();
    if keys == BTreeSet::from(["format", "version"]) {
        return Some(Frame::Header);
    }
    match (
        keys == BTreeSet::from(["end"]),
        map.get("end").and_then(Value::as_u64),
    ) {
        (true, Some(count)) => Some(Frame::End(count)),
        _ => None,
    }
}

/// Checks every entry as the admin API would check it written alone, with the tenants
/// being imported (else those in the database) deciding what their users' overrides may
/// name. Reports every problem, by line, and writes nothing if there is one.
async fn check_all(ctx: &Context, origin: &str, entries: &Numbered) -> Result<(), Failure> {
    // The tenants the users refer to: the file's own (last one wins), else the database's.
    let mut tenants: BTreeMap<String, Option<Entry>> = BTreeMap::new();
    for (_, (key, entry)) in entries {
        if let EntryKey::Tenant { tenant } = key {
            tenants.insert(tenant.clone(), Some(entry.clone()));
        }
    }
    for (_, (key, _)) in entries {
        if let EntryKey::User { tenant, .. } = key {
            if !tenants.contains_key(tenant) {
                let tenant_key = EntryKey::Tenant {
                    tenant: tenant.clone(),
                };
                let found = ctx
                    .db
                    .get(&tenant_key)
                    .await
                    .map_err(|e| ctx.db_failure(e))?;
                tenants.insert(tenant.clone(), found.map(|(entry, _)| entry));
            }
        }
    }
    let known = tenants
        .into_iter()
        .filter_map(|(tenant, entry)| entry.map(|entry| (EntryKey::Tenant { tenant }, entry)));
    let (catalog, _) = Catalog::build(&ctx.policy, 0, known);
    let mut issues: Vec<FieldIssue> = Vec::new();
    for (line, (key, entry)) in entries {
        if let Err(found) = catalog.check(&ctx.policy, key, entry) {
            let at = match line {
                Some(n) => format!("{origin}:{n}: {key}"),
                None => format!("{origin}: {key}"),
            };
            issues.extend(found.into_iter().map(|i| FieldIssue {
                field: i.field,
                message: format!("{} ({at})", i.message),
            }));
        }
    }
    if issues.is_empty() {
        return Ok(());
    }
    Err(ctx.refused(&format!("the import from {origin}"), issues))
}

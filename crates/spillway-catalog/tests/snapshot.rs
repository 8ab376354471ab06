//! The local snapshot file: round trips, atomic replacement, and refusing truncated or
//! corrupt files with a message that says where.

mod common;

use common::*;
use spillway_catalog::snapshot::{self, SnapshotError};
use spillway_core::catalog::{Entry, EntryKey, OverrideRecord, TenantRecord};
use std::collections::BTreeMap;

fn sample() -> Vec<(EntryKey, Entry)> {
    vec![
        (
            tenant("acme"),
            Entry::Tenant(TenantRecord {
                tier: Some("paid".into()),
                overrides: BTreeMap::from([(
                    "daily".to_string(),
                    OverrideRecord {
                        limit: Some(5000),
                        window: Some("1d".into()),
                        ..Default::default()
                    },
                )]),
                home_region: Some("us-east".into()),
            }),
        ),
        (user("acme", "bob \"quoted\"\nnewline"), a_user("gold")),
        (api_key(0xab), key_of("acme")),
        (tenant("ünïcødé"), on_tier("free")),
    ]
}

fn save(path: &std::path::Path, version: u64, entries: &[(EntryKey, Entry)]) {
    snapshot::save(path, version, entries.iter().map(|(k, e)| (k, e))).expect("save");
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.snapshot");
    save(&path, 42, &sample());
    assert_eq!(snapshot::load(&path).unwrap(), (42, sample()));
    // Replacing it leaves no temporary file behind.
    save(&path, 43, &sample()[..1]);
    assert_eq!(snapshot::load(&path).unwrap(), (43, sample()[..1].to_vec()));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["catalog.snapshot"]);
    // An empty catalog is a valid snapshot too.
    save(&path, 0, &[]);
    assert_eq!(snapshot::load(&path).unwrap(), (0, vec![]));
}

/// The snapshot holds every API key's digest: only its owner may read it, whatever the umask,
/// even over a temporary file an earlier run left readable.
#[test]
fn only_its_owner_reads_the_snapshot() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.snapshot");
    save(&path, 1, &sample());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    // A temporary file an earlier run of this process id left behind, world-readable.
    let left = dir
        .path()
        .join(format!(".catalog.snapshot.tmp{}", std::process::id()));
    std::fs::write(&left, "left over").unwrap();
    std::fs::set_permissions(&left, std::fs::Permissions::from_mode(0o644)).unwrap();
    save(&path, 2, &sample());
    assert!(!left.exists(), "the left-over file was the one written");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(snapshot::load(&path).unwrap(), (2, sample()));
}

fn corrupt_reason(path: &std::path::Path) -> (u64, String) {
    match snapshot::load(path) {
        Err(SnapshotError::Corrupt { line, reason, .. }) => (line, reason),
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    save(&path, 7, &sample());
    let full = std::fs::read(&path).unwrap();
    // Every cut short of the whole file is refused, never half-loaded or a panic.
    for cut in 0..full.len() {
        std::fs::write(&path, &full[..cut]).unwrap();
        let err = snapshot::load(&path).expect_err("a truncated snapshot");
        assert!(
            matches!(err, SnapshotError::Corrupt { .. }),
            "cut at {cut}: {err}"
        );
    }
    // Cut at a line boundary: the end line is missing.
    let text = String::from_utf8(full).unwrap();
    let without_end: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, without_end).unwrap();
    let (line, reason) = corrupt_reason(&path);
    assert_eq!(line, 4);
    assert!(reason.contains("no end line after 2 entries"), "{reason}");
}

#[test]
fn corrupt_files_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let cases: &[(&str, u64, &str)] = &[
        ("", 1, "empty"),
        ("hello\n", 1, "not a catalog snapshot header"),
        ("{\"format\":2,\"version\":1}\n{\"end\":0}\n", 1, "format 2"),
        ("{\"format\":1,\"version\":1}\n{\"key\":1}\n{\"end\":1}\n", 2, "bad entry"),
        (
            "{\"format\":1,\"version\":1}\n{\"key\":{\"kind\":\"tenant\",\"tenant\":\"a\"},\"entry\":{\"kind\":\"user\",\"body\":{}}}\n{\"end\":1}\n",
            2,
            "tenant a holds a user entry",
        ),
        ("{\"format\":1,\"version\":1}\n{\"end\":3}\n", 2, "counts 3 entries but 0"),
        ("{\"format\":1,\"version\":1}\n{\"end\":0}\nmore\n", 3, "after the end line"),
    ];
    for (text, want_line, want) in cases {
        std::fs::write(&path, text).unwrap();
        let (line, reason) = corrupt_reason(&path);
        assert!(reason.contains(want), "{text:?}: {reason}");
        assert_eq!(line, *want_line, "{text:?}: {reason}");
    }
    let missing = dir.path().join("missing");
    let err = snapshot::load(&missing).unwrap_err();
    assert!(matches!(err, SnapshotError::Io { .. }));
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn a_large_snapshot_round_trips() {
    // Only checks that size works; `examples/catalog_load.rs` times a million entries.
    let entries: Vec<(EntryKey, Entry)> = (0..200_000)
        .map(|i| (tenant(&format!("tenant-{i:07}")), on_tier("free")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    save(&path, 200_000, &entries);
    let (version, loaded) = snapshot::load(&path).unwrap();
    assert_eq!(version, 200_000);
    assert_eq!(loaded.len(), entries.len());
    assert_eq!(loaded[123_456], entries[123_456]);
}

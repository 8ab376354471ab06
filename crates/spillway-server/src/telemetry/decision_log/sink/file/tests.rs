//! Rotation and retention, driven by a manual clock and by size: no sleeping.

use super::*;
use crate::telemetry::decision_log::query::{read, Filter, Source};
use crate::telemetry::decision_log::record::Kind;
use spillway_core::time::ManualClock;
use std::time::Duration;

const START: Micros = 1_800_000_000_000_000;

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "spillway-decision-log-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rotation(max_size: u64, keep: usize) -> Rotation {
    Rotation {
        max_size,
        max_age: Duration::from_secs(3_600),
        keep,
        retention: Duration::from_secs(86_400),
    }
}

/// A record of `tenant` at the clock's time, padded to about 100 bytes.
fn record(clock: &ManualClock, tenant: &str) -> Formatted {
    let json = format!(
        r#"{{"time":"{}","node":"n","outcome":"denied","allowed":false,"tenant":"{tenant}","sample_rate":1.0,"pad":"{}"}}"#,
        rfc3339_ms(clock.now()),
        "x".repeat(20)
    );
    Formatted {
        json,
        tenant: Some(tenant.to_owned()),
        outcome: Kind::Denied,
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[test]
fn files_rotate_by_size_and_only_the_newest_are_kept() {
    let scratch = Scratch::new("size");
    let path = scratch.0.join("logs/decisions.jsonl");
    let clock = Arc::new(ManualClock::new(START));
    let mut sink = FileSink::open(path.clone(), rotation(1_024, 3), clock.clone()).expect("open");
    let one = record(&clock, "acme").json.len() as u64 + 1;
    let per_file = 1_024 / one;
    // 20 files' worth, one record per millisecond, one batch per record.
    for _ in 0..per_file * 20 {
        clock.advance(1_000);
        sink.write(&[record(&clock, "acme")]).expect("write");
    }
    let files = rotated(&path);
    assert_eq!(files.len(), 3, "keep 3: {files:?}");
    for (file, _) in &files {
        let size = std::fs::metadata(file).expect("rotated file").len();
        assert!(
            size <= 1_024 && size + one > 1_024,
            "{} is {size} bytes",
            file.display()
        );
        assert_eq!(lines(file) as u64, per_file);
    }
    assert!(std::fs::metadata(&path).expect("live").len() <= 1_024);
    // Rotated names sort by time.
    assert!(files.windows(2).all(|w| w[0].1 < w[1].1));
}

#[test]
fn files_rotate_by_age_and_old_ones_expire() {
    let scratch = Scratch::new("age");
    let path = scratch.0.join("decisions.jsonl");
    let clock = Arc::new(ManualClock::new(START));
    let settings = Rotation {
        max_size: 1 << 30,
        max_age: Duration::from_secs(3_600),
        keep: 100,
        retention: Duration::from_secs(3 * 3_600),
    };
    let mut sink = FileSink::open(path.clone(), settings, clock.clone()).expect("open");
    sink.write(&[record(&clock, "a"), record(&clock, "a")])
        .expect("write");
    clock.advance(3_599_999_999);
    sink.write(&[record(&clock, "a")]).expect("write");
    assert!(rotated(&path).is_empty(), "not an hour old yet");
    clock.advance(1);
    sink.write(&[record(&clock, "b")]).expect("write");
    let files = rotated(&path);
    assert_eq!(files.len(), 1, "an hour old: rotated before the new record");
    assert_eq!(lines(&files[0].0), 3);
    assert_eq!(lines(&path), 1);

    // Four more hours, a rotation each: the ones rotated over 3 hours ago are deleted.
    for _ in 0..4 {
        clock.advance(3_600_000_000);
        sink.write(&[record(&clock, "c")]).expect("write");
    }
    let ages: Vec<u64> = rotated(&path)
        .iter()
        .map(|(_, at)| (clock.now() - at) / 3_600_000_000)
        .collect();
    assert_eq!(
        ages,
        [3, 2, 1, 0],
        "rotated 4h ago is gone; 3h ago and since are kept"
    );

    // A restart keeps the live file's age: its first record decides.
    drop(sink);
    clock.advance(3_600_000_000);
    let mut sink = FileSink::open(path.clone(), settings, clock.clone()).expect("reopen");
    sink.write(&[record(&clock, "d")]).expect("write");
    assert_eq!(
        lines(&path),
        1,
        "the reopened file was an hour old and rotated"
    );
}

#[tokio::test]
async fn records_are_read_back_across_rotated_files() {
    let scratch = Scratch::new("read");
    let path = scratch.0.join("decisions.jsonl");
    let clock = Arc::new(ManualClock::new(START));
    let mut sink = FileSink::open(path.clone(), rotation(1_024, 100), clock.clone()).expect("open");
    for i in 0..40 {
        clock.advance(1_000_000);
        let tenant = if i % 2 == 0 { "acme" } else { "other" };
        sink.write(&[record(&clock, tenant)]).expect("write");
    }
    assert!(rotated(&path).len() >= 3);
    let filter = |since: Micros, limit: usize| Filter {
        since,
        tenant: Some("acme".into()),
        user: None,
        denied: true,
        limit,
    };
    let source = Source::File(path.clone());
    let all = read(&source, &filter(0, 1_000)).await.expect("read");
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|f| f.line.tenant.as_deref() == Some("acme")));
    assert!(
        all.windows(2).all(|w| w[0].line.time < w[1].line.time),
        "oldest first"
    );
    let newest = read(&source, &filter(0, 5)).await.expect("read");
    assert_eq!(newest.len(), 5);
    assert_eq!(newest[4].line.time, all[19].line.time, "the newest five");
    let recent = read(&source, &filter(START + 30_000_000, 1_000))
        .await
        .expect("read");
    assert_eq!(recent.len(), 5, "records at 31s..40s, every other one acme");
}

//! The newest records the log wrote, kept in memory for the dashboard's lookup ("why was this
//! tenant limited?") without reading the sink back, whatever the sink is (stdout included).
//!
//! Filled by the writer thread after it formats a batch, so the request path never touches
//! it. Bounded twice: to [`CAPACITY`] records and to [`MAX_BYTES`] in all. Clients choose
//! most fields (tenant, user, request id, descriptors); the request path already cut its copy
//! of each (see [`super::record::FIELD_BYTES`]), and a record is cut again here to the same
//! bounds (every text to [`FIELD_BYTES`], at most [`DESCRIPTORS`] descriptor entries of
//! [`DESCRIPTOR_PAIRS`] pairs), which costs the writer thread little and keeps the ring's bound
//! from resting on every producer of a [`Line`]. It holds what the log
//! kept: every denial up to the per-second cap, and allowed decisions as sampled.

use super::record::{Line, DESCRIPTORS, DESCRIPTOR_PAIRS, FIELD_BYTES};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};

/// Records kept.
pub const CAPACITY: usize = 2_000;
/// Bytes kept in all (an estimate: texts plus each record's fixed size).
pub const MAX_BYTES: usize = 4 << 20;

/// The ring; see the module docs.
#[derive(Debug, Default)]
pub struct Recent {
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    lines: VecDeque<(Line, usize)>,
    bytes: usize,
}

/// `text` cut to at most [`FIELD_BYTES`], at a character boundary.
fn cut(text: &mut String) {
    let end = crate::telemetry::cut_to(text, FIELD_BYTES).len();
    text.truncate(end);
}

fn cut_opt(text: &mut Option<String>) {
    if let Some(text) = text {
        cut(text);
    }
}

/// Cuts `line` down (module docs) and returns its estimated size.
fn shrink(line: &mut Line) -> usize {
    for text in [&mut line.time, &mut line.node, &mut line.policy_version] {
        cut(text);
    }
    for text in [
        &mut line.request_id,
        &mut line.trace_id,
        &mut line.tenant,
        &mut line.user,
        &mut line.ip,
        &mut line.route,
        &mut line.tier,
        &mut line.domain,
        &mut line.degraded,
    ] {
        cut_opt(text);
    }
    if let Some(limit) = &mut line.limit {
        cut(&mut limit.name);
    }
    for limit in &mut line.limits {
        cut(&mut limit.name);
    }
    line.descriptors.truncate(DESCRIPTORS);
    let mut bytes = std::mem::size_of::<Line>();
    for entry in &mut line.descriptors {
        let kept: BTreeMap<String, String> = std::mem::take(entry)
            .into_iter()
            .take(DESCRIPTOR_PAIRS)
            .map(|(mut k, mut v)| {
                cut(&mut k);
                cut(&mut v);
                (k, v)
            })
            .collect();
        bytes += kept
            .iter()
            .map(|(k, v)| k.len() + v.len() + 64)
            .sum::<usize>();
        *entry = kept;
    }
    let opt = |t: &Option<String>| t.as_ref().map_or(0, String::len);
    bytes
        + line.time.len()
        + line.node.len()
        + line.policy_version.len()
        + opt(&line.request_id)
        + opt(&line.trace_id)
        + opt(&line.tenant)
        + opt(&line.user)
        + opt(&line.ip)
        + opt(&line.route)
        + opt(&line.tier)
        + opt(&line.domain)
        + opt(&line.degraded)
        + line.limit.as_ref().map_or(0, |l| l.name.len())
        + (line.limits.iter())
            .map(|l| l.name.len() + std::mem::size_of::<super::record::LimitLine>())
            .sum::<usize>()
}

impl Recent {
    /// Adds a batch's records, oldest first, each cut down, dropping the oldest held beyond
    /// [`CAPACITY`] records or [`MAX_BYTES`].
    pub fn extend(&self, lines: impl IntoIterator<Item = Line>) {
        let mut held = self.held.lock();
        for mut line in lines {
            let size = shrink(&mut line);
            while held.lines.len() >= CAPACITY || held.bytes + size > MAX_BYTES {
                let Some((_, old)) = held.lines.pop_front() else {
                    break;
                };
                held.bytes -= old;
            }
            held.bytes += size;
            held.lines.push_back((line, size));
        }
    }

    /// Bytes held, as estimated.
    pub fn bytes(&self) -> usize {
        self.held.lock().bytes
    }

    /// The newest `n` records of `tenant` (and of `user`, when given), newest first.
    /// Names longer than [`FIELD_BYTES`] are matched on the part kept.
    pub fn of(&self, tenant: &str, user: Option<&str>, n: usize) -> Vec<Line> {
        let cut_str = |t: &str| {
            let mut t = t.to_owned();
            cut(&mut t);
            t
        };
        let tenant = cut_str(tenant);
        let tenant = tenant.as_str();
        let user = user.map(cut_str);
        let user = user.as_deref();
        self.held
            .lock()
            .lines
            .iter()
            .map(|(line, _)| line)
            .rev()
            .filter(|l| l.tenant.as_deref() == Some(tenant))
            .filter(|l| user.is_none() || l.user.as_deref() == user)
            .take(n)
            .cloned()
            .collect()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.held.lock().lines.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::decision_log::record::Kind;

    fn line(tenant: &str, fat: usize) -> Line {
        let big = "x".repeat(fat);
        Line {
            time: "2026-12-02T12:00:00.000Z".into(),
            node: "n".into(),
            request_id: Some(big.clone()),
            trace_id: None,
            outcome: Kind::Denied,
            allowed: false,
            tenant: Some(format!("{tenant}{big}")),
            user: Some(big.clone()),
            ip: None,
            route: None,
            tier: None,
            domain: None,
            cost: 1,
            limit: None,
            limits: Vec::new(),
            retry_after_ms: None,
            degraded: None,
            policy_version: String::new(),
            catalog_version: None,
            sample_rate: 1.0,
            descriptors: (0..20)
                .map(|i| {
                    let big = "y".repeat(fat.min(1024));
                    (0..20)
                        .map(|j| (format!("k{j}{big}"), format!("v{i}{big}")))
                        .collect()
                })
                .collect(),
        }
    }

    #[test]
    fn fat_records_are_cut_down_and_the_ring_stays_under_its_byte_bound() {
        let recent = Recent::default();
        // Each record as sent holds about 1 MB; kept whole, 300 of them would be 300 MB.
        const SENT: usize = 300;
        for i in 0..SENT {
            recent.extend([line(&format!("t{i}-"), 64 << 10)]);
        }
        assert!(recent.bytes() <= MAX_BYTES, "{}", recent.bytes());
        assert!(!recent.is_empty());
        let newest = recent.of(&format!("t{}-{}", SENT - 1, "x".repeat(64 << 10)), None, 1);
        assert_eq!(newest.len(), 1, "a long tenant is found by its kept part");
        let kept = &newest[0];
        assert!(kept.tenant.as_ref().is_some_and(|t| t.len() <= FIELD_BYTES));
        assert!(kept
            .request_id
            .as_ref()
            .is_some_and(|t| t.len() <= FIELD_BYTES));
        assert_eq!(kept.descriptors.len(), DESCRIPTORS);
        assert!(kept.descriptors.iter().all(|d| d.len() <= DESCRIPTOR_PAIRS
            && d.iter()
                .all(|(k, v)| k.len() <= FIELD_BYTES && v.len() <= FIELD_BYTES)));
        // The oldest went first.
        assert!(recent
            .of(&format!("t0-{}", "x".repeat(64 << 10)), None, 1)
            .is_empty());
    }

    #[test]
    fn small_records_are_evicted_by_count_oldest_first() {
        let recent = Recent::default();
        for i in 0..CAPACITY + 5 {
            let mut small = line(&format!("t{i}"), 0);
            small.descriptors.clear();
            recent.extend([small]);
        }
        assert_eq!(recent.len(), CAPACITY);
        assert!(recent.of("t4", None, 1).is_empty());
        assert_eq!(recent.of("t5", None, 1).len(), 1);
        assert!(recent.bytes() <= MAX_BYTES);
    }
}

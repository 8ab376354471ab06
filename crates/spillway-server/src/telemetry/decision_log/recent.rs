//! The newest records the log wrote, kept in memory for the dashboard's lookup ("why was this
//! tenant limited?") without reading the sink back, whatever the sink is (stdout included).
//!
//! Filled by the writer thread after it formats a batch, so the request path never touches
//! it; bounded to [`CAPACITY`] records (a few hundred bytes each). It holds what the log
//! kept: every denial up to the per-second cap, and allowed decisions as sampled.

use super::record::Line;
use parking_lot::Mutex;
use std::collections::VecDeque;

/// Records kept.
pub const CAPACITY: usize = 2_000;

/// The ring; see the module docs.
#[derive(Debug, Default)]
pub struct Recent {
    lines: Mutex<VecDeque<Line>>,
}

impl Recent {
    /// Adds a batch's records, oldest first, dropping the oldest held beyond [`CAPACITY`].
    pub fn extend(&self, lines: impl IntoIterator<Item = Line>) {
        let mut held = self.lines.lock();
        for line in lines {
            if held.len() == CAPACITY {
                held.pop_front();
            }
            held.push_back(line);
        }
    }

    /// The newest `n` records of `tenant` (and of `user`, when given), newest first.
    pub fn of(&self, tenant: &str, user: Option<&str>, n: usize) -> Vec<Line> {
        self.lines
            .lock()
            .iter()
            .rev()
            .filter(|l| l.tenant.as_deref() == Some(tenant))
            .filter(|l| user.is_none() || l.user.as_deref() == user)
            .take(n)
            .cloned()
            .collect()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.lines.lock().len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

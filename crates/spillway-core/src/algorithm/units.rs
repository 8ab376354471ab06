//! The register of the rates this process has seen, so a stored bucket state can say which
//! units it was written in with three bytes.
//!
//! The token bucket, GCRA and leaky bucket keep their amounts in units scaled by their rate
//! (see [`super::ScaledRate`]). A counter keeps its identity when its limit's numbers change,
//! so a state may be read under a rate other than the one it was written with, and must then
//! be converted (see [`super::carry`]). The in-memory store has no room to keep the old rate
//! beside each state, but it has three spare bytes: each distinct reduced rate gets a
//! [`RateId`] here, once, when its parameters are built (policy load or reload, the emergency
//! quotas), and a state is stored with the id of the rate that wrote it. Reading a state
//! under the same rate costs one comparison; only a state written under another id looks its
//! rate up here, without a lock.
//!
//! Ids are never reused while the process runs, so an id in a slot always names the rate
//! that wrote it. The register holds at most [`CAPACITY`] rates (each is 24 bytes, allocated
//! 4,096 at a time); a policy has a few hundred, and a reload adds only the rates it did not
//! have before. Should a process ever see more, every further rate shares
//! [`RateId::OVERFLOW`], under which states are read without conversion: a key of such a
//! limit can at worst read like a fresh one, as every key did whenever its limit's numbers
//! changed before counters carried over. A restart empties the register.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// Which reduced rate a bucket state was written in; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateId([u8; 3]);

/// How many rates get an id of their own: 2^24 - 1.
pub const CAPACITY: u32 = (1 << 24) - 1;

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNKS: usize = (CAPACITY as usize).div_ceil(CHUNK);

impl RateId {
    /// The id shared by every rate past [`CAPACITY`]; its states are read as written.
    pub const OVERFLOW: RateId = RateId::from_index(CAPACITY);

    const fn from_index(i: u32) -> Self {
        let b = i.to_le_bytes();
        Self([b[0], b[1], b[2]])
    }

    fn index(self) -> usize {
        let [a, b, c] = self.0;
        u32::from_le_bytes([a, b, c, 0]) as usize
    }

    /// The `(tokens, micros)` of the rate this id names; `None` for [`RateId::OVERFLOW`].
    pub fn rate(self) -> Option<(u64, u64)> {
        let i = self.index();
        TABLE
            .get(i >> CHUNK_BITS)?
            .get()?
            .get(i & (CHUNK - 1))?
            .get()
            .copied()
    }
}

/// Ids by rate, and the next id to hand out; taken only when a thread meets a rate for the
/// first time.
struct Assigner {
    ids: HashMap<(u64, u64), RateId>,
    next: u32,
}

static ASSIGNER: OnceLock<Mutex<Assigner>> = OnceLock::new();

/// [`CHUNK`] consecutive ids' rates, each set once.
type Chunk = Box<[OnceLock<(u64, u64)>]>;

/// Rates by id, in chunks allocated as they fill; read without a lock.
static TABLE: [OnceLock<Chunk>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];

/// Rates a thread has looked up before, so building the same parameters again (the
/// emergency quotas are derived per request) takes no lock. Cleared when it grows past this.
const SEEN_MAX: usize = 1024;

thread_local! {
    static SEEN: RefCell<HashMap<(u64, u64), RateId>> = RefCell::new(HashMap::new());
}

/// The id of the reduced rate `tokens` per `micros`, assigning the next one on first sight.
pub(crate) fn intern(tokens: u64, micros: u64) -> RateId {
    let rate = (tokens, micros);
    if let Some(id) = SEEN.with(|s| s.borrow().get(&rate).copied()) {
        return id;
    }
    let id = assign(rate);
    SEEN.with(|s| {
        let mut seen = s.borrow_mut();
        if seen.len() >= SEEN_MAX {
            seen.clear();
        }
        seen.insert(rate, id);
    });
    id
}

fn assign(rate: (u64, u64)) -> RateId {
    let assigner = ASSIGNER.get_or_init(|| {
        Mutex::new(Assigner {
            ids: HashMap::new(),
            next: 0,
        })
    });
    let mut a = assigner.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(id) = a.ids.get(&rate) {
        return *id;
    }
    if a.next >= CAPACITY {
        return RateId::OVERFLOW;
    }
    let i = a.next as usize;
    let chunk =
        TABLE[i >> CHUNK_BITS].get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
    // Published before the id is returned, so whoever holds the id finds its rate.
    let _ = chunk[i & (CHUNK - 1)].set(rate);
    let id = RateId::from_index(a.next);
    a.next += 1;
    a.ids.insert(rate, id);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_keeps_its_id_and_another_rate_gets_another() {
        let a = intern(7, 1_000_003);
        assert_eq!(intern(7, 1_000_003), a);
        let b = intern(11, 1_000_003);
        assert_ne!(a, b);
        assert_eq!(a.rate(), Some((7, 1_000_003)));
        assert_eq!(b.rate(), Some((11, 1_000_003)));
        // Found by another thread, whose own cache is empty.
        std::thread::spawn(move || assert_eq!(intern(7, 1_000_003), a))
            .join()
            .expect("thread");
    }

    #[test]
    fn the_overflow_id_names_no_rate_and_ids_round_trip() {
        assert_eq!(RateId::OVERFLOW.rate(), None);
        assert_eq!(
            RateId::from_index(CAPACITY - 1).index(),
            CAPACITY as usize - 1
        );
        assert_eq!(std::mem::size_of::<RateId>(), 3);
    }
}

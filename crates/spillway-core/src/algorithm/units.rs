//! The register of the bucket parameters this process has seen, so a stored bucket state can
//! say which numbers wrote it with three bytes.
//!
//! The token bucket, GCRA and leaky bucket keep their amounts in units scaled by their rate
//! (see [`super::ScaledRate`]). A counter keeps its identity when its limit's numbers change,
//! so a state may be read under numbers other than the ones that wrote it, and must then be
//! converted (see [`super::carry`]), which needs the old numbers. The in-memory store has no
//! room to keep them beside each state, but it has three spare bytes: each distinct
//! `(rate in lowest terms, burst or capacity)` gets a [`ParamsId`] here, once, when its
//! parameters are built (policy load or reload, the emergency quotas), and a state is stored
//! with the id of the parameters that wrote it. Reading a state under the same numbers costs
//! one comparison; only a state written under another id looks its numbers up here, without
//! a lock.
//!
//! Ids are never reused while the process runs, so an id in a slot always names the numbers
//! that wrote it. The register holds at most [`CAPACITY`] of them (each is 32 bytes, allocated
//! 4,096 at a time); a policy has a few hundred, and a reload adds only the ones it did not
//! have before. Should a process ever see more, every further set shares
//! [`ParamsId::OVERFLOW`], under which states are read without conversion: a key of such a
//! limit can at worst read like a fresh one, as every key did whenever its limit's numbers
//! changed before counters carried over. A restart empties the register.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// Which bucket numbers (rate and amount) a state was written under; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamsId([u8; 3]);

/// How many sets of numbers get an id of their own: 2^24 - 1.
pub const CAPACITY: u32 = (1 << 24) - 1;

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNKS: usize = (CAPACITY as usize).div_ceil(CHUNK);

impl ParamsId {
    /// The id shared by every set of numbers past [`CAPACITY`] (and by the window algorithms,
    /// whose states need no conversion); its states are read as written.
    pub const OVERFLOW: ParamsId = ParamsId::from_index(CAPACITY);

    const fn from_index(i: u32) -> Self {
        let b = i.to_le_bytes();
        Self([b[0], b[1], b[2]])
    }

    fn index(self) -> usize {
        let [a, b, c] = self.0;
        u32::from_le_bytes([a, b, c, 0]) as usize
    }

    /// The `(rate.tokens, rate.micros, amount)` this id names; `None` for
    /// [`ParamsId::OVERFLOW`].
    pub fn numbers(self) -> Option<(u64, u64, u64)> {
        let i = self.index();
        TABLE
            .get(i >> CHUNK_BITS)?
            .get()?
            .get(i & (CHUNK - 1))?
            .get()
            .copied()
    }
}

/// The numbers a bucket's state depends on: its reduced rate and its burst or capacity.
type Numbers = (u64, u64, u64);

/// Ids by numbers, and the next id to hand out; taken only when a thread meets numbers for
/// the first time.
struct Assigner {
    ids: HashMap<Numbers, ParamsId>,
    next: u32,
}

static ASSIGNER: OnceLock<Mutex<Assigner>> = OnceLock::new();

/// [`CHUNK`] consecutive ids' numbers, each set once.
type Chunk = Box<[OnceLock<Numbers>]>;

/// Numbers by id, in chunks allocated as they fill; read without a lock.
static TABLE: [OnceLock<Chunk>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];

/// Numbers a thread has looked up before, so building the same parameters again (the
/// emergency quotas are derived per request) takes no lock. Cleared when it grows past this.
const SEEN_MAX: usize = 1024;

thread_local! {
    static SEEN: RefCell<HashMap<Numbers, ParamsId>> = RefCell::new(HashMap::new());
}

/// The id of the reduced rate `tokens` per `micros` with `amount`, assigning the next one on
/// first sight.
pub(crate) fn intern(tokens: u64, micros: u64, amount: u64) -> ParamsId {
    let numbers = (tokens, micros, amount);
    if let Some(id) = SEEN.with(|s| s.borrow().get(&numbers).copied()) {
        return id;
    }
    let id = assign(numbers);
    SEEN.with(|s| {
        let mut seen = s.borrow_mut();
        if seen.len() >= SEEN_MAX {
            seen.clear();
        }
        seen.insert(numbers, id);
    });
    id
}

fn assign(numbers: Numbers) -> ParamsId {
    let assigner = ASSIGNER.get_or_init(|| {
        Mutex::new(Assigner {
            ids: HashMap::new(),
            next: 0,
        })
    });
    let mut a = assigner.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(id) = a.ids.get(&numbers) {
        return *id;
    }
    if a.next >= CAPACITY {
        return ParamsId::OVERFLOW;
    }
    let i = a.next as usize;
    let chunk =
        TABLE[i >> CHUNK_BITS].get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
    // Published before the id is returned, so whoever holds the id finds its numbers.
    let _ = chunk[i & (CHUNK - 1)].set(numbers);
    let id = ParamsId::from_index(a.next);
    a.next += 1;
    a.ids.insert(numbers, id);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_id_and_other_numbers_get_another() {
        let a = intern(7, 1_000_003, 5);
        assert_eq!(intern(7, 1_000_003, 5), a);
        let b = intern(11, 1_000_003, 5);
        let c = intern(7, 1_000_003, 6);
        assert!(a != b && a != c && b != c);
        assert_eq!(a.numbers(), Some((7, 1_000_003, 5)));
        assert_eq!(c.numbers(), Some((7, 1_000_003, 6)));
        // Found by another thread, whose own cache is empty.
        std::thread::spawn(move || assert_eq!(intern(7, 1_000_003, 5), a))
            .join()
            .expect("thread");
    }

    #[test]
    fn the_overflow_id_names_no_numbers_and_ids_round_trip() {
        assert_eq!(ParamsId::OVERFLOW.numbers(), None);
        assert_eq!(
            ParamsId::from_index(CAPACITY - 1).index(),
            CAPACITY as usize - 1
        );
        assert_eq!(std::mem::size_of::<ParamsId>(), 3);
    }
}

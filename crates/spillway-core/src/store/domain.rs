//! Failure domains: the parts of a store that fail together.
//!
//! A single Redis server (directly or through Sentinel) fails as a whole, so it is one domain;
//! a Redis Cluster fails master by master, so each master is one. A store says which domains a
//! request's checks touch ([`super::Store::domains`]) and what each domain is now
//! ([`super::Store::domain_name`], [`super::Store::domain_generation`]); the server keeps one
//! circuit breaker per domain, so a dead master stops only the requests whose keys live on it.
//!
//! A set of domains is a 64-bit mask: no allocation per request, and a store can never report
//! more than [`MAX_DOMAINS`] of them (it folds any beyond into one it shares).

/// The most failure domains a store reports; domain indices are below this.
pub const MAX_DOMAINS: usize = 64;

/// A set of failure domain indices (each below [`MAX_DOMAINS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Domains(u64);

impl Domains {
    /// The one domain of a store that fails as a whole: index 0.
    pub const WHOLE: Self = Self(1);

    /// This set with domain `index` added (an index past [`MAX_DOMAINS`] wraps around: it is
    /// a store's bug, and sharing a domain only makes the breaker more cautious).
    pub fn with(self, index: usize) -> Self {
        Self(self.0 | 1 << (index % MAX_DOMAINS))
    }

    /// Whether the set holds no domain (a request with no checks).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// How many domains the set holds.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The domain indices, in increasing order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let index = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            Some(index)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_what_was_added_in_order() {
        let set = Domains::default().with(5).with(0).with(63).with(5);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 5, 63]);
        assert_eq!(set.len(), 3);
        assert!(Domains::default().is_empty());
        assert_eq!(Domains::WHOLE.iter().collect::<Vec<_>>(), vec![0]);
        assert_eq!(
            Domains::default().with(64),
            Domains::WHOLE,
            "wraps, never panics"
        );
    }
}

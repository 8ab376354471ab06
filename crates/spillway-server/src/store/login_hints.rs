//! What a refused login asks to check, by where the login was given: the one wording (`...;
//! check the username/password in <the URL>`, see [`spillway_redis::login::Refusal`]) of
//! every Redis user of the server, the store's, a far region's, the decision log's and the
//! top-k board's alike. Strings only; who uses which is the caller's to say.

/// The node's own store named by `--store-url` (for the store and for those using its Redis:
/// the top-k board, `--decision-log redis`).
pub const STORE_FLAG: &str =
    "the username/password in the store's URL (--store-url / SPILLWAY_STORE_URL)";
/// The node's own store named by the policy's `store:` section, without regions.
pub const STORE_POLICY: &str =
    "the username/password in the store's URL (the policy's store.url / store.nodes)";

/// A region's store (`store.regions.<name>`): the node's own store in a regions deployment,
/// and a far region's for home calls and the exchange of counts.
pub fn region(name: &str) -> String {
    format!("the username/password in the store's URL (the policy's store.regions.{name})")
}

/// The decision log's own Redis (`--decision-log redis://...`).
pub const DECISION_LOG: &str =
    "the username/password in --decision-log's URL (SPILLWAY_DECISION_LOG)";
/// The Redis `spillway decisions --redis` reads.
pub const REDIS_FLAG: &str = "the username/password in --redis's URL";

//! What the limiter tells operators beyond counters: which keys are hammered and who is being
//! denied ([`top`]); the decision log and trace spans live beside it. Each hooks into
//! `crate::decision::observe`, the one place every finished decision passes.

pub mod top;

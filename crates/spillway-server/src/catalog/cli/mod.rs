//! `spillway catalog ...`: the tenant catalog read and changed straight in its database, for
//! scripts and humans, with no server running.
//!
//! - this file: the flags, the shared context (database, policy, output mode) and how
//!   failures become exit codes;
//! - `entries`: one entry read, written, patched or deleted, lists, API keys;
//! - `body`: a record built from `--tier`, `--override` and `--data`;
//! - `transfer`: `import` and `export` (JSON lines).
//!
//! Every write is checked against the policy exactly as the admin API checks it
//! ([`spillway_core::catalog::Catalog::check`]), with the policy of `--config` (or
//! `SPILLWAY_CONFIG`), else the built-in one, so nothing a node would refuse gets stored.
//!
//! Exit status: 0 done; 1 refused (invalid entry), not found, or a version conflict; 2 bad
//! usage, a policy that does not load, or a database that cannot be reached or used.

mod body;
mod entries;
mod transfer;

use crate::config::PolicySource;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use spillway_catalog::{CatalogDb, Error as DbError};
use spillway_core::catalog::FieldIssue;
use spillway_core::policy::Policy;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Flags of `spillway catalog`.
#[derive(Debug, Args)]
pub struct CatalogCli {
    /// The catalog's database: `sqlite:///var/lib/spillway/catalog.db` or
    /// `postgres://user:pass@host/db`.
    #[arg(long, env = "SPILLWAY_CATALOG", value_name = "URL", global = true)]
    pub catalog: Option<String>,

    /// The policy writes are checked against (tiers, limits); the built-in policy when unset.
    #[arg(long, env = "SPILLWAY_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Print machine-readable JSON (entries as the admin API shows them; errors as JSON on
    /// stderr) instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: CatalogCommand,
}

/// The `spillway catalog` subcommands.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Create or upgrade the database's schema (idempotent).
    Migrate,
    /// Print the catalog's current version.
    Version,
    /// Print one entry.
    Get {
        /// Which entry.
        #[command(subcommand)]
        target: Target,
    },
    /// Write one entry whole (replacing it if it exists), from flags or `--data`.
    Put {
        /// Which entry, and its content.
        #[command(subcommand)]
        target: WriteTarget,
    },
    /// Change part of one entry: `--data` is a JSON merge patch (RFC 7396, `null` removes a
    /// field), and `--tier` / `--override` are merged over it. The entry need not exist.
    Patch {
        /// Which entry, and the changes.
        #[command(subcommand)]
        target: WriteTarget,
    },
    /// Delete one entry. A tenant that still has users or API keys is refused unless
    /// `--cascade` deletes them with it.
    Delete {
        /// Delete only if the entry is at this version (its ETag in the admin API).
        #[arg(long, value_name = "VERSION", global = true)]
        if_version: Option<u64>,
        /// With a tenant: delete its users and API keys too (its keys first).
        #[arg(long, global = true)]
        cascade: bool,
        /// Which entry.
        #[command(subcommand)]
        target: Target,
    },
    /// List entries of one kind, in id order, a page at a time.
    List {
        /// List entries after this id (the `next` of the previous page).
        #[arg(long, value_name = "ID", global = true)]
        after: Option<String>,
        /// Entries per page.
        #[arg(long, value_name = "N", default_value_t = 100, global = true,
              value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
        /// Which kind.
        #[command(subcommand)]
        target: ListTarget,
    },
    /// Add an API key: read from stdin with --from-stdin, else generated (32 random bytes)
    /// and printed once. Only its SHA-256 digest is stored.
    AddKey(AddKeyArgs),
    /// Write entries from a file of JSON lines (`{"key":...,"entry":...}`, as `export` prints
    /// them; a node's snapshot file also works) or from a policy's `tenants:` section. All are
    /// checked first; if any is refused, nothing is written.
    Import(ImportArgs),
    /// Print every entry as JSON lines (`{"key":...,"entry":...}`), in key order.
    Export,
}

/// One entry, by its id.
#[derive(Debug, Clone, Subcommand)]
pub enum Target {
    /// A tenant.
    Tenant {
        /// The tenant's id.
        id: String,
    },
    /// One user of one tenant.
    User {
        /// The tenant's id.
        tenant: String,
        /// The user's id.
        user: String,
    },
    /// An API key, by its digest (64 lowercase hex digits).
    ApiKey {
        /// The key's SHA-256 digest.
        digest: String,
    },
}

/// One entry and what to write into it.
#[derive(Debug, Clone, Subcommand)]
pub enum WriteTarget {
    /// A tenant: its tier and overrides.
    Tenant {
        /// The tenant's id.
        id: String,
        /// Its content.
        #[command(flatten)]
        body: body::RecordArgs,
    },
    /// One user of one tenant: an optional tier and overrides winning over the tenant's.
    User {
        /// The tenant's id.
        tenant: String,
        /// The user's id.
        user: String,
        /// Its content.
        #[command(flatten)]
        body: body::RecordArgs,
    },
    /// An API key, by its digest: the tenant, user and tier it stands for.
    ApiKey {
        /// The key's SHA-256 digest.
        digest: String,
        /// Its content.
        #[command(flatten)]
        body: body::KeyArgs,
    },
}

/// Which entries to list.
#[derive(Debug, Clone, Subcommand)]
pub enum ListTarget {
    /// Tenants.
    #[command(alias = "tenant")]
    Tenants,
    /// The users of one tenant.
    #[command(alias = "user")]
    Users {
        /// The tenant's id.
        tenant: String,
    },
    /// API keys (by digest).
    #[command(alias = "api-key")]
    ApiKeys,
}

/// Flags of `spillway catalog add-key`.
#[derive(Debug, Clone, Args)]
pub struct AddKeyArgs {
    /// The tenant the key belongs to.
    #[arg(long)]
    pub tenant: String,
    /// The user it acts as.
    #[arg(long)]
    pub user: Option<String>,
    /// A tier for the key: requests presenting it are counted on this tier.
    #[arg(long)]
    pub tier: Option<String>,
    /// Read the key from stdin (its first line) instead of generating one.
    #[arg(long)]
    pub from_stdin: bool,
}

/// Flags of `spillway catalog import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// JSON lines to import (`-` for stdin).
    #[arg(
        value_name = "FILE",
        required_unless_present = "from_policy",
        conflicts_with = "from_policy"
    )]
    pub file: Option<PathBuf>,
    /// Import a policy file's `tenants:` section instead. Without --config, entries are
    /// checked against that same policy.
    #[arg(long, value_name = "POLICY")]
    pub from_policy: Option<PathBuf>,
    /// Check everything, write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Why a command did not do its job, sorted by exit status.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Exit 1: the entry is invalid for the policy; every problem, field by field.
    Refused(String, Vec<FieldIssue>),
    /// Exit 1: no such entry.
    NotFound(String),
    /// Exit 1: a version condition failed.
    Conflict(String),
    /// Exit 2: bad arguments, an unreadable file or policy.
    Usage(String),
    /// Exit 2: the database could not be reached or used.
    Database(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Refused(..) | Self::NotFound(_) | Self::Conflict(_) => 1,
            Self::Usage(_) | Self::Database(_) => 2,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Refused(..) => "refused",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Usage(_) => "usage",
            Self::Database(_) => "database",
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Refused(m, _)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::Usage(m)
            | Self::Database(m) => m,
        }
    }

    /// An entry refused by the policy, with its issues.
    pub(crate) fn refused(what: &str, issues: Vec<FieldIssue>) -> Self {
        let list: Vec<String> = issues.iter().map(ToString::to_string).collect();
        Self::Refused(
            format!("refused {what}: {}; nothing was written", list.join("; ")),
            issues,
        )
    }
}

/// What every subcommand works with.
pub(crate) struct Context {
    pub db: Arc<dyn CatalogDb>,
    /// The database URL with any password masked, for messages.
    pub url: String,
    pub policy: Arc<Policy>,
    /// Whether `--config` named the policy (else the built-in one is in force).
    pub explicit_policy: bool,
    pub json: bool,
}

impl Context {
    /// A database error as a failure, naming the database.
    pub(crate) fn db_failure(&self, err: DbError) -> Failure {
        match err {
            DbError::Conflict { .. } => Failure::Conflict(format!(
                "{err}; read it again (its version is printed by `get`) and retry"
            )),
            DbError::Invalid(_) => Failure::Refused(err.to_string(), Vec::new()),
            DbError::Unavailable(_) => Failure::Database(format!(
                "cannot reach the catalog database {}: {err}",
                self.url
            )),
            DbError::SchemaTooNew { .. } => {
                Failure::Database(format!("catalog database {}: {err}", self.url))
            }
            DbError::Other(_) => Failure::Database(format!(
                "catalog database {}: {err} (has `spillway catalog migrate` been run on it?)",
                self.url
            )),
        }
    }

    /// An entry the policy refuses; says which policy judged it when none was named.
    pub(crate) fn refused(&self, what: &str, issues: Vec<FieldIssue>) -> Failure {
        let failure = Failure::refused(what, issues);
        match failure {
            Failure::Refused(message, issues) if !self.explicit_policy => Failure::Refused(
                format!("{message} (checked against the built-in policy: pass --config FILE or set SPILLWAY_CONFIG to check against yours)"),
                issues,
            ),
            other => other,
        }
    }

    /// Prints `value` as JSON, or `text` for humans.
    pub(crate) fn print(&self, value: &Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", text());
        }
    }
}

/// Runs `spillway catalog`.
pub fn main(args: CatalogCli) -> ExitCode {
    crate::logging::init_warnings_on_stderr();
    let json = args.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return report(json, &Failure::Usage(format!("cannot start: {err}"))),
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(json, &failure),
    }
}

async fn run(args: CatalogCli) -> Result<(), Failure> {
    let url = args
        .catalog
        .clone()
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            Failure::Usage(
                "no catalog database: pass --catalog URL (sqlite:///path/catalog.db or \
             postgres://user@host/db) or set SPILLWAY_CATALOG"
                    .into(),
            )
        })?;
    let policy = match (&args.config, &args.command) {
        (Some(path), _) => load_policy(&PolicySource::File(path.clone()))?,
        // Importing a policy's tenants: check them against that policy unless told otherwise.
        (
            None,
            CatalogCommand::Import(ImportArgs {
                from_policy: Some(path),
                ..
            }),
        ) => load_policy(&PolicySource::File(path.clone()))?,
        (None, _) => load_policy(&PolicySource::Builtin)?,
    };
    let redacted = spillway_catalog::redacted(&url);
    let db = spillway_catalog::open(&url)
        .await
        .map_err(|err| match err {
            DbError::Invalid(message) => Failure::Usage(message),
            other => Failure::Database(format!(
                "cannot open the catalog database {redacted}: {other}"
            )),
        })?;
    let ctx = Context {
        db,
        url: redacted,
        policy: Arc::new(policy),
        explicit_policy: args.config.is_some(),
        json: args.json,
    };
    // A write checked against the built-in policy may store what the nodes' policy refuses
    // (an override of a limit it lacks, which they would then skip): said on success too (a
    // refusal says it already), on stderr, and not where stderr is read as JSON.
    let checked_by_builtin = !ctx.explicit_policy
        && !ctx.json
        && match &args.command {
            CatalogCommand::Put { .. } | CatalogCommand::Patch { .. } => true,
            CatalogCommand::AddKey(_) => true,
            CatalogCommand::Import(import) => import.from_policy.is_none(),
            _ => false,
        };
    let result = dispatch(&ctx, args.command).await;
    if checked_by_builtin && result.is_ok() {
        eprintln!(
            "note: checked against the built-in policy, not yours: pass --config FILE or set \
             SPILLWAY_CONFIG to check writes against the policy your nodes serve"
        );
    }
    ctx.db.close().await;
    result
}

async fn dispatch(ctx: &Context, command: CatalogCommand) -> Result<(), Failure> {
    match command {
        CatalogCommand::Migrate => migrate(ctx).await,
        CatalogCommand::Version => version(ctx).await,
        CatalogCommand::Get { target } => entries::get(ctx, target).await,
        CatalogCommand::Put { target } => entries::put(ctx, target).await,
        CatalogCommand::Patch { target } => entries::patch(ctx, target).await,
        CatalogCommand::Delete {
            if_version,
            cascade,
            target,
        } => entries::delete(ctx, target, if_version, cascade).await,
        CatalogCommand::List {
            after,
            limit,
            target,
        } => entries::list(ctx, target, after, limit as usize).await,
        CatalogCommand::AddKey(args) => entries::add_key(ctx, args).await,
        CatalogCommand::Import(args) => transfer::import(ctx, args).await,
        CatalogCommand::Export => transfer::export(ctx).await,
    }
}

/// The policy of `source`, read and checked as `serve`, `validate` and `decisions` read it
/// (cluster seeds that disagree on the login refused too), its error worded as they word it.
fn load_policy(source: &PolicySource) -> Result<Policy, Failure> {
    source
        .load_checked_blocking(false)
        .map_err(|e| Failure::Usage(e.to_string()))
}

async fn migrate(ctx: &Context) -> Result<(), Failure> {
    let done = ctx.db.migrate().await.map_err(|e| ctx.db_failure(e))?;
    ctx.print(&json!({ "from": done.from, "to": done.to }), || {
        if done.from == done.to {
            format!(
                "the catalog schema of {} is up to date (version {})",
                ctx.url, done.to
            )
        } else {
            format!(
                "migrated the catalog schema of {} from version {} to {}",
                ctx.url, done.from, done.to
            )
        }
    });
    Ok(())
}

async fn version(ctx: &Context) -> Result<(), Failure> {
    let version = ctx.db.version().await.map_err(|e| ctx.db_failure(e))?;
    let backend = ctx.db.backend();
    ctx.print(&json!({ "version": version, "backend": backend }), || {
        format!("catalog version {version} ({backend}, {})", ctx.url)
    });
    Ok(())
}

fn report(json: bool, failure: &Failure) -> ExitCode {
    if json {
        let mut body = json!({ "error": failure.kind(), "message": failure.message() });
        if let Failure::Refused(_, issues) = failure {
            body["errors"] = issues
                .iter()
                .map(|i| json!({ "field": i.field, "message": i.message }))
                .collect();
        }
        eprintln!("{body}");
    } else {
        eprintln!("error: {}", failure.message());
    }
    ExitCode::from(failure.code())
}

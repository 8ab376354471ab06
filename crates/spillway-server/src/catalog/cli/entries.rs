//! One entry read, written, patched or deleted; lists; API keys added.

use super::body::record;
use super::{AddKeyArgs, Context, Failure, ListTarget, Target, WriteTarget};
use crate::admin::{digest_of, document, id_of, merge, record_value, unknown_removal};
use serde_json::{json, Value};
use spillway_catalog::tenant::{still_holds, TenantDeletion};
use spillway_core::catalog::{ApiKeyRecord, Catalog, Entry, EntryKey, Kind};
use spillway_core::text::printable;
use std::io::BufRead;

use crate::admin::key_refusal;
/// Random bytes in a generated key.
const KEY_BYTES: usize = 32;
/// How often a patch is retried when another writer changes the entry meanwhile.
const PATCH_TRIES: usize = 3;

fn key_of(target: Target) -> EntryKey {
    match target {
        Target::Tenant { id } => EntryKey::Tenant { tenant: id },
        Target::User { tenant, user } => EntryKey::User { tenant, user },
        Target::ApiKey { digest } => EntryKey::ApiKey { digest },
    }
}

/// The key, the body the flags describe, and the version condition.
fn write_parts(target: WriteTarget) -> Result<(EntryKey, Value, Option<u64>), Failure> {
    Ok(match target {
        WriteTarget::Tenant { id, body } => {
            let key = EntryKey::Tenant { tenant: id };
            (key, body.value()?, body.if_version)
        }
        WriteTarget::User { tenant, user, body } => {
            let key = EntryKey::User { tenant, user };
            (key, body.value()?, body.if_version)
        }
        WriteTarget::ApiKey { digest, body } => {
            let key = EntryKey::ApiKey { digest };
            (key, body.value()?, body.if_version)
        }
    })
}

/// `value` read as the record `key`'s kind holds.
fn entry_of(key: &EntryKey, value: &Value) -> Result<Entry, Failure> {
    let what = key.to_string();
    Ok(match key.kind() {
        Kind::Tenant => Entry::Tenant(record(value, &what)?),
        Kind::User => Entry::User(record(value, &what)?),
        Kind::ApiKey => Entry::ApiKey(record(value, &what)?),
    })
}

/// `spillway catalog get`.
pub async fn get(ctx: &Context, target: Target) -> Result<(), Failure> {
    let key = key_of(target);
    match ctx.db.get(&key).await.map_err(|e| ctx.db_failure(e))? {
        Some((entry, version)) => {
            ctx.print(&document(&key, &entry, version), || {
                describe(&key, &entry, version)
            });
            Ok(())
        }
        None => Err(not_found(&key)),
    }
}

/// `spillway catalog put`.
pub async fn put(ctx: &Context, target: WriteTarget) -> Result<(), Failure> {
    let (key, value, condition) = write_parts(target)?;
    let entry = entry_of(&key, &value)?;
    let version = write(ctx, &key, &entry, condition).await?;
    written(ctx, &key, &entry, version);
    Ok(())
}

/// `spillway catalog patch`: a JSON merge patch of the entry, which need not exist yet.
pub async fn patch(ctx: &Context, target: WriteTarget) -> Result<(), Failure> {
    let (key, patch, condition) = write_parts(target)?;
    if let Some(issue) = unknown_removal(key.kind(), &patch) {
        return Err(Failure::refused(&key.to_string(), vec![issue]));
    }
    for _ in 0..PATCH_TRIES {
        let current = ctx.db.get(&key).await.map_err(|e| ctx.db_failure(e))?;
        let (mut doc, version) = match &current {
            Some((entry, version)) => (record_value(entry), *version),
            None => (json!({}), 0),
        };
        if condition.is_some_and(|want| want != version) {
            return Err(Failure::Conflict(format!(
                "{key} is at version {version}, not {}; nothing was written",
                condition.unwrap_or_default()
            )));
        }
        merge(&mut doc, &patch);
        let entry = entry_of(&key, &doc)?;
        match write(ctx, &key, &entry, Some(version)).await {
            // Someone else wrote it between the read and the write: read again.
            Err(Failure::Conflict(_)) if condition.is_none() => continue,
            Err(other) => return Err(other),
            Ok(version) => {
                written(ctx, &key, &entry, version);
                return Ok(());
            }
        }
    }
    Err(Failure::Conflict(format!(
        "{key} kept changing under the patch; try again"
    )))
}

/// `spillway catalog delete`.
pub async fn delete(
    ctx: &Context,
    target: Target,
    condition: Option<u64>,
    cascade: bool,
) -> Result<(), Failure> {
    let key = key_of(target);
    if let EntryKey::Tenant { tenant } = &key {
        return delete_tenant(ctx, tenant, condition, cascade).await;
    }
    if cascade {
        return Err(Failure::Usage(
            "--cascade deletes a tenant's users and API keys; it applies to a tenant only".into(),
        ));
    }
    match ctx
        .db
        .delete(&key, condition)
        .await
        .map_err(|e| ctx.db_failure(e))?
    {
        Some(version) => {
            ctx.print(&json!({ "deleted": true, "version": version }), || {
                format!("deleted {key}: catalog version {version}")
            });
            Ok(())
        }
        None => Err(not_found(&key)),
    }
}

/// `spillway catalog delete tenant`: refused while the tenant has users or API keys, unless
/// `cascade` (see `spillway_catalog::tenant`).
async fn delete_tenant(
    ctx: &Context,
    tenant: &str,
    condition: Option<u64>,
    cascade: bool,
) -> Result<(), Failure> {
    let deletion = spillway_catalog::tenant::delete_tenant(&*ctx.db, tenant, condition, cascade)
        .await
        .map_err(|e| ctx.db_failure(e))?;
    match deletion {
        TenantDeletion::Deleted {
            version,
            users,
            api_keys,
        } => {
            let body = json!({ "deleted": true, "version": version, "users": users,
                               "api_keys": api_keys });
            ctx.print(&body, || {
                format!(
                    "deleted tenant {tenant} with {users} user(s) and {api_keys} API key(s): \
                     catalog version {version}"
                )
            });
            Ok(())
        }
        TenantDeletion::NotFound => Err(not_found(&EntryKey::Tenant {
            tenant: tenant.to_owned(),
        })),
        TenantDeletion::Holds { users, api_keys } => Err(Failure::Conflict(still_holds(
            tenant,
            users,
            api_keys,
            "pass --cascade",
        ))),
    }
}

/// `spillway catalog list`.
pub async fn list(
    ctx: &Context,
    target: ListTarget,
    after: Option<String>,
    limit: usize,
) -> Result<(), Failure> {
    let (kind, tenant) = match &target {
        ListTarget::Tenants => (Kind::Tenant, None),
        ListTarget::Users { tenant } => (Kind::User, Some(tenant.as_str())),
        ListTarget::ApiKeys => (Kind::ApiKey, None),
    };
    let after = after.map(|id| match &target {
        ListTarget::Tenants => EntryKey::Tenant { tenant: id },
        ListTarget::Users { tenant } => EntryKey::User {
            tenant: tenant.clone(),
            user: id,
        },
        ListTarget::ApiKeys => EntryKey::ApiKey { digest: id },
    });
    let rows = ctx
        .db
        .list(kind, tenant, after.as_ref(), limit)
        .await
        .map_err(|e| ctx.db_failure(e))?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|(k, _, _)| id_of(k).to_owned()))
        .flatten();
    if ctx.json {
        let items: Vec<Value> = rows.iter().map(|(k, e, v)| document(k, e, *v)).collect();
        println!("{}", json!({ "items": items, "next": next }));
    } else {
        for (key, entry, version) in &rows {
            println!("{}", line(key, entry, *version));
        }
        if let Some(next) = next {
            eprintln!("(more: --after {})", printable(&next));
        }
    }
    Ok(())
}

/// `spillway catalog add-key`.
pub async fn add_key(ctx: &Context, args: AddKeyArgs) -> Result<(), Failure> {
    let (key, generated) = if args.from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::Usage(format!("cannot read the key from stdin: {e}")))?;
        (line.trim().to_owned(), false)
    } else {
        (generate()?, true)
    };
    if let Some(message) = key_refusal(&key) {
        let issue = spillway_core::catalog::FieldIssue {
            field: "key".into(),
            message,
        };
        return Err(Failure::refused("the API key", vec![issue]));
    }
    let digest = digest_of(&key);
    let entry_key = EntryKey::ApiKey {
        digest: digest.clone(),
    };
    let entry = Entry::ApiKey(ApiKeyRecord {
        tenant: args.tenant,
        user: args.user,
        tier: args.tier,
    });
    let version = write(ctx, &entry_key, &entry, Some(0)).await?;
    let mut doc = document(&entry_key, &entry, version);
    if generated {
        doc["key"] = json!(key);
    }
    ctx.print(&doc, || {
        let mut text = String::new();
        if generated {
            text.push_str(&format!(
                "api key (shown this once; only its digest is stored): {key}\n"
            ));
        }
        text.push_str(&format!("digest: {digest}\ncatalog version: {version}"));
        text
    });
    Ok(())
}

/// A new API key: `spw_` and 64 hex digits from the operating system's CSPRNG.
fn generate() -> Result<String, Failure> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| Failure::Usage(format!("cannot get random bytes for a key: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("spw_{hex}"))
}

/// Checks `entry` against the policy (as the admin API does) and writes it.
pub(super) async fn write(
    ctx: &Context,
    key: &EntryKey,
    entry: &Entry,
    condition: Option<u64>,
) -> Result<u64, Failure> {
    let catalog = context_for(ctx, key).await?;
    if let Err(issues) = catalog.check(&ctx.policy, key, entry) {
        return Err(ctx.refused(&key.to_string(), issues));
    }
    ctx.db
        .put(key.clone(), entry.clone(), condition)
        .await
        .map_err(|e| ctx.db_failure(e))
}

/// The catalog state a check of `key` needs: for a user, its tenant (whose tier decides
/// which limits the user's overrides may name); nothing for the others.
async fn context_for(ctx: &Context, key: &EntryKey) -> Result<Catalog, Failure> {
    let EntryKey::User { tenant, .. } = key else {
        return Ok(Catalog::empty(&ctx.policy));
    };
    let tenant_key = EntryKey::Tenant {
        tenant: tenant.clone(),
    };
    let found = ctx
        .db
        .get(&tenant_key)
        .await
        .map_err(|e| ctx.db_failure(e))?;
    let entries = found.map(|(entry, _)| (tenant_key, entry));
    Ok(Catalog::build(&ctx.policy, 0, entries).0)
}

fn written(ctx: &Context, key: &EntryKey, entry: &Entry, version: u64) {
    ctx.print(&document(key, entry, version), || {
        format!("wrote {key}: catalog version {version}")
    });
}

fn not_found(key: &EntryKey) -> Failure {
    Failure::NotFound(format!("no {key} in the catalog"))
}

/// An entry on one line, for lists.
fn line(key: &EntryKey, entry: &Entry, version: u64) -> String {
    let mut parts = vec![id_of(key).to_owned()];
    let (tier, overrides) = match entry {
        Entry::Tenant(r) => (r.tier.as_deref(), r.overrides.keys().cloned().collect()),
        Entry::User(r) => (r.tier.as_deref(), r.overrides.keys().cloned().collect()),
        Entry::ApiKey(r) => {
            parts.push(format!("tenant={}", r.tenant));
            if let Some(user) = &r.user {
                parts.push(format!("user={user}"));
            }
            (r.tier.as_deref(), Vec::<String>::new())
        }
    };
    if let Some(tier) = tier {
        parts.push(format!("tier={tier}"));
    }
    if !overrides.is_empty() {
        parts.push(format!("overrides={}", overrides.join(",")));
    }
    parts.push(format!("version={version}"));
    // Ids and names come from whoever wrote the row: a terminal must not run what they hold.
    printable(&parts.join("  ")).into_owned()
}

/// An entry in full, for `get`.
fn describe(key: &EntryKey, entry: &Entry, version: u64) -> String {
    // Each piece escaped, as in `line`; the line breaks between them are this function's.
    let mut out = format!("{} (version {version})", printable(&key.to_string()));
    let mut field = |name: &str, value: &str| {
        out.push_str(&format!("\n  {}: {}", printable(name), printable(value)));
    };
    let overrides = match entry {
        Entry::Tenant(r) => {
            field(
                "tier",
                r.tier.as_deref().unwrap_or("(the policy's default)"),
            );
            Some(&r.overrides)
        }
        Entry::User(r) => {
            field("tier", r.tier.as_deref().unwrap_or("(the tenant's)"));
            Some(&r.overrides)
        }
        Entry::ApiKey(r) => {
            field("tenant", &r.tenant);
            if let Some(user) = &r.user {
                field("user", user);
            }
            field(
                "tier",
                r.tier.as_deref().unwrap_or("(the tenant's or user's)"),
            );
            None
        }
    };
    for (limit, o) in overrides.into_iter().flatten() {
        let numbers = serde_json::to_value(o)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_owned)))
            .collect::<Vec<_>>()
            .join(" ");
        field(&format!("override {limit}"), &numbers);
    }
    out
}

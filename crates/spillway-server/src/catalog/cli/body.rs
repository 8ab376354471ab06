//! The JSON body of a `put` or `patch`: `--data` (inline, `@FILE`, or `@-` for stdin) with
//! `--tier`, `--override` (and, for API keys, `--tenant` / `--user`) merged over it, then read
//! as the entry's record with the field named when it does not fit.

use super::Failure;
use crate::admin::merge;
use clap::Args;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

/// The content of a tenant or a user.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// The tier's name.
    #[arg(long)]
    pub tier: Option<String>,
    /// New numbers for one limit, as LIMIT.FIELD=VALUE (fields: rate, burst, limit, window,
    /// capacity, shadow); repeat for several, e.g. `--override paid-user-minute.rate=1200/min`.
    #[arg(long = "override", value_name = "LIMIT.FIELD=VALUE", value_parser = parse_override)]
    pub overrides: Vec<Override>,
    /// The record as JSON (`{"tier":"paid","overrides":{...}}`), `@FILE`, or `@-` for stdin;
    /// the other flags are merged over it.
    #[arg(long, short = 'd', value_name = "JSON|@FILE")]
    pub data: Option<String>,
    /// Write only if the entry is at this version (0: only if it does not exist yet).
    #[arg(long, value_name = "VERSION")]
    pub if_version: Option<u64>,
}

/// The content of an API key entry.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// The tenant the key belongs to.
    #[arg(long)]
    pub tenant: Option<String>,
    /// The user it acts as.
    #[arg(long)]
    pub user: Option<String>,
    /// A tier its requests get.
    #[arg(long)]
    pub tier: Option<String>,
    /// The record as JSON (`{"tenant":"acme","user":"u1"}`), `@FILE`, or `@-` for stdin; the
    /// other flags are merged over it.
    #[arg(long, short = 'd', value_name = "JSON|@FILE")]
    pub data: Option<String>,
    /// Write only if the entry is at this version (0: only if it does not exist yet).
    #[arg(long, value_name = "VERSION")]
    pub if_version: Option<u64>,
}

/// One `--override`: a field of one limit's override and its value, typed as the record
/// wants it.
#[derive(Debug, Clone)]
pub struct Override {
    limit: String,
    field: String,
    value: Value,
}

fn parse_override(text: &str) -> Result<Override, String> {
    let shape = || {
        format!("`{text}` must look like LIMIT.FIELD=VALUE, e.g. paid-user-minute.rate=1200/min")
    };
    let (path, value) = text.split_once('=').ok_or_else(shape)?;
    let (limit, field) = path.trim().rsplit_once('.').ok_or_else(shape)?;
    if limit.is_empty() {
        return Err(shape());
    }
    let value = value.trim();
    let value = match field {
        "rate" | "window" => json!(value),
        "burst" | "limit" | "capacity" => json!(value
            .parse::<u64>()
            .map_err(|_| format!("`{field}` of `{limit}` takes a whole number, not `{value}`"))?),
        "shadow" => json!(value
            .parse::<bool>()
            .map_err(|_| format!("`shadow` of `{limit}` takes true or false, not `{value}`"))?),
        other => {
            return Err(format!(
                "`{other}` is not an override field (rate, burst, limit, window, capacity, shadow)"
            ))
        }
    };
    Ok(Override {
        limit: limit.to_owned(),
        field: field.to_owned(),
        value,
    })
}

impl RecordArgs {
    /// The body these flags describe: `--data` with the other flags merged over it.
    pub(crate) fn value(&self) -> Result<Value, Failure> {
        let mut doc = data(self.data.as_deref())?;
        let mut flags = Map::new();
        if let Some(tier) = &self.tier {
            flags.insert("tier".into(), json!(tier));
        }
        let mut overrides = Map::new();
        for o in &self.overrides {
            let entry = overrides
                .entry(o.limit.clone())
                .or_insert_with(|| json!({}));
            entry[&o.field] = o.value.clone();
        }
        if !overrides.is_empty() {
            flags.insert("overrides".into(), Value::Object(overrides));
        }
        merge(&mut doc, &Value::Object(flags));
        Ok(doc)
    }
}

impl KeyArgs {
    /// The body these flags describe: `--data` with the other flags merged over it.
    pub(crate) fn value(&self) -> Result<Value, Failure> {
        let mut doc = data(self.data.as_deref())?;
        let mut flags = Map::new();
        for (name, value) in [
            ("tenant", &self.tenant),
            ("user", &self.user),
            ("tier", &self.tier),
        ] {
            if let Some(value) = value {
                flags.insert(name.into(), json!(value));
            }
        }
        merge(&mut doc, &Value::Object(flags));
        Ok(doc)
    }
}

/// `--data`'s JSON object, `{}` when absent.
fn data(data: Option<&str>) -> Result<Value, Failure> {
    let Some(data) = data else {
        return Ok(json!({}));
    };
    let (text, origin) = match data.strip_prefix('@') {
        Some("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Failure::Usage(format!("cannot read --data from stdin: {e}")))?;
            (text, "stdin".to_owned())
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("cannot read --data file {path}: {e}")))?;
            (text, path.to_owned())
        }
        None => (data.to_owned(), "--data".to_owned()),
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{origin} is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Failure::Usage(format!("{origin} must be a JSON object")));
    }
    Ok(value)
}

/// `value` read as a record; a field that does not fit is named.
pub(crate) fn record<T: DeserializeOwned>(value: &Value, what: &str) -> Result<T, Failure> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let mut field = if path == "." { String::new() } else { path };
        // serde names an unknown field only in its message; name it as a field too.
        let message = e.inner().to_string();
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name)
        {
            field = if field.is_empty() {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            };
        }
        let issue = spillway_core::catalog::FieldIssue {
            field: field.clone(),
            message: e.inner().to_string(),
        };
        let message = if field.is_empty() {
            format!("refused {what}: {}; nothing was written", e.inner())
        } else {
            format!(
                "refused {what}: {field}: {}; nothing was written",
                e.inner()
            )
        };
        Failure::Refused(message, vec![issue])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_typed_by_field() {
        let o = parse_override("paid-user-minute.rate=1200/min").expect("parses");
        assert_eq!(
            (o.limit.as_str(), o.field.as_str()),
            ("paid-user-minute", "rate")
        );
        assert_eq!(o.value, json!("1200/min"));
        let o = parse_override("a.b.burst=200").expect("parses");
        assert_eq!((o.limit.as_str(), o.value.clone()), ("a.b", json!(200)));
        let err = parse_override("x.burst=lots").err().unwrap_or_default();
        assert!(
            err.contains("whole number") && err.contains("lots"),
            "{err}"
        );
        let err = parse_override("x.speed=3").err().unwrap_or_default();
        assert!(err.contains("`speed`"), "{err}");
        assert!(parse_override("rate=3").is_err());
    }

    #[test]
    fn flags_merge_over_data() {
        let args = RecordArgs {
            tier: Some("paid".into()),
            overrides: vec![
                parse_override("m.rate=5/s").expect("parses"),
                parse_override("m.burst=9").expect("parses"),
            ],
            data: Some(r#"{"tier":"free","overrides":{"m":{"limit":3},"n":{"limit":1}}}"#.into()),
            if_version: None,
        };
        let value = args.value().expect("builds");
        assert_eq!(
            value,
            json!({"tier":"paid","overrides":{"m":{"limit":3,"rate":"5/s","burst":9},"n":{"limit":1}}})
        );
    }
}

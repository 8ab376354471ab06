//! The policy file exactly as written: serde structs that mirror the YAML, with source
//! positions kept on every value a later check may reject.
//!
//! Nothing here judges meaning. Names, algorithms, failure modes and numbers arrive as loose
//! values (strings, [`Number`]) so that [`super::validate`] can report all of their problems
//! together, each with its line, instead of serde stopping at the first. Only the shape (a
//! mapping where a mapping belongs, no unknown fields) is enforced here.

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;
use serde_saphyr::Spanned;
use std::fmt;
use std::marker::PhantomData;

/// A string with the place it was written.
pub(crate) type Text = Spanned<String>;

/// The whole policy document.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub default_tier: Text,
    #[serde(default)]
    pub failure_mode: Option<Text>,
    #[serde(default, deserialize_with = "or_default")]
    pub descriptors: Vec<Text>,
    #[serde(default, deserialize_with = "or_default")]
    pub limits: Named<RawLimit>,
    #[serde(default, deserialize_with = "or_default")]
    pub global: Vec<Text>,
    #[serde(default, deserialize_with = "or_default")]
    pub tiers: Named<OrDefault<RawTier>>,
    #[serde(default, deserialize_with = "or_default")]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub route_matching: Option<RawRouteMatching>,
    #[serde(default)]
    pub ip_prefix: Option<RawIpPrefix>,
    #[serde(default, deserialize_with = "or_default")]
    pub tenants: Named<OrDefault<RawTenant>>,
    #[serde(default)]
    pub store: Option<Spanned<RawStore>>,
    #[serde(default)]
    pub principals: Option<Spanned<super::principal::RawPrincipals>>,
}

/// The `store:` section; which fields apply depends on `type` (checked in `super::store`).
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    #[serde(rename = "type")]
    pub kind: Text,
    #[serde(default)]
    pub max_keys: Option<Spanned<Number>>,
    #[serde(default)]
    pub url: Option<Text>,
    #[serde(default)]
    pub nodes: Option<Vec<Text>>,
    #[serde(default)]
    pub sentinels: Option<Vec<Text>>,
    #[serde(default)]
    pub master: Option<Text>,
    #[serde(default)]
    pub prefix: Option<Text>,
    #[serde(default)]
    pub timeout: Option<Text>,
    #[serde(default)]
    pub local_cache: Option<Spanned<Number>>,
    #[serde(default)]
    pub expected_nodes: Option<Spanned<Number>>,
    #[serde(default)]
    pub breaker_failures: Option<Spanned<Number>>,
    #[serde(default)]
    pub breaker_cooldown: Option<Text>,
    #[serde(default)]
    pub retry_after: Option<Text>,
    #[serde(default)]
    pub regions: Option<Spanned<super::region::RawRegions>>,
    #[serde(default)]
    pub exchange: Option<Spanned<super::region::RawExchange>>,
}

/// One named limit definition.
#[derive(Debug, Clone, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    pub algorithm: Text,
    #[serde(default)]
    pub key: Option<Spanned<Vec<Text>>>,
    #[serde(default)]
    pub shadow: Option<bool>,
    /// `before` (the default: the cost is known up front) or `after` (metered: the cost is
    /// reported once the response is done).
    #[serde(default)]
    pub charge: Option<Text>,
    #[serde(default)]
    pub rate: Option<Text>,
    #[serde(default)]
    pub burst: Option<Spanned<Number>>,
    #[serde(default)]
    pub limit: Option<Spanned<Number>>,
    #[serde(default)]
    pub window: Option<Text>,
    #[serde(default)]
    pub capacity: Option<Spanned<Number>>,
    #[serde(default)]
    pub emergency: Option<Spanned<RawEmergency>>,
    #[serde(default)]
    pub scope: Option<Text>,
}

/// A limit's `emergency` quota, used per node while the shared store is down: either an
/// absolute `limit` or a `fraction` of the limit's own quota.
#[derive(Debug, Clone, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEmergency {
    #[serde(default)]
    pub limit: Option<Spanned<Number>>,
    #[serde(default)]
    pub fraction: Option<Spanned<Number>>,
}

/// A tenant's replacement numbers for one limit; absent fields keep the limit's own.
#[derive(Debug, Clone, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverride {
    #[serde(default)]
    pub shadow: Option<bool>,
    #[serde(default)]
    pub rate: Option<Text>,
    #[serde(default)]
    pub burst: Option<Spanned<Number>>,
    #[serde(default)]
    pub limit: Option<Spanned<Number>>,
    #[serde(default)]
    pub window: Option<Text>,
    #[serde(default)]
    pub capacity: Option<Spanned<Number>>,
}

/// A tier: the limits every request of that tier is subject to.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTier {
    #[serde(default, deserialize_with = "or_default")]
    pub limits: Vec<Text>,
}

/// The `route_matching:` section: how request paths are compared with route patterns.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteMatching {
    #[serde(default)]
    pub case_sensitive: Option<bool>,
    #[serde(default)]
    pub format_suffixes: Option<bool>,
    #[serde(default)]
    pub method_overrides: Option<bool>,
}

/// The `ip_prefix:` section: the network sizes the `ip` dimension counts by (checked in
/// `super::ip_prefix`).
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIpPrefix {
    #[serde(default)]
    pub v4: Option<Spanned<Number>>,
    #[serde(default)]
    pub v6: Option<Spanned<Number>>,
}

/// One `routes` entry.
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    #[serde(rename = "match")]
    pub pattern: Text,
    #[serde(default)]
    pub cost: Option<Spanned<Number>>,
    #[serde(default, deserialize_with = "or_default")]
    pub limits: Vec<Text>,
    #[serde(default)]
    pub failure_mode: Option<Text>,
}

/// One tenant's tier assignment and overrides.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenant {
    #[serde(default)]
    pub tier: Option<Text>,
    #[serde(default, deserialize_with = "or_default")]
    pub overrides: Named<RawOverride>,
    #[serde(default)]
    pub home_region: Option<Text>,
}

/// A mapping from names to values that keeps file order and each name's position, which a
/// plain map would lose (and `Spanned` keys are not `Ord`). Duplicate names are already
/// refused by the YAML reader.
#[derive(Debug)]
pub(crate) struct Named<T>(pub Vec<(Text, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Entries<T> {
            type Value = Named<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to definitions")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(name) = map.next_key::<Text>()? {
                    let value = map.next_value()?;
                    entries.push((name, value));
                }
                Ok(Named(entries))
            }
        }

        deserializer.deserialize_map(Entries(PhantomData))
    }
}

/// Reads a field whose value may be left blank (`routes:` with nothing after it reads as
/// null, e.g. while every entry is commented out) as its empty default.
fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An entry whose body may be left blank (`free:` with nothing under it) for its default.
#[derive(Debug, Default)]
pub(crate) struct OrDefault<T>(pub T);

impl<T> std::ops::Deref for OrDefault<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for OrDefault<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        or_default(deserializer).map(OrDefault)
    }
}

/// A count as written: YAML may give an integer, a float or a quoted string, and each has
/// its own complaint (`-5`, `1.5`, `"lots"`), so the judgement waits for validation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Number {
    /// A YAML integer, possibly negative.
    Int(i128),
    /// A YAML float (also what an integer too large for 64 bits becomes).
    Float(f64),
    /// A string, possibly holding digits.
    Text(String),
}

impl Number {
    /// The value as a finite real number, if it is one (for fractions).
    pub(crate) fn fraction(&self) -> Option<f64> {
        let f = match self {
            Self::Int(i) => *i as f64,
            Self::Float(f) => *f,
            Self::Text(t) => t.trim().parse().ok()?,
        };
        f.is_finite().then_some(f)
    }

    /// The value as a positive whole number, or a message explaining why it is not one.
    pub(crate) fn positive(&self) -> Result<u64, String> {
        let int = match self {
            Self::Int(i) => *i,
            // `1e6` is a fine way to write a million; `1.5` is not a count.
            Self::Float(f) if f.fract() != 0.0 || !f.is_finite() => {
                return Err(format!("must be a whole number (got {f})"));
            }
            Self::Float(f) if f.abs() >= 1e30 => return Err(format!("{f} is too large")),
            Self::Float(f) => *f as i128,
            Self::Text(t) => t
                .trim()
                .parse::<i128>()
                .map_err(|_| format!("must be a whole number (got `{t}`)"))?,
        };
        match u64::try_from(int) {
            Ok(0) => Err("must be at least 1 (got 0)".into()),
            Ok(n) => Ok(n),
            Err(_) if int < 0 => Err(format!("must be at least 1 (got {int})")),
            Err(_) => Err(format!("{int} is too large")),
        }
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Any;

        impl Visitor<'_> for Any {
            type Value = Number;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number::Int(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(Number::Int(v.into()))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Number, E> {
                Ok(Number::Int(v))
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Number, E> {
                Ok(Number::Int(i128::try_from(v).unwrap_or(i128::MAX)))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
                Ok(Number::Float(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
                Ok(Number::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(Any)
    }
}

#[cfg(test)]
mod tests {
    use super::Number;

    #[test]
    fn numbers_explain_what_is_wrong() {
        assert_eq!(Number::Int(5).positive(), Ok(5));
        assert_eq!(Number::Text(" 7 ".into()).positive(), Ok(7));
        assert!(Number::Int(0)
            .positive()
            .unwrap_err()
            .contains("at least 1 (got 0)"));
        assert!(Number::Int(-3).positive().unwrap_err().contains("got -3"));
        assert!(Number::Float(1.5)
            .positive()
            .unwrap_err()
            .contains("whole number"));
        assert!(Number::Float(2e19)
            .positive()
            .unwrap_err()
            .contains("too large"));
        assert!(Number::Text("lots".into())
            .positive()
            .unwrap_err()
            .contains("`lots`"));
    }
}

//! The logins of a `redis_sentinel` store: the master's and the sentinels'.
//!
//! They come from the environment or from files, never from the policy (which is often kept
//! in a ConfigMap or a repository) and never as a password on the command line (where `ps`
//! would show it): `SPILLWAY_MASTER_PASSWORD` / `SPILLWAY_SENTINEL_PASSWORD` hold a password
//! itself, `--master-password-file` / `--sentinel-password-file` name a file holding one (a
//! mounted Kubernetes Secret; the file wins over the variable). Usernames (Redis ACL users)
//! are no secret and are plain flags.
//!
//! The sentinels name the master by address only, so its login cannot ride in a URL; a
//! `redis` or `redis_cluster` store's URLs carry their own (`redis://user:password@host`), and
//! these settings are refused with such a store rather than silently ignored.

use clap::Args;
use spillway_redis::{Credentials, SentinelAuth};
use std::path::{Path, PathBuf};

/// The variable holding the master's password itself.
pub const MASTER_PASSWORD_ENV: &str = "SPILLWAY_MASTER_PASSWORD";
/// The variable holding the sentinels' password itself.
pub const SENTINEL_PASSWORD_ENV: &str = "SPILLWAY_SENTINEL_PASSWORD";

/// Flags of the `redis_sentinel` logins; see the module docs.
#[derive(Debug, Clone, Default, Args)]
pub struct SentinelLoginArgs {
    /// ACL user on the master a `redis_sentinel` store uses (default: Redis's default user).
    #[arg(long, env = "SPILLWAY_MASTER_USERNAME", value_name = "NAME")]
    pub master_username: Option<String>,

    /// File holding the password of the master a `redis_sentinel` store uses (its
    /// `requirepass`, or the ACL user's). The variable SPILLWAY_MASTER_PASSWORD may hold the
    /// password itself.
    #[arg(long, env = "SPILLWAY_MASTER_PASSWORD_FILE", value_name = "FILE")]
    pub master_password_file: Option<PathBuf>,

    /// ACL user on the sentinels of a `redis_sentinel` store.
    #[arg(long, env = "SPILLWAY_SENTINEL_USERNAME", value_name = "NAME")]
    pub sentinel_username: Option<String>,

    /// File holding the sentinels' own password (their `requirepass`). The variable
    /// SPILLWAY_SENTINEL_PASSWORD may hold the password itself. A sentinel URL's own
    /// `user:password@` wins.
    #[arg(long, env = "SPILLWAY_SENTINEL_PASSWORD_FILE", value_name = "FILE")]
    pub sentinel_password_file: Option<PathBuf>,
}

impl SentinelLoginArgs {
    /// The logins, reading password files and the password variables through `env`.
    pub fn logins(&self, env: impl Fn(&str) -> Option<String>) -> Result<SentinelAuth, String> {
        Ok(SentinelAuth {
            master: Credentials {
                username: username(self.master_username.as_deref(), "--master-username")?,
                password: password(
                    self.master_password_file.as_deref(),
                    "--master-password-file",
                    env(MASTER_PASSWORD_ENV),
                    MASTER_PASSWORD_ENV,
                )?,
            },
            sentinels: Credentials {
                username: username(self.sentinel_username.as_deref(), "--sentinel-username")?,
                password: password(
                    self.sentinel_password_file.as_deref(),
                    "--sentinel-password-file",
                    env(SENTINEL_PASSWORD_ENV),
                    SENTINEL_PASSWORD_ENV,
                )?,
            },
        })
    }
}

/// Whether `auth` sets anything at all.
pub fn is_set(auth: &SentinelAuth) -> bool {
    auth != &SentinelAuth::default()
}

fn username(name: Option<&str>, flag: &str) -> Result<Option<String>, String> {
    match name.map(str::trim) {
        None => Ok(None),
        Some("") => Err(format!("{flag} must not be empty")),
        Some(name) if name.contains(char::is_whitespace) => {
            Err(format!("{flag} must not contain spaces"))
        }
        Some(name) => Ok(Some(name.to_owned())),
    }
}

/// The password from `file` (its one line, without the line end), else from the variable.
/// Errors name the file or the variable, never the content.
fn password(
    file: Option<&Path>,
    flag: &str,
    var: Option<String>,
    var_name: &str,
) -> Result<Option<String>, String> {
    let (text, source) = match file {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?,
            format!("{flag} {}", path.display()),
        ),
        None => match var {
            Some(text) => (text, var_name.to_owned()),
            None => return Ok(None),
        },
    };
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        return Err(format!("{source} holds an empty password"));
    }
    if text.contains(['\n', '\r']) {
        return Err(format!("{source} holds more than one line"));
    }
    Ok(Some(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Tr0ub4dor&3";

    fn env_with(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn passwords_come_from_files_or_variables_and_never_show() {
        let dir = std::env::temp_dir().join(format!("spillway-login-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("master");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let args = SentinelLoginArgs {
            master_username: Some("spillway".into()),
            master_password_file: Some(file.clone()),
            ..SentinelLoginArgs::default()
        };
        let auth = args
            .logins(env_with(&[
                (MASTER_PASSWORD_ENV, "loses-to-the-file"),
                (SENTINEL_PASSWORD_ENV, "from-the-variable"),
            ]))
            .unwrap();
        assert_eq!(auth.master.password.as_deref(), Some(SECRET));
        assert_eq!(auth.master.username.as_deref(), Some("spillway"));
        assert_eq!(
            auth.sentinels.password.as_deref(),
            Some("from-the-variable")
        );
        assert!(auth.sentinels.username.is_none());
        let shown = format!("{auth:?} {auth:#?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("from-the-variable"),
            "{shown}"
        );
        assert!(is_set(&auth));
        assert!(!is_set(
            &SentinelLoginArgs::default().logins(env_with(&[])).unwrap()
        ));

        std::fs::write(&file, "\n").unwrap();
        let err = args.logins(env_with(&[])).unwrap_err();
        assert!(
            err.contains("--master-password-file") && err.contains("empty"),
            "{err}"
        );
        std::fs::write(&file, format!("{SECRET}\nsecond line\n")).unwrap();
        let err = args.logins(env_with(&[])).unwrap_err();
        assert!(
            err.contains("more than one line") && !err.contains(SECRET),
            "{err}"
        );
        let err = SentinelLoginArgs::default()
            .logins(env_with(&[(SENTINEL_PASSWORD_ENV, "")]))
            .unwrap_err();
        assert!(err.contains(SENTINEL_PASSWORD_ENV), "{err}");
        let missing = SentinelLoginArgs {
            sentinel_password_file: Some(dir.join("absent")),
            ..SentinelLoginArgs::default()
        };
        assert!(missing
            .logins(env_with(&[]))
            .unwrap_err()
            .contains("cannot read"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Where the Envoy descriptor config comes from, and how it is kept current.
//!
//! `--envoy-config` names files or directories (every `*.yaml` / `*.yml` inside, hidden names
//! skipped, in name order), one domain per file as envoyproxy/ratelimit expects. The whole set
//! is read and validated together, so a reload is all or nothing: one bad file rejects the
//! reload and every domain keeps its previous limits. Reloads ride on the same task design as
//! the main policy ([`crate::reload`]): directory watches with a debounce, and `SIGHUP`.

use super::RlsState;
use crate::metrics::{self, ReloadOutcome};
use crate::reload::{Reload, Trigger};
use spillway_core::envoy_config::{EnvoyConfig, EnvoyConfigError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The files and directories the Envoy config is read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvoySource {
    /// As given on the command line.
    pub paths: Vec<PathBuf>,
}

/// Why the Envoy config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyLoadError {
    /// A file or directory could not be read.
    #[error("{path}: cannot read the Envoy rate-limit config: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The files were read but do not form a valid config.
    #[error("{0}")]
    Invalid(#[from] EnvoyConfigError),
}

impl EnvoySource {
    /// Reads every file of the source, as `(path, text)` in a stable order.
    pub fn read(&self) -> Result<Vec<(String, String)>, EnvoyLoadError> {
        let mut files = Vec::new();
        for path in &self.paths {
            let failed = |source| EnvoyLoadError::Read {
                path: path.clone(),
                source,
            };
            if path.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(failed)?
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|p| is_config_file(p))
                    .collect();
                found.sort();
                files.extend(found);
            } else {
                files.push(path.clone());
            }
        }
        files
            .into_iter()
            .map(|path| match std::fs::read_to_string(&path) {
                Ok(text) => Ok((path.display().to_string(), text)),
                Err(source) => Err(EnvoyLoadError::Read { path, source }),
            })
            .collect()
    }

    /// Validates texts read by [`EnvoySource::read`].
    pub fn parse(texts: &[(String, String)]) -> Result<EnvoyConfig, EnvoyLoadError> {
        Ok(EnvoyConfig::from_sources(texts)?)
    }

    /// Reads and validates in one step.
    pub fn load(&self) -> Result<(EnvoyConfig, Vec<(String, String)>), EnvoyLoadError> {
        let texts = self.read()?;
        Ok((Self::parse(&texts)?, texts))
    }

    /// Directories to watch: a directory itself, or a file's parent.
    fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .paths
            .iter()
            .map(|p| match p.parent() {
                _ if p.is_dir() => p.clone(),
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// A YAML file whose name does not start with a dot (Kubernetes keeps `..data` and the like
/// next to the real files of a mounted ConfigMap).
fn is_config_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && path.is_file()
}

/// Applies new Envoy config files to the running gRPC service.
pub struct EnvoyReloader {
    state: Arc<RlsState>,
    source: EnvoySource,
    last: Vec<(String, String)>,
}

impl EnvoyReloader {
    /// A reloader for `source`, whose config in force was built from `current`.
    pub fn new(state: Arc<RlsState>, source: EnvoySource, current: Vec<(String, String)>) -> Self {
        Self {
            state,
            source,
            last: current,
        }
    }
}

impl Reload for EnvoyReloader {
    fn watch_dirs(&self) -> Vec<PathBuf> {
        self.source.watch_dirs()
    }

    async fn reload(&mut self, trigger: Trigger) -> Option<ReloadOutcome> {
        let texts = match self.source.read() {
            Ok(texts) => texts,
            Err(err) => {
                tracing::warn!(?trigger, error = %err,
                    "envoy config reload rejected; keeping the previous config");
                metrics::record_reload(ReloadOutcome::Rejected);
                return Some(ReloadOutcome::Rejected);
            }
        };
        if trigger == Trigger::FileChange && texts == self.last {
            return None;
        }
        let parsed = EnvoySource::parse(&texts);
        self.last = texts;
        let outcome = match parsed {
            Ok(config) => {
                let (domains, limits) = (config.domain_names().len(), config.limit_count());
                self.state.envoy.store(Arc::new(config));
                tracing::info!(?trigger, domains, limits, "envoy config reloaded");
                ReloadOutcome::Success
            }
            Err(err) => {
                tracing::warn!(?trigger, error = %err,
                    "envoy config reload rejected; keeping the previous config");
                ReloadOutcome::Rejected
            }
        };
        metrics::record_reload(outcome);
        Some(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_yield_their_yaml_files_in_name_order() {
        let dir = std::env::temp_dir().join(format!("spillway-envoy-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        for name in ["b.yaml", "a.yml", ".hidden.yaml", "notes.txt"] {
            std::fs::write(dir.join(name), "domain: x\n").expect("write");
        }
        let source = EnvoySource {
            paths: vec![dir.clone()],
        };
        let names: Vec<String> = source
            .read()
            .expect("readable")
            .into_iter()
            .map(|(p, _)| p.rsplit('/').next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(names, ["a.yml", "b.yaml"]);
        assert_eq!(source.watch_dirs(), vec![dir.clone()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

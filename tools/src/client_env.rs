//! The client settings every command reads: the `FLOTILLA_*` variables (`FLOTILLA_ENDPOINTS`,
//! `FLOTILLA_CA`, `FLOTILLA_CERT`, `FLOTILLA_KEY`, `FLOTILLA_CLUSTER_ID`), or, when they are
//! unset, the env file `flotilla cluster up` wrote under `./data/local`.

use std::path::PathBuf;

use anyhow::Context;
use flotilla_client::{Client, ClientConfig};

/// The client settings.
///
/// # Errors
/// A missing variable or an unreadable certificate, named.
pub fn client_config() -> anyhow::Result<ClientConfig> {
    if std::env::var_os("FLOTILLA_ENDPOINTS").is_none() {
        let env = PathBuf::from("./data/local/env");
        if let Ok(text) = std::fs::read_to_string(&env) {
            for line in text.lines() {
                if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                    std::env::set_var(k, v);
                }
            }
        }
    }
    ClientConfig::from_env().context("client settings")
}

/// A client with those settings.
///
/// # Errors
/// As [`client_config`], or no node answered.
pub async fn connect() -> anyhow::Result<Client> {
    Client::connect(client_config()?)
        .await
        .context("cannot reach the cluster")
}

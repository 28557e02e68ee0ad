//! How a client proves who it is and checks whom it talks to: TLS (the
//! cluster's CA, this party's certificate and key) and a bearer token.
//!
//! Owns turning those into a dialed channel. Must never send a token over a
//! connection it did not mean to: the token goes on the channel the
//! credentials built, and nowhere else.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use waft_proto::{AuthChannel, BearerToken};

/// A PEM file larger than this is refused: a CA bundle or a certificate
/// with its key is a few kilobytes.
pub const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// What a client presents and trusts. The default is plaintext and no token
/// (a cluster started with `waft serve --plaintext`).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    tls: Option<ClientTls>,
    token: BearerToken,
}

/// TLS towards the servers: the CA that signed their certificates, this
/// party's own certificate and key (the servers require one), and the name
/// their certificates must carry. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct ClientTls {
    ca: Certificate,
    identity: Identity,
    /// The name checked in the server's certificate; `None`: the host of the
    /// address dialed (`127.0.0.1`, `db1.example`).
    server_name: Option<String>,
}

/// The files a TLS client reads, as given on a command line or in an
/// environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} has {len} bytes, more than the {PEM_FILE_BYTES_MAX} a PEM file may have")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("{0}")]
    Incomplete(String),
    #[error("the token: {0}")]
    Token(String),
}

/// Reads a PEM file, bounded.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    let read = |source| CredentialsError::Read { path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > PEM_FILE_BYTES_MAX {
        return Err(CredentialsError::TooLarge { path: path.to_path_buf(), len });
    }
    std::fs::read(path).map_err(read)
}

impl TlsFiles {
    /// Whether any TLS file was named.
    pub fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The TLS settings the files give; all three must be named, or none
    /// (`Ok(None)`: plaintext).
    pub fn load(&self) -> Result<Option<ClientTls>, CredentialsError> {
        match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => {
                if self.server_name.is_some() {
                    return Err(CredentialsError::Incomplete(
                        "a TLS server name without TLS: also give the CA, certificate and key".into(),
                    ));
                }
                Ok(None)
            }
            (Some(ca), Some(cert), Some(key)) => Ok(Some(ClientTls::from_pem(
                &read_pem(ca)?,
                &read_pem(cert)?,
                &read_pem(key)?,
                self.server_name.clone(),
            ))),
            _ => Err(CredentialsError::Incomplete(
                "TLS needs all three of the CA, this party's certificate and its key".into(),
            )),
        }
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl ClientTls {
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8], server_name: Option<String>) -> ClientTls {
        ClientTls { ca: Certificate::from_pem(ca), identity: Identity::from_pem(cert, key), server_name }
    }

    /// The same, checking servers against `server_name` instead.
    pub fn for_server(&self, server_name: impl Into<String>) -> ClientTls {
        ClientTls { server_name: Some(server_name.into()), ..self.clone() }
    }

    fn config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(self.ca.clone()).identity(self.identity.clone());
        match &self.server_name {
            Some(name) => config.domain_name(name.clone()),
            None => config,
        }
    }
}

impl Credentials {
    pub fn new(tls: Option<ClientTls>, token: Option<&str>) -> Result<Credentials, CredentialsError> {
        Ok(Credentials { tls, token: BearerToken::new(token).map_err(CredentialsError::Token)? })
    }

    pub fn tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    /// The endpoint for `addr` (`host:port`): `https` with these TLS
    /// settings, or `http`.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        endpoint(self.tls.as_ref(), addr)
    }

    /// `channel` with this party's token on every call.
    pub fn authorize(&self, channel: tonic::transport::Channel) -> AuthChannel {
        AuthChannel::new(channel, self.token.clone())
    }
}

/// The endpoint for `addr` (`host:port`): `https` with `tls`, or `http`.
pub fn endpoint(tls: Option<&ClientTls>, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.config()),
        None => Endpoint::from_shared(format!("http://{addr}")),
    }
}

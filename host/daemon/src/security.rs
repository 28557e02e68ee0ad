//! Who may talk to this node, and what they may do: TLS between every party,
//! identities read from certificates and bearer tokens, and roles per group.
//!
//! Owns the node's TLS settings (server and dialing), the names identities
//! carry in certificates, the users file, and every allow-or-refuse decision
//! the services ask for. Must never let a refusal do anything: a service asks
//! first and acts only on `Ok`.
//!
//! # Identities
//!
//! With TLS every party presents a certificate signed by the cluster's CA
//! (mutual TLS: a connection without one, or with one from another CA, is
//! refused in the handshake). The certificate's DNS subject alternative
//! names say who it is:
//!
//! * `node-N.waft`: node N. Peers dial node N expecting that name, and a
//!   peer stream that claims node N must come with node N's certificate.
//!   Nodes may do anything (they are the cluster).
//! * `NAME.user.waft`: user NAME, whose roles the users file gives.
//!
//! A bearer token (`authorization: Bearer TOKEN`) names a user instead; the
//! users file keeps its SHA-256, not the token. A token wins over the
//! certificate's name (the certificate still had to pass the handshake).
//!
//! # Roles
//!
//! `read` (queries, status), `write` (proposals and sessions, and read),
//! `admin` (deploy, create-group, set-group, membership, transfer, snapshot,
//! reset-peers, replace-node; and write). Each grant names its groups, or
//! `*` for all. Without a users file every caller may do everything (the
//! only choice on plaintext without tokens): `waft serve` says so at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use waft_client::ClientTls;
use waft_proto::client;
use waft_raft::NodeId;

/// The DNS name a node's certificate carries.
pub fn node_name(node: NodeId) -> String {
    format!("node-{node}.waft")
}

/// The DNS name suffix of a user's certificate: `NAME.user.waft`.
pub const USER_NAME_SUFFIX: &str = ".user.waft";
/// Longest user name (one DNS label).
pub const USER_NAME_BYTES_MAX: usize = 63;
/// Users a users file may list.
pub const USERS_MAX: usize = 10_000;
/// A users file larger than this is refused.
pub const USERS_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Whether `name` may name a user: one DNS label of lower-case letters,
/// digits and `-`, not starting or ending with `-`.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= USER_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A node of the cluster (its certificate says so).
    Node(NodeId),
    /// A user of the users file.
    User(String),
    /// Neither a token nor a certificate with a name.
    Anonymous,
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Node(n) => write!(f, "node {n}"),
            Principal::User(name) => write!(f, "user {name:?}"),
            Principal::Anonymous => write!(f, "an anonymous caller"),
        }
    }
}

/// The identity a certificate (DER) names: `Err` when it cannot be read or
/// names more than one identity; `Ok(None)` when it names none.
pub fn principal_of_cert(der: &[u8]) -> Result<Option<Principal>, String> {
    let der = rustls_pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut found: Option<Principal> = None;
    for name in cert.valid_dns_names() {
        let principal = if let Some(user) = name.strip_suffix(USER_NAME_SUFFIX) {
            if !valid_user_name(user) {
                continue;
            }
            Principal::User(user.to_string())
        } else if let Some(node) = name.strip_prefix("node-").and_then(|n| n.strip_suffix(".waft")) {
            // Digits only: `node-007` is not node 7, and no sign or space.
            match node.parse::<NodeId>() {
                Ok(id) if id != waft_raft::NONE && node_name(id) == name => Principal::Node(id),
                _ => continue,
            }
        } else {
            continue;
        };
        match &found {
            Some(p) if *p != principal => {
                return Err(format!("the certificate names both {p} and {principal}; an identity names one"));
            }
            _ => found = Some(principal),
        }
    }
    Ok(found)
}

/// A role a call needs. Ordered: each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// The groups a grant covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Groups {
    All,
    Some(Vec<u64>),
}

/// One grant: a role on some groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub groups: Groups,
}

/// Parses `ROLE:GROUPS`, e.g. `read:1`, `write:1,2`, `admin:*`.
pub fn parse_grant(s: &str) -> Result<Grant, String> {
    let (role, groups) =
        s.split_once(':').ok_or_else(|| format!("{s:?}: a grant is ROLE:GROUPS, e.g. \"read:1\" or \"admin:*\""))?;
    let role = match role.trim() {
        "read" => Role::Read,
        "write" => Role::Write,
        "admin" => Role::Admin,
        other => return Err(format!("{s:?}: no role {other:?}; the roles are read, write and admin")),
    };
    let groups = match groups.trim() {
        "*" => Groups::All,
        list => Groups::Some(
            list.split(',')
                .map(|g| match g.trim().parse::<u64>() {
                    Ok(0) => Err(format!("{s:?}: group 0 is reserved")),
                    Ok(g) => Ok(g),
                    Err(e) => Err(format!("{s:?}: group {g:?}: {e}")),
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Grant { role, groups })
}

/// The users file, as written (TOML):
///
/// ```toml
/// [[users]]
/// name = "reader"             # a certificate for reader.user.waft signs in as this user
/// token_sha256 = "9f86d0..."  # optional: a bearer token whose SHA-256 is this signs in too
/// grants = ["read:1"]         # ROLE:GROUPS; roles read < write < admin; groups "1,2" or "*"
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    token_sha256: Option<String>,
    #[serde(default)]
    grants: Vec<String>,
}

/// Who may do what: the users file, loaded.
#[derive(Debug, Default)]
pub struct Users {
    grants: BTreeMap<String, Vec<Grant>>,
    /// SHA-256 of a token → its user.
    tokens: BTreeMap<[u8; 32], String>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, String> {
        let len = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
        if len > USERS_FILE_BYTES_MAX {
            return Err(format!("{} has {len} bytes, more than {USERS_FILE_BYTES_MAX}", path.display()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Users, String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.users.len() > USERS_MAX {
            return Err(format!("{} users; at most {USERS_MAX}", file.users.len()));
        }
        let mut users = Users::default();
        for u in file.users {
            if !valid_user_name(&u.name) {
                return Err(format!(
                    "user {:?}: a name is lower-case letters, digits and '-' (one DNS label, at most \
                     {USER_NAME_BYTES_MAX} bytes)",
                    u.name
                ));
            }
            let grants = u.grants.iter().map(|g| parse_grant(g)).collect::<Result<Vec<_>, _>>()?;
            if users.grants.insert(u.name.clone(), grants).is_some() {
                return Err(format!("user {:?} is listed twice", u.name));
            }
            if let Some(hex) = &u.token_sha256 {
                let hash = parse_sha256(hex).map_err(|e| format!("user {:?}: token_sha256: {e}", u.name))?;
                if let Some(other) = users.tokens.insert(hash, u.name.clone()) {
                    return Err(format!("users {other:?} and {:?} have the same token", u.name));
                }
            }
        }
        Ok(users)
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    fn allows(&self, user: &str, group: Option<u64>, role: Role) -> bool {
        self.grants.get(user).is_some_and(|grants| {
            grants.iter().any(|g| {
                g.role >= role
                    && match (&g.groups, group) {
                        (Groups::All, _) => true,
                        (Groups::Some(list), Some(group)) => list.contains(&group),
                        // Node-wide operations need the role on every group.
                        (Groups::Some(_), None) => false,
                    }
            })
        })
    }
}

fn parse_sha256(hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    // Digits are ASCII: checked first, so the pairs below are whole
    // characters (a multi-byte one would split).
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{hex:?} is not hex"));
    }
    if hex.len() != 64 {
        return Err(format!("{} hex digits; a SHA-256 has 64", hex.len()));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format!("{hex:?} is not hex"))?;
    }
    Ok(out)
}

/// The SHA-256 of a token, in hex: what the users file keeps.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Refusals, for metrics.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Calls refused because the caller lacks a role.
    pub denied: AtomicU64,
    /// Calls refused because the caller's token or certificate was not
    /// accepted (unknown token, unreadable certificate).
    pub unauthenticated: AtomicU64,
    /// Peer streams and snapshot pulls refused: no node certificate, or
    /// another node's.
    pub peers_refused: AtomicU64,
}

/// The node's policy: whether TLS is on, and the users.
#[derive(Debug, Default)]
pub struct Auth {
    /// TLS is on: every connection came with a certificate from the CA.
    pub tls: bool,
    /// `None`: no users file; every caller may do everything.
    pub users: Option<Users>,
    pub stats: AuthStats,
}

/// Who a request comes from, or why that could not be settled.
pub type Caller = Result<Principal, String>;

impl Auth {
    /// The caller of `request`: its token's user if it carries a token, else
    /// the name in its certificate, else anonymous.
    pub fn identify<T>(&self, request: &tonic::Request<T>) -> Caller {
        if let Some(value) = request.metadata().get(waft_proto::AUTHORIZATION_HEADER) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| "the authorization header is not `Bearer TOKEN`".to_string())?;
            let Some(users) = &self.users else {
                // Nothing to check it against: everyone may do everything.
                return Ok(Principal::Anonymous);
            };
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            return match users.tokens.get(&hash) {
                Some(user) => Ok(Principal::User(user.clone())),
                None => Err("the token is not one this node knows".to_string()),
            };
        }
        self.certified(request)
    }

    /// The identity the request's certificate names (anonymous without TLS
    /// or without a name).
    pub fn certified<T>(&self, request: &tonic::Request<T>) -> Caller {
        let Some(certs) = request.peer_certs() else { return Ok(Principal::Anonymous) };
        let Some(leaf) = certs.first() else { return Ok(Principal::Anonymous) };
        Ok(principal_of_cert(leaf.as_ref())?.unwrap_or(Principal::Anonymous))
    }

    /// Whether `caller` may act as `role` on `group` (`None`: on the node as
    /// a whole); the refusal it hears if not, counted.
    pub fn check(&self, caller: &Caller, group: Option<u64>, role: Role) -> Result<(), client::Error> {
        let principal = match caller {
            Ok(p) => p,
            Err(why) => {
                self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
                return Err(client::Error::permission_denied(format!("not signed in: {why}")));
            }
        };
        let Some(users) = &self.users else { return Ok(()) };
        let allowed = match principal {
            Principal::Node(_) => true,
            Principal::User(name) => users.allows(name, group, role),
            Principal::Anonymous => false,
        };
        if allowed {
            return Ok(());
        }
        self.stats.denied.fetch_add(1, Ordering::Relaxed);
        let on = match group {
            Some(g) => format!("group {g}"),
            None => "every group (a node-wide operation)".to_string(),
        };
        let who = match principal {
            Principal::Anonymous => "an anonymous caller (no token, no certificate naming a user)".to_string(),
            p => p.to_string(),
        };
        Err(client::Error::permission_denied(format!("{who} lacks the {} role on {on}", role.name())))
    }

    /// Whether `caller` may see `group` in a status listing.
    pub fn may_read(&self, caller: &Caller, group: u64) -> bool {
        match (&self.users, caller) {
            (None, Ok(_)) => true,
            (Some(users), Ok(Principal::User(name))) => users.allows(name, Some(group), Role::Read),
            (Some(_), Ok(Principal::Node(_))) => true,
            _ => false,
        }
    }

    /// With TLS, the node a peer request comes from must be `claimed`, by
    /// its certificate. Without TLS, the claim stands (nothing to check).
    pub fn check_peer<T>(&self, request: &tonic::Request<T>, claimed: Option<NodeId>) -> Result<(), String> {
        if !self.tls {
            return Ok(());
        }
        let refused = |why: String| {
            self.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
            Err(why)
        };
        match (self.certified(request), claimed) {
            (Ok(Principal::Node(n)), Some(c)) if n == c => Ok(()),
            (Ok(Principal::Node(_)), None) => Ok(()),
            (Ok(Principal::Node(n)), Some(c)) => {
                refused(format!("the stream claims node {c} but comes with node {n}'s certificate"))
            }
            (Ok(p), _) => refused(format!("peer calls need a node's certificate; this one is {p}'s")),
            (Err(why), _) => refused(why),
        }
    }
}

/// Where a node's TLS files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A node's TLS material, loaded and checked. Its `Debug` never shows the
/// key.
#[derive(Clone)]
pub struct NodeTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").field("cert_bytes", &self.cert.len()).finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Reads the files and checks the certificate is `node`'s.
    pub fn load(paths: &TlsPaths, node: NodeId) -> Result<NodeTls, String> {
        let read = |p: &Path| waft_client::read_pem(p).map_err(|e| e.to_string());
        let tls = NodeTls { ca: read(&paths.ca)?, cert: read(&paths.cert)?, key: read(&paths.key)? };
        let der = first_pem_certificate(&tls.cert)
            .ok_or_else(|| format!("{} holds no PEM certificate", paths.cert.display()))?;
        match principal_of_cert(&der).map_err(|e| format!("{}: {e}", paths.cert.display()))? {
            Some(Principal::Node(n)) if n == node => Ok(tls),
            Some(p) => Err(format!(
                "{} is {p}'s certificate, and this is node {node}: a node serves with a certificate naming {}",
                paths.cert.display(),
                node_name(node)
            )),
            None => Err(format!(
                "{} names no node: a node's certificate carries the DNS name {} (`waft certs init` writes one)",
                paths.cert.display(),
                node_name(node)
            )),
        }
    }

    /// The server side: this node's certificate, and a certificate from the
    /// CA required of every caller.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// Dialing node `peer`: its certificate must name it.
    pub fn to_node(&self, peer: NodeId) -> ClientTls {
        ClientTls::from_pem(&self.ca, &self.cert, &self.key, Some(node_name(peer)))
    }
}

/// How this node dials its peers: TLS as node `peer` expects, or plaintext.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    tls: Option<NodeTls>,
}

impl Dialer {
    pub fn new(tls: Option<NodeTls>) -> Dialer {
        Dialer { tls }
    }

    /// Whether this node dials with TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The endpoint of node `peer` at `addr`.
    pub fn endpoint(&self, peer: NodeId, addr: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
        waft_client::endpoint(self.tls.as_ref().map(|t| t.to_node(peer)).as_ref(), addr)
    }
}

/// The DER bytes of the first certificate in a PEM text.
fn first_pem_certificate(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem).ok().map(|c| c.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_roles_include_the_lesser_ones() {
        assert_eq!(parse_grant("read:1").unwrap(), Grant { role: Role::Read, groups: Groups::Some(vec![1]) });
        assert_eq!(parse_grant("admin:*").unwrap(), Grant { role: Role::Admin, groups: Groups::All });
        assert_eq!(parse_grant("write: 1, 2").unwrap(), Grant { role: Role::Write, groups: Groups::Some(vec![1, 2]) });
        for bad in ["read", "owner:1", "read:0", "read:x", "read:"] {
            assert!(parse_grant(bad).is_err(), "{bad}");
        }
        let users = Users::parse(
            "[[users]]\nname = \"w\"\ngrants = [\"write:1\"]\n[[users]]\nname = \"a\"\ngrants = [\"admin:*\"]\n",
        )
        .unwrap();
        assert!(users.allows("w", Some(1), Role::Read));
        assert!(users.allows("w", Some(1), Role::Write));
        assert!(!users.allows("w", Some(1), Role::Admin));
        assert!(!users.allows("w", Some(2), Role::Read));
        assert!(!users.allows("w", None, Role::Read));
        assert!(users.allows("a", None, Role::Admin));
        assert!(!users.allows("nobody", Some(1), Role::Read));
    }

    #[test]
    fn a_users_file_with_a_mistake_is_refused_by_name() {
        for (text, says) in [
            ("[[users]]\nname = \"A B\"\n", "lower-case"),
            ("[[users]]\nname = \"a\"\n[[users]]\nname = \"a\"\n", "twice"),
            ("[[users]]\nname = \"a\"\ntoken_sha256 = \"00\"\n", "64"),
            ("[[users]]\nname = \"a\"\ngrants = [\"root:*\"]\n", "no role"),
            ("[[users]]\nname = \"a\"\nrole = \"admin\"\n", "role"),
        ] {
            let e = Users::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let same = token_sha256("t");
        let e = Users::parse(&format!(
            "[[users]]\nname = \"a\"\ntoken_sha256 = \"{same}\"\n[[users]]\nname = \"b\"\ntoken_sha256 = \"{same}\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("same token"), "{e}");
    }

    /// Found by the users_file fuzz target: a token hash of 64 bytes with
    /// a two-byte character in it split that character and panicked.
    #[test]
    fn a_token_hash_with_a_character_beyond_ascii_is_refused() {
        let hash = format!("{}\u{2f1}{}", "9f".repeat(26), "5b0f00a08f");
        assert_eq!(hash.len(), 64);
        let e = Users::parse(&format!("[[users]]\nname = \"r\"\ntoken_sha256 = \"{hash}\"\n")).unwrap_err();
        assert!(e.contains("not hex"), "{e}");
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let token = waft_proto::BearerToken::new(Some("s3cret-token")).unwrap();
        assert!(!format!("{token:?}").contains("s3cret"));
        let tls = NodeTls { ca: b"ca".to_vec(), cert: b"cert".to_vec(), key: b"PRIVATE KEY s3cret".to_vec() };
        assert!(!format!("{tls:?}").contains("s3cret"));
    }

    #[test]
    fn user_names_are_one_dns_label() {
        for good in ["a", "reader-1", "x9"] {
            assert!(valid_user_name(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a b", "*", &"a".repeat(64)] {
            assert!(!valid_user_name(bad), "{bad}");
        }
    }
}

//! `waft certs`: a development CA and the certificates a TLS cluster needs,
//! and bearer tokens for the users file.
//!
//! Owns the names certificates carry (through `waft_daemon::security`) and
//! the files it writes. Must never overwrite a file: a CA replaced by
//! mistake locks every node out.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use waft_daemon::security::{USER_NAME_SUFFIX, node_name, token_sha256, valid_user_name};

/// Years a development certificate is valid.
pub const VALID_YEARS: i32 = 10;
/// Bytes of randomness in a token (printed as hex).
pub const TOKEN_BYTES: usize = 32;

#[derive(clap::Subcommand)]
pub enum CertsCmd {
    /// Write a development CA, a certificate for every node, an `admin`
    /// and a `client` identity, and a users file giving admin every role
    /// and client write on every group. Refuses to overwrite a file.
    Init {
        /// Where to write them (created if missing).
        dir: PathBuf,
        /// The node ids, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
        /// Another name or address clients dial a node by, for every
        /// node's certificate (NAME) or one node's (ID=NAME); repeat.
        /// localhost and 127.0.0.1 are always in.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// More user identities besides admin and client (certificates
        /// only; give them roles in users.toml).
        #[arg(long = "user")]
        users: Vec<String>,
    },
    /// Print a new random bearer token (on stderr) and the users-file
    /// entry that accepts it (on stdout; only the token's SHA-256 is in it).
    Token {
        /// The user the token signs in as.
        #[arg(long)]
        user: String,
        /// ROLE:GROUPS, e.g. read:1 or admin:* (repeat).
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
}

pub fn run(cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::Init { dir, nodes, hosts, users } => init(&dir, &nodes, &hosts, &users),
        CertsCmd::Token { user, grants } => {
            if !valid_user_name(&user) {
                bail!("--user {user:?}: a name is lower-case letters, digits and '-'");
            }
            for g in &grants {
                waft_daemon::security::parse_grant(g).map_err(anyhow::Error::msg)?;
            }
            let token = new_token()?;
            // The token on stderr, the entry on stdout: `>> users.toml`
            // keeps only the hash.
            eprintln!("token for {user} (give it to them as WAFT_TOKEN or --token; it is kept nowhere):");
            eprintln!("{token}");
            println!("[[users]]");
            println!("name = {user:?}");
            println!("token_sha256 = {:?}", token_sha256(&token));
            println!("grants = {grants:?}");
            Ok(())
        }
    }
}

fn new_token() -> Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("cannot draw random bytes: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// This year, by the system clock.
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

fn validity(params: &mut CertificateParams) {
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + VALID_YEARS, 1, 1);
}

/// Writes `contents` to a new file `dir/name`; a key is readable by its
/// owner only.
fn write_new(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<PathBuf> {
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let mut file = options.open(&path).with_context(|| {
        format!("cannot create {} (an existing file is never overwritten: move it away first)", path.display())
    })?;
    file.write_all(contents.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(path)
}

fn init(dir: &Path, nodes: &[u64], hosts: &[String], users: &[String]) -> Result<()> {
    if nodes.contains(&0) {
        bail!("--nodes: node 0 is reserved");
    }
    let mut all_users = vec!["admin".to_string(), "client".to_string()];
    for u in users {
        if !valid_user_name(u) {
            bail!("--user {u:?}: a name is lower-case letters, digits and '-'");
        }
        if !all_users.contains(u) {
            all_users.push(u.clone());
        }
    }
    let mut extra: Vec<(Option<u64>, String)> = Vec::new();
    for h in hosts {
        match h.split_once('=') {
            Some((id, name)) => {
                let id: u64 = id.parse().with_context(|| format!("--host {h:?}: node id"))?;
                if !nodes.contains(&id) {
                    bail!("--host {h:?}: node {id} is not among --nodes");
                }
                extra.push((Some(id), name.to_string()));
            }
            None => extra.push((None, h.clone())),
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Fail before writing anything if any file is there already.
    let mut names = vec!["ca.pem".to_string(), "ca.key".to_string(), "users.toml".to_string()];
    for n in nodes {
        names.push(format!("node-{n}.pem"));
        names.push(format!("node-{n}.key"));
    }
    for u in &all_users {
        names.push(format!("{u}.pem"));
        names.push(format!("{u}.key"));
    }
    if let Some(there) = names.iter().map(|n| dir.join(n)).find(|p| p.exists()) {
        bail!("{} exists; `waft certs init` never overwrites (use an empty directory)", there.display());
    }

    let ca_key = KeyPair::generate().context("cannot generate the CA's key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "waft development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut ca_params);
    let ca_cert = ca_params.self_signed(&ca_key).context("cannot sign the CA")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |sans: Vec<String>, common: &str, server: bool| -> Result<(String, String)> {
        let key = KeyPair::generate().context("cannot generate a key")?;
        let mut params = CertificateParams::new(sans.clone()).with_context(|| format!("names {sans:?}"))?;
        params.distinguished_name.push(DnType::CommonName, common);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        validity(&mut params);
        let cert = params.signed_by(&key, &issuer).with_context(|| format!("cannot sign {common}'s certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    };

    let mut written = vec![
        write_new(dir, "ca.pem", &ca_cert.pem(), false)?,
        write_new(dir, "ca.key", &issuer.key().serialize_pem(), true)?,
    ];
    for &n in nodes {
        let mut sans = vec![node_name(n), "localhost".to_string(), "127.0.0.1".to_string()];
        sans.extend(extra.iter().filter(|(id, _)| id.is_none() || *id == Some(n)).map(|(_, h)| h.clone()));
        let (cert, key) = leaf(sans, &format!("waft node {n}"), true)?;
        written.push(write_new(dir, &format!("node-{n}.pem"), &cert, false)?);
        written.push(write_new(dir, &format!("node-{n}.key"), &key, true)?);
    }
    for u in &all_users {
        let (cert, key) = leaf(vec![format!("{u}{USER_NAME_SUFFIX}")], &format!("waft user {u}"), false)?;
        written.push(write_new(dir, &format!("{u}.pem"), &cert, false)?);
        written.push(write_new(dir, &format!("{u}.key"), &key, true)?);
    }
    let users_toml = format!(
        "# Who may do what (waft serve --users). A certificate naming NAME{USER_NAME_SUFFIX}\n\
         # signs in as user NAME; so does a bearer token whose SHA-256 is token_sha256\n\
         # (`waft certs token` makes one). Roles: read < write < admin; groups \"1,2\" or \"*\".\n\
         [[users]]\nname = \"admin\"\ngrants = [\"admin:*\"]\n\n\
         [[users]]\nname = \"client\"\ngrants = [\"write:*\"]\n"
    );
    written.push(write_new(dir, "users.toml", &users_toml, false)?);
    for p in &written {
        println!("wrote {}", p.display());
    }
    println!(
        "serve node N with --tls-ca {d}/ca.pem --tls-cert {d}/node-N.pem --tls-key {d}/node-N.key --users {d}/users.toml",
        d = dir.display()
    );
    println!(
        "clients: --tls-ca {d}/ca.pem --tls-cert {d}/client.pem --tls-key {d}/client.key (operators: admin.pem, admin.key)",
        d = dir.display()
    );
    Ok(())
}

//! The `waft serve` configuration file (TOML) and how it meets the flags.
//!
//! Owns the file's schema, its defaults and the rule that a flag given on
//! the command line wins over the file. Must never start anything: it only
//! turns text into a checked [`ServeConfig`].
//!
//! Every key, with its default (`docs/serve.toml` explains each one):
//!
//! ```toml
//! id = 1                              # required: this node's id, 1 or more
//! listen = "127.0.0.1:7001"           # required: peers and clients connect here
//! data_dir = "/var/lib/waft/1"        # required: log, snapshots (relative: to this file)
//! tick_ms = 10                        # one Raft tick
//! election_ticks = 30                 # election timeout, in ticks
//! snapshot_margin_entries = 10000     # snapshot once this many entries follow the last
//! snapshot_pull_bytes_per_sec = 0     # snapshot install rate limit; 0 = none
//! snapshot_interval_secs = 3600       # also snapshot this often if anything applied; 0 = off
//! background_saves = false            # in-memory checkpoints saved beside the applies
//! initial_voters = [1, 2, 3]          # a new group's voters; default: this node and every peer
//! metrics_listen = "127.0.0.1:9101"   # Prometheus GET /metrics; default: off
//! users = "users.toml"                # roles per user and group (docs/security.md); default: none
//! # plaintext = true                  # no TLS: only for local development, and said so
//!
//! [tls]                               # required unless plaintext: the cluster's CA, this node's
//! ca = "certs/ca.pem"                 # certificate (naming node-1.waft) and its key;
//! cert = "certs/node-1.pem"           # `waft certs init certs` writes them
//! key = "certs/node-1.key"
//!
//! [sessions]                          # founding session limits of groups this node founds
//!                                     # (the group's first leader's bind the group; change
//!                                     # them later with `waft admin set-group`)
//! open_max = 10000                    # open sessions per group; more are refused
//! window_commands_max = 128           # outstanding commands per session
//! idle_timeout_ms = 600000            # a session idle this long expires
//! reply_bytes_per_session_max = 1048576   # results kept for retries, per session
//! reply_bytes_total_max = 67108864        # and per group
//!
//! [peers]                             # the other members: id = "address"
//! 2 = "127.0.0.1:7002"
//! 3 = "127.0.0.1:7003"
//!
//! [[groups]]                          # one table per group named at start (created ones: data_dir)
//! id = 1
//! module = "counter.wasm"             # relative paths: to this file
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use waft_session::SessionConfig;

use crate::security::TlsPaths;
use crate::{ELECTION_TICKS_DEFAULT, GroupSpec, ServeConfig, ServeError, TICK_MS_DEFAULT};

/// Entries applied after the last snapshot before a new one is taken.
pub const SNAPSHOT_MARGIN_ENTRIES_DEFAULT: u64 = 10_000;
/// Seconds between time-based snapshots (SOFAJRaft's default interval).
pub const SNAPSHOT_INTERVAL_SECS_DEFAULT: u64 = 3600;
/// A configuration file larger than this is refused (it is a few lines).
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// The file, as written. Every key is optional here; what is required is
/// checked once the flags are merged in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u64>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub tick_ms: Option<u64>,
    pub election_ticks: Option<u64>,
    pub snapshot_margin_entries: Option<u64>,
    pub snapshot_pull_bytes_per_sec: Option<u64>,
    pub snapshot_interval_secs: Option<u64>,
    pub digest_interval: Option<u64>,
    pub manual_rebuild: Option<bool>,
    pub background_saves: Option<bool>,
    pub initial_voters: Option<Vec<u64>>,
    pub metrics_listen: Option<SocketAddr>,
    pub users: Option<PathBuf>,
    pub plaintext: Option<bool>,
    pub tls: Option<FileTls>,
    pub join: Option<String>,
    pub advertise: Option<String>,
    /// Node id (a TOML key, so a string) → address.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    #[serde(default)]
    pub groups: Vec<FileGroup>,
    #[serde(default)]
    pub sessions: FileSessions,
}

/// The `[sessions]` table: `waft_session::SessionConfig`'s limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSessions {
    pub open_max: Option<u64>,
    pub window_commands_max: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub reply_bytes_per_session_max: Option<u64>,
    pub reply_bytes_total_max: Option<u64>,
}

/// The `[tls]` table: this node's TLS files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGroup {
    pub id: u64,
    pub module: PathBuf,
}

/// What the command line said; `None` / empty where it said nothing. These
/// are `waft serve`'s flags (clap), so the CLI and this crate share one list.
#[derive(Debug, Default, clap::Args)]
pub struct Flags {
    /// A TOML configuration file (every key is documented in
    /// docs/serve.toml); flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id (1 or more, unique in the cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// Address for both peers and clients, e.g. 127.0.0.1:7001.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where this node keeps its log and snapshots.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Another member, as ID=ADDR (repeat for each peer).
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<(u64, String)>,
    /// A running node to join through, HOST:PORT (with TLS: ID=HOST:PORT,
    /// the id its certificate names). At start this node asks it which
    /// nodes it knows, and starts out knowing them; it then serves the
    /// groups an operator adds it to (`waft admin add-peer ID --address`).
    #[arg(long)]
    pub join: Option<String>,
    /// The address other nodes dial this one at, HOST:PORT, when it is not
    /// --listen (which may be a wildcard such as 0.0.0.0:7001). Recorded in
    /// the configurations of the groups this node joins.
    #[arg(long)]
    pub advertise: Option<String>,
    /// A group this node serves and its state machine, as ID=MODULE.wasm
    /// (repeat for each group). Groups created at run time (`waft admin
    /// create-group`) need no flag: the node keeps them in --data-dir.
    #[arg(long = "group", value_parser = parse_group)]
    pub groups: Vec<(u64, PathBuf)>,
    /// Election timeout, in ticks [default: 30].
    #[arg(long)]
    pub election_ticks: Option<u64>,
    /// Length of one tick, in ms [default: 10].
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Snapshot once this many applied entries follow the last snapshot
    /// [default: 10000].
    #[arg(long)]
    pub snapshot_margin_entries: Option<u64>,
    /// Most bytes per second to pull when installing a snapshot from the
    /// leader [default: 0, unlimited].
    #[arg(long)]
    pub snapshot_pull_bytes_per_sec: Option<u64>,
    /// Also snapshot every this many seconds when anything was applied
    /// since the last one [default: 3600; 0: off].
    #[arg(long)]
    pub snapshot_interval_secs: Option<u64>,
    /// The voters a brand-new group starts with, e.g. 1,2,3; a node not
    /// listed starts empty and waits to be added [default: this node and
    /// every --peer].
    #[arg(long, value_delimiter = ',')]
    pub initial_voters: Option<Vec<u64>>,
    /// Serve Prometheus metrics (GET /metrics) on this address, e.g.
    /// 127.0.0.1:9101 [default: off].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// The cluster's CA certificate (PEM): every peer, client and operator
    /// must present a certificate it signed. With --tls-cert and --tls-key.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), naming node-ID.waft; `waft certs
    /// init` writes one per node.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Serve without TLS: anyone who reaches the port can do anything
    /// unless --users names a users file (tokens then travel in clear).
    /// For local development only.
    #[arg(long)]
    pub plaintext: bool,
    /// A users file (TOML): each user's token hash and roles per group
    /// (docs/security.md). Without it every caller may do everything.
    #[arg(long)]
    pub users: Option<PathBuf>,
    /// Open exactly-once sessions per group at most, for groups this node
    /// founds: the group's first leader's value binds the group; change it
    /// later with `waft admin set-group` [default: 10000].
    #[arg(long)]
    pub sessions_open_max: Option<u64>,
    /// Commands a session may have outstanding, for groups this node
    /// founds (like --sessions-open-max) [default: 128].
    #[arg(long)]
    pub session_window_commands_max: Option<u64>,
    /// A session idle this long (by the leader's clock) expires, for
    /// groups this node founds (like --sessions-open-max) [default: 600000].
    #[arg(long)]
    pub session_idle_timeout_ms: Option<u64>,
    /// Entries between two state digests, for groups this node founds
    /// (like --sessions-open-max; 0: no digests) [default: 8192].
    #[arg(long)]
    pub digest_interval: Option<u64>,
    /// Leave a replica whose state differs from its group's fenced for an
    /// operator, rather than rebuild it from a healthy replica's snapshot.
    #[arg(long)]
    pub manual_rebuild: bool,
    /// Save in-memory guests' checkpoints (digest points, snapshots) on
    /// save threads beside the applies instead of pausing the group; for a
    /// node with a core to spare.
    #[arg(long)]
    pub background_saves: bool,
    /// Tests only: skip the guest's command at the first client entry at or
    /// after this index on this node, so its state differs from the group's.
    #[arg(long, hide = true)]
    pub test_diverge_at: Option<u64>,
    /// Tests only: fail to compile the module with this sha256 (hex) the
    /// first time an entry switches to it, as a node whose compiler differs.
    #[arg(long, hide = true, value_parser = parse_module_hash)]
    pub test_compile_fault: Option<waft_storage::ModuleHash>,
}

fn parse_module_hash(s: &str) -> Result<waft_storage::ModuleHash, String> {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{s:?} is not hex"))?;
    let hash: [u8; 32] = bytes.try_into().map_err(|_| format!("{s:?}: a sha256 has 64 hex digits"))?;
    Ok(waft_storage::ModuleHash(hash))
}

fn parse_group(s: &str) -> Result<(u64, PathBuf), String> {
    let (id, module) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=MODULE, e.g. 1=target/wasm32-wasip2/release/waft_counter.wasm"))?;
    let id = id.parse::<u64>().map_err(|e| format!("{s:?}: group id: {e}"))?;
    Ok((id, PathBuf::from(module)))
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected ID=ADDR, e.g. 2=127.0.0.1:7002"))?;
    let id = id.parse::<u64>().map_err(|e| format!("{s:?}: peer id: {e}"))?;
    crate::peer::check_address(addr).map_err(|e| format!("{s:?}: {e}"))?;
    Ok((id, addr.to_string()))
}

fn config_err(msg: impl Into<String>) -> ServeError {
    ServeError::Config(msg.into())
}

impl FileConfig {
    /// Reads and parses `path`; relative paths in it become relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<FileConfig, ServeError> {
        let len =
            std::fs::metadata(path).map_err(|e| config_err(format!("cannot read {}: {e}", path.display())))?.len();
        if len > CONFIG_FILE_BYTES_MAX {
            return Err(config_err(format!(
                "{} has {len} bytes, more than the {CONFIG_FILE_BYTES_MAX} a configuration file may have",
                path.display()
            )));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| config_err(format!("cannot read {}: {e}", path.display())))?;
        let mut file = FileConfig::parse(&text).map_err(|e| config_err(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(dir) = &mut file.data_dir {
            *dir = base.join(&*dir);
        }
        if let Some(users) = &mut file.users {
            *users = base.join(&*users);
        }
        if let Some(tls) = &mut file.tls {
            for p in [&mut tls.ca, &mut tls.cert, &mut tls.key] {
                *p = base.join(&*p);
            }
        }
        for g in &mut file.groups {
            g.module = base.join(&g.module);
        }
        Ok(file)
    }

    /// Parses TOML text (paths left as written).
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

impl Flags {
    /// The configuration to serve with: the file (if `--config`) with every
    /// flag given on the command line put over it. `--peer` and `--group`
    /// flags replace the file's lists rather than add to them.
    pub fn resolve(self) -> Result<ServeConfig, ServeError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let missing = |flag: &str, key: &str| {
            config_err(format!("no {flag} given (or `{key}` in the configuration file given with --config)"))
        };
        let node_id = self.id.or(file.id).ok_or_else(|| missing("--id", "id"))?;
        let listen = self.listen.or(file.listen).ok_or_else(|| missing("--listen", "listen"))?;
        let data_dir = self.data_dir.or(file.data_dir).ok_or_else(|| missing("--data-dir", "data_dir"))?;
        let peers_given: Vec<(u64, String)> = if self.peers.is_empty() {
            let mut parsed = Vec::new();
            for (id, addr) in file.peers {
                let id =
                    id.parse::<u64>().map_err(|e| config_err(format!("[peers] key {id:?} is not a node id: {e}")))?;
                parsed.push((id, addr));
            }
            parsed
        } else {
            self.peers
        };
        let join = match self.join.or(file.join) {
            None => None,
            Some(given) => {
                let (id, addr) = match given.split_once('=') {
                    Some((id, addr)) => (
                        Some(id.parse::<u64>().map_err(|e| config_err(format!("--join {given:?}: the id: {e}")))?),
                        addr.to_string(),
                    ),
                    None => (None, given.clone()),
                };
                crate::peer::check_address(&addr).map_err(|e| config_err(format!("--join: {e}")))?;
                Some((id, addr))
            }
        };
        let advertise = self.advertise.or(file.advertise);
        if let Some(a) = &advertise {
            crate::peer::check_address(a).map_err(|e| config_err(format!("--advertise: {e}")))?;
        }
        let mut peers = BTreeMap::new();
        for (id, addr) in peers_given {
            crate::peer::check_address(&addr).map_err(|e| config_err(format!("peer {id}: {e}")))?;
            if peers.insert(id, addr).is_some() {
                return Err(config_err(format!("peer {id} is given twice")));
            }
        }
        let groups_given: Vec<(u64, PathBuf)> = if self.groups.is_empty() {
            file.groups.into_iter().map(|g| (g.id, g.module)).collect()
        } else {
            self.groups
        };
        let d = SessionConfig::default();
        let f = &file.sessions;
        let sessions = SessionConfig {
            sessions_open_max: self.sessions_open_max.or(f.open_max).unwrap_or(d.sessions_open_max),
            window_commands_max: self
                .session_window_commands_max
                .or(f.window_commands_max)
                .unwrap_or(d.window_commands_max),
            session_idle_timeout_ms: self
                .session_idle_timeout_ms
                .or(f.idle_timeout_ms)
                .unwrap_or(d.session_idle_timeout_ms),
            reply_bytes_per_session_max: f.reply_bytes_per_session_max.unwrap_or(d.reply_bytes_per_session_max),
            reply_bytes_total_max: f.reply_bytes_total_max.unwrap_or(d.reply_bytes_total_max),
        };
        sessions.validate().map_err(|e| config_err(format!("{e} (the [sessions] table or --session* flags)")))?;
        let mut groups: Vec<GroupSpec> = Vec::new();
        for (group, module) in groups_given {
            if groups.iter().any(|g| g.group == group) {
                return Err(config_err(format!("group {group} is given twice")));
            }
            groups.push(GroupSpec { group, module });
        }
        let plaintext = self.plaintext || file.plaintext.unwrap_or(false);
        let flags_tls = (self.tls_ca, self.tls_cert, self.tls_key);
        let tls = match flags_tls {
            (None, None, None) => file.tls.map(|t| TlsPaths { ca: t.ca, cert: t.cert, key: t.key }),
            (Some(ca), Some(cert), Some(key)) => Some(TlsPaths { ca, cert, key }),
            _ => return Err(config_err("TLS needs all three of --tls-ca, --tls-cert and --tls-key")),
        };
        match (&tls, plaintext) {
            (Some(_), true) => {
                return Err(config_err("both TLS files and --plaintext given: choose one"));
            }
            (None, false) => {
                return Err(config_err(
                    "no TLS given: name the cluster's CA and this node's certificate and key (--tls-ca, \
                     --tls-cert, --tls-key, or a [tls] table; `waft certs init DIR` writes a development set), \
                     or choose --plaintext for local development",
                ));
            }
            _ => {}
        }
        Ok(ServeConfig {
            tls,
            plaintext,
            users: self.users.or(file.users),
            node_id,
            listen,
            data_dir,
            peers,
            join,
            advertise,
            groups,
            initial_voters: self.initial_voters.or(file.initial_voters),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            tick_ms: self.tick_ms.or(file.tick_ms).unwrap_or(TICK_MS_DEFAULT),
            election_ticks: self.election_ticks.or(file.election_ticks).unwrap_or(ELECTION_TICKS_DEFAULT),
            snapshot_margin_entries: self
                .snapshot_margin_entries
                .or(file.snapshot_margin_entries)
                .unwrap_or(SNAPSHOT_MARGIN_ENTRIES_DEFAULT),
            snapshot_pull_bytes_per_sec: self
                .snapshot_pull_bytes_per_sec
                .or(file.snapshot_pull_bytes_per_sec)
                .unwrap_or(0),
            snapshot_interval_secs: self
                .snapshot_interval_secs
                .or(file.snapshot_interval_secs)
                .unwrap_or(SNAPSHOT_INTERVAL_SECS_DEFAULT),
            sessions,
            digest_interval: self
                .digest_interval
                .or(file.digest_interval)
                .unwrap_or(waft_node::DIGEST_INTERVAL_DEFAULT),
            manual_rebuild: self.manual_rebuild || file.manual_rebuild.unwrap_or(false),
            background_saves: self.background_saves || file.background_saves.unwrap_or(false),
            test_diverge_at: self.test_diverge_at,
            test_compile_fault: self.test_compile_fault,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in this module's docs parses, and means what it says.
    #[test]
    fn the_documented_example_parses() {
        let docs = include_str!("config.rs");
        let example: String = docs
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let file = FileConfig::parse(&example).unwrap();
        assert_eq!(file.id, Some(1));
        assert_eq!(file.peers.len(), 2);
        assert_eq!(file.groups.len(), 1);
        assert_eq!(file.groups[0].module, PathBuf::from("counter.wasm"));
        assert_eq!(file.tick_ms, Some(TICK_MS_DEFAULT));
        assert_eq!(file.election_ticks, Some(ELECTION_TICKS_DEFAULT));
        assert_eq!(file.snapshot_margin_entries, Some(SNAPSHOT_MARGIN_ENTRIES_DEFAULT));
        assert_sessions_are_the_defaults(&file.sessions);
    }

    fn assert_sessions_are_the_defaults(f: &FileSessions) {
        let d = SessionConfig::default();
        assert_eq!(f.open_max, Some(d.sessions_open_max));
        assert_eq!(f.window_commands_max, Some(d.window_commands_max));
        assert_eq!(f.idle_timeout_ms, Some(d.session_idle_timeout_ms));
        assert_eq!(f.reply_bytes_per_session_max, Some(d.reply_bytes_per_session_max));
        assert_eq!(f.reply_bytes_total_max, Some(d.reply_bytes_total_max));
    }

    /// docs/serve.toml, the file operators copy, parses and names real keys.
    #[test]
    fn the_documented_file_parses() {
        let file = FileConfig::parse(include_str!("../../../docs/serve.toml")).unwrap();
        assert_eq!(
            (file.id, file.tick_ms, file.election_ticks),
            (Some(1), Some(TICK_MS_DEFAULT), Some(ELECTION_TICKS_DEFAULT))
        );
        assert_eq!(file.snapshot_margin_entries, Some(SNAPSHOT_MARGIN_ENTRIES_DEFAULT));
        assert_eq!(file.snapshot_pull_bytes_per_sec, Some(0));
        assert_eq!(file.snapshot_interval_secs, Some(SNAPSHOT_INTERVAL_SECS_DEFAULT));
        assert_eq!(file.groups.len(), 2);
        assert_sessions_are_the_defaults(&file.sessions);
    }

    #[test]
    fn flags_win_and_lists_replace() {
        let dir = std::env::temp_dir().join(format!("waft-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serve.toml");
        std::fs::write(
            &path,
            "id = 1\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"data\"\ntick_ms = 20\n\
             [peers]\n2 = \"127.0.0.1:7002\"\n[[groups]]\nid = 1\nmodule = \"m.wasm\"\n",
        )
        .unwrap();
        let cfg = Flags { config: Some(path.clone()), tick_ms: Some(5), plaintext: true, ..Flags::default() }
            .resolve()
            .unwrap();
        assert_eq!((cfg.node_id, cfg.tick_ms, cfg.election_ticks), (1, 5, ELECTION_TICKS_DEFAULT));
        assert_eq!(cfg.sessions, SessionConfig::default());
        assert_eq!(cfg.data_dir, dir.join("data"), "relative to the file");
        assert_eq!(cfg.groups[0].module, dir.join("m.wasm"));
        assert_eq!(cfg.peers.get(&2).map(String::as_str), Some("127.0.0.1:7002"));

        let cfg = Flags {
            config: Some(path),
            peers: vec![(3, "127.0.0.1:7003".into())],
            groups: vec![(7, "x.wasm".into()), (8, "y.wasm".into())],
            plaintext: true,
            ..Flags::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.peers.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(cfg.groups.iter().map(|g| g.group).collect::<Vec<_>>(), vec![7, 8]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn join_advertise_and_peer_addresses_are_checked() {
        let base = || Flags {
            id: Some(4),
            listen: Some("0.0.0.0:7004".parse().unwrap()),
            data_dir: Some("d".into()),
            plaintext: true,
            ..Flags::default()
        };
        let cfg = Flags { join: Some("127.0.0.1:7001".into()), advertise: Some("10.0.0.4:7004".into()), ..base() }
            .resolve()
            .unwrap();
        assert_eq!(cfg.join, Some((None, "127.0.0.1:7001".into())));
        assert_eq!(cfg.advertise.as_deref(), Some("10.0.0.4:7004"));
        let cfg = Flags { join: Some("1=n1.example:7001".into()), ..base() }.resolve().unwrap();
        assert_eq!(cfg.join, Some((Some(1), "n1.example:7001".into())));
        for (flags, says) in [
            (Flags { advertise: Some("0.0.0.0:7004".into()), ..base() }, "unspecified"),
            (Flags { join: Some("nowhere".into()), ..base() }, "host:port"),
            (Flags { join: Some("x=a:1".into()), ..base() }, "the id"),
            (Flags { peers: vec![(2, "".into())], ..base() }, "bytes"),
        ] {
            let err = flags.resolve().unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let err = FileConfig::parse("id = 1\nelection_tiks = 3\n").unwrap_err();
        assert!(err.contains("election_tiks"), "{err}");
        let err = Flags { listen: Some("127.0.0.1:1".parse().unwrap()), ..Flags::default() }.resolve().unwrap_err();
        assert!(err.to_string().contains("--id"), "{err}");
        let err = Flags {
            id: Some(1),
            listen: Some("127.0.0.1:1".parse().unwrap()),
            data_dir: Some("d".into()),
            groups: vec![(1, "a".into()), (1, "b".into())],
            ..Flags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("group 1 is given twice"), "{err}");
        let err = Flags {
            id: Some(1),
            listen: Some("127.0.0.1:1".parse().unwrap()),
            data_dir: Some("d".into()),
            sessions_open_max: Some(0),
            ..Flags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("sessions_open_max"), "{err}");
        let file = FileConfig::parse("[sessions]\nopen_max = 3\nidle_timeout = 5\n").unwrap_err();
        assert!(file.contains("idle_timeout"), "{file}");
    }
}

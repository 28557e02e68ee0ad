//! The `waft` command.
//!
//! Owns the command line. `waft serve` runs a daemon (waft-daemon);
//! `waft propose`, `waft query` and `waft status` are its clients, built on
//! `waft_daemon::client`, and so is `waft admin` (which also creates groups
//! at run time: `waft admin create-group`); `waft demo` ([`demo`]) starts a local three-node
//! cluster and runs SOFAJRaft's counter and atomic scenarios through it.

mod certs;
mod demo;
mod run;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "waft", version, about = "waft: Raft groups whose state machines are WebAssembly components")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local three-node cluster on loopback serving the counter and
    /// atomic examples, run SOFAJRaft's scenarios through the client, print
    /// what happened, and stop the cluster cleanly.
    Demo {
        /// Directory holding waft_counter.wasm and waft_atomic.wasm
        /// (built by `cargo xtask guests`).
        #[arg(long, default_value = "target/wasm32-wasip2/release")]
        modules: PathBuf,
    },
    /// Run a node: serve the given groups, each with its module, replicated
    /// with the given peers, and the groups created on it at run time
    /// (`waft admin create-group`, kept in --data-dir). Flags win over the
    /// --config file. Stops cleanly on SIGINT or SIGTERM.
    Serve(Box<waft_daemon::config::Flags>),
    /// A development CA and certificates for a TLS cluster (`init`), and
    /// bearer tokens for the users file (`token`).
    Certs {
        #[command(subcommand)]
        op: certs::CertsCmd,
    },
    /// Propose a command and print its result. The command goes in an
    /// exactly-once session of its own (opened, used for this command, closed),
    /// so retries after a timeout, a leader change or a lost connection apply
    /// it once.
    Propose {
        /// Any node of the cluster; the client follows the leader hint.
        #[arg(long)]
        addr: String,
        #[arg(long)]
        group: u64,
        /// Send the command outside any session: it applies every time it
        /// commits, so it is not retried once its outcome is unknown.
        #[arg(long)]
        no_session: bool,
        #[command(flatten)]
        input: Input,
        #[arg(long, value_enum, default_value_t = OutputForm::Auto)]
        output: OutputForm,
        #[command(flatten)]
        auth: ClientAuth,
    },
    /// Run a read-only query and print its result.
    Query {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        group: u64,
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        #[command(flatten)]
        input: Input,
        #[arg(long, value_enum, default_value_t = OutputForm::Auto)]
        output: OutputForm,
        #[command(flatten)]
        auth: ClientAuth,
    },
    /// Show what a node knows about its groups.
    Status {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        group: Option<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        auth: ClientAuth,
    },
    /// Run a state machine in waft's sandbox, without a cluster: apply
    /// commands as log entries 1, 2, ..., run queries, then check that its
    /// snapshot reloads into a fresh instance and saves the same bytes.
    Run(run::RunArgs),
    /// Load a waft (or etcd) cluster with concurrent clients; print
    /// throughput and latency percentiles and write them as JSON.
    Bench(waft_bench::Args),
    /// Replace a group's state machine on the live cluster, through its log:
    /// the leader validates the module (refusing a bad one before anything
    /// changes), replicates it, and every replica switches at the same index
    /// (the old module saves its state, the new one loads it).
    Deploy {
        /// Any node of the cluster; the deploy goes to the group's leader.
        #[arg(long)]
        addr: String,
        #[arg(long)]
        group: u64,
        /// The component, e.g. target/wasm32-wasip2/release/my_machine.wasm.
        module: PathBuf,
        #[command(flatten)]
        auth: ClientAuth,
    },
    /// Change a group on a live cluster: membership, leadership, snapshots;
    /// or create a new group. Each change waits until it took effect and
    /// prints the configuration. --addr and --group go before or after the
    /// operation.
    Admin {
        /// Any node of the cluster; changes go to the group's leader.
        #[arg(long, global = true)]
        addr: Option<String>,
        #[arg(long, global = true)]
        group: Option<u64>,
        #[command(flatten)]
        auth: ClientAuth,
        #[command(subcommand)]
        op: AdminCmd,
    },
}

/// How a client command signs in and checks the servers: TLS files and a
/// bearer token, from flags, the environment, or a client configuration
/// file (flags and environment win over the file).
#[derive(clap::Args, Clone, Default)]
struct ClientAuth {
    /// The cluster's CA certificate (PEM).
    #[arg(long = "tls-ca", env = "WAFT_TLS_CA", global = true)]
    ca: Option<PathBuf>,
    /// This client's certificate (PEM), e.g. client.pem from `waft certs init`.
    #[arg(long = "tls-cert", env = "WAFT_TLS_CERT", global = true)]
    cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long = "tls-key", env = "WAFT_TLS_KEY", global = true)]
    key: Option<PathBuf>,
    /// The name the servers' certificates must carry [default: the host of
    /// the address dialed].
    #[arg(long = "tls-server-name", env = "WAFT_TLS_SERVER_NAME", global = true)]
    server_name: Option<String>,
    /// A bearer token naming a user of the nodes' users file.
    #[arg(long, env = "WAFT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A TOML file with any of: ca, cert, key (paths, relative to the
    /// file), server_name, token.
    #[arg(long = "client-config", env = "WAFT_CLIENT_CONFIG", global = true)]
    config: Option<PathBuf>,
}

/// The client configuration file's keys.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
    token: Option<String>,
}

impl ClientAuth {
    fn credentials(self) -> Result<waft_daemon::client::Credentials> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let mut file: ClientFile = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
                let base = path.parent().unwrap_or(std::path::Path::new("."));
                for p in [&mut file.ca, &mut file.cert, &mut file.key].into_iter().flatten() {
                    *p = base.join(&*p);
                }
                file
            }
            None => ClientFile::default(),
        };
        let files = waft_daemon::client::TlsFiles {
            ca: self.ca.or(file.ca),
            cert: self.cert.or(file.cert),
            key: self.key.or(file.key),
            server_name: self.server_name.or(file.server_name),
        };
        let tls = files.load()?;
        Ok(waft_daemon::client::Credentials::new(tls, self.token.or(file.token).as_deref())?)
    }

    fn client(self, addr: String) -> Result<waft_daemon::client::Client> {
        Ok(waft_daemon::client::Client::with_credentials(vec![addr], self.credentials()?))
    }
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Add a voter (it catches up first). A node the group does not run on
    /// yet (a daemon started with --join, say) needs --address: it gets an
    /// empty replica of the group, and the group records its address.
    AddPeer {
        id: u64,
        /// The new voter's address, HOST:PORT.
        #[arg(long)]
        address: Option<String>,
    },
    /// Remove a voter; removing the leader makes it step down.
    RemovePeer { id: u64 },
    /// Set the voters (and learners) exactly; joint consensus when more than
    /// one voter changes.
    ChangePeers {
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
        #[arg(long, value_delimiter = ',')]
        learners: Vec<u64>,
        /// ID=HOST:PORT of a node the change adds (or of a member that
        /// moved), once per node, e.g. --address 4=10.0.0.4:7001.
        #[arg(long = "address", value_parser = parse_node_address)]
        addresses: Vec<(u64, String)>,
    },
    /// Add non-voting members that replicate the log.
    AddLearners {
        #[arg(required = true)]
        ids: Vec<u64>,
        /// ID=HOST:PORT of a new learner, once per node.
        #[arg(long = "address", value_parser = parse_node_address)]
        addresses: Vec<(u64, String)>,
    },
    RemoveLearners {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Make a learner a voter.
    PromoteLearner { id: u64 },
    /// Hand leadership to a voter, or without an id to the most up-to-date.
    TransferLeader { id: Option<u64> },
    /// Snapshot the node at --addr now.
    Snapshot,
    /// UNSAFE: force the voters on the node at --addr, without a quorum, to
    /// recover a group that lost its majority. Run it on every survivor.
    ResetPeers {
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
        /// Required: says you know this can lose acknowledged writes.
        #[arg(long = "unsafe", required = true)]
        i_know_it_is_unsafe: bool,
    },
    /// Change the group's settings through its log, e.g. `--set
    /// fuel_per_entry=10000000 --set sessions_open_max=50000`; the others
    /// keep their values. Every replica adopts them at the same index;
    /// prints the settings in force.
    SetGroup {
        /// NAME=VALUE, one per setting to change (names: see `waft status
        /// --json`'s settings).
        #[arg(long = "set", value_parser = parse_setting, required = true)]
        set: Vec<(String, u64)>,
    },
    /// Node --node lost its data directory (wiped, new disk): tell every
    /// other node, listed in --nodes, to take the new one. Until then every
    /// node refuses its messages, so it votes nowhere and counts toward no
    /// quorum. Remove it from the voters of its groups first (remove-peer);
    /// afterwards add it back as a learner and promote it once it caught up.
    /// Needs no --group: it is about the node.
    ReplaceNode {
        #[arg(long)]
        node: u64,
        /// Every other node's address, e.g. 127.0.0.1:7001,127.0.0.1:7002.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    /// Print the group's configuration as the node at --addr knows it.
    Peers,
    /// Print the nodes the node at --addr knows and their addresses: its
    /// --peer entries and the members of its groups. Needs no --group.
    Nodes,
    /// Spread leaderships over the nodes: asks every node the node at
    /// --addr knows which groups it leads, then moves leaderships (leader
    /// transfers) from nodes over their share to voters under it, until no
    /// node leads more than the groups divided by the nodes, rounded up.
    /// Needs no --group.
    BalanceLeaders,
    /// Print the group's leader as the node at --addr knows it.
    Leader,
    /// Create a new group on a running cluster: its voters run the module.
    /// The node at --addr checks the module, creates the group on every
    /// voter's daemon and prints each one's outcome. A module over 4 MiB
    /// (up to 64 MiB) is uploaded to that node first and the voters pull it
    /// from there. Sending the same create again is safe; another module or
    /// other voters for an existing group is refused.
    CreateGroup {
        /// The founding voters (node ids known to the node at --addr), e.g. 1,2,3.
        #[arg(long = "peers", visible_alias = "voters", value_delimiter = ',', required = true)]
        peers: Vec<u64>,
        /// Nodes besides the voters that open an empty replica, to be added
        /// later with add-peer, add-learners or change-peers, e.g. 4,5. Send
        /// the same create again with more members to prepare more nodes.
        #[arg(long, value_delimiter = ',')]
        members: Vec<u64>,
        /// The state machine: a .wasm component built for wasm32-wasip2.
        #[arg(long)]
        module: PathBuf,
        /// ID=HOST:PORT of a voter or member the node at --addr does not
        /// know yet, once per node.
        #[arg(long = "address", value_parser = parse_node_address)]
        addresses: Vec<(u64, String)>,
    },
}

fn parse_node_address(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s.split_once('=').ok_or_else(|| format!("{s:?} is not ID=HOST:PORT"))?;
    let id: u64 = id.parse().map_err(|e| format!("{id:?} is not a node id: {e}"))?;
    waft_daemon::peer::check_address(addr)?;
    Ok((id, addr.to_string()))
}

/// The bytes of a command or query: text (an SDK-built module's JSON form),
/// hex, or a file's contents (for any other module).
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct Input {
    /// The command as text, e.g. '{"incr":5}' for the counter.
    text: Option<String>,
    /// The command as hex bytes, e.g. 00a1ff.
    #[arg(long)]
    hex: Option<String>,
    /// Read the command's bytes from this file.
    #[arg(long)]
    file: Option<PathBuf>,
}

impl Input {
    fn bytes(self) -> Result<Vec<u8>> {
        if let Some(text) = self.text {
            return Ok(text.into_bytes());
        }
        if let Some(hex) = self.hex {
            return decode_hex(&hex);
        }
        if let Some(path) = self.file {
            return std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()));
        }
        bail!("give the command as text, --hex or --file")
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>> {
    let hex = hex.trim().trim_start_matches("0x");
    if !hex.len().is_multiple_of(2) {
        bail!("--hex: {} digits; bytes take two hex digits each", hex.len());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .with_context(|| format!("--hex: {:?} is not a hex byte", &hex[i..i + 2]))
        })
        .collect()
}

/// How to print a result.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputForm {
    /// Text when the bytes are printable UTF-8, hex otherwise.
    Auto,
    Text,
    Hex,
}

fn print_result(bytes: &[u8], form: OutputForm) {
    let hex = || bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match form {
        OutputForm::Hex => println!("{}", hex()),
        OutputForm::Text => println!("{}", String::from_utf8_lossy(bytes)),
        OutputForm::Auto => match std::str::from_utf8(bytes) {
            Ok(text) if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => println!("{text}"),
            _ => println!("{}", hex()),
        },
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConsistencyArg {
    Linearizable,
    Lease,
    Follower,
    Stale,
}

impl From<ConsistencyArg> for waft_proto::client::Consistency {
    fn from(c: ConsistencyArg) -> Self {
        use waft_proto::client::Consistency as C;
        match c {
            ConsistencyArg::Linearizable => C::Linearizable,
            ConsistencyArg::Lease => C::Lease,
            ConsistencyArg::Follower => C::Follower,
            ConsistencyArg::Stale => C::Stale,
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // A daemon reports its elections and peers; a one-shot command stays quiet.
    let default_filter = if matches!(cli.command, Cmd::Serve(_)) { "info" } else { "warn" };
    // Logs go to stderr (stdout carries results), coloured only on a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    run(cli).map_err(with_tls_hint)
}

/// What a TLS mismatch looks like from the client's side: a plaintext
/// client at a TLS node, a TLS client at a plaintext one, or a certificate
/// the other side does not take.
const TLS_MISMATCH_SIGNS: &[&str] =
    &["FRAME_SIZE_ERROR", "InvalidContentType", "CorruptMessage", "UnknownIssuer", "DecryptError", "certificate"];

/// Puts a hint in front of an error that looks like a TLS mismatch.
fn with_tls_hint(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:?}");
    if TLS_MISMATCH_SIGNS.iter().any(|s| text.contains(s)) {
        e.context(
            "the connection failed as it does when only one side uses TLS, or when a certificate is not from the \
             other side's CA: a TLS cluster needs --tls-ca, --tls-cert and --tls-key (or WAFT_TLS_CA, \
             WAFT_TLS_CERT, WAFT_TLS_KEY), a --plaintext one none of them",
        )
    } else {
        e
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Demo { modules } => runtime()?.block_on(demo::run(&modules)),
        Cmd::Run(args) => run::run(args),
        Cmd::Serve(flags) => {
            let cfg = flags.resolve()?;
            runtime()?.block_on(waft_daemon::serve(cfg, shutdown_signal()))?;
            Ok(())
        }
        Cmd::Certs { op } => certs::run(op),
        Cmd::Propose { addr, group, no_session, input, output, auth } => {
            let command = input.bytes()?;
            let client = auth.client(addr)?;
            let answer = runtime()?.block_on(async {
                if no_session {
                    client.propose_plain(group, command.into()).await
                } else {
                    client.propose_once(group, command.into()).await
                }
            })?;
            print_result(&answer.result, output);
            Ok(())
        }
        Cmd::Query { addr, group, consistency, input, output, auth } => {
            let request = input.bytes()?;
            let client = auth.client(addr)?;
            let answer = runtime()?.block_on(client.query(group, request.into(), consistency.into()))?;
            print_result(&answer.result, output);
            Ok(())
        }
        Cmd::Status { addr, group, json, auth } => {
            let client = auth.client(addr)?;
            let status = runtime()?.block_on(client.status(group))?;
            print_status(&status, json);
            Ok(())
        }
        Cmd::Admin { op: AdminCmd::ReplaceNode { node, nodes }, auth, .. } => {
            let credentials = auth.credentials()?;
            runtime()?.block_on(replace_node(node, &nodes, &credentials))
        }
        Cmd::Admin { addr, op: AdminCmd::BalanceLeaders, auth, .. } => {
            let addr = addr.context("no --addr given: name any node of the cluster, e.g. --addr 127.0.0.1:7001")?;
            let credentials = auth.credentials()?;
            let report = runtime()?.block_on(waft_daemon::client::balance::balance_leaders(&addr, &credentials))?;
            for (node, before) in &report.before {
                let planned = report.planned.get(node).copied().unwrap_or_default();
                println!("node {node}: leads {before} -> {planned}");
            }
            println!("moved {} leaderships", report.moved.len());
            for (node, why) in &report.unreachable {
                println!("node {node}: not asked ({why}); its leaderships stay");
            }
            if !report.leaderless.is_empty() {
                println!("groups without a leader when asked (left alone): {:?}", report.leaderless);
            }
            for (m, why) in &report.failed {
                println!("group {}: {} -> {} failed: {why}", m.group, m.from, m.to);
            }
            if !report.failed.is_empty() {
                bail!(
                    "{} of {} moves failed; run balance-leaders again",
                    report.failed.len(),
                    report.failed.len() + report.moved.len()
                );
            }
            Ok(())
        }
        Cmd::Admin { addr, op: AdminCmd::Nodes, auth, .. } => {
            let addr = addr.context("no --addr given: name any node of the cluster, e.g. --addr 127.0.0.1:7001")?;
            let credentials = auth.credentials()?;
            let known = runtime()?.block_on(waft_daemon::client::nodes(&addr, None, &credentials))?;
            for n in &known.nodes {
                let me = if n.node_id == known.node_id { "  (this node)" } else { "" };
                println!("{} {}{me}", n.node_id, n.address);
            }
            Ok(())
        }
        Cmd::Admin { addr, group, op, auth } => {
            let addr = addr.context("no --addr given: name any node of the cluster, e.g. --addr 127.0.0.1:7001")?;
            let group = group.context("no --group given: name the group, e.g. --group 1")?;
            let client = auth.client(addr.clone())?;
            runtime()?.block_on(admin(&client, &addr, group, op))
        }
        Cmd::Deploy { addr, group, module, auth } => {
            let bytes = std::fs::read(&module).with_context(|| format!("cannot read {}", module.display()))?;
            let client = auth.client(addr)?;
            let result = runtime()?.block_on(client.deploy(group, bytes.into()))?;
            println!("group {group} runs module {} since index {}", hex(&result.module_hash), result.index);
            Ok(())
        }
        Cmd::Bench(args) => {
            runtime()?.block_on(waft_bench::run(args))?;
            Ok(())
        }
    }
}

fn print_configuration(c: &waft_proto::client::Configuration, leader_id: u64) {
    let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    print!("voters {}", list(&c.voters));
    if !c.voters_outgoing.is_empty() {
        print!(" (joint with {})", list(&c.voters_outgoing));
    }
    println!("  learners {}  leader {leader_id}", if c.learners.is_empty() { "-".into() } else { list(&c.learners) });
    if !c.addresses.is_empty() {
        let addrs: Vec<String> = c.addresses.iter().map(|a| format!("{}={}", a.node_id, a.address)).collect();
        println!("addresses {}", addrs.join(","));
    }
}

async fn replace_node(node: u64, nodes: &[String], credentials: &waft_daemon::client::Credentials) -> Result<()> {
    eprintln!(
        "waft: node {node} is taken back with whatever data directory it runs on now. Do this only for a node \
         that lost its data and is no longer a voter of any group (remove-peer first); then add it back as a \
         learner and promote it once it caught up."
    );
    let mut failed = 0;
    for addr in nodes {
        match waft_daemon::client::replace_node(addr, node, credentials).await {
            Ok(old) if old.is_empty() => println!("{addr}: knew no data directory of node {node}; takes the next"),
            Ok(old) => println!("{addr}: forgot node {node}'s data directory {old}; takes the next"),
            Err(e) => {
                failed += 1;
                println!("{addr}: failed: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} nodes did not take the replacement; run the command again for them", nodes.len());
    }
    Ok(())
}

async fn admin(client: &waft_daemon::client::Client, addr: &str, group: u64, op: AdminCmd) -> Result<()> {
    use waft_proto::admin::AdminOp;
    let (op, ids, learners, addresses) = match op {
        AdminCmd::ReplaceNode { .. } | AdminCmd::Nodes | AdminCmd::BalanceLeaders => {
            bail!("this command is about the cluster, not a group")
        }
        AdminCmd::Peers | AdminCmd::Leader => {
            let status = client.status(Some(group)).await?;
            let g = status.groups.first().context("the node sent no status for the group")?;
            if matches!(op, AdminCmd::Leader) {
                println!("{} {}", g.leader_id, g.leader_address);
            } else {
                print_configuration(&g.configuration.clone().unwrap_or_default(), g.leader_id);
            }
            return Ok(());
        }
        AdminCmd::CreateGroup { peers, members, module, addresses } => {
            return create_group(client, group, peers, members, &module, addresses).await;
        }
        AdminCmd::SetGroup { set } => {
            let result = client.set_group(group, set).await?;
            println!("group {group} settings since index {}:", result.index);
            for (name, value) in waft_daemon::inbox::settings_named(&result.settings.unwrap_or_default()) {
                println!("  {name} = {value}");
            }
            return Ok(());
        }
        AdminCmd::AddPeer { id, address } => {
            if let Some(a) = &address {
                waft_daemon::peer::check_address(a).map_err(|e| anyhow::anyhow!("--address: {e}"))?;
            }
            (AdminOp::AddPeer, vec![id], vec![], address.map(|a| vec![(id, a)]).unwrap_or_default())
        }
        AdminCmd::RemovePeer { id } => (AdminOp::RemovePeer, vec![id], vec![], vec![]),
        AdminCmd::ChangePeers { voters, learners, addresses } => (AdminOp::ChangePeers, voters, learners, addresses),
        AdminCmd::AddLearners { ids, addresses } => (AdminOp::AddLearners, ids, vec![], addresses),
        AdminCmd::RemoveLearners { ids } => (AdminOp::RemoveLearners, ids, vec![], vec![]),
        AdminCmd::PromoteLearner { id } => (AdminOp::PromoteLearner, vec![id], vec![], vec![]),
        AdminCmd::TransferLeader { id } => (AdminOp::TransferLeader, id.into_iter().collect(), vec![], vec![]),
        AdminCmd::Snapshot => (AdminOp::Snapshot, vec![], vec![], vec![]),
        AdminCmd::ResetPeers { voters, .. } => {
            eprintln!(
                "waft: UNSAFE reset of group {group}'s voters to {voters:?} on {addr}. Entries the lost majority \
                 committed that this node never received are gone for good, acknowledged writes among them; \
                 run it on every survivor with the same voters, and only once the others cannot come back."
            );
            let result = client.reset_peers_unsafe(group, voters).await?;
            print_configuration(&result.configuration.unwrap_or_default(), result.leader_id);
            return Ok(());
        }
    };
    let result = client.admin_with_addresses(group, op, ids, learners, addresses).await?;
    if op == AdminOp::Snapshot {
        println!("snapshot at index {}", result.snapshot_index);
    }
    print_configuration(&result.configuration.unwrap_or_default(), result.leader_id);
    Ok(())
}

async fn create_group(
    client: &waft_daemon::client::Client,
    group: u64,
    voters: Vec<u64>,
    members: Vec<u64>,
    module: &std::path::Path,
    addresses: Vec<(u64, String)>,
) -> Result<()> {
    let len = std::fs::metadata(module).with_context(|| format!("cannot read {}", module.display()))?.len();
    let max = waft_daemon::modules::MODULE_BYTES_MAX;
    if len > max {
        bail!("{} has {len} bytes; a module may have {max} at most", module.display());
    }
    let bytes = std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    let created = client.create_group_with_addresses(group, voters, members, bytes.into(), addresses).await?;
    println!("group {group}  module {}", hex(&created.module_hash));
    for node in &created.nodes {
        println!("node {}: {}", node.node_id, waft_daemon::admin::describe(node.outcome()));
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops cleanly");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_setting(s: &str) -> Result<(String, u64), String> {
    let (name, value) =
        s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=VALUE, e.g. fuel_per_entry=10000000"))?;
    let value = value.parse::<u64>().map_err(|e| format!("{s:?}: value: {e}"))?;
    Ok((name.to_string(), value))
}

fn print_status(status: &waft_proto::client::StatusResponse, json: bool) {
    use waft_proto::client::Role;
    let role = |g: &waft_proto::client::GroupStatus| match g.role() {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        Role::Learner => "learner",
        Role::Unspecified => "unknown",
    };
    if json {
        let groups: Vec<serde_json::Value> = status
            .groups
            .iter()
            .map(|g| {
                let c = g.configuration.clone().unwrap_or_default();
                let settings: serde_json::Map<String, serde_json::Value> =
                    waft_daemon::inbox::settings_named(&g.settings.unwrap_or_default())
                        .into_iter()
                        .map(|(name, v)| (name.to_string(), serde_json::json!(v)))
                        .collect();
                serde_json::json!({
                    "settings": settings, "settings_index": g.settings_index,
                    "group": g.group, "role": role(g), "term": g.term,
                    "leader_id": g.leader_id, "leader_address": g.leader_address,
                    "commit_index": g.commit_index, "applied_index": g.applied_index,
                    "sessions_open": g.sessions_open, "session_reply_bytes": g.session_reply_bytes,
                    "voters": c.voters, "learners": c.learners,
                    "module_hash": hex(&g.module_hash), "module_index": g.module_index,
                    "snapshot_index": g.snapshot_index,
                    "digest_index": g.digest_index, "digest": hex(&g.digest),
                    "digest_verified_index": g.digest_verified_index,
                    "fenced": g.fence.as_ref().map(|f| serde_json::json!({
                        "index": f.index, "ours": hex(&f.ours), "group": hex(&f.group), "reason": f.reason,
                    })),
                    "digest_mismatches": g.digest_mismatches, "state_rebuilds": g.state_rebuilds,
                    "quiesced": g.quiesced,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "node_id": status.node_id, "groups": groups }));
        return;
    }
    println!("node {}", status.node_id);
    println!(
        "{:>6}  {:<13} {:>6} {:>7} {:<22} {:>8} {:>8} {:>8}  {:<12} {:>8}",
        "group", "role", "term", "leader", "leader address", "commit", "applied", "sessions", "module", "since"
    );
    for g in &status.groups {
        println!(
            "{:>6}  {:<13} {:>6} {:>7} {:<22} {:>8} {:>8} {:>8}  {:<12} {:>8}",
            g.group,
            role(g),
            g.term,
            g.leader_id,
            g.leader_address,
            g.commit_index,
            g.applied_index,
            g.sessions_open,
            hex(g.module_hash.get(..6).unwrap_or(&g.module_hash)),
            g.module_index
        );
    }
    for g in &status.groups {
        let named = waft_daemon::inbox::settings_named(&g.settings.unwrap_or_default());
        let list: Vec<String> = named.iter().map(|(n, v)| format!("{n}={v}")).collect();
        println!("group {} settings since {}: {}", g.group, g.settings_index, list.join(" "));
        match &g.fence {
            Some(f) => println!(
                "group {} FENCED at entry {}: {} (ours {}, group's {}); serving no reads, never leading, \
                 waiting to be rebuilt",
                g.group,
                f.index,
                f.reason,
                hex(&f.ours),
                hex(&f.group)
            ),
            None => println!(
                "group {} state digest: verified at {}, latest {} {}; mismatches {}, rebuilds {}",
                g.group,
                g.digest_verified_index,
                g.digest_index,
                hex(g.digest.get(..6).unwrap_or(&g.digest)),
                g.digest_mismatches,
                g.state_rebuilds
            ),
        }
    }
}

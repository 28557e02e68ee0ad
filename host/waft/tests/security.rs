//! TLS, identities and roles on real `waft serve` processes: three nodes
//! serving two groups over mutual TLS with a users file (`waft certs init`
//! writes the CA and certificates). The cluster serves writes and
//! linearizable reads; a plaintext client, a client whose certificate another
//! CA signed, and a peer presenting another node's certificate are refused;
//! a reader cannot write, a writer cannot deploy or change membership, an
//! admin can; a grant (by certificate or by token) for group 1 does not
//! reach group 2.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, Spec, module, run_waft, text};
use waft_daemon::client::{Client, ClientError, ClientTls, Credentials};
use waft_proto::admin::AdminOp;
use waft_proto::client::{Consistency, ErrorCode};

const G1: u64 = 1;
const G2: u64 = 2;
const READER_TOKEN: &str = "reader-token-7f3a";
const WRITER2_TOKEN: &str = "writer2-token-91c4";
const REFUSAL_DEADLINE: Duration = Duration::from_secs(10);

fn incr(n: u64) -> Bytes {
    Bytes::from(format!(r#"{{"incr":{n}}}"#))
}

fn get() -> Bytes {
    Bytes::from_static(br#""get""#)
}

/// The server's refusal code, or a panic naming what came instead.
fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(e) => e.code().unwrap_or_else(|| panic!("expected a refusal, got {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

fn users_file(token_of: impl Fn(&str) -> String) -> String {
    format!(
        "[[users]]\nname = \"admin\"\ngrants = [\"admin:*\"]\n\n\
         [[users]]\nname = \"client\"\ngrants = [\"write:1\"]\n\n\
         [[users]]\nname = \"reader\"\ntoken_sha256 = \"{}\"\ngrants = [\"read:1\"]\n\n\
         [[users]]\nname = \"writer2\"\ntoken_sha256 = \"{}\"\ngrants = [\"write:2\"]\n",
        token_of(READER_TOKEN),
        token_of(WRITER2_TOKEN)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_admits_only_its_own_and_each_role_does_only_its_part() {
    let counter = module("waft_counter");
    let spec = Spec { groups: vec![(G1, counter.clone()), (G2, counter.clone())], args: Vec::new() };
    let mut c = Cluster::prepare_tls("security", 3, spec);
    let certs = c.certs.clone().expect("TLS cluster");
    let users = certs.join("test-users.toml");
    std::fs::write(&users, users_file(waft_daemon::security::token_sha256)).unwrap();
    for i in 0..3 {
        c.set_extra_args(i, &["--users", users.to_str().unwrap()]);
        c.start_node(i);
    }
    let leader = c.wait_for_leader(G1).await;
    c.wait_for_leader(G2).await;
    let follower = (leader + 1) % 3;
    let all: Vec<String> = c.addrs.clone();

    // Writes and linearizable reads over TLS, as `client` (write:1).
    let writer = Client::with_credentials(all.clone(), c.credentials("client", None));
    writer.propose(G1, incr(5)).await.expect("a write over TLS");
    let at_follower = Client::with_credentials(vec![c.addrs[follower].clone()], c.credentials("client", None));
    let answer = at_follower.query(G1, get(), Consistency::Linearizable).await.expect("a linearizable read");
    assert_eq!(text(&answer), "5");

    // A plaintext client: the handshake never happens, nothing is served.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addrs[leader])).unwrap();
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(channel) => {
            let mut raw = waft_proto::client_client(channel);
            let req =
                waft_proto::client::QueryRequest { group: G1, request: get(), consistency: Consistency::Stale as i32 };
            tokio::time::timeout(REFUSAL_DEADLINE, raw.query(req)).await.expect("an answer or an error").is_err()
        }
    };
    assert!(refused, "a plaintext client was served");

    // A client whose certificate another CA signed (it trusts ours).
    let other = c.root.join("other-ca");
    let (ok, _, err) = run_waft(&["certs", "init", other.to_str().unwrap(), "--nodes", "1"]).await;
    assert!(ok, "{err}");
    let read = |p: std::path::PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let stranger = Credentials::new(
        Some(ClientTls::from_pem(
            &read(certs.join("ca.pem")),
            &read(other.join("admin.pem")),
            &read(other.join("admin.key")),
            None,
        )),
        None,
    )
    .unwrap();
    let stranger = Client::with_credentials(vec![c.addrs[leader].clone()], stranger);
    let e = tokio::time::timeout(REFUSAL_DEADLINE, stranger.status(None))
        .await
        .expect("the refusal is prompt")
        .expect_err("a certificate from another CA was accepted");
    assert!(e.code().is_none(), "refused in the handshake, not by a service: {e}");

    // A peer presenting node 2's certificate while claiming to be node 3,
    // and a user's certificate on the peer service: both refused.
    for (cert, claims, says) in [("node-2", 3u64, "node 2's certificate"), ("client", 2, "node's certificate")] {
        let target = if leader == 0 { 1 } else { 0 };
        let tls = ClientTls::from_pem(
            &read(certs.join("ca.pem")),
            &read(certs.join(format!("{cert}.pem"))),
            &read(certs.join(format!("{cert}.key"))),
            Some(waft_daemon::security::node_name(target as u64 + 1)),
        );
        let channel = waft_daemon::client::endpoint(Some(&tls), &c.addrs[target]).unwrap().connect().await.unwrap();
        let mut peer = waft_proto::peer_client(channel);
        let (tx, rx) = tokio::sync::mpsc::channel::<waft_proto::peer::PeerBatch>(1);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.metadata_mut().insert(waft_daemon::identity::NODE_HEADER, claims.into());
        request.metadata_mut().insert(waft_daemon::identity::INCARNATION_HEADER, 1u64.into());
        let call = tokio::spawn(async move { peer.raft(request).await });
        let status = tokio::time::timeout(REFUSAL_DEADLINE, call)
            .await
            .expect("the refusal is prompt")
            .unwrap()
            .expect_err("a peer stream with the wrong certificate was taken");
        drop(tx);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
        assert!(status.message().contains(says), "{cert} claiming node {claims}: {status}");
    }
    let page = c.scrape(if leader == 0 { 1 } else { 0 }).await;
    let refused_peers = page
        .lines()
        .find_map(|l| l.strip_prefix("waft_node_auth_peers_refused_total{")?.split_once("} ")?.1.trim().parse().ok())
        .unwrap_or(0u64);
    assert!(refused_peers >= 2, "peer refusals counted: {refused_peers}");

    // A node cannot serve with another node's certificate.
    let id = "9";
    let (ok, _, err) = run_waft(&[
        "serve",
        "--id",
        id,
        "--listen",
        "127.0.0.1:1",
        "--data-dir",
        c.root.join("node-9").to_str().unwrap(),
        "--tls-ca",
        certs.join("ca.pem").to_str().unwrap(),
        "--tls-cert",
        certs.join("node-2.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("node-2.key").to_str().unwrap(),
    ])
    .await;
    assert!(!ok && err.contains("node 2's certificate, and this is node 9"), "{err}");

    // A reader (token, read:1) reads group 1 and nothing else.
    let reader = Client::with_credentials(all.clone(), c.credentials("client", Some(READER_TOKEN)));
    let answer = reader.query(G1, get(), Consistency::Linearizable).await.expect("a reader reads");
    assert_eq!(text(&answer), "5");
    assert_eq!(code(reader.propose_once(G1, incr(1)).await), ErrorCode::PermissionDenied);
    assert_eq!(code(reader.query(G2, get(), Consistency::Linearizable).await), ErrorCode::PermissionDenied);
    let seen: Vec<u64> = reader.status(None).await.unwrap().groups.iter().map(|g| g.group).collect();
    assert_eq!(seen, vec![G1], "a reader's status lists the groups it may read");

    // A writer by certificate (write:1) writes group 1 but cannot deploy,
    // change membership, snapshot or touch group 2.
    let bytes = Bytes::from(std::fs::read(&counter).unwrap());
    assert_eq!(code(writer.deploy(G1, bytes.clone()).await), ErrorCode::PermissionDenied);
    assert_eq!(code(writer.admin(G1, AdminOp::AddLearners, vec![4], vec![]).await), ErrorCode::PermissionDenied);
    assert_eq!(code(writer.admin(G1, AdminOp::Snapshot, vec![], vec![]).await), ErrorCode::PermissionDenied);
    assert_eq!(code(writer.propose_once(G2, incr(1)).await), ErrorCode::PermissionDenied);
    let e = writer.admin(G1, AdminOp::TransferLeader, vec![], vec![]).await.unwrap_err();
    assert!(e.to_string().contains("lacks the admin role on group 1"), "the refusal names what was missing: {e}");

    // A token for group 2 (write:2) cannot touch group 1.
    let writer2 = Client::with_credentials(all.clone(), c.credentials("client", Some(WRITER2_TOKEN)));
    writer2.propose_once(G2, incr(7)).await.expect("write:2 writes group 2");
    assert_eq!(code(writer2.propose_once(G1, incr(1)).await), ErrorCode::PermissionDenied);
    assert_eq!(code(writer2.query(G1, get(), Consistency::Stale).await), ErrorCode::PermissionDenied);

    // An unknown token is refused, whatever the certificate.
    let unknown = Client::with_credentials(all.clone(), c.credentials("admin", Some("not-a-token")));
    let e = unknown.query(G1, get(), Consistency::Stale).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    assert!(e.to_string().contains("token"), "{e}");

    // The admin (admin:*) snapshots, deploys and changes membership, also
    // through the CLI.
    let admin = c.client_of_all(leader);
    admin.admin(G1, AdminOp::Snapshot, vec![], vec![]).await.expect("an admin snapshots");
    admin.deploy(G2, bytes).await.expect("an admin deploys");
    let mut args: Vec<String> = ["admin", "--addr", &c.addrs[leader], "--group", "2", "transfer-leader"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(c.cli_credentials("admin"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = run_waft(&args).await;
    assert!(ok, "an admin transfers leadership through the CLI: {out}{err}");
    let mut args: Vec<String> =
        ["query", "--addr", &c.addrs[follower], "--group", "2", "\"get\""].iter().map(|s| s.to_string()).collect();
    args.extend(c.cli_credentials("client"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run_waft(&args).await;
    assert!(!ok && err.contains("PERMISSION_DENIED"), "the CLI reports the refusal: {err}");

    // The CLI reads a client configuration file named in the environment
    // (paths relative to it), and WAFT_TOKEN wins over the file's token.
    let config = certs.join("reader-client.toml");
    std::fs::write(
        &config,
        format!("ca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\ntoken = \"{READER_TOKEN}\"\n"),
    )
    .unwrap();
    let cli = |args: &[&str], token: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waft"));
        cmd.args(args).env("WAFT_CLIENT_CONFIG", &config);
        if let Some(t) = token {
            cmd.env("WAFT_TOKEN", t);
        }
        let out = cmd.output().expect("the waft binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["query", "--addr", &c.addrs[follower], "--group", "1", "\"get\""], None);
    assert!(ok && out.trim() == "5", "the reader reads through its config file: {out}{err}");
    let (ok, _, err) = cli(&["propose", "--addr", &c.addrs[leader], "--group", "1", "{\"incr\":1}"], None);
    assert!(!ok && err.contains("PERMISSION_DENIED"), "the reader cannot write: {err}");
    let (ok, _, err) =
        cli(&["propose", "--addr", &c.addrs[leader], "--group", "2", "{\"incr\":0}"], Some(WRITER2_TOKEN));
    assert!(ok, "WAFT_TOKEN wins over the file's token: {err}");

    // The state is what the allowed writes made it, on every node.
    for i in 0..3 {
        let client = Client::with_credentials(vec![c.addrs[i].clone()], c.credentials("admin", None));
        assert_eq!(text(&client.query(G1, get(), Consistency::Linearizable).await.unwrap()), "5", "node {}", i + 1);
        assert_eq!(text(&client.query(G2, get(), Consistency::Linearizable).await.unwrap()), "7", "node {}", i + 1);
    }
    let mut denied = 0u64;
    for i in 0..3 {
        let page = c.scrape(i).await;
        denied += page
            .lines()
            .find_map(|l| l.strip_prefix("waft_node_auth_denied_total{")?.split_once("} ")?.1.trim().parse().ok())
            .unwrap_or(0u64);
    }
    assert!(denied >= 10, "refusals are counted: {denied}");
}

/// Over TLS, a follower behind a compacted log pulls the leader's snapshot
/// (the snapshot puller dials the leader as a node, with its certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_installs_a_snapshot_over_tls() {
    let spec = Spec::one(G1, "waft_counter").arg("--snapshot-margin-entries", 20);
    let mut c = Cluster::prepare_tls("security-install", 3, spec);
    for i in 0..3 {
        c.start_node(i);
    }
    let leader = c.wait_for_leader(G1).await;
    let behind = (leader + 1) % 3;
    c.kill(behind);
    let client = c.client(leader);
    for _ in 0..100 {
        client.propose(G1, incr(1)).await.expect("a write over TLS");
    }
    let at_leader = c.status(leader, G1).await.expect("leader status");
    assert!(at_leader.snapshot_index > 0, "the leader snapshotted and compacted its log");
    c.start_node(behind);
    let caught_up = c.wait_applied(behind, G1, at_leader.commit_index).await;
    assert!(caught_up.snapshot_index > 0, "it caught up from a snapshot");
    let local = Client::with_credentials(vec![c.addrs[behind].clone()], c.credentials("client", None));
    assert_eq!(text(&local.query(G1, get(), Consistency::Stale).await.unwrap()), "100");
    let log = std::fs::read_to_string(c.log_path(behind)).unwrap();
    assert!(log.contains("snapshot installed"), "the node's log says it installed the snapshot");
}

//! Valid inputs for every target, built with the encoders the daemon uses,
//! so the seeds never go stale when a format changes.

use bytes::Bytes;
use prost::Message as _;
use waft_proto::{admin, client, peer};
use waft_raft::{Configuration, Entry, EntryKind, Message, MessageBody, SnapshotMeta};
use waft_session::{Body, Envelope};

fn msg(body: MessageBody) -> Message {
    Message { from: 1, to: 2, term: 7, body }
}

fn envelopes() -> Vec<Envelope> {
    let at = |body| Envelope { timestamp_ms: 1_700_000_000_000, body };
    vec![
        at(Body::Plain { payload: Bytes::from_static(br#"{"incr":5}"#) }),
        at(Body::Register { nonce: Some(0x0102_0304) }),
        at(Body::Register { nonce: None }),
        at(Body::Command { session_id: 9, seq: 3, lowest_unacked_seq: 2, payload: Bytes::from_static(b"cmd") }),
        at(Body::KeepAlive { session_id: 9, lowest_unacked_seq: 4 }),
        at(Body::Unregister { session_id: 9 }),
        at(Body::Deploy { module: Bytes::from_static(b"\0asm\x0d\0\x01\0") }),
        at(Body::Settings { settings: Bytes::from(waft_node::GroupSettings::default().encode()) }),
        at(Body::Found {
            module_hash: [3; 32],
            module: Bytes::new(),
            settings: Bytes::from(waft_node::GroupSettings::default().encode()),
        }),
        at(Body::Verdict { index: 8192, digest: [5; 32] }),
    ]
}

fn peer_messages() -> Vec<Message> {
    let joint = Configuration {
        voters: vec![1, 2, 3],
        voters_outgoing: vec![1, 2, 4],
        learners: vec![9],
        ..Default::default()
    }
    .with_addresses([(4, "127.0.0.1:7004".to_string()), (9, "[::1]:7009".to_string())]);
    let data = envelopes().into_iter().filter_map(|e| e.encode().ok()).collect::<Vec<_>>();
    let entries = data
        .iter()
        .enumerate()
        .map(|(i, d)| Entry { index: 11 + i as u64, term: 6, kind: EntryKind::Normal, data: d.clone() })
        .chain([Entry { index: 30, term: 7, kind: EntryKind::Config, data: joint.encode() }])
        .collect();
    vec![
        msg(MessageBody::PreVote { last_index: 10, last_term: 6 }),
        msg(MessageBody::PreVoteResponse { reject: true }),
        msg(MessageBody::Vote { last_index: 10, last_term: 6, transfer: true }),
        msg(MessageBody::VoteResponse { reject: false }),
        msg(MessageBody::Append { prev_index: 10, prev_term: 6, entries, commit: 9 }),
        msg(MessageBody::AppendResponse { reject: true, index: 10, hint_index: 8, hint_term: 5 }),
        msg(MessageBody::Heartbeat { commit: 12, round: 99, quiesce: false }),
        msg(MessageBody::Heartbeat { commit: 12, round: 100, quiesce: true }),
        msg(MessageBody::HeartbeatResponse { round: 99 }),
        msg(MessageBody::InstallSnapshot { meta: SnapshotMeta { index: 1000, term: 6, config: joint } }),
        msg(MessageBody::TimeoutNow),
        msg(MessageBody::ReadIndex { ids: vec![3, 4, 5] }),
        msg(MessageBody::ReadIndexResponse { ids: vec![3, 4, 5], index: 12 }),
        msg(MessageBody::StateDigest { index: 4096, digest: [7; 32] }),
    ]
}

fn manifest() -> peer::SnapshotManifest {
    peer::SnapshotManifest {
        module_hash: Bytes::from_static(&[3; 32]),
        files: vec![
            peer::SnapshotFile { name: "state".into(), size: 4096, crc32: 0xdead_beef },
            peer::SnapshotFile { name: "sessions".into(), size: 12, crc32: 7 },
        ],
    }
}

fn storage_meta() -> waft_storage::SnapshotMeta {
    waft_storage::SnapshotMeta {
        index: 1000,
        term: 6,
        config: Configuration { voters: vec![1, 2, 3], ..Default::default() }.encode(),
        module_hash: waft_storage::ModuleHash([3; 32]),
        files: vec![waft_storage::SnapshotFile { name: "state".into(), size: 4096, crc32: 0xdead_beef }],
    }
}

/// Valid inputs of `target` (none for an unknown name).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "peer_batch" => {
            let mut messages: Vec<peer::PeerMessage> =
                peer_messages().into_iter().map(|m| peer::PeerMessage::from_raft(42, m)).collect();
            for m in &mut messages {
                m.set_snapshot_manifest(manifest());
            }
            let one: Vec<Vec<u8>> =
                messages.iter().map(|m| peer::PeerBatch { messages: vec![m.clone()] }.encode_to_vec()).collect();
            one.into_iter().chain([peer::PeerBatch { messages }.encode_to_vec()]).collect()
        }
        "snapshot_chunk" => vec![
            peer::SnapshotChunkRequest {
                group: 1,
                snapshot_index: 1000,
                snapshot_term: 6,
                file: "state".into(),
                offset: 4096,
                max_len: 1 << 20,
            }
            .encode_to_vec(),
            peer::SnapshotChunk { data: Bytes::from_static(b"chunk bytes"), eof: true, ..Default::default() }
                .encode_to_vec(),
        ],
        "client_calls" => {
            let propose = client::ProposeRequest {
                group: 1,
                command: Bytes::from_static(br#"{"incr":5}"#),
                session_id: 12,
                sequence: 3,
                lowest_unacked_sequence: 1,
            };
            let query = client::QueryRequest {
                group: 1,
                request: Bytes::from_static(br#""get""#),
                consistency: client::Consistency::Linearizable as i32,
            };
            let plain =
                client::ProposeRequest { session_id: 0, sequence: 0, lowest_unacked_sequence: 0, ..propose.clone() };
            let calls = vec![
                client::Call { id: 1, request: Some(client::call::Request::Propose(propose)) },
                client::Call { id: 2, request: Some(client::call::Request::Query(query)) },
                client::Call { id: 3, request: Some(client::call::Request::Propose(plain)) },
            ];
            vec![
                client::CallBatch { calls }.encode_to_vec(),
                client::OpenSessionRequest { group: 1, nonce: Bytes::from_static(&[9; 16]) }.encode_to_vec(),
            ]
        }
        "admin_requests" => [admin::AdminOp::AddPeer, admin::AdminOp::ChangePeers, admin::AdminOp::ResetPeers]
            .into_iter()
            .map(|op| {
                admin::AdminRequest {
                    group: 1,
                    op: op as i32,
                    ids: vec![1, 2, 4],
                    learners: vec![5],
                    allow_data_loss: op == admin::AdminOp::ResetPeers,
                    addresses: vec![client::NodeAddress { node_id: 4, address: "127.0.0.1:7004".into() }],
                }
                .encode_to_vec()
            })
            .chain([admin::SetGroupRequest {
                group: 1,
                changes: vec![admin::SettingChange { name: "fuel_per_entry".into(), value: 10_000_000 }],
            }
            .encode_to_vec()])
            .collect(),
        "session_envelope" => envelopes().iter().filter_map(|e| e.encode().ok()).map(|b| b.to_vec()).collect(),
        "session_table" => {
            let cfg = waft_session::SessionConfig::default();
            let Ok(mut table) = waft_session::SessionTable::new(cfg) else { return Vec::new() };
            for (i, e) in envelopes().into_iter().take(4).enumerate() {
                let _ = table.apply(i as u64 + 1, e);
            }
            table.encode_snapshot().map(|b| vec![b.to_vec()]).unwrap_or_default()
        }
        "log_records" => waft_storage::fuzzing::log_record_seeds(),
        "snapshot_meta" => vec![storage_meta().encode(), manifest().encode_to_vec()],
        "raft_configuration" => vec![
            Configuration {
                voters: vec![1, 2, 3],
                voters_outgoing: vec![1, 2, 4],
                learners: vec![9],
                ..Default::default()
            }
            .encode()
            .to_vec(),
            Configuration::default().encode().to_vec(),
        ],
        "group_settings" => {
            let s = waft_node::GroupSettings::default();
            vec![s.encode(), s.encode_change(40), s.encode_file(40)]
        }
        "module_store" => vec![b"\0asm\x0d\0\x01\0".to_vec(), b"the module the name promises".to_vec()],
        "catalogue" => vec![
            format!(
                "# created groups\ngroup 3 voters 1,2,3 module {}\ngroup 4 voters 2 module {}\n",
                "ab".repeat(32),
                "0c".repeat(32)
            )
            .into_bytes(),
        ],
        "identity_files" => vec![
            b"waft-identity 1\nnode 3\nincarnation 00000000deadbeef\n".to_vec(),
            b"2 00000000000000ab\n3 ff\n".to_vec(),
        ],
        "users_file" => vec![
            b"[[users]]\nname = \"ops\"\ngrants = [\"admin:*\"]\n\n[[users]]\nname = \"r\"\n\
              token_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n\
              grants = [\"read:1,2\"]\n"
                .to_vec(),
        ],
        "serve_config" => vec![include_bytes!("../../../../docs/serve.toml").to_vec()],
        _ => Vec::new(),
    }
}

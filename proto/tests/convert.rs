//! Round trips of every waft-raft message variant through the wire form, and
//! refusal of malformed wire messages with the error that names the problem.

use bytes::Bytes;
use prost::Message as _;
use waft_proto::peer::{self, PeerMessage, peer_message::Body};
use waft_proto::{ConvertError, peer::SnapshotManifest};
use waft_raft::{Configuration, Entry, EntryKind, Message, MessageBody, SnapshotMeta};

const GROUP: u64 = 42;

fn msg(body: MessageBody) -> Message {
    Message { from: 1, to: 2, term: 7, body }
}

fn entry(index: u64, term: u64, kind: EntryKind, data: &'static [u8]) -> Entry {
    Entry { index, term, kind, data: Bytes::from_static(data) }
}

fn every_variant() -> Vec<Message> {
    let joint = Configuration {
        voters: vec![1, 2, 3],
        voters_outgoing: vec![1, 2, 4],
        learners: vec![9],
        ..Default::default()
    };
    vec![
        msg(MessageBody::PreVote { last_index: 10, last_term: 6 }),
        msg(MessageBody::PreVoteResponse { reject: true }),
        msg(MessageBody::PreVoteResponse { reject: false }),
        msg(MessageBody::Vote { last_index: 10, last_term: 6, transfer: true }),
        msg(MessageBody::VoteResponse { reject: false }),
        msg(MessageBody::Append {
            prev_index: 10,
            prev_term: 6,
            entries: vec![
                entry(11, 6, EntryKind::Normal, b"cmd"),
                entry(12, 7, EntryKind::Normal, b""),
                entry(13, 7, EntryKind::Config, b"\x01junk is opaque log content"),
            ],
            commit: 9,
        }),
        // A heartbeat-like probe: an append with no entries.
        msg(MessageBody::Append { prev_index: 0, prev_term: 0, entries: vec![], commit: 0 }),
        msg(MessageBody::AppendResponse { reject: true, index: 10, hint_index: 8, hint_term: 5 }),
        msg(MessageBody::AppendResponse { reject: false, index: 13, hint_index: 0, hint_term: 0 }),
        msg(MessageBody::Heartbeat { commit: 12, round: 99, quiesce: false }),
        msg(MessageBody::Heartbeat { commit: 12, round: 100, quiesce: true }),
        msg(MessageBody::HeartbeatResponse { round: 99 }),
        msg(MessageBody::InstallSnapshot { meta: SnapshotMeta { index: 1000, term: 6, config: joint } }),
        msg(MessageBody::InstallSnapshot { meta: SnapshotMeta::default() }),
        msg(MessageBody::TimeoutNow),
        msg(MessageBody::ReadIndex { ids: vec![3, 4, 5] }),
        msg(MessageBody::ReadIndex { ids: vec![] }),
        msg(MessageBody::ReadIndexResponse { ids: vec![3, 4, 5], index: 12 }),
        msg(MessageBody::StateDigest { index: 4096, digest: [7; 32] }),
        Message {
            from: u64::MAX,
            to: 3,
            term: u64::MAX,
            body: MessageBody::Heartbeat { commit: u64::MAX, round: u64::MAX, quiesce: true },
        },
    ]
}

#[test]
fn every_variant_round_trips_through_the_wire_bytes() {
    for m in every_variant() {
        let wire = PeerMessage::from_raft(GROUP, m.clone());
        // Through the encoded bytes too, not only the generated struct.
        let decoded = PeerMessage::decode(wire.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, wire);
        assert_eq!(decoded.into_raft(), Ok((GROUP, m.clone())));
        // The trait pair says the same.
        let via_from: PeerMessage = (GROUP, m.clone()).into();
        let back: (u64, Message) = via_from.try_into().expect("converts back");
        assert_eq!(back, (GROUP, m));
    }
}

#[test]
fn batch_round_trips() {
    let batch = peer::PeerBatch {
        messages: every_variant()
            .into_iter()
            .enumerate()
            .map(|(i, m)| PeerMessage::from_raft(i as u64 + 1, m))
            .collect(),
    };
    let decoded = peer::PeerBatch::decode(batch.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, batch);
}

fn wire(body: Body) -> PeerMessage {
    PeerMessage { group: GROUP, from: 1, to: 2, term: 7, body: Some(body) }
}

fn wire_entry(index: u64, term: u64, kind: i32) -> peer::Entry {
    peer::Entry { index, term, kind, data: Bytes::new() }
}

fn wire_append(prev_index: u64, prev_term: u64, entries: Vec<peer::Entry>) -> PeerMessage {
    wire(Body::Append(peer::Append { prev_index, prev_term, entries, commit: 0 }))
}

#[test]
fn malformed_headers_are_refused() {
    let ok = wire(Body::TimeoutNow(peer::TimeoutNow {}));
    assert!(ok.clone().into_raft().is_ok());
    assert_eq!(PeerMessage { group: 0, ..ok.clone() }.into_raft(), Err(ConvertError::ZeroGroup));
    assert_eq!(PeerMessage { from: 0, ..ok.clone() }.into_raft(), Err(ConvertError::ZeroNode { field: "from" }));
    assert_eq!(PeerMessage { to: 0, ..ok.clone() }.into_raft(), Err(ConvertError::ZeroNode { field: "to" }));
    assert_eq!(PeerMessage { body: None, ..ok }.into_raft(), Err(ConvertError::MissingBody));
    // Empty bytes decode to an all-default message: refused, not defaulted.
    let empty = PeerMessage::decode(&[][..]).expect("empty is a valid encoding");
    assert_eq!(empty.into_raft(), Err(ConvertError::ZeroGroup));
}

#[test]
fn malformed_appends_are_refused() {
    let gap = wire_append(10, 6, vec![wire_entry(11, 6, 0), wire_entry(13, 6, 0)]);
    assert_eq!(
        gap.into_raft(),
        Err(ConvertError::EntryIndexGap { prev_index: 10, position: 1, index: 13, expected: 12 })
    );
    let wrong_start = wire_append(10, 6, vec![wire_entry(10, 6, 0)]);
    assert!(matches!(wrong_start.into_raft(), Err(ConvertError::EntryIndexGap { expected: 11, .. })));
    let overflow = wire_append(u64::MAX, 6, vec![wire_entry(0, 6, 0)]);
    assert_eq!(overflow.into_raft(), Err(ConvertError::EntryIndexOverflow { prev_index: u64::MAX }));
    let term_down = wire_append(10, 6, vec![wire_entry(11, 5, 0)]);
    assert_eq!(term_down.into_raft(), Err(ConvertError::EntryTermDecreases { index: 11, term: 5, previous_term: 6 }));
    let term_up = wire_append(10, 6, vec![wire_entry(11, 8, 0)]);
    assert_eq!(term_up.into_raft(), Err(ConvertError::EntryTermAboveMessage { index: 11, term: 8, message_term: 7 }));
    let unknown_kind = wire_append(10, 6, vec![wire_entry(11, 6, 5)]);
    assert_eq!(unknown_kind.into_raft(), Err(ConvertError::UnknownEntryKind { index: 11, kind: 5 }));
}

#[test]
fn malformed_snapshot_meta_is_refused() {
    let missing = wire(Body::InstallSnapshot(peer::InstallSnapshot { meta: None, manifest: None }));
    assert_eq!(missing.into_raft(), Err(ConvertError::MissingSnapshotMeta));

    let bad_config = wire(Body::InstallSnapshot(peer::InstallSnapshot {
        meta: Some(peer::SnapshotMeta { index: 5, term: 2, configuration: Bytes::from_static(b"\x09") }),
        manifest: None,
    }));
    let err = bad_config.into_raft().expect_err("bad configuration");
    assert!(matches!(
        err,
        ConvertError::SnapshotConfiguration { index: 5, term: 2, source: waft_raft::DecodeError::UnknownVersion(9) }
    ));
    // The message says which snapshot and what was wrong.
    assert!(err.to_string().contains("snapshot 5/2"), "{err}");
}

fn manifest(names: &[&str]) -> SnapshotManifest {
    SnapshotManifest {
        module_hash: Bytes::from(vec![7u8; 32]),
        files: names.iter().map(|n| peer::SnapshotFile { name: n.to_string(), size: 10, crc32: 1 }).collect(),
    }
}

#[test]
fn snapshot_manifest_is_attached_and_checked() {
    let m = msg(MessageBody::InstallSnapshot {
        meta: SnapshotMeta { index: 3, term: 1, config: Configuration::new([1, 2]) },
    });
    let mut wire = PeerMessage::from_raft(GROUP, m.clone());
    assert!(wire.snapshot_manifest().is_none());
    assert!(wire.set_snapshot_manifest(manifest(&["data", "index"])));
    let decoded = PeerMessage::decode(wire.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded.snapshot_manifest(), Some(Ok(&manifest(&["data", "index"]))));
    // The manifest is the daemon's; the core message is unchanged by it.
    assert_eq!(decoded.into_raft(), Ok((GROUP, m)));

    let mut other = PeerMessage::from_raft(GROUP, msg(MessageBody::TimeoutNow));
    assert!(!other.set_snapshot_manifest(manifest(&["data"])));
    assert!(other.snapshot_manifest().is_none());

    for bad in ["", ".", "..", "../etc/passwd", "a/b", "a\\b", "nul\0"] {
        assert_eq!(
            manifest(&["ok", bad]).validate(),
            Err(ConvertError::BadFileName { name: bad.to_string() }),
            "{bad:?}"
        );
    }
    let long = "x".repeat(256);
    assert!(manifest(&[long.as_str()]).validate().is_err());
    assert_eq!(manifest(&["a", "a"]).validate(), Err(ConvertError::DuplicateFile { name: "a".to_string() }));
    let short_hash = SnapshotManifest { module_hash: Bytes::from_static(b"abc"), ..manifest(&["a"]) };
    assert_eq!(short_hash.validate(), Err(ConvertError::ModuleHashLength { len: 3 }));
    let many: Vec<String> = (0..=waft_proto::SNAPSHOT_FILES_MAX).map(|i| format!("f{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        manifest(&many).validate(),
        Err(ConvertError::TooManyFiles { count: waft_proto::SNAPSHOT_FILES_MAX + 1 })
    );
}

#[test]
fn garbage_bytes_do_not_panic() {
    // Truncations of a valid message either fail to decode or decode to
    // something the conversion accepts or refuses; never a panic.
    let full = PeerMessage::from_raft(GROUP, every_variant()[5].clone()).encode_to_vec();
    for cut in 0..full.len() {
        if let Ok(m) = PeerMessage::decode(&full[..cut]) {
            let _ = m.into_raft();
        }
    }
    assert!(PeerMessage::decode(&[0xff, 0xff, 0xff][..]).is_err());
}

//! What each client sends: the choice of operation and key, and the bytes of
//! each request for either target. Pure: no I/O, no clock; a seed gives the
//! same sequence every run.

use bytes::Bytes;

/// Bytes of a key's id: `k` and the key's index in 10 digits (see [`key_id`]).
pub const KEY_ID_BYTES: usize = 11;

/// SplitMix64: small, fast, and good enough to pick keys and operations. Not
/// for anything that must be unpredictable.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// One generator per client: the same (seed, client) gives the same sequence.
    pub fn for_client(seed: u64, client: usize) -> Rng {
        Rng { state: seed ^ (client as u64).wrapping_mul(0xA076_1D64_78BD_642F) }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) (Lemire's multiply-shift; the bias is below 2^-32 for
    /// any n the bench uses). `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read { key: u64 },
    Write { key: u64 },
}

/// The next operation: a read with probability `read_ratio`, on a key drawn
/// uniformly from `keys`.
pub fn next_op(rng: &mut Rng, read_ratio: f64, keys: u64) -> Op {
    // Draw in a fixed order so a run's key sequence does not depend on the mix.
    let read = rng.unit() < read_ratio;
    let key = rng.below(keys);
    if read { Op::Read { key } } else { Op::Write { key } }
}

/// The key's name: `k` and the index in 10 digits, e.g. `k0000000042`.
pub fn key_id(key: u64) -> String {
    debug_assert!(key < crate::cli::KEYS_MAX);
    format!("k{key:010}")
}

/// waft: the atomic key that carries the payload: the key's id padded with
/// `.` to exactly `value_bytes` (JSON needs no escape for either).
/// `value_bytes` must be at least [`KEY_ID_BYTES`].
pub fn waft_key(key: u64, value_bytes: usize) -> String {
    let mut k = Vec::with_capacity(value_bytes.max(KEY_ID_BYTES));
    push_waft_key(&mut k, key, value_bytes);
    // Only ASCII digits, `k` and `.` went in.
    String::from_utf8(k).unwrap_or_default()
}

/// Appends [`waft_key`]'s bytes to `out` without a `String` of its own: the
/// bench builds one command per operation, and at 64 clients the client's
/// formatting shares the cores with the servers it measures.
fn push_waft_key(out: &mut Vec<u8>, key: u64, value_bytes: usize) {
    debug_assert!(key < crate::cli::KEYS_MAX);
    let start = out.len();
    out.push(b'k');
    push_digits(out, key, 10);
    let pad = value_bytes.saturating_sub(out.len() - start);
    out.resize(out.len() + pad, b'.');
}

/// Appends `n`'s last `width` decimal digits, zero-padded.
fn push_digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let at = out.len();
    out.resize(at + width, b'0');
    for slot in out[at..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Written values have 10 digits, so every set command has the same length.
const WAFT_VALUE_BASE: i64 = 1_000_000_000;

/// waft: the atomic example's set command for `key`, as JSON. `seq` varies
/// the value so every write changes state.
pub fn waft_set(key: u64, seq: u64, value_bytes: usize) -> Bytes {
    let value = WAFT_VALUE_BASE as u64 + seq % WAFT_VALUE_BASE as u64;
    let mut out = Vec::with_capacity(value_bytes + 40);
    out.extend_from_slice(br#"{"set":{"key":""#);
    push_waft_key(&mut out, key, value_bytes);
    out.extend_from_slice(br#"","value":"#);
    // 10 digits: WAFT_VALUE_BASE .. 2 * WAFT_VALUE_BASE.
    push_digits(&mut out, value, 10);
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// waft: the atomic example's query for `key`, as JSON.
pub fn waft_get(key: u64, value_bytes: usize) -> Bytes {
    let mut out = Vec::with_capacity(value_bytes + 24);
    out.extend_from_slice(br#"{"get":{"key":""#);
    push_waft_key(&mut out, key, value_bytes);
    out.extend_from_slice(br#""}}"#);
    Bytes::from(out)
}

/// etcd: the key of a put or range.
pub fn etcd_key(key: u64) -> Bytes {
    Bytes::from(key_id(key))
}

/// etcd: the value every put of one client writes: `value_bytes` printable
/// bytes drawn from `rng` (etcd does not compress, but a log viewer may).
pub fn etcd_value(rng: &mut Rng, value_bytes: usize) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..value_bytes).map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize]).collect::<Vec<u8>>().into()
}

/// How the payload travels, in words, for the report.
pub fn payload_note(target: crate::cli::Target, value_bytes: usize) -> String {
    match target {
        crate::cli::Target::Waft => format!(
            "waft: atomic set as JSON, {{\"set\":{{\"key\":<{value_bytes}-byte key>,\"value\":<10-digit i64>}}}} \
             ({} bytes a command); the atomic example stores i64 values, so the payload rides in the key. \
             Reads: {{\"get\":{{\"key\":<{value_bytes}-byte key>}}}}, answered with an i64",
            waft_set(0, 0, value_bytes).len()
        ),
        crate::cli::Target::Etcd => format!(
            "etcd: put of an {KEY_ID_BYTES}-byte key and a {value_bytes}-byte value; reads: range of one key, \
             answered with the key and its value"
        ),
    }
}

/// Bytes of one write's payload fields: waft's whole command, etcd's key and value.
pub fn write_request_bytes(target: crate::cli::Target, value_bytes: usize) -> usize {
    match target {
        crate::cli::Target::Waft => waft_set(0, 0, value_bytes).len(),
        crate::cli::Target::Etcd => KEY_ID_BYTES + value_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence_and_clients_differ() {
        let take = |seed, client| {
            let mut r = Rng::for_client(seed, client);
            (0..8).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(take(1, 0), take(1, 0));
        assert_ne!(take(1, 0), take(1, 1));
        assert_ne!(take(1, 0), take(2, 0));
    }

    #[test]
    fn below_and_unit_stay_in_range() {
        let mut r = Rng::for_client(7, 3);
        for _ in 0..10_000 {
            assert!(r.below(5) < 5);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn the_mix_follows_the_ratio() {
        let mut r = Rng::for_client(1, 0);
        let reads = (0..100_000).filter(|_| matches!(next_op(&mut r, 0.9, 1000), Op::Read { .. })).count();
        // 90% of 100 000, within a margin far wider than the sampling error.
        assert!((89_000..91_000).contains(&reads), "{reads}");
        assert!((0..1000).all(|_| matches!(next_op(&mut r, 0.0, 10), Op::Write { key } if key < 10)));
        assert!((0..1000).all(|_| matches!(next_op(&mut r, 1.0, 10), Op::Read { key } if key < 10)));
    }

    #[test]
    fn waft_commands_are_the_atomic_examples_json_with_an_exact_key() {
        let set: serde_json::Value = serde_json::from_slice(&waft_set(42, 7, 256)).expect("valid JSON");
        let key = set["set"]["key"].as_str().expect("a string key");
        assert_eq!(key.len(), 256);
        assert!(key.starts_with("k0000000042."));
        assert_eq!(set["set"]["value"], 1_000_000_007i64);
        let get: serde_json::Value = serde_json::from_slice(&waft_get(42, 256)).expect("valid JSON");
        assert_eq!(get["get"]["key"].as_str(), Some(key));
        // Every set has one length, whatever its value.
        assert_eq!(waft_set(0, 0, 256).len(), waft_set(999, u64::MAX, 256).len());
        assert_eq!(waft_key(1, KEY_ID_BYTES), "k0000000001");
        // Byte for byte what the plain formatting gives.
        for (k, seq) in [(0, 0), (42, 7), (999, 999_999_999), (7, u64::MAX)] {
            let key = format!("k{k:010}{}", ".".repeat(245));
            let value = 1_000_000_000 + seq % 1_000_000_000;
            assert_eq!(waft_set(k, seq, 256), format!(r#"{{"set":{{"key":"{key}","value":{value}}}}}"#));
            assert_eq!(waft_get(k, 256), format!(r#"{{"get":{{"key":"{key}"}}}}"#));
        }
        assert_eq!(waft_key(3, 4), "k0000000003");
    }

    #[test]
    fn etcd_payloads_have_the_asked_sizes() {
        let mut r = Rng::for_client(1, 0);
        assert_eq!(etcd_value(&mut r, 256).len(), 256);
        assert!(etcd_value(&mut r, 0).is_empty());
        assert_eq!(etcd_key(5).len(), KEY_ID_BYTES);
        assert_eq!(write_request_bytes(crate::cli::Target::Etcd, 256), 267);
    }
}

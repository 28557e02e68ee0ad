//! Deterministic stand-ins for the WASI interfaces the wasm32-wasip2
//! toolchain imports.
//!
//! Owns the answer to "what does the guest see when it asks the outside
//! world". Must never expose anything that differs between replicas or
//! between runs: the clocks are fixed, the environment and arguments empty,
//! stdin empty, stdout and stderr discarded, there are no preopened
//! directories and no network. Randomness (`wasi:random/random`,
//! `wasi:random/insecure` and `wasi:random/insecure-seed`, which the Rust
//! standard library reads for `HashMap` keys) is a stream keyed by a seed the
//! runtime sets before every call: for an `on-apply` call, a pure function of
//! the group and the entry's index (`entry_seed`), so what a guest draws
//! while applying an entry depends on nothing but which entry it is — not on
//! batching, restarts, fault re-runs or queries. `wasi_link.rs` links these so that no call ever waits: with
//! nothing here ever becoming ready later, a call that would wait traps.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx};

/// The wall clock every guest sees: the Unix epoch, forever.
struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// The monotonic clock every guest sees: zero, forever.
struct FixedMonotonicClock;

impl HostMonotonicClock for FixedMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A counter-based generator (splitmix64 over a seed and a position) whose
/// seed the runtime sets, and whose position it rewinds to zero, before every
/// call into the guest. Shared between the store's WASI context and the
/// runtime through an `Arc`.
#[derive(Clone, Default)]
pub(crate) struct FixedRandom {
    inner: Arc<RandomState>,
}

#[derive(Default)]
struct RandomState {
    seed: AtomicU64,
    position: AtomicU64,
    /// Bytes handed to the guest since the host last charged for them.
    drawn_bytes: AtomicU64,
}

impl FixedRandom {
    /// Restart the stream at `seed`.
    pub(crate) fn reseed(&self, seed: u64) {
        self.inner.seed.store(seed, Ordering::Relaxed);
        self.inner.position.store(0, Ordering::Relaxed);
    }

    /// The 128-bit `insecure-seed` value: the first two words of the stream's
    /// seed, without moving its position (std reads it once per instance).
    pub(crate) fn insecure_seed(&self) -> (u64, u64) {
        let seed = self.inner.seed.load(Ordering::Relaxed);
        (splitmix64(seed ^ INSECURE_SEED_DOMAIN), splitmix64(seed ^ INSECURE_SEED_DOMAIN.rotate_left(32)))
    }

    /// Bytes drawn since the last call, which are now charged for.
    pub(crate) fn take_drawn_bytes(&self) -> u64 {
        self.inner.drawn_bytes.swap(0, Ordering::Relaxed)
    }

    fn next(&self, bytes: u64) -> u64 {
        self.inner.drawn_bytes.fetch_add(bytes, Ordering::Relaxed);
        let n = self.inner.position.fetch_add(1, Ordering::Relaxed);
        splitmix64(self.inner.seed.load(Ordering::Relaxed).wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }
}

/// Keeps `insecure-seed` apart from the stream's own words.
const INSECURE_SEED_DOMAIN: u64 = 0x5EED_5EED_5EED_5EED;

/// The seed of the random stream an `on-apply` call for the entry at `index`
/// of `group` sees: the same on every replica, whatever else happened.
pub(crate) fn entry_seed(group: u64, index: u64) -> u64 {
    splitmix64(splitmix64(group ^ 0x6A09_E667_F3BC_C908).wrapping_add(index))
}

/// The seed of a call that belongs to no entry (a snapshot load or save, a
/// configuration hook, a query): fixed per group and kind of call.
pub(crate) fn call_seed(group: u64, kind: u64) -> u64 {
    splitmix64(splitmix64(group ^ 0xBB67_AE85_84CA_A73B).wrapping_add(kind))
}

fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl rand_core::TryRng for FixedRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.next(4) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next(8))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let word = self.next(chunk.len() as u64).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}

/// Most random bytes one guest request may ask for.
const RANDOM_BYTES_PER_REQUEST_MAX: u64 = 64 * 1024;

/// The WASI context for one instance, and the handle that rewinds its
/// randomness.
pub(crate) fn deterministic_ctx() -> (WasiCtx, FixedRandom) {
    let random = FixedRandom::default();
    let ctx = WasiCtx::builder()
        .wall_clock(FixedWallClock)
        .monotonic_clock(FixedMonotonicClock)
        .secure_random(random.clone())
        .insecure_random(random.clone())
        .max_random_size(RANDOM_BYTES_PER_REQUEST_MAX)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    (ctx, random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::TryRng;

    #[test]
    fn random_stream_restarts_at_its_seed() {
        let mut r = FixedRandom::default();
        r.reseed(entry_seed(7, 10));
        let mut a = [0u8; 20];
        r.try_fill_bytes(&mut a).unwrap();
        let mut b = [0u8; 20];
        r.try_fill_bytes(&mut b).unwrap();
        assert_ne!(a, b);
        assert_eq!(r.take_drawn_bytes(), 40);
        assert_eq!(r.take_drawn_bytes(), 0);
        r.reseed(entry_seed(7, 10));
        let mut c = [0u8; 20];
        r.try_fill_bytes(&mut c).unwrap();
        assert_eq!(a, c);
        r.reseed(entry_seed(7, 11));
        r.try_fill_bytes(&mut c).unwrap();
        assert_ne!(a, c, "another entry, another stream");
        r.reseed(entry_seed(8, 10));
        r.try_fill_bytes(&mut c).unwrap();
        assert_ne!(a, c, "another group, another stream");
    }
}

//! Deterministic stand-ins for the WASI interfaces the wasm32-wasip2
//! toolchain imports.
//!
//! Owns the answer to "what does the guest see when it asks the outside
//! world". Must never expose anything that differs between replicas or
//! between runs: the clocks are fixed, the environment and arguments empty,
//! stdin empty, stdout and stderr discarded, there are no preopened
//! directories and no network. Randomness is a fixed stream that restarts at
//! every call into the guest, so the bytes a guest draws depend only on what
//! it does within that call, never on how long the instance has lived (a
//! replica restored from a snapshot draws the same bytes as one that ran from
//! the start). `wasi_link.rs` links these so that no call ever waits: with
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

/// A counter-based generator (splitmix64 over a shared position) whose
/// position the host rewinds to zero before every call into the guest.
#[derive(Clone, Default)]
pub(crate) struct FixedRandom {
    position: Arc<AtomicU64>,
}

impl FixedRandom {
    pub(crate) fn rewind(&self) {
        self.position.store(0, Ordering::Relaxed);
    }

    fn next(&self) -> u64 {
        let n = self.position.fetch_add(1, Ordering::Relaxed);
        splitmix64(n)
    }
}

fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl rand_core::TryRng for FixedRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.next() as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let word = self.next().to_le_bytes();
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
        .insecure_random_seed(0)
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
    fn random_stream_restarts_after_rewind() {
        let mut r = FixedRandom::default();
        let mut a = [0u8; 20];
        r.try_fill_bytes(&mut a).unwrap();
        let mut b = [0u8; 20];
        r.try_fill_bytes(&mut b).unwrap();
        assert_ne!(a, b);
        r.rewind();
        let mut c = [0u8; 20];
        r.try_fill_bytes(&mut c).unwrap();
        assert_eq!(a, c);
    }
}

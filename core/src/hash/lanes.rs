//! SHA-256 of several messages at once, one per 32-bit lane of 128-bit vectors.
//!
//! Verifying a history hashes every event on its own, so the hashes are independent
//! and can run side by side. Native builds use the `sha2` crate, which uses the CPU's
//! SHA instructions; WebAssembly has none, and there this runs four messages through
//! one stream of SIMD instructions (`simd128`), about three times the throughput of
//! one scalar hash at a time. It is used where that feature is enabled (the Node
//! build of the npm package), see [`super::of_each`].
//!
//! The algorithm is written once over [`Lanes`]: WebAssembly's `v128`, and a plain
//! `[u32; 4]` on which the tests check it against `sha2` natively, at every length
//! around the padding boundaries.

/// Most messages side by side (the widest [`Lanes`]; the tests also run eight).
pub(crate) const MAX: usize = 8;

/// `N` 32-bit words side by side, and the operations SHA-256 needs on them.
pub(crate) trait Lanes: Copy {
    /// How many messages run side by side.
    const N: usize;
    fn splat(x: u32) -> Self;
    /// Lane `i` holds `w[i]`.
    fn words(w: &[u32; MAX]) -> Self;
    /// Lane `i` holds the big-endian word at `at` of `blocks[i]`.
    fn load_be(blocks: &[&[u8; 64]; MAX], at: usize) -> Self;
    fn add(self, o: Self) -> Self;
    fn xor(self, o: Self) -> Self;
    fn shr(self, n: u32) -> Self;
    fn rotr(self, n: u32) -> Self;
    /// Bits of `a` where `mask` is set, of `b` elsewhere.
    fn select(a: Self, b: Self, mask: Self) -> Self;
    fn lane(self, i: usize) -> u32;
}

/// The portable lanes: the reference the tests run natively.
impl<const N: usize> Lanes for [u32; N] {
    const N: usize = N;
    fn splat(x: u32) -> Self {
        [x; N]
    }
    fn words(w: &[u32; MAX]) -> Self {
        std::array::from_fn(|i| w[i])
    }
    fn load_be(blocks: &[&[u8; 64]; MAX], at: usize) -> Self {
        std::array::from_fn(|i| {
            let b = blocks[i];
            u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
        })
    }
    fn add(self, o: Self) -> Self {
        std::array::from_fn(|i| self[i].wrapping_add(o[i]))
    }
    fn xor(self, o: Self) -> Self {
        std::array::from_fn(|i| self[i] ^ o[i])
    }
    fn shr(self, n: u32) -> Self {
        self.map(|x| x >> n)
    }
    fn rotr(self, n: u32) -> Self {
        self.map(|x| x.rotate_right(n))
    }
    fn select(a: Self, b: Self, mask: Self) -> Self {
        std::array::from_fn(|i| (a[i] & mask[i]) | (b[i] & !mask[i]))
    }
    fn lane(self, i: usize) -> u32 {
        self[i]
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use core::arch::wasm32::*;

    use super::{Lanes, MAX};

    /// Within each 32-bit lane, bytes 3, 2, 1, 0: little-endian words to big-endian.
    const SWAP: v128 = u8x16(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);

    #[inline(always)]
    fn four_be(blocks: &[&[u8; 64]; MAX], first: usize, at: usize) -> v128 {
        let w = |b: &[u8; 64]| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        i8x16_swizzle(
            u32x4(
                w(blocks[first]),
                w(blocks[first + 1]),
                w(blocks[first + 2]),
                w(blocks[first + 3]),
            ),
            SWAP,
        )
    }

    impl Lanes for v128 {
        const N: usize = 4;
        #[inline(always)]
        fn splat(x: u32) -> Self {
            u32x4_splat(x)
        }
        #[inline(always)]
        fn words(w: &[u32; MAX]) -> Self {
            u32x4(w[0], w[1], w[2], w[3])
        }
        #[inline(always)]
        fn load_be(blocks: &[&[u8; 64]; MAX], at: usize) -> Self {
            four_be(blocks, 0, at)
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            u32x4_add(self, o)
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            v128_xor(self, o)
        }
        #[inline(always)]
        fn shr(self, n: u32) -> Self {
            u32x4_shr(self, n)
        }
        #[inline(always)]
        fn rotr(self, n: u32) -> Self {
            v128_or(u32x4_shr(self, n), u32x4_shl(self, 32 - n))
        }
        #[inline(always)]
        fn select(a: Self, b: Self, mask: Self) -> Self {
            v128_bitselect(a, b, mask)
        }
        #[inline(always)]
        fn lane(self, i: usize) -> u32 {
            match i {
                0 => u32x4_extract_lane::<0>(self),
                1 => u32x4_extract_lane::<1>(self),
                2 => u32x4_extract_lane::<2>(self),
                _ => u32x4_extract_lane::<3>(self),
            }
        }
    }
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

const INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// How many 64-byte blocks a message of `len` bytes takes once padded (its bytes, the
/// `0x80` marker, and the 8-byte bit length).
pub(crate) fn blocks(len: usize) -> usize {
    (len + 9).div_ceil(64)
}

/// Block `i` of `m` padded: its own bytes when whole, else built in `buf`.
fn block<'a>(m: &'a [u8], i: usize, buf: &'a mut [u8; 64]) -> &'a [u8; 64] {
    let start = i * 64;
    if let Some(Ok(whole)) = m.get(start..start + 64).map(<&[u8; 64]>::try_from) {
        return whole;
    }
    *buf = [0; 64];
    let rest = m.get(start..).unwrap_or_default();
    buf[..rest.len()].copy_from_slice(rest);
    if start <= m.len() {
        // The block where the message ends: the marker right after its last byte.
        buf[rest.len()] = 0x80;
    }
    if i + 1 == blocks(m.len()) {
        let bits = (m.len() as u64).wrapping_mul(8);
        buf[56..].copy_from_slice(&bits.to_be_bytes());
    }
    buf
}

/// One block of each lane into `state`.
#[inline(always)]
fn compress<L: Lanes>(state: &mut [L; 8], blocks: &[&[u8; 64]; MAX]) {
    let mut w = [L::splat(0); 16];
    for (t, slot) in w.iter_mut().enumerate() {
        *slot = L::load_be(blocks, 4 * t);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for (t, k) in K.iter().enumerate() {
        if t >= 16 {
            // The message schedule, in a ring of 16 words.
            let w15 = w[(t + 1) % 16];
            let w2 = w[(t + 14) % 16];
            let s0 = w15.rotr(7).xor(w15.rotr(18)).xor(w15.shr(3));
            let s1 = w2.rotr(17).xor(w2.rotr(19)).xor(w2.shr(10));
            w[t % 16] = w[t % 16].add(s0).add(w[(t + 9) % 16]).add(s1);
        }
        let s1 = e.rotr(6).xor(e.rotr(11)).xor(e.rotr(25));
        let ch = L::select(f, g, e);
        let t1 = h.add(s1).add(ch).add(L::splat(*k)).add(w[t % 16]);
        let s0 = a.rotr(2).xor(a.rotr(13)).xor(a.rotr(22));
        // The majority of a, b, c: c where a and b differ, else a.
        let maj = L::select(c, a, a.xor(b));
        let t2 = s0.add(maj);
        h = g;
        g = f;
        f = e;
        e = d.add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.add(t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.add(v);
    }
}

/// The padded block an idle lane reads (its result is never used).
static EMPTY: [u8; 64] = [0; 64];

/// SHA-256 of every message in `m`, in order, `L::N` lanes at a time.
///
/// Each lane works through a queue: when its message ends, its digest is taken and the
/// lane starts the next message (its state reset to the initial value) in the very
/// next step. Messages are queued longest first, so a long one (a payment's first
/// event embeds its whole policy, five times the others) runs beside several short
/// ones instead of holding three lanes idle until it ends: the steps taken are about
/// the total blocks ÷ `L::N`, or the longest message if that is more.
pub(crate) fn of_all<L: Lanes>(m: &[&[u8]]) -> Vec<[u8; 32]> {
    let mut out = vec![[0u8; 32]; m.len()];
    let mut queue: Vec<usize> = (0..m.len()).collect();
    // Longest first; `queue.pop()` takes from the end.
    queue.sort_by_key(|&i| blocks(m[i].len()));
    // Per lane: the message it hashes (`usize::MAX` when idle), the block it is at, and
    // how many blocks that message has.
    let mut msg = [usize::MAX; MAX];
    let mut at = [0usize; MAX];
    let mut count = [0usize; MAX];
    for lane in 0..L::N {
        if let Some(i) = queue.pop() {
            msg[lane] = i;
            count[lane] = blocks(m[i].len());
        }
    }
    let mut state = INITIAL.map(L::splat);
    let mut bufs = [[0u8; 64]; MAX];
    while msg[..L::N].iter().any(|&i| i != usize::MAX) {
        let mut input: [&[u8; 64]; MAX] = [&EMPTY; MAX];
        for (lane, (slot, buf)) in input.iter_mut().zip(bufs.iter_mut()).enumerate() {
            if let Some(bytes) = m.get(msg[lane]) {
                *slot = block(bytes, at[lane], buf);
            }
        }
        compress(&mut state, &input);
        // Lanes whose message ended: take its digest, start the next.
        let mut reset = [0u32; MAX];
        let mut any = false;
        for lane in 0..L::N {
            let Some(digest) = out.get_mut(msg[lane]) else {
                continue;
            };
            at[lane] += 1;
            if at[lane] < count[lane] {
                continue;
            }
            for (j, s) in state.iter().enumerate() {
                digest[4 * j..4 * j + 4].copy_from_slice(&s.lane(lane).to_be_bytes());
            }
            at[lane] = 0;
            match queue.pop() {
                Some(i) => {
                    msg[lane] = i;
                    count[lane] = blocks(m[i].len());
                    reset[lane] = u32::MAX;
                    any = true;
                }
                None => msg[lane] = usize::MAX,
            }
        }
        if any {
            let reset = L::words(&reset);
            for (s, initial) in state.iter_mut().zip(INITIAL) {
                *s = L::select(L::splat(initial), *s, reset);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Every length from 0 to 200 bytes (all the padding cases: the marker and length
    /// in one block or spilling into the next), in lanes of different lengths.
    #[test]
    fn lanes_hash_as_sha2_does() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in 0..200 {
            let m = [
                &data[..len],
                &data[3..3 + (len * 3) % 500],
                &data[..0],
                &data[100..100 + (len + 64) % 300],
            ];
            for got in [of_all::<[u32; 4]>(&m), of_all::<[u32; 8]>(&m)] {
                assert_eq!(got.len(), 4);
                for (l, msg) in m.iter().enumerate() {
                    let want: [u8; 32] = Sha256::digest(msg).into();
                    assert_eq!(got[l], want, "lane {l}, {} bytes", msg.len());
                }
            }
        }
    }

    /// More messages than lanes, of very different lengths (one long among many
    /// short, as in a history): every lane takes several messages in turn, and the
    /// digests come back in the messages' order.
    #[test]
    fn queued_messages_hash_as_sha2_does() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for n in [0, 1, 2, 5, 8, 9, 20, 33] {
            for long in [0, 2700, 4900] {
                let m: Vec<&[u8]> = (0..n)
                    .map(|i| {
                        let len = if i == n / 2 { long } else { (i * 97) % 700 };
                        &data[i % 50..i % 50 + len.min(4950)]
                    })
                    .collect();
                let want: Vec<[u8; 32]> = m.iter().map(|x| Sha256::digest(x).into()).collect();
                assert_eq!(
                    of_all::<[u32; 4]>(&m),
                    want,
                    "{n} messages, one of {long} bytes"
                );
                assert_eq!(
                    of_all::<[u32; 8]>(&m),
                    want,
                    "{n} messages, one of {long} bytes"
                );
                assert_eq!(of_all::<[u32; 1]>(&m), want, "{n} messages, one lane");
            }
        }
    }

    #[test]
    fn padded_blocks_count_as_sha256_does() {
        assert_eq!(blocks(0), 1);
        assert_eq!(blocks(55), 1);
        assert_eq!(blocks(56), 2);
        assert_eq!(blocks(64), 2);
        assert_eq!(blocks(119), 2);
        assert_eq!(blocks(120), 3);
    }
}

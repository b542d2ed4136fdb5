//! SHA3-224 (FIPS 202), the one SHA-3 digest `aws-lc-rs` does not expose: a small, safe,
//! streaming Keccak sponge. SHA3-256/384/512 run on `aws-lc-rs`; the tests check this sponge
//! against them (same permutation, other rates) and against published SHA3-224 answers.

/// The Keccak round constants.
const RC: [u64; 24] = [
    0x0000_0000_0000_0001,
    0x0000_0000_0000_8082,
    0x8000_0000_0000_808a,
    0x8000_0000_8000_8000,
    0x0000_0000_0000_808b,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8009,
    0x0000_0000_0000_008a,
    0x0000_0000_0000_0088,
    0x0000_0000_8000_8009,
    0x0000_0000_8000_000a,
    0x0000_0000_8000_808b,
    0x8000_0000_0000_008b,
    0x8000_0000_0000_8089,
    0x8000_0000_0000_8003,
    0x8000_0000_0000_8002,
    0x8000_0000_0000_0080,
    0x0000_0000_0000_800a,
    0x8000_0000_8000_000a,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8080,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8008,
];

/// The rho rotations, in pi order.
const ROTC: [u32; 24] = [
    1, 3, 6, 10, 15, 21, 28, 36, 45, 55, 2, 14, 27, 41, 56, 8, 25, 43, 62, 18, 39, 61, 20, 44,
];

/// The pi lane order.
const PILN: [usize; 24] = [
    10, 7, 11, 17, 18, 3, 5, 16, 8, 21, 24, 4, 15, 23, 19, 13, 12, 2, 20, 14, 22, 9, 6, 1,
];

/// Keccak-f[1600].
fn keccak_f(st: &mut [u64; 25]) {
    for rc in RC {
        // theta
        let mut bc = [0u64; 5];
        for (i, b) in bc.iter_mut().enumerate() {
            *b = st[i] ^ st[i + 5] ^ st[i + 10] ^ st[i + 15] ^ st[i + 20];
        }
        for i in 0..5 {
            let t = bc[(i + 4) % 5] ^ bc[(i + 1) % 5].rotate_left(1);
            for j in (0..25).step_by(5) {
                st[j + i] ^= t;
            }
        }
        // rho and pi
        let mut t = st[1];
        for (&j, &r) in PILN.iter().zip(ROTC.iter()) {
            let next = st[j];
            st[j] = t.rotate_left(r);
            t = next;
        }
        // chi
        for j in (0..25).step_by(5) {
            let row = [st[j], st[j + 1], st[j + 2], st[j + 3], st[j + 4]];
            for i in 0..5 {
                st[j + i] = row[i] ^ (!row[(i + 1) % 5] & row[(i + 2) % 5]);
            }
        }
        // iota
        st[0] ^= rc;
    }
}

/// A SHA-3 hash in progress (`out_len` bytes of output, capacity twice that).
#[derive(Clone)]
pub(crate) struct Sha3 {
    st: [u64; 25],
    /// The rate in bytes (200 - 2 * out_len).
    rate: usize,
    /// Bytes absorbed into the current block.
    pos: usize,
    out_len: usize,
}

impl Sha3 {
    /// SHA3-224.
    pub(crate) fn sha3_224() -> Self {
        Self::new(28)
    }

    /// SHA3 with `out_len` (28, 32, 48 or 64) bytes of output.
    pub(crate) fn new(out_len: usize) -> Self {
        Sha3 {
            st: [0; 25],
            rate: 200 - 2 * out_len,
            pos: 0,
            out_len,
        }
    }

    fn xor_byte(&mut self, pos: usize, b: u8) {
        self.st[pos / 8] ^= u64::from(b) << (8 * (pos % 8));
    }

    /// Absorbs more data.
    pub(crate) fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.xor_byte(self.pos, b);
            self.pos += 1;
            if self.pos == self.rate {
                keccak_f(&mut self.st);
                self.pos = 0;
            }
        }
    }

    /// Pads (SHA-3 domain bits `01`, then `10*1`) and squeezes the digest.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.xor_byte(self.pos, 0x06);
        self.xor_byte(self.rate - 1, 0x80);
        keccak_f(&mut self.st);
        self.st
            .iter()
            .flat_map(|lane| lane.to_le_bytes())
            .take(self.out_len)
            .collect()
    }
}

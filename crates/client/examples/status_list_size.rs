//! How large a status list is: 1,000,000 tokens with 1% (10,000 indexes, uniformly random,
//! fixed seed) revoked, encoded as the server publishes it (`StatusBits::encode_lst`), and the
//! whole signed `statuslist+jwt` under each access-token algorithm.
//!
//! `cargo run --release -p mayfly-client --example status_list_size [ENTRIES] [REVOKED]`

use std::collections::HashSet;
use std::time::Instant;

use mayfly_client::status::StatusBits;
use mayfly_crypto::{KeyAlg, SigningKey};

/// splitmix64: a fixed, dependency-free sequence, so every run measures the same list.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let entries: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let revoked: usize = args.next().map_or(Ok(entries / 100), |a| a.parse())?;
    let mut bits = StatusBits::new(entries);
    let mut seed = 0x6d61_7966_6c79_u64;
    let mut set = HashSet::with_capacity(revoked);
    while set.len() < revoked.min(entries) {
        let i = usize::try_from(next(&mut seed) % entries as u64)?;
        if set.insert(i) {
            bits.set(i);
        }
    }
    let started = Instant::now();
    let lst = bits.encode_lst();
    let encode_ms = started.elapsed().as_secs_f64() * 1000.0;
    let back = StatusBits::decode_lst(&lst, 1)?;
    assert!(set.iter().all(|&i| back.get(i) == Some(true)));
    println!(
        "entries {entries}, revoked {} ({:.2}%), raw bit string {} bytes",
        set.len(),
        100.0 * set.len() as f64 / entries as f64,
        entries.div_ceil(8)
    );
    println!(
        "lst (zlib + base64url): {} bytes, encoded in {encode_ms:.1} ms",
        lst.len()
    );
    let uri = "https://sts.example.com/statuslists/1";
    let iat = 1_800_000_000_i64;
    let claims = serde_json::json!({
        "sub": uri, "iat": iat, "exp": iat + 120, "ttl": 60,
        "status_list": {"bits": 1, "lst": lst},
    });
    let mut ok = true;
    for alg in [KeyAlg::EdDSA, KeyAlg::ES256] {
        let key = SigningKey::generate(alg, Some("k-2026-01"))?;
        let jwt = key.sign_jwt(Some("statuslist+jwt"), &claims)?;
        let kb = jwt.len() as f64 / 1000.0;
        println!(
            "signed statuslist+jwt ({alg:?}): {} bytes ({kb:.1} KB)",
            jwt.len()
        );
        ok &= jwt.len() < 200_000;
    }
    println!("under 200 KB: {}", if ok { "yes" } else { "NO" });
    if ok {
        Ok(())
    } else {
        Err("the list token is 200 KB or more".into())
    }
}

//! Determinism and rotation of the derived WebTransport certificates.

use std::time::{Duration, SystemTime};

use wt_lab::cert::{self, CertSet};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn show(label: &str, c: &cert::Cert) {
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    println!(
        "  {label:<8} notBefore {} notAfter {} ({} s) sha256 {}",
        secs(c.not_before),
        secs(c.not_after),
        secs(c.not_after) - secs(c.not_before),
        &hex(&c.sha256)[..16]
    );
}

fn main() -> anyhow::Result<()> {
    let kp = libp2p_identity::Keypair::ed25519_from_bytes([7u8; 32])?;
    let now = SystemTime::now();
    println!("peer {} offset {:?}", kp.public().to_peer_id(), cert::offset(&kp));

    let a = CertSet::new(&kp, now)?;
    let b = CertSet::new(&kp, now)?; // "a restart", same instant
    let c = CertSet::new(&kp, now + Duration::from_secs(3 * 3600))?; // a restart 3 h later
    println!("start:");
    show("current", &a.current);
    show("next", &a.next);
    println!("  address suffix {}", a.addr_suffix());
    println!("  same DER on restart now: {}", a.current.der == b.current.der && a.next.der == b.next.der);
    println!("  same certhashes on a restart 3 h later: {}", a.addr_suffix() == c.addr_suffix());
    let age = now.duration_since(a.current.not_before)?;
    println!("  now - notBefore(current) = {:.1} h", age.as_secs_f64() / 3600.0);

    // Rotation, as go's background timer does it, and a node restarted right after it.
    let mut rolled = CertSet::new(&kp, now)?;
    let at = rolled.roll_at();
    rolled.roll(&kp)?;
    let restarted = CertSet::new(&kp, at + Duration::from_secs(60))?;
    println!("after the roll at notAfter(current) - 1 h:");
    show("last", rolled.last.as_ref().unwrap());
    show("current", &rolled.current);
    show("next", &rolled.next);
    println!(
        "  a node started just after the roll advertises the same: {}",
        restarted.addr_suffix() == rolled.addr_suffix()
    );
    println!("  noise hashes: {}", rolled.noise_hashes().len());

    std::fs::write("current.der", &a.current.der)?;
    Ok(())
}

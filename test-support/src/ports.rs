//! Free loopback ports for servers under test.
//!
//! Ports come from below the kernel's ephemeral range (`ip_local_port_range`), so a server
//! restarted on its old ports (the fault tests do that) cannot find one taken by some
//! client connection's source port, and each is reserved across the test processes running
//! at once by a file `<tmp>/ksr-test-ports/<port>` holding the owner's pid (reclaimed once
//! that process is gone).

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;

/// The kernel's ephemeral port range (Linux's default when it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

/// Where ports are chosen from: below the ephemeral range when there is room, else above.
fn candidates() -> (u16, u16) {
    let (low, high) = ephemeral_range();
    if low > 12_000 {
        (10_000, low - 1)
    } else {
        (high.saturating_add(1).max(1024), 65_535)
    }
}

fn reservations() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join("ksr-test-ports");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Reserves `port` for this process, reclaiming a reservation of a process that is gone.
fn reserve(dir: &std::path::Path, port: u16) -> bool {
    let path = dir.join(port.to_string());
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                return true;
            }
            Err(_) => {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                let alive = owner
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| PathBuf::from(format!("/proc/{pid}")).exists());
                // An empty file may be a reservation being written right now.
                if alive || owner.is_empty() || std::fs::remove_file(&path).is_err() {
                    return false;
                }
            }
        }
    }
    false
}

/// Whether nothing is bound to `port` on 127.0.0.1 (TCP, and UDP for DNS servers).
fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// `n` distinct free ports on 127.0.0.1, reserved for this test process.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let dir = reservations()?;
    let (first, last) = candidates();
    let span = u64::from(last - first) + 1;
    // A different walk per process and call: time and pid as the seed.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n);
    for _ in 0..span {
        if out.len() == n {
            return Ok(out);
        }
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = first + u16::try_from(x % span).unwrap_or(0);
        if !out.contains(&port) && bindable(port) && reserve(&dir, port) {
            out.push(port);
        }
    }
    anyhow::ensure!(
        out.len() == n,
        "no {n} free loopback ports in {first}..={last}"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        let ports = free_ports(20).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        for p in ports {
            assert!(!(low..=high).contains(&p), "{p} in {low}..={high}");
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
        }
    }

    #[test]
    fn a_reservation_of_a_live_process_is_respected_and_a_dead_ones_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10001"), std::process::id().to_string()).unwrap();
        assert!(!reserve(dir.path(), 10001));
        // pid_max is at most 2^22 on Linux: this pid cannot exist.
        std::fs::write(dir.path().join("10002"), "4294967").unwrap();
        assert!(reserve(dir.path(), 10002));
        assert!(reserve(dir.path(), 10003));
        assert!(!reserve(dir.path(), 10003));
    }
}

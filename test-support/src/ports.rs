//! Free loopback ports for servers under test.

use std::net::TcpListener;

/// `n` distinct free TCP ports on 127.0.0.1 (all held open until chosen, then released).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

//! A minimal DNS client: A queries over UDP, for checking what Consul DNS answers.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::net::UdpSocket;

/// Response code NOERROR.
pub const NOERROR: u8 = 0;
/// Response code NXDOMAIN.
pub const NXDOMAIN: u8 = 3;

/// What a DNS server answered to an A query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: u8,
    pub addrs: Vec<Ipv4Addr>,
}

/// Asks `127.0.0.1:<port>` for the A records of `name`.
pub async fn query_a(port: u16, name: &str) -> std::io::Result<Answer> {
    query_a_at(std::net::SocketAddr::from(([127, 0, 0, 1], port)), name).await
}

/// Asks the DNS server at `server` for the A records of `name`.
pub async fn query_a_at(server: std::net::SocketAddr, name: &str) -> std::io::Result<Answer> {
    let id: u16 = rand_id();
    let query = build_query(id, name)?;
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    for _attempt in 0..3 {
        socket.send(&query).await?;
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let answer = parse_response(id, &buf[..n])?;
                return Ok(answer);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => continue,
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no DNS answer from {server} for {name}"),
    ))
}

fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos & 0xffff) as u16
}

fn build_query(id: u16, name: &str) -> std::io::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid(format!("bad DNS label {label:?}")));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    Ok(q)
}

fn skip_name(buf: &[u8], mut pos: usize) -> std::io::Result<usize> {
    loop {
        let len = *buf.get(pos).ok_or_else(|| invalid("truncated name"))?;
        if len & 0xc0 == 0xc0 {
            return Ok(pos + 2);
        }
        if len == 0 {
            return Ok(pos + 1);
        }
        pos += 1 + len as usize;
    }
}

fn u16_at(buf: &[u8], pos: usize) -> std::io::Result<u16> {
    let b = buf
        .get(pos..pos + 2)
        .ok_or_else(|| invalid("truncated DNS response"))?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn parse_response(id: u16, buf: &[u8]) -> std::io::Result<Answer> {
    if buf.len() < 12 {
        return Err(invalid("short DNS response"));
    }
    if u16_at(buf, 0)? != id {
        return Err(invalid("DNS response id mismatch"));
    }
    let rcode = buf[3] & 0x0f;
    let qdcount = u16_at(buf, 4)?;
    let ancount = u16_at(buf, 6)?;
    let mut pos = 12;
    for _ in 0..qdcount {
        pos = skip_name(buf, pos)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..ancount {
        pos = skip_name(buf, pos)?;
        let rtype = u16_at(buf, pos)?;
        let rdlen = u16_at(buf, pos + 8)? as usize;
        let data = buf
            .get(pos + 10..pos + 10 + rdlen)
            .ok_or_else(|| invalid("truncated DNS record"))?;
        if rtype == 1 && rdlen == 4 {
            addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += 10 + rdlen;
    }
    addrs.sort();
    Ok(Answer { rcode, addrs })
}

fn invalid(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

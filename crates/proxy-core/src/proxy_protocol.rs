//! PROXY protocol v1 (text) and v2 (binary) from a load balancer in front of pachgate: the
//! header that precedes the client's bytes and names the real client address. Bytes are
//! looked at with `peek` and consumed only as far as they are header, so nothing of the TLS
//! stream behind it is taken by mistake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line (RFC: 107 bytes including CRLF).
const V1_MAX: usize = 107;
/// Largest v2 header accepted: addresses plus room for the TLVs balancers add (AWS's VPC
/// endpoint id, HAProxy's SSL and unique-id fields), well below the 64 KiB the format allows.
const V2_MAX: usize = 2048;

/// What the header said: the client's address, or `None` for LOCAL/UNKNOWN (health checks
/// from the balancer itself), where the TCP peer stands.
pub type ProxiedClient = Option<SocketAddr>;

/// Reads and consumes one PROXY header; anything else at the start of the connection is an
/// error (the listener is configured to expect one).
pub async fn read_header(tcp: &mut TcpStream, within: Duration) -> Result<ProxiedClient, String> {
    tokio::time::timeout(within, read(tcp))
        .await
        .map_err(|_| "no complete PROXY header in time".to_string())?
}

async fn read(tcp: &mut TcpStream) -> Result<ProxiedClient, String> {
    // The header's bytes consumed so far, then what `peek` shows after them.
    let mut seen = vec![0u8; V2_MAX];
    let mut consumed = 0;
    loop {
        let n = tcp
            .peek(&mut seen[consumed..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the PROXY header".into());
        }
        let available = consumed + n;
        let rest = match parse(&seen[..available])? {
            Some((length, client)) => {
                tcp.read_exact(&mut seen[consumed..length])
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(client);
            }
            // Incomplete, so every byte shown is header: consumed, so that the next `peek`
            // waits for new bytes instead of returning these again (a busy loop for as long
            // as a peer trickles its header).
            None => &mut seen[consumed..available],
        };
        tcp.read_exact(rest).await.map_err(|e| e.to_string())?;
        consumed = available;
        if consumed == V2_MAX {
            return Err("PROXY header too long".into());
        }
    }
}

/// Parses the start of a connection (what `peek` saw): `Some((header length, client))` when
/// a whole header is there, `None` when more bytes are needed, an error when it is not a
/// PROXY header. Pure, for the fuzz target (fuzz/fuzz_targets/proxy_protocol.rs).
pub fn parse(seen: &[u8]) -> Result<Option<(usize, ProxiedClient)>, String> {
    if seen.len() >= 12 && seen[..12] == V2_SIGNATURE {
        parse_v2(seen)
    } else if V2_SIGNATURE.starts_with(seen) || b"PROXY ".starts_with(&seen[..seen.len().min(6)]) {
        if seen.starts_with(b"PROXY ") {
            parse_v1(seen)
        } else {
            Ok(None) // a prefix of either form: wait for more
        }
    } else {
        Err("the connection does not start with a PROXY header".into())
    }
}

/// `Some((header length, client))` when complete, `None` when more bytes are needed.
fn parse_v1(seen: &[u8]) -> Result<Option<(usize, ProxiedClient)>, String> {
    let Some(end) = seen.windows(2).position(|w| w == b"\r\n") else {
        return if seen.len() >= V1_MAX {
            Err("PROXY v1 line too long".into())
        } else {
            Ok(None)
        };
    };
    // Whether the CRLF came in the same read must not matter: a line longer than the
    // maximum is refused whole, as its first 107 bytes alone would be (found by fuzzing).
    if end + 2 > V1_MAX {
        return Err("PROXY v1 line too long".into());
    }
    let line = std::str::from_utf8(&seen[..end]).map_err(|_| "PROXY v1 line is not text")?;
    let fields: Vec<&str> = line.split(' ').collect();
    let client = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), source, _destination, source_port, _] => {
            let ip: IpAddr = source.parse().map_err(|_| "PROXY v1: bad source address")?;
            if (*family == "TCP4") != ip.is_ipv4() {
                return Err("PROXY v1: address does not match its family".into());
            }
            let port: u16 = source_port
                .parse()
                .map_err(|_| "PROXY v1: bad source port")?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(format!("PROXY v1: malformed line {line:?}")),
    };
    Ok(Some((end + 2, client)))
}

fn parse_v2(seen: &[u8]) -> Result<Option<(usize, ProxiedClient)>, String> {
    if seen.len() < 16 {
        return Ok(None);
    }
    let version_command = seen[12];
    if version_command >> 4 != 2 {
        return Err("PROXY v2: unsupported version".into());
    }
    let length = usize::from(u16::from_be_bytes([seen[14], seen[15]]));
    let total = 16 + length;
    if total > V2_MAX {
        return Err("PROXY v2 header too long".into());
    }
    if seen.len() < total {
        return Ok(None);
    }
    let body = &seen[16..total];
    let client = match (version_command & 0x0f, seen[13]) {
        (0x0, _) => None, // LOCAL: the balancer's own connection
        (0x1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        (0x1, 0x21) if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        (0x1, 0x00) => None, // UNSPEC
        (0x1, family) => return Err(format!("PROXY v2: unsupported family {family:#04x}")),
        _ => return Err("PROXY v2: unknown command".into()),
    };
    Ok(Some((total, client)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\nrest";
        assert_eq!(
            parse_v1(line).unwrap(),
            Some((42, Some("203.0.113.7:5555".parse().unwrap())))
        );
        assert_eq!(parse_v1(b"PROXY TCP4 203.0.113.7 10.0").unwrap(), None);
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), Some((15, None)));
        assert!(parse_v1(b"PROXY TCP6 203.0.113.7 ::1 1 2\r\n").is_err());
        assert!(parse_v1(b"PROXY TCP4 nope 10.0.0.1 1 2\r\n").is_err());
        // 107 bytes with CRLF is the longest line; 108 is refused even when seen whole.
        let longest = format!("PROXY UNKNOWN {}\r\n", "x".repeat(107 - 16));
        assert_eq!(parse_v1(longest.as_bytes()).unwrap(), Some((107, None)));
        let over = format!("PROXY UNKNOWN {}\r\n", "x".repeat(108 - 16));
        assert!(parse_v1(over.as_bytes()).is_err());
    }

    #[test]
    fn v2_headers() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 7, 10, 0, 0, 1, 0x15, 0xb3, 1, 187,
        ]);
        assert_eq!(
            parse_v2(&header).unwrap(),
            Some((28, Some("203.0.113.7:5555".parse().unwrap())))
        );
        assert_eq!(parse_v2(&header[..20]).unwrap(), None);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse_v2(&local).unwrap(), Some((16, None)));
    }
}

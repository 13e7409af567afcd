//! A DNS server for tests, standing in for the cluster DNS that resolves a headless
//! Service to its pods: it answers A and AAAA queries over UDP and TCP on one loopback port
//! from a table the test changes while it runs.
//!
//! - [`DnsServer::set`]`(name, addresses)`: A answers carry the IPv4 addresses, AAAA the IPv6
//!   ones, with a TTL of [`TTL_SECONDS`]; a name with none of the asked type answers NOERROR
//!   with no records (and an SOA, so resolvers cache that for at most the TTL too).
//! - unknown names answer NXDOMAIN; [`DnsServer::servfail`] makes a name answer SERVFAIL (a
//!   DNS outage); [`DnsServer::set_silent`] drops every query (a resolver timeout).
//! - [`DnsServer::queries`] and [`DnsServer::queries_for`] count the queries received, so
//!   tests can see re-resolution.
//!
//! A UDP answer over 512 bytes is sent truncated (TC), the way DNS tells a client to retry
//! over TCP. Queries are parsed defensively: an odd packet gets FORMERR or is dropped, never a
//! panic. Names match case-insensitively, with or without the final dot.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// TTL of every answer.
pub const TTL_SECONDS: u32 = 1;

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

/// Largest UDP answer without EDNS (RFC 1035).
const UDP_LIMIT: usize = 512;

#[derive(Debug, Clone)]
enum Entry {
    Addresses(Vec<IpAddr>),
    ServFail,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<String, Entry>,
    queries_by_name: HashMap<String, u64>,
}

#[derive(Debug, Default)]
struct Shared {
    table: Mutex<Table>,
    queries: AtomicU64,
    silent: AtomicBool,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running DNS server; dropping it stops it.
#[derive(Debug)]
pub struct DnsServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Binds UDP and TCP on `address` (port 0: one free port for both) and serves until
    /// dropped.
    pub async fn start(address: &str) -> io::Result<DnsServer> {
        let requested: SocketAddr = address
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // With port 0, the UDP port the kernel picks may be taken for TCP: try a few.
        let mut last_error = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind(requested).await?;
            let bound = udp.local_addr()?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => return Ok(Self::serve(udp, tcp, bound)),
                Err(e) if requested.port() == 0 => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
    }

    fn serve(udp: UdpSocket, tcp: TcpListener, address: SocketAddr) -> DnsServer {
        let shared = Arc::new(Shared::default());
        let udp_task = tokio::spawn(serve_udp(udp, shared.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, shared.clone()));
        DnsServer {
            address,
            shared,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// The address (UDP and TCP) it answers on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Sets the addresses `name` resolves to (an empty list: the name exists, no addresses).
    pub fn set(&self, name: &str, addresses: Vec<IpAddr>) {
        self.shared
            .table()
            .entries
            .insert(normalize(name), Entry::Addresses(addresses));
    }

    /// Forgets `name`: it answers NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.shared.table().entries.remove(&normalize(name));
    }

    /// Makes `name` answer SERVFAIL until it is set or removed.
    pub fn servfail(&self, name: &str) {
        self.shared
            .table()
            .entries
            .insert(normalize(name), Entry::ServFail);
    }

    /// Drops every query without an answer while `silent`.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::Relaxed);
    }

    /// Queries received (over UDP and TCP, answered or not).
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }

    /// Queries received for `name`, any type.
    pub fn queries_for(&self, name: &str) -> u64 {
        self.shared
            .table()
            .queries_by_name
            .get(&normalize(name))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        if let Some(mut answer) = answer(&buffer[..n], &shared) {
            if answer.len() > UDP_LIMIT {
                answer = truncated(&answer);
            }
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve_tcp_connection(stream, shared.clone()));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let Ok(length) = stream.read_u16().await else {
            return;
        };
        let mut query = vec![0u8; usize::from(length)];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(answer) = answer(&query, &shared) else {
            continue;
        };
        let Ok(length) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = length.to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The question of a query: the name's wire bytes end at `question_end`.
struct Question {
    name: String,
    qtype: u16,
    qclass: u16,
    question_end: usize,
}

/// Reads the one question after the 12-byte header; `None` if it is malformed.
fn parse_question(packet: &[u8]) -> Option<Question> {
    let mut at = 12;
    let mut labels: Vec<String> = Vec::new();
    let mut wire_length = 0usize;
    loop {
        let length = usize::from(*packet.get(at)?);
        at += 1;
        if length == 0 {
            break;
        }
        // No compression pointers (0xC0) or extended label types in a question.
        if length > 63 {
            return None;
        }
        wire_length += length + 1;
        if wire_length > 255 {
            return None;
        }
        let label = packet.get(at..at + length)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += length;
    }
    let fixed = packet.get(at..at + 4)?;
    Some(Question {
        name: labels.join("."),
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
        question_end: at + 4,
    })
}

/// A response header: the query's id and RD bit, QR and AA set.
fn header(query: &[u8], rcode: u8, questions: u16, answers: u16, authority: u16) -> Vec<u8> {
    let recursion_desired = query[2] & 0x01;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]);
    out.push(0x84 | recursion_desired); // QR, opcode 0, AA, RD as asked
    out.push(0x80 | rcode); // RA (the table is all there is), rcode
    for count in [questions, answers, authority, 0] {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out
}

/// Appends a resource record whose owner is the question's name (a pointer to offset 12).
fn record(out: &mut Vec<u8>, rtype: u16, rdata: &[u8]) {
    out.extend_from_slice(&[0xc0, 12]);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&TTL_SECONDS.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// An SOA for negative answers: its MINIMUM (the negative-cache TTL) is [`TTL_SECONDS`].
fn soa(out: &mut Vec<u8>) {
    let mut rdata = Vec::new();
    rdata.extend_from_slice(b"\x02ns\x07standin\x00"); // MNAME
    rdata.extend_from_slice(b"\x0ahostmaster\x07standin\x00"); // RNAME
    for value in [1u32, 60, 60, 60, TTL_SECONDS] {
        rdata.extend_from_slice(&value.to_be_bytes());
    }
    record(out, TYPE_SOA, &rdata);
}

/// The answer to one query packet, or `None` to stay silent.
fn answer(query: &[u8], shared: &Shared) -> Option<Vec<u8>> {
    // Too short for a header, or itself a response: not a query to answer.
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    shared.queries.fetch_add(1, Ordering::Relaxed);
    if shared.silent.load(Ordering::Relaxed) {
        return None;
    }
    let opcode = (query[2] >> 3) & 0x0f;
    if opcode != 0 {
        return Some(header(query, RCODE_NOTIMP, 0, 0, 0));
    }
    let question_count = u16::from_be_bytes([query[4], query[5]]);
    let question = match parse_question(query) {
        Some(question) if question_count == 1 => question,
        _ => return Some(header(query, RCODE_FORMERR, 0, 0, 0)),
    };
    let question_bytes = &query[12..question.question_end];
    let entry = {
        let mut table = shared.table();
        *table
            .queries_by_name
            .entry(question.name.clone())
            .or_default() += 1;
        table.entries.get(&question.name).cloned()
    };
    let with_question = |rcode: u8, answers: u16, authority: u16| {
        let mut out = header(query, rcode, 1, answers, authority);
        out.extend_from_slice(question_bytes);
        out
    };
    if question.qclass != CLASS_IN {
        return Some(with_question(RCODE_REFUSED, 0, 0));
    }
    let addresses = match entry {
        None => {
            let mut out = with_question(RCODE_NXDOMAIN, 0, 1);
            soa(&mut out);
            return Some(out);
        }
        Some(Entry::ServFail) => return Some(with_question(RCODE_SERVFAIL, 0, 0)),
        Some(Entry::Addresses(addresses)) => addresses,
    };
    let rdata: Vec<Vec<u8>> = addresses
        .iter()
        .filter_map(|address| match (question.qtype, address) {
            (TYPE_A, IpAddr::V4(v4)) => Some(v4.octets().to_vec()),
            (TYPE_AAAA, IpAddr::V6(v6)) => Some(v6.octets().to_vec()),
            _ => None,
        })
        .take(usize::from(u16::MAX))
        .collect();
    if rdata.is_empty() {
        let mut out = with_question(0, 0, 1);
        soa(&mut out);
        return Some(out);
    }
    let mut out = with_question(0, rdata.len() as u16, 0);
    let rtype = question.qtype;
    for data in &rdata {
        record(&mut out, rtype, data);
    }
    Some(out)
}

/// The header and question of `answer`, with TC set and no records.
fn truncated(answer: &[u8]) -> Vec<u8> {
    let question_end = parse_question(answer).map_or(12, |q| q.question_end);
    let mut out = answer[..question_end].to_vec();
    out[2] |= 0x02; // TC
    out[6..12].fill(0); // no answer, authority or additional records
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn odd_packets_never_panic() {
        let shared = Shared::default();
        shared.table().entries.insert(
            "pachd.test".into(),
            Entry::Addresses(vec!["127.0.0.2".parse().unwrap()]),
        );
        let good = query("pachd.test", TYPE_A);
        let answered = answer(&good, &shared).unwrap();
        assert_eq!(u16::from_be_bytes([answered[6], answered[7]]), 1);
        // Every prefix, and every single-byte change, of a good query.
        for n in 0..good.len() {
            let _ = answer(&good[..n], &shared);
        }
        for i in 0..good.len() {
            for value in [0x00, 0x3f, 0x40, 0xc0, 0xff] {
                let mut bad = good.clone();
                bad[i] = value;
                let _ = answer(&bad, &shared);
            }
        }
        // Random packets from a small xorshift.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 80) as usize;
            let packet: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if let Some(out) = answer(&packet, &shared) {
                let _ = truncated(&out);
            }
        }
    }

    #[test]
    fn a_response_or_short_packet_gets_no_answer() {
        let shared = Shared::default();
        let mut response = query("x.test", TYPE_A);
        response[2] |= 0x80;
        assert!(answer(&response, &shared).is_none());
        assert!(answer(&[0; 11], &shared).is_none());
        let mut two_questions = query("x.test", TYPE_A);
        two_questions[5] = 2;
        let out = answer(&two_questions, &shared).unwrap();
        assert_eq!(out[3] & 0x0f, RCODE_FORMERR);
    }
}

//! The request head as an HPACK block of literals. The only encoder state is one entry the
//! extra field (a made request id) may place in the upstream's table ([`UpstreamTable`]).

use pachgate_h2_wire as wire;

use crate::{connection::ConnectProtocol, header_block::is_connection_specific};

/// The request head as an HPACK block of literals that never enter the upstream's table
/// (names from the static table where it has them); values that carry credentials are
/// marked never-indexed for any intermediary. The one exception is the extra field's name
/// (see [`UpstreamTable`]).
pub(crate) fn encode_request_head(
    head: &http::request::Parts,
    extra: Option<ExtraField<'_>>,
    table: &mut UpstreamTable,
    out: &mut Vec<u8>,
) {
    table.put_size_update(out);
    match head.method {
        http::Method::GET => out.push(0x80 | 2),
        http::Method::POST => out.push(0x80 | 3),
        ref other => put_indexed_name(out, 0x00, 2, other.as_str().as_bytes()),
    }
    match head.uri.scheme_str() {
        Some("https") => out.push(0x80 | 7),
        _ => out.push(0x80 | 6),
    }
    if let Some(authority) = head.uri.authority() {
        put_indexed_name(out, 0x00, 1, authority.as_str().as_bytes());
    }
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    if path == "/" {
        out.push(0x80 | 4);
    } else {
        put_indexed_name(out, 0x00, 4, path.as_bytes());
    }
    if head.method == http::Method::CONNECT {
        if let Some(ConnectProtocol(protocol)) = head.extensions.get::<ConnectProtocol>() {
            out.push(0x00);
            wire::put_string(out, b":protocol");
            wire::put_string(out, protocol.as_bytes());
        }
    }
    for (name, value) in &head.headers {
        match name_kind(name.as_str()) {
            NameKind::ConnectionSpecific => {}
            // Only `trailers` may cross (RFC 9113 §8.2.2), in any case the client wrote it.
            NameKind::Te if !value.as_bytes().eq_ignore_ascii_case(b"trailers") => {}
            NameKind::Te => put_field(out, NameKind::Te, "te", b"trailers"),
            kind => put_field(out, kind, name.as_str(), value.as_bytes()),
        }
    }
    if let Some(field) = extra {
        put_extra_field(out, field, table);
    }
}

/// The index of the first entry of a dynamic table (RFC 7541 §2.3.3): the static table has 61.
const FIRST_DYNAMIC_INDEX: usize = 62;

/// What this connection's upstream keeps in its HPACK table from us: at most one entry, the
/// extra field's name (with the first value sent under it). A made request id is new on every
/// request, so its value is never worth indexing, but its name is the same: sent by index,
/// the upstream's decoder looks the name up instead of reading, lowercasing and copying a
/// name outside the static table on every request (measured on the stand-in pachd: 0.24k of
/// the header's 1.55k instructions per call; Go's hpack decoder, grpc-go's, makes a string of
/// a literal name but takes an indexed one from its table). Nothing else is ever added, so
/// the entry stays at the first dynamic index while the table's size allows it.
#[derive(Debug)]
pub(crate) struct UpstreamTable {
    /// Whether the upstream's first SETTINGS have arrived: until then its limit is not known
    /// (and nothing is added).
    settings_seen: bool,
    /// The table size this encoder may use: the upstream's SETTINGS_HEADER_TABLE_SIZE (4,096
    /// until it says otherwise), only ever lowered.
    max_size: u32,
    /// A lowered limit not yet acknowledged with a size update.
    size_update: Option<u32>,
    /// The name in the upstream's table, and the entry's size (RFC 7541 §4.1).
    entry: Option<(http::HeaderName, u32)>,
}

impl Default for UpstreamTable {
    fn default() -> Self {
        UpstreamTable {
            settings_seen: false,
            max_size: pachgate_h2_wire::DEFAULT_HEADER_TABLE_SIZE,
            size_update: None,
            entry: None,
        }
    }
}

impl UpstreamTable {
    /// The upstream's SETTINGS_HEADER_TABLE_SIZE. A lower limit than the one in use is
    /// acknowledged at the next block (evicting the entry if it no longer fits); a higher one
    /// is not needed.
    pub(crate) fn peer_limit(&mut self, size: u32) {
        if size < self.max_size {
            self.max_size = size;
            self.size_update = Some(size);
            if self.entry.as_ref().is_some_and(|(_, entry)| *entry > size) {
                self.entry = None;
            }
        }
    }

    /// The upstream's first SETTINGS frame has been applied.
    pub(crate) fn settings_seen(&mut self) {
        self.settings_seen = true;
    }

    /// A lowered limit not yet acknowledged, as a size update: RFC 7541 §4.2 wants it at the
    /// start of the first header block after the change, a request head's or trailers'.
    pub(crate) fn put_size_update(&mut self, out: &mut Vec<u8>) {
        if let Some(size) = self.size_update.take() {
            wire::put_integer(out, 0x20, 5, size as usize);
        }
    }
}

/// Never indexed. Its name by index once the upstream's table holds it; the first time the
/// upstream's table can take it, as a literal with incremental indexing (which adds the name
/// with this value); else with a literal name (ours, known not to be in the static table).
/// Short lengths (the common case: a request id) fit their 7-bit prefixes, and the field is
/// one copy of its parts into room made once.
fn put_extra_field(out: &mut Vec<u8>, field: ExtraField<'_>, table: &mut UpstreamTable) {
    let (name, value) = (field.name.as_str().as_bytes(), field.value);
    if table
        .entry
        .as_ref()
        .is_some_and(|(held, _)| held == field.name)
    {
        put_indexed_name(out, 0x10, FIRST_DYNAMIC_INDEX, value);
        return;
    }
    // RFC 7541 §4.1: an entry's size is its name's and value's lengths plus 32.
    let entry_size = (name.len() + value.len() + 32) as u64;
    if table.settings_seen && table.entry.is_none() && entry_size <= u64::from(table.max_size) {
        out.push(0x40);
        wire::put_string(out, name);
        wire::put_string(out, value);
        table.entry = Some((field.name.clone(), entry_size as u32));
        return;
    }
    if name.len() < 0x7f && value.len() < 0x7f {
        out.reserve(3 + name.len() + value.len());
        out.extend_from_slice(&[0x10, name.len() as u8]);
        out.extend_from_slice(name);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
    } else {
        out.push(0x10);
        wire::put_string(out, name);
        wire::put_string(out, value);
    }
}

/// One more request header field, sent after the head's own as a never-indexed literal
/// without entering the head's `HeaderMap`: for a value made anew for each request (a
/// request id), which would otherwise cost a header value of its own, a map insert and a
/// look-up of its name here.
#[derive(Clone, Copy, Debug)]
pub struct ExtraField<'a> {
    name: &'a http::HeaderName,
    value: &'a [u8],
}

impl<'a> ExtraField<'a> {
    /// `value` must be a valid field value (RFC 9110 §5.5: no CR, LF or NUL, no leading or
    /// trailing whitespace); the caller vouches for it (checked in debug builds), since the
    /// point is not to pay for a `HeaderValue`. The name must not be one HTTP/2 forbids
    /// (connection-specific fields, `te`).
    pub fn new(name: &'a http::HeaderName, value: &'a [u8]) -> Self {
        debug_assert!(
            http::HeaderValue::from_bytes(value).is_ok(),
            "{value:?} is not a field value"
        );
        debug_assert!(
            !is_connection_specific(name) && name != http::header::TE,
            "{name} is connection-specific"
        );
        ExtraField { name, value }
    }
}

/// A field as a literal that never enters the upstream's table (never indexed when it
/// carries a credential), its name from the static table when it is there.
pub(crate) fn put_literal_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    put_field(out, name_kind(name), name, value);
}

#[inline]
fn put_field(out: &mut Vec<u8>, kind: NameKind, name: &str, value: &[u8]) {
    let (pattern, index) = match kind {
        NameKind::Field {
            never_indexed,
            index,
        } => (if never_indexed { 0x10 } else { 0x00 }, index),
        NameKind::Te => (0x00, None),
        NameKind::ConnectionSpecific => (0x00, None),
    };
    match index {
        Some(index) => put_indexed_name(out, pattern, usize::from(index), value),
        None => {
            out.push(pattern);
            wire::put_string(out, name.as_bytes());
            wire::put_string(out, value);
        }
    }
}

pub(crate) fn put_indexed_name(out: &mut Vec<u8>, pattern: u8, index: usize, value: &[u8]) {
    wire::put_integer(out, pattern, 4, index);
    wire::put_string(out, value);
}

/// What a request field's name means to the encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameKind {
    /// Forbidden in HTTP/2 (RFC 9113 §8.2.2): never sent.
    ConnectionSpecific,
    /// `te`: only `trailers` may pass.
    Te,
    /// Sent as a literal: never indexed when it carries a credential (`authorization`,
    /// `cookie`, `authn-token`); `index`, the name's place in HPACK's static table (RFC 7541
    /// appendix A), for the names requests commonly carry.
    Field {
        never_indexed: bool,
        index: Option<u8>,
    },
}

/// The name's [`NameKind`], told apart by its length first (one jump), then by at most three
/// comparisons of a known size, each a word or two: every field of every request passes
/// here, and a `match` on the strings compared them one by one (~160 instructions a field).
pub(crate) fn name_kind(name: &str) -> NameKind {
    #[inline(always)]
    fn is<const N: usize>(name: &[u8], literal: &[u8; N]) -> bool {
        <&[u8; N]>::try_from(name).is_ok_and(|name| name == literal)
    }
    const fn indexed(index: u8) -> NameKind {
        NameKind::Field {
            never_indexed: false,
            index: Some(index),
        }
    }
    const fn secret(index: Option<u8>) -> NameKind {
        NameKind::Field {
            never_indexed: true,
            index,
        }
    }
    const PLAIN: NameKind = NameKind::Field {
        never_indexed: false,
        index: None,
    };
    use NameKind::ConnectionSpecific as Hop;
    let n = name.as_bytes();
    match n.len() {
        2 if is(n, b"te") => NameKind::Te,
        3 if is(n, b"via") => indexed(60),
        4 if is(n, b"host") => indexed(38),
        6 if is(n, b"accept") => indexed(19),
        6 if is(n, b"cookie") => secret(Some(32)),
        7 if is(n, b"referer") => indexed(51),
        7 if is(n, b"upgrade") => Hop,
        10 if is(n, b"user-agent") => indexed(58),
        10 if is(n, b"connection") || is(n, b"keep-alive") => Hop,
        11 if is(n, b"authn-token") => secret(None),
        12 if is(n, b"content-type") => indexed(31),
        13 if is(n, b"authorization") => secret(Some(23)),
        13 if is(n, b"cache-control") => indexed(24),
        13 if is(n, b"if-none-match") => indexed(41),
        14 if is(n, b"accept-charset") => indexed(15),
        14 if is(n, b"content-length") => indexed(28),
        15 if is(n, b"accept-encoding") => indexed(16),
        15 if is(n, b"accept-language") => indexed(17),
        16 if is(n, b"content-encoding") => indexed(26),
        16 if is(n, b"proxy-connection") => Hop,
        17 if is(n, b"if-modified-since") => indexed(40),
        17 if is(n, b"transfer-encoding") => Hop,
        _ => PLAIN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pachgate_h2_wire::hpack_decode::Representation;

    fn decode(block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        pachgate_h2_wire::hpack_decode::Decoder::new(4096)
            .decode(block, |field| {
                // Request heads never enter the upstream's table.
                assert_ne!(field.representation, Representation::IncrementalIndexing);
                fields.push((
                    String::from_utf8(field.name.to_vec()).unwrap(),
                    String::from_utf8(field.value.to_vec()).unwrap(),
                ))
            })
            .expect("a valid HPACK block");
        fields
    }

    /// The names of the fields sent never indexed.
    fn never_indexed(block: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        pachgate_h2_wire::hpack_decode::Decoder::new(4096)
            .decode(block, |field| {
                if field.never_indexed() {
                    names.push(String::from_utf8(field.name.to_vec()).unwrap());
                }
            })
            .expect("a valid HPACK block");
        names
    }

    #[test]
    fn request_heads_decode_to_what_was_asked_without_connection_headers() {
        let long_path = format!("/pfs_v2.API/{}", "x".repeat(300));
        let request = http::Request::builder()
            .method("PUT")
            .uri(format!("https://pachd.example:1650{long_path}?q=1"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", "Bearer secret")
            .header("x-custom", "v".repeat(200))
            .header("connection", "keep-alive")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let mut block = Vec::new();
        encode_request_head(&head, None, &mut UpstreamTable::default(), &mut block);
        let expected: Vec<(String, String)> = [
            (":method", "PUT".to_string()),
            (":scheme", "https".to_string()),
            (":authority", "pachd.example:1650".to_string()),
            (":path", format!("{long_path}?q=1")),
            ("content-type", "application/grpc".to_string()),
            ("te", "trailers".to_string()),
            ("authorization", "Bearer secret".to_string()),
            ("x-custom", "v".repeat(200)),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        assert_eq!(decode(&block), expected);
        assert_eq!(never_indexed(&block), ["authorization"]);
    }

    #[test]
    fn te_trailers_in_any_case_goes_as_trailers_and_other_te_values_stay_behind() {
        for (sent, forwarded) in [
            ("Trailers", Some("trailers")),
            ("TRAILERS", Some("trailers")),
            ("trailers", Some("trailers")),
            ("gzip", None),
        ] {
            let request = http::Request::builder()
                .uri("http://pachd:1650/pfs_v2.API/ListRepo")
                .header("te", sent)
                .body(())
                .unwrap();
            let (head, ()) = request.into_parts();
            let mut block = Vec::new();
            encode_request_head(&head, None, &mut UpstreamTable::default(), &mut block);
            let te: Vec<String> = decode(&block)
                .into_iter()
                .filter(|(name, _)| name == "te")
                .map(|(_, value)| value)
                .collect();
            assert_eq!(te, forwarded.into_iter().collect::<Vec<_>>(), "{sent}");
        }
    }

    #[test]
    fn names_are_told_apart_as_the_static_table_and_rfc_9113_say() {
        // The static table's entries (RFC 7541 appendix A) that this encoder uses.
        let indexed = [
            ("accept-charset", 15),
            ("accept-encoding", 16),
            ("accept-language", 17),
            ("accept", 19),
            ("authorization", 23),
            ("cache-control", 24),
            ("content-encoding", 26),
            ("content-length", 28),
            ("content-type", 31),
            ("cookie", 32),
            ("host", 38),
            ("if-modified-since", 40),
            ("if-none-match", 41),
            ("referer", 51),
            ("user-agent", 58),
            ("via", 60),
        ];
        for (name, index) in indexed {
            let never_indexed = matches!(name, "authorization" | "cookie");
            assert_eq!(
                name_kind(name),
                NameKind::Field {
                    never_indexed,
                    index: Some(index)
                },
                "{name}"
            );
        }
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            assert_eq!(name_kind(name), NameKind::ConnectionSpecific, "{name}");
            assert!(is_connection_specific(&http::HeaderName::from_static(name)));
        }
        assert_eq!(name_kind("te"), NameKind::Te);
        assert_eq!(
            name_kind("authn-token"),
            NameKind::Field {
                never_indexed: true,
                index: None
            }
        );
        // Same lengths as the names above, and near misses: plain literals.
        for name in [
            "tf",
            "vib",
            "hosu",
            "accepu",
            "command",
            "upgradf",
            "user-agenu",
            "grpc-timeout",
            "x-request-id",
            "authorizatioo",
            "content-lengtg",
            "grpc-encoding",
            "x",
            "grpc-accept-encoding",
            "",
        ] {
            assert_eq!(
                name_kind(name),
                NameKind::Field {
                    never_indexed: false,
                    index: None
                },
                "{name}"
            );
        }
    }

    /// The request id's name enters the upstream's table once its SETTINGS are known, and
    /// later requests name it by index; a lowered table size is acknowledged at the start of
    /// the next block and, below the entry's size, evicts it. Decoded with one decoder per
    /// connection, as the upstream keeps it.
    #[test]
    fn the_extra_fields_name_enters_the_upstreams_table_once_and_leaves_it_when_told() {
        let request = http::Request::builder()
            .method("POST")
            .uri("http://pachd:1650/pfs_v2.API/InspectRepo")
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let name = http::HeaderName::from_static("x-request-id");
        let ids: Vec<String> = (0..6).map(|i| format!("{i:032x}")).collect();
        let mut table = UpstreamTable::default();
        let mut upstream = pachgate_h2_wire::hpack_decode::Decoder::new(4096);
        let mut send = |table: &mut UpstreamTable, id: &str| {
            let mut block = Vec::new();
            let extra = ExtraField::new(&name, id.as_bytes());
            encode_request_head(&head, Some(extra), table, &mut block);
            let mut fields = Vec::new();
            upstream
                .decode(&block, |field| {
                    fields.push((
                        String::from_utf8(field.name.to_vec()).unwrap(),
                        String::from_utf8(field.value.to_vec()).unwrap(),
                        field.representation,
                    ))
                })
                .expect("a valid HPACK block");
            let (last_name, last_value, how) = fields.pop().unwrap();
            assert_eq!(
                (last_name.as_str(), last_value.as_str()),
                ("x-request-id", id)
            );
            (block, how)
        };
        // Before the upstream's SETTINGS: a literal name, nothing added.
        let (block, how) = send(&mut table, &ids[0]);
        assert_eq!(how, Representation::NeverIndexed);
        assert!(
            block.ends_with(&[&[0x10, 12][..], b"x-request-id", &[32], ids[0].as_bytes()].concat())
        );
        table.settings_seen();
        // Added once, with the value it first came with; then by index (62: 0x1f 0x2f).
        assert_eq!(
            send(&mut table, &ids[1]).1,
            Representation::IncrementalIndexing
        );
        let (block, how) = send(&mut table, &ids[2]);
        assert_eq!(how, Representation::NeverIndexed);
        assert!(block.ends_with(&[&[0x1f, 0x2f, 32][..], ids[2].as_bytes()].concat()));
        // A lower limit the entry still fits: acknowledged, the index still used.
        table.peer_limit(100);
        let (block, _) = send(&mut table, &ids[3]);
        assert_eq!(&block[..2], &[0x3f, 100 - 31]);
        assert!(block.ends_with(&[&[0x1f, 0x2f, 32][..], ids[3].as_bytes()].concat()));
        // Below the entry's size (76): acknowledged, evicted, back to a literal name.
        table.peer_limit(64);
        let (block, how) = send(&mut table, &ids[4]);
        assert_eq!(&block[..2], &[0x3f, 64 - 31]);
        assert_eq!(how, Representation::NeverIndexed);
        assert!(
            block.ends_with(&[&[0x10, 12][..], b"x-request-id", &[32], ids[4].as_bytes()].concat())
        );
        // A limit raised again is not needed: nothing more is added or acknowledged.
        table.peer_limit(4096);
        let (block, how) = send(&mut table, &ids[5]);
        assert_eq!((block[0], how), (0x83, Representation::NeverIndexed));
        // Whichever block comes first after a change carries the update (trailers take it
        // with `put_size_update`), once.
        table.peer_limit(10);
        let mut trailers = Vec::new();
        table.put_size_update(&mut trailers);
        table.put_size_update(&mut trailers);
        assert_eq!(trailers, [0x20 | 10]);
    }

    #[test]
    fn an_extra_field_follows_the_head_never_indexed() {
        let request = http::Request::builder()
            .method("POST")
            .uri("http://pachd:1650/pfs_v2.API/InspectRepo")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let name = http::HeaderName::from_static("x-request-id");
        let id = b"0123456789abcdef0123456789abcdef";
        let mut block = Vec::new();
        encode_request_head(
            &head,
            Some(ExtraField::new(&name, id)),
            &mut UpstreamTable::default(),
            &mut block,
        );
        assert_eq!(
            decode(&block).last().unwrap(),
            &(
                "x-request-id".to_string(),
                String::from_utf8(id.to_vec()).unwrap()
            )
        );
        assert_eq!(never_indexed(&block), ["x-request-id"]);
        // Literal never indexed with a literal name: 0x10, then the name's length (12).
        let at = block.len() - id.len() - 1 - "x-request-id".len() - 2;
        assert_eq!(&block[at..at + 2], &[0x10, 12]);
        // A value past the 7-bit prefix takes the long way.
        let long = vec![b'v'; 300];
        let mut block = Vec::new();
        encode_request_head(
            &head,
            Some(ExtraField::new(&name, &long)),
            &mut UpstreamTable::default(),
            &mut block,
        );
        assert_eq!(decode(&block).last().unwrap().1, "v".repeat(300));
        let mut block = Vec::new();
        encode_request_head(
            &head,
            Some(ExtraField::new(&name, id)),
            &mut UpstreamTable::default(),
            &mut block,
        );
        // Without it, the same head less that field.
        let mut plain = Vec::new();
        encode_request_head(&head, None, &mut UpstreamTable::default(), &mut plain);
        assert_eq!(plain, block[..at]);
    }

    #[test]
    fn an_extended_connect_head_carries_its_protocol_after_the_pseudo_headers() {
        let request = http::Request::builder()
            .method("CONNECT")
            .uri("http://pachd:1650/ws?x=1")
            .header("sec-websocket-version", "13")
            .extension(ConnectProtocol("websocket"))
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let mut block = Vec::new();
        encode_request_head(&head, None, &mut UpstreamTable::default(), &mut block);
        assert_eq!(
            decode(&block),
            [
                (":method", "CONNECT"),
                (":scheme", "http"),
                (":authority", "pachd:1650"),
                (":path", "/ws?x=1"),
                (":protocol", "websocket"),
                ("sec-websocket-version", "13"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        // Only CONNECT takes it.
        let (mut head, ()) = http::Request::get("http://pachd/")
            .body(())
            .unwrap()
            .into_parts();
        head.extensions.insert(ConnectProtocol("websocket"));
        let mut block = Vec::new();
        encode_request_head(&head, None, &mut UpstreamTable::default(), &mut block);
        assert!(!decode(&block).iter().any(|(name, _)| name == ":protocol"));
    }

    #[test]
    fn common_pseudo_headers_are_single_bytes_and_credentials_are_never_indexed() {
        let request = http::Request::builder()
            .method("GET")
            .uri("http://console/")
            .header("authorization", "Bearer secret")
            .header("te", "gzip")
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let mut block = Vec::new();
        encode_request_head(&head, None, &mut UpstreamTable::default(), &mut block);
        // GET, http and "/" come from the static table; `te` other than "trailers" is
        // dropped (HTTP/2 forbids it).
        assert_eq!(&block[..2], &[0x80 | 2, 0x80 | 6]);
        assert_eq!(
            decode(&block),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "console"),
                (":path", "/"),
                ("authorization", "Bearer secret"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        // The authorization field's representation: literal never indexed (0x10), name
        // index 23 (15 in the 4-bit prefix, 8 after it), then the value's length.
        let at = block.len() - "Bearer secret".len() - 3;
        assert_eq!(block[at], 0x10 | 0x0f);
        assert_eq!(block[at + 1], 23 - 15);
    }
}

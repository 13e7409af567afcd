//! The request id: kept when the client sent a sane one, else made here (no syscall, no
//! allocation), and added to the request as it leaves for the ways upstream that take the
//! request's own headers.

use std::cell::Cell;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use pachgate_observe::RequestIdText;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id a log line reports: one the client sent, or one made here (kept as its
/// digits, so the line needs no copy of the header value).
pub(crate) enum RequestId {
    Sent(HeaderValue),
    Made([u8; 32]),
}

impl RequestId {
    pub(crate) fn as_text(&self) -> RequestIdText<'_> {
        match self {
            RequestId::Sent(value) => RequestIdText::Sent(value.as_bytes()),
            RequestId::Made(digits) => RequestIdText::Made(digits),
        }
    }

    /// The id made here, which the request's headers do not hold.
    pub(crate) fn made(&self) -> Option<&[u8; 32]> {
        match self {
            RequestId::Sent(_) => None,
            RequestId::Made(digits) => Some(digits),
        }
    }

    #[cfg(test)]
    fn as_str(&self) -> Option<&str> {
        match self {
            RequestId::Sent(value) => value.to_str().ok(),
            RequestId::Made(digits) => std::str::from_utf8(digits).ok(),
        }
    }
}

/// The request's id: a valid client-sent `x-request-id` (visible ASCII, at most 128 bytes),
/// kept as it is; else a new random one, which is *not* put in `headers` (an invalid one is
/// removed): the upstream receives it from [`RequestId::made`] as the request leaves, an
/// h2 upstream as one more field of the encoded head, without a header value and a map
/// insert of its own. `came_with_one`: whether the request arrived with an `x-request-id`
/// ([`crate::exchange::Exchange::request_id_sent`]); when it did not, `headers` are not searched.
pub(crate) fn request_id(headers: &mut HeaderMap, came_with_one: bool) -> RequestId {
    if !came_with_one {
        return RequestId::Made(new_request_id());
    }
    // A scan, not a look-up by name: a look-up hashes a name outside the standard set byte
    // by byte, while the scan passes each standard name with one comparison.
    let sent = headers
        .iter()
        .find(|(name, _)| **name == X_REQUEST_ID)
        .map(|(_, value)| value);
    if let Some(value) = sent {
        let bytes = value.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic()) {
            return RequestId::Sent(value.clone());
        }
        headers.remove(&X_REQUEST_ID);
    }
    RequestId::Made(new_request_id())
}

/// Sets a made request id in `headers`, for the ways upstream that take the request's map
/// as it is (HTTP/1.1, websocket tunnels).
pub(crate) fn insert_request_id(headers: &mut HeaderMap, digits: &[u8; 32]) {
    headers.insert(&X_REQUEST_ID, request_id_value(digits));
}

fn request_id_value(digits: &[u8; 32]) -> HeaderValue {
    let mut value = HeaderValue::from_bytes(digits).expect("hex digits are a valid header value");
    // Every value is new: an h2 encoder should not index it (it would only evict useful
    // entries). This value goes to HTTP/1.1 upstreams and websocket tunnels; h2-upstream's
    // own encoder sends every field it does not know as a literal without indexing anyway.
    value.set_sensitive(true);
    value
}

/// A new id: 32 hex digits. The first 16 are the thread's (64 random bits, drawn when the
/// thread makes its first id), the last 16 the next output of the thread's splitmix64
/// sequence, seeded by the standard library's random hasher keys. splitmix64 is a bijection
/// of its counter, so a thread repeats no id within 2^64 of them, and two threads (or
/// processes) share ids only if their random halves collide. No syscall per request, and
/// only half the digits made per id.
pub(crate) fn new_request_id() -> [u8; 32] {
    struct IdSource {
        state: Cell<u64>,
        thread_digits: [u8; 16],
    }
    thread_local! {
        static SOURCE: IdSource = {
            let state = Cell::new(seed());
            let thread_digits = hex16(splitmix64(&state));
            IdSource { state, thread_digits }
        };
    }
    fn seed() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        );
        hasher.finish()
    }
    // splitmix64: a full-period sequence per thread with well-mixed output.
    fn splitmix64(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn hex16(bits: u64) -> [u8; 16] {
        let mut digits = [0u8; 16];
        digits[..8].copy_from_slice(&hex_digits(bits as u32));
        digits[8..].copy_from_slice(&hex_digits((bits >> 32) as u32));
        digits
    }
    SOURCE.with(|source| {
        let mut digits = [0u8; 32];
        digits[..16].copy_from_slice(&source.thread_digits);
        digits[16..].copy_from_slice(&hex16(splitmix64(&source.state)));
        digits
    })
}

/// The eight nibbles of `bits` as lowercase hex digits, all at once (a table lookup per
/// digit cost ~9 instructions each). The digits come out in little-endian nibble order,
/// which does not matter for ids.
fn hex_digits(bits: u32) -> [u8; 8] {
    const LOW_NIBBLES: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    // Spread nibble i into byte i.
    let mut x = u64::from(bits);
    x = (x | x << 16) & 0x0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
    x = (x | x << 4) & LOW_NIBBLES;
    // 1 in each byte whose nibble is 10..=15, which then skips from '9'+1 to 'a'.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10)).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::USER_AGENT;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("grpc-go/1.0"));
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        let kept = request_id(&mut headers, true);
        assert_eq!(kept.as_str(), Some("abc-123"));
        assert_eq!(kept.made(), None);
        assert_eq!(headers.get(&X_REQUEST_ID).unwrap(), "abc-123");

        // An invalid one goes; the made one is left to the way upstream.
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        let made = request_id(&mut headers, true);
        let text = made.as_str().unwrap();
        assert_eq!(text.len(), 32);
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
        assert_eq!(made.made().map(|d| &d[..]), Some(text.as_bytes()));
        assert!(!headers.contains_key(&X_REQUEST_ID));
        insert_request_id(&mut headers, made.made().unwrap());
        let sent: Vec<_> = headers.get_all(&X_REQUEST_ID).iter().collect();
        assert_eq!(sent, [text]);
        assert!(sent[0].is_sensitive());

        // None sent: the map is left as it is.
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("curl"));
        let first = request_id(&mut headers, true);
        assert_eq!(headers.len(), 1);
        assert!(first.made().is_some());
        assert_ne!(first.as_str(), request_id(&mut headers, true).as_str());

        // Too long, or empty: made anew.
        for value in ["x".repeat(129), String::new()] {
            let mut headers = HeaderMap::new();
            headers.insert(&X_REQUEST_ID, HeaderValue::from_str(&value).unwrap());
            assert!(request_id(&mut headers, true).made().is_some());
            assert!(headers.is_empty());
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(128)).unwrap(),
        );
        assert!(request_id(&mut headers, true).made().is_none());
    }

    #[test]
    fn made_ids_are_distinct_and_each_thread_has_its_own_half() {
        let ids_of_a_thread = || {
            (0..1000)
                .map(|_| {
                    let id = request_id(&mut HeaderMap::new(), false);
                    id.as_str().unwrap().to_string()
                })
                .collect::<Vec<_>>()
        };
        let here = ids_of_a_thread();
        let there = std::thread::spawn(ids_of_a_thread).join().unwrap();
        let mut seen = std::collections::HashSet::new();
        for id in here.iter().chain(&there) {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(seen.insert(id.clone()), "{id} twice");
        }
        // The first 16 digits are the thread's, the last 16 change with every id.
        assert!(here.iter().all(|id| id[..16] == here[0][..16]));
        assert!(there.iter().all(|id| id[..16] == there[0][..16]));
        assert_ne!(here[0][..16], there[0][..16]);
        let tails: std::collections::HashSet<_> = here.iter().map(|id| &id[16..]).collect();
        assert_eq!(tails.len(), here.len());
    }

    #[test]
    fn hex_digits_cover_every_nibble() {
        assert_eq!(&hex_digits(0x7654_3210), b"01234567");
        assert_eq!(&hex_digits(0xfedc_ba98), b"89abcdef");
        assert_eq!(&hex_digits(0), b"00000000");
    }
}

//! A token refusal on pachd's file server (`/pfs`), written as pachd writes it
//! (`src/internal/fileserver`): pachd's gRPC error seen through the file server's
//! `displayGRPCError`, with the status it maps the code to, the text `problem inspecting
//! file: rpc error: code = … desc = …`, and the headers it has set by then. The console's
//! server fetches previews through the ingress and hands the answer on, so the gate's
//! refusal must be the one pachd would have given.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, VARY};
use http::{HeaderMap, Response, StatusCode};

use crate::body::ProxyBody;
use crate::error::GrpcCode;
use crate::go_float::go_parse_float;
use crate::request_id::{new_request_id, X_REQUEST_ID};

/// pachd's answer to a `/pfs` request whose token it refuses with `code` and `message`.
/// `page`: when the client ranks HTML above text ([`prefers_html`]), the error page's id
/// ([`error_id`]).
pub(crate) fn file_server_refusal(
    code: GrpcCode,
    message: &str,
    page: Option<&[u8]>,
) -> Response<ProxyBody> {
    let status = match code {
        GrpcCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        GrpcCode::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // grpc-go's error string, behind the file server's words for the failed InspectFile.
    let text = format!(
        "problem inspecting file: rpc error: code = {} desc = {message}",
        code.go_name()
    );
    let (content_type, body) = match page {
        Some(error_id) => ("text/html", error_page(&text, error_id)),
        None => ("text/plain", text.into_bytes()),
    };
    let mut response = Response::new(ProxyBody::Full(Some(body.into())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Set by the file server before it asks pachd anything, so they come with its errors.
    headers.insert(VARY, HeaderValue::from_static("authn-token"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    response
}

/// The file server's error page for a browser, laid out as pachd's `error.html` renders it
/// (the "Error ID" block only for a non-empty id, as the template's `if` has it) and
/// escaped as Go's html/template escapes text. Bytes, as Go writes them: an id that is not
/// UTF-8 goes out as it came.
fn error_page(message: &str, error_id: &[u8]) -> Vec<u8> {
    let mut page = Vec::with_capacity(256 + message.len() + error_id.len());
    page.extend_from_slice(
        b"<html>\n    <head>\n        <title>Pachyderm - Error</title>\n    </head>\n    \
          <body>\n        <h1>Error</h1>\n        <p>",
    );
    escape_html_text(message.as_bytes(), &mut page);
    page.extend_from_slice(b"</p>\n        ");
    if !error_id.is_empty() {
        page.extend_from_slice(b"\n        <hr />\n        <p>Error ID: ");
        escape_html_text(error_id, &mut page);
        page.extend_from_slice(b"</p>\n        ");
    }
    page.extend_from_slice(b"\n    </body>\n</html>\n");
    page
}

/// Text as Go's html/template escapes it (`htmlEscaper`): this set, `"` as `&#34;`, a NUL
/// replaced, and every other byte (a non-UTF-8 one too) as it is.
fn escape_html_text(text: &[u8], out: &mut Vec<u8>) {
    for &byte in text {
        match byte {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'"' => out.extend_from_slice(b"&#34;"),
            b'\'' => out.extend_from_slice(b"&#39;"),
            b'+' => out.extend_from_slice(b"&#43;"),
            0 => out.extend_from_slice("\u{fffd}".as_bytes()),
            byte => out.push(byte),
        }
    }
}

/// The id pachd's error page shows (`log.RequestID`): the request's `x-request-id` values
/// as pachd received them, joined by `;` (one empty value: no id, and no Error ID line).
/// With the access log on, a request that came without one carries the id pachgate `made`
/// for it. Without either, pachd makes one (a UUID, which pachd logs), and so one is made
/// here in that form: random, though not a version-4 UUID, and written to no log.
pub(crate) fn error_id(headers: &HeaderMap, made: Option<&[u8; 32]>) -> Vec<u8> {
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    if let Some(first) = sent.next() {
        let mut joined = first.as_bytes().to_vec();
        for value in sent {
            joined.push(b';');
            joined.extend_from_slice(value.as_bytes());
        }
        return joined;
    }
    if let Some(digits) = made {
        return digits.to_vec();
    }
    let digits = new_request_id();
    let mut id = Vec::with_capacity(36);
    for (at, group) in [0..8, 8..12, 12..16, 16..20, 20..32]
        .into_iter()
        .enumerate()
    {
        if at > 0 {
            id.push(b'-');
        }
        id.extend_from_slice(&digits[group]);
    }
    id
}

/// Whether pachd's file server answers this request in HTML: its `Accept` negotiated
/// between `text/plain` and `text/html`, in that order, as pachd's accept library
/// (go-accept-headers) does. Media ranges are ranked by q-value, then concrete type before
/// `*`, concrete subtype before `*`, more parameters first, then the order given; the first
/// range that matches either type picks it, `text/plain` winning when both match. Matching
/// is case-sensitive, a range with a parameter that is not `name=value` (or a q that is not
/// a number ≥ 0) is ignored, and a q of 0 still matches. No `Accept` is `*/*`: text.
/// Only ranges that can match either type (all, when a q is NaN) are ranked, at most
/// [`RANKED_RANGES`] of them, so a long header costs little. Go ranks every range, and
/// orders more than 12 by an unstable sort (pdqsort) that this insertion sort follows only
/// where the ranking has no ties; past 32 matching ranges the rest are not looked at.
/// Headers like those (checked against the Go library run on the same headers) are not
/// what browsers or Pachyderm's clients send.
pub(crate) fn prefers_html(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(http::header::ACCEPT)
        .map_or(&b""[..], HeaderValue::as_bytes);
    let accept = String::from_utf8_lossy(accept);
    // A range that matches neither type moves no other in Go's sort, unless some q is NaN:
    // then the order is not transitive, and every range can move the others, so all are
    // sorted (up to the limit).
    let (mut matching, mut all, mut any_nan) = (Vec::new(), Vec::new(), false);
    for range in accept.split(',').filter_map(MediaRange::parse) {
        any_nan |= range.q.is_nan();
        if all.len() < RANKED_RANGES {
            all.push(range.clone());
        }
        if matching.len() < RANKED_RANGES && (range.matches("plain") || range.matches("html")) {
            matching.push(range);
        }
    }
    let mut ranges: Vec<MediaRange<'_>> = if any_nan { all } else { matching };
    // Go's insertion sort (what `sort.Sort` runs on short slices): stable, and safe with
    // a NaN q, which Go keeps and which compares as neither more nor less.
    for at in 1..ranges.len() {
        let mut j = at;
        while j > 0 && MediaRange::ranks_before(&ranges[j], &ranges[j - 1]) {
            ranges.swap(j, j - 1);
            j -= 1;
        }
    }
    ranges
        .iter()
        .find(|range| range.matches("plain") || range.matches("html"))
        .is_some_and(|first| !first.matches("plain"))
}

/// How many matching media ranges [`prefers_html`] ranks.
const RANKED_RANGES: usize = 32;

#[derive(Clone)]
struct MediaRange<'a> {
    kind: &'a str,
    subtype: &'a str,
    q: f64,
    parameters: usize,
}

impl<'a> MediaRange<'a> {
    fn parse(range: &'a str) -> Option<Self> {
        let mut pieces = range.split(';');
        let media = pieces.next().unwrap_or("");
        let mut names = media.split('/');
        let kind = names.next().unwrap_or("").trim();
        let subtype = names.next().unwrap_or("").trim();
        if names.next().is_some() {
            return None;
        }
        let wildcard = |name: &'a str| if name.is_empty() { "*" } else { name };
        let mut q = 1.0;
        let mut others: Vec<&str> = Vec::new();
        for parameter in pieces {
            let (name, value) = parameter.split_once('=')?;
            let name = name.trim();
            if name == "q" {
                q = go_parse_q(value.trim())?;
            } else {
                others.push(name);
            }
        }
        // Go counts the names in a map: repeated ones once. Sorted, not searched: a header
        // may hold thousands.
        others.sort_unstable();
        others.dedup();
        Some(MediaRange {
            kind: wildcard(kind),
            subtype: wildcard(subtype),
            q,
            parameters: others.len(),
        })
    }

    /// Whether this range takes `text/<subtype>`.
    fn matches(&self, subtype: &str) -> bool {
        matches!(self.kind, "text" | "*") && (self.subtype == subtype || self.subtype == "*")
    }

    /// go-accept-headers' `Less`: a higher q, then a concrete type, then a concrete
    /// subtype, then more parameters. A NaN q is neither higher nor lower.
    fn ranks_before(a: &Self, b: &Self) -> bool {
        if a.q > b.q {
            return true;
        }
        if a.q < b.q {
            return false;
        }
        match ((a.kind == "*"), (b.kind == "*")) {
            (false, true) => return true,
            (true, false) => return false,
            _ => {}
        }
        match ((a.subtype == "*"), (b.subtype == "*")) {
            (false, true) => return true,
            (true, false) => return false,
            _ => {}
        }
        a.parameters > b.parameters
    }
}

/// A q-value as go-accept-headers reads it with Go's `ParseFloat`: a number ≥ 0, at most 1
/// (more is 1). [`go_parse_float`] says which texts are numbers.
fn go_parse_q(text: &str) -> Option<f64> {
    let q = go_parse_float(text)?;
    if q < 0.0 {
        return None;
    }
    Some(if q > 1.0 { 1.0 } else { q })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html_for(accept: Option<&str>) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(http::header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        }
        prefers_html(&headers)
    }

    #[test]
    fn browsers_get_html_and_tools_get_text() {
        // A browser's navigation.
        assert!(html_for(Some(
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
        )));
        assert!(html_for(Some("text/html")));
        // curl, fetch() and Node's HTTP clients.
        assert!(!html_for(Some("*/*")));
        assert!(!html_for(None));
        assert!(!html_for(Some("application/json")));
        // Equal q: the concrete type wins over a wildcard, else the first listed.
        assert!(html_for(Some("*/*, text/html")));
        assert!(!html_for(Some("text/plain, text/html")));
        assert!(html_for(Some("text/html, text/plain")));
        // Ranked by q.
        assert!(!html_for(Some("text/html;q=0.5, text/plain")));
        // `text/*` takes both, and text/plain is offered first.
        assert!(!html_for(Some("text/*, application/json")));
        // More parameters rank first at equal q.
        assert!(html_for(Some("text/plain, text/html;level=1")));
        // Malformed ranges are skipped; case matters, as in pachd.
        assert!(html_for(Some("text/plain;broken, text/html")));
        assert!(html_for(Some("text/plain;q=x, text/html")));
        assert!(!html_for(Some("TEXT/HTML")));
        // A q of 0 still matches when nothing else does.
        assert!(html_for(Some("text/html;q=0")));
        // A NaN q is kept and ranks as neither higher nor lower: the order given decides.
        assert!(!html_for(Some("text/plain;q=0.5, text/html;q=nan")));
        assert!(html_for(Some("text/html;q=nan, text/plain;q=0.5")));
        // An overflowing q is malformed to Go: that range is skipped.
        assert!(html_for(Some("text/plain;q=1e400, text/html;q=0.1")));
        // Bytes that are not UTF-8 do not hide the ranges around them.
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_bytes(b"text/html, x/\xff").unwrap(),
        );
        assert!(prefers_html(&headers));
        // A header of thousands of ranges is ranked in bounded time. Go, ranking them all,
        // would find the one q=1 range at the end (a knowingly different answer).
        let long = vec!["text/plain;q=0.1"; 20_000].join(",") + ",text/html";
        assert!(!html_for(Some(&long)), "only the first ranges are ranked");
    }

    /// q values as Go's `ParseFloat` reads them, each answer checked against the Go library
    /// run on the same header.
    #[test]
    fn q_values_are_read_as_go_reads_them() {
        // Hexadecimal floats: 0x1p-1 is 0.5, rounded once however many digits it has.
        assert!(html_for(Some("text/html;q=0x1p-1, text/plain;q=0.4")));
        assert!(html_for(Some(
            "text/plain;q=0.5, text/html;q=0x.800000000000040000001p0"
        )));
        let long_one = format!("0x1{}p-1024", "0".repeat(256));
        assert!(html_for(Some(&format!(
            "text/plain;q=0.5, text/html;q={long_one}"
        ))));
        let tiny_digit_huge_exponent = format!("0x0.{}1p6000", "0".repeat(1400));
        assert!(html_for(Some(&format!(
            "text/plain;q=0.5, text/html;q={tiny_digit_huge_exponent}"
        ))));
        assert!(html_for(Some("text/html;q=0x.8p0, text/plain;q=0.4")));
        // Without its exponent a hexadecimal q is malformed, and the range ignored.
        assert!(!html_for(Some("text/html;q=0x1, text/plain;q=0.4")));
        // `_` between digits: 0_5 is 5 (so 1), 0.5_0 is 0.5, 1_0 is 10.
        assert!(!html_for(Some("text/plain;q=0_5, text/html;q=0.6")));
        assert!(html_for(Some("text/html;q=0.5_0, text/plain;q=0.4")));
        assert!(!html_for(Some("text/plain;q=1_0, text/html")));
        // ... but not next to anything else.
        assert!(!html_for(Some("text/html;q=_0.5, text/plain;q=0.4")));
        assert!(!html_for(Some("text/html;q=0.5_, text/plain;q=0.4")));
        assert!(!html_for(Some("text/html;q=1e_0, text/plain;q=0.4")));
        // A sign before nan makes it no number: the range is ignored.
        assert!(html_for(Some("text/plain;q=-nan, text/html")));
        assert!(html_for(Some("text/plain;q=+nan, text/html")));
        // With a NaN q, ranges that match neither type still move the others in the sort.
        assert!(!html_for(Some(
            "text/plain;q=0.5, application/json;q=nan, text/html"
        )));
        assert!(html_for(Some(
            "text/html;q=0.5, image/png;q=nan, text/plain"
        )));
        assert!(!html_for(Some(
            "*/*, application/*;q=0.5, */html;q=NaN, TEXT/json"
        )));
    }

    #[test]
    fn refusals_read_as_pachd_writes_them() {
        let expired =
            file_server_refusal(GrpcCode::Internal, "token expiration is in the past", None);
        assert_eq!(expired.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(expired.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(expired.headers()[VARY], "authn-token");
        assert_eq!(expired.headers()[CACHE_CONTROL], "private, no-cache");
        let missing = file_server_refusal(GrpcCode::Unauthenticated, "a <b> & c", Some(b"i<d"));
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(missing.headers()[CONTENT_TYPE], "text/html");
        let ProxyBody::Full(Some(page)) = missing.into_body() else {
            panic!("a whole body");
        };
        let page = std::str::from_utf8(&page).unwrap();
        assert!(
            page.contains(
                "<p>problem inspecting file: rpc error: code = Unauthenticated desc = a &lt;b&gt; &amp; c</p>"
            ),
            "{page}"
        );
        assert!(page.starts_with("<html>\n    <head>\n        <title>Pachyderm - Error</title>"));
        assert!(
            page.ends_with(
                "</p>\n        \n        <hr />\n        <p>Error ID: i&lt;d</p>\n        \n    \
                 </body>\n</html>\n"
            ),
            "{page}"
        );
    }

    #[test]
    fn the_error_page_follows_the_templates_if_and_gos_escaper() {
        let without_id = error_page("m", b"");
        assert_eq!(
            std::str::from_utf8(&without_id).unwrap(),
            "<html>\n    <head>\n        <title>Pachyderm - Error</title>\n    </head>\n    \
             <body>\n        <h1>Error</h1>\n        <p>m</p>\n        \n    </body>\n</html>\n"
        );
        // Bytes that are not UTF-8 pass as they are; the escaped set does not.
        let page = error_page("m", b"a\xff+\"\x00");
        let at = page.windows(10).position(|w| w == b"Error ID: ").unwrap() + 10;
        let expected = b"a\xff&#43;&#34;\xef\xbf\xbd</p>";
        assert_eq!(&page[at..at + expected.len()], expected);
    }

    #[test]
    fn the_error_id_is_the_one_pachd_would_show() {
        let mut headers = HeaderMap::new();
        let made = *b"0123456789abcdef0123456789abcdef";
        // None sent: the id made for the access log, which pachd would have received.
        assert_eq!(error_id(&headers, Some(&made)), made);
        // Neither: one made as pachd makes its own, a UUID's form, new each time.
        let fresh = String::from_utf8(error_id(&headers, None)).unwrap();
        let groups: Vec<usize> = fresh.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{fresh}");
        assert!(fresh.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert_ne!(fresh.as_bytes(), error_id(&headers, None));
        // The client's ids, all of them, win: pachd received those.
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("first"));
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_eq!(error_id(&headers, Some(&made)), b"first;second");
        // One empty value is what pachd's RequestID returns as no id.
        let mut empty = HeaderMap::new();
        empty.append(&X_REQUEST_ID, HeaderValue::from_static(""));
        assert_eq!(error_id(&empty, None), b"");
    }
}

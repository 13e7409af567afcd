//! Stand-in S3: an HTTP/1.1 object store that checks AWS signatures the way S3 does, from
//! the request exactly as it arrived, so a proxy that rewrites a path, a query or a signed
//! header is caught (403 `SignatureDoesNotMatch`, S3's XML error).
//!
//! - SigV4 in the `Authorization` header (`AWS4-HMAC-SHA256 Credential=…`) and presigned in
//!   the query (`X-Amz-Signature`); the payload as `x-amz-content-sha256` says: a SHA-256 that
//!   must match the body, `UNSIGNED-PAYLOAD`, or `STREAMING-UNSIGNED-PAYLOAD-TRAILER`
//!   (aws-chunked with a trailing checksum, what boto3 sends over TLS).
//! - SigV2 presigned URLs (`AWSAccessKeyId`, `Expires`, `Signature`) and `Authorization: AWS …`.
//! - One fixed key pair: [`ACCESS_KEY`] / [`SECRET_KEY`].
//!
//! As S3 does, the canonical URI is the path as received (S3 neither normalises nor
//! re-encodes it) and the canonical query is the received one, decoded, re-encoded by AWS's
//! rules and sorted. Objects live in memory under their percent-decoded path (`/bucket/key`):
//! PUT stores, GET and HEAD read, DELETE removes; a PUT of a bare bucket creates nothing and
//! answers 200.
//!
//! `GET /_standin/requests` (no signature; no S3 bucket name starts with `_`) lists what it
//! received, one line per request: `STATUS METHOD TARGET`, the target (path and query) as it
//! came off the wire.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, ETAG, HOST};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The stand-in's only access key id.
pub const ACCESS_KEY: &str = "PACHGATESTANDIN00001";
/// Its secret.
pub const SECRET_KEY: &str = "pachgate+standin/secret+not+for+any+real+use";

/// Largest request body read (objects are kept in memory).
const MAX_BODY: usize = 64 << 20;
/// Where the log of received requests is served.
const REQUESTS_PATH: &str = "/_standin/requests";

#[derive(Default)]
struct Store {
    objects: Mutex<HashMap<Vec<u8>, Bytes>>,
    /// `STATUS METHOD TARGET` per request, in arrival order.
    seen: Mutex<Vec<String>>,
}

/// Serves the stand-in S3 on `listener` forever.
pub async fn serve_s3(listener: TcpListener) -> std::io::Result<()> {
    let store = Arc::new(Store::default());
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let store = store.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let store = store.clone();
                async move { Ok::<_, Infallible>(handle(&store, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn handle(store: &Store, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    if parts.method == Method::GET && parts.uri.path() == REQUESTS_PATH {
        let mut text = store.seen.lock().unwrap().join("\n");
        text.push('\n');
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return response;
    }
    let response = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => match serve(store, &parts, body.to_bytes()) {
            Ok(response) => response,
            Err(error) => error.into_response(),
        },
        Err(_) => S3Error::new(
            StatusCode::BAD_REQUEST,
            "IncompleteBody",
            "the body could not be read",
        )
        .into_response(),
    };
    store.seen.lock().unwrap().push(format!(
        "{} {} {}",
        response.status().as_u16(),
        parts.method,
        target
    ));
    response
}

fn serve(store: &Store, parts: &Parts, body: Bytes) -> Result<Response<Full<Bytes>>, S3Error> {
    let payload = verify(parts)?;
    let key = percent_decode(parts.uri.path().as_bytes());
    let bucket_only = match key.iter().skip(1).position(|&b| b == b'/') {
        None => true,
        Some(slash) => slash + 2 == key.len(),
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    match parts.method {
        Method::PUT => {
            let object = payload.body(&parts.headers, body)?;
            if !bucket_only {
                let etag = format!(
                    "\"{}\"",
                    &hex(digest::digest(&digest::SHA256, &object).as_ref())[..32]
                );
                store.objects.lock().unwrap().insert(key, object);
                response.headers_mut().insert(
                    ETAG,
                    HeaderValue::from_str(&etag).expect("hex is a header value"),
                );
            }
        }
        Method::GET | Method::HEAD if !bucket_only => {
            let Some(object) = store.objects.lock().unwrap().get(&key).cloned() else {
                return Err(S3Error::new(
                    StatusCode::NOT_FOUND,
                    "NoSuchKey",
                    "The specified key does not exist.",
                ));
            };
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if parts.method == Method::GET {
                *response.body_mut() = Full::new(object);
            } else {
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, object.len().into());
            }
        }
        Method::DELETE if !bucket_only => {
            store.objects.lock().unwrap().remove(&key);
            *response.status_mut() = StatusCode::NO_CONTENT;
        }
        _ => {
            return Err(S3Error::new(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "the stand-in S3 serves PUT, GET, HEAD and DELETE of objects",
            ))
        }
    }
    Ok(response)
}

/// How the body of a verified request is to be read.
enum Payload {
    Unsigned,
    /// The body's SHA-256, lower-case hex, as signed.
    Sha256(String),
    /// aws-chunked, unsigned chunks, trailing checksum.
    StreamingUnsignedTrailer,
}

impl Payload {
    fn from_signed(value: &str) -> Result<Self, S3Error> {
        match value {
            "UNSIGNED-PAYLOAD" => Ok(Payload::Unsigned),
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Ok(Payload::StreamingUnsignedTrailer),
            hash if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Payload::Sha256(hash.to_ascii_lowercase()))
            }
            _ => Err(S3Error::new(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "this x-amz-content-sha256 is not served by the stand-in",
            )),
        }
    }

    /// The object the body carries.
    fn body(&self, headers: &HeaderMap, body: Bytes) -> Result<Bytes, S3Error> {
        match self {
            Payload::Unsigned => Ok(body),
            Payload::Sha256(want) => {
                if hex(digest::digest(&digest::SHA256, &body).as_ref()) != *want {
                    return Err(S3Error::new(
                        StatusCode::BAD_REQUEST,
                        "XAmzContentSHA256Mismatch",
                        "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    ));
                }
                Ok(body)
            }
            Payload::StreamingUnsignedTrailer => {
                let object = decode_aws_chunked(&body).ok_or_else(|| {
                    S3Error::new(
                        StatusCode::BAD_REQUEST,
                        "IncompleteBody",
                        "the aws-chunked body is malformed",
                    )
                })?;
                let declared = headers
                    .get("x-amz-decoded-content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok());
                if declared.is_some_and(|n| n != object.len()) {
                    return Err(S3Error::new(
                        StatusCode::BAD_REQUEST,
                        "IncompleteBody",
                        "x-amz-decoded-content-length does not match the chunks",
                    ));
                }
                Ok(Bytes::from(object))
            }
        }
    }
}

/// `<hex size>[;ext]\r\n<data>\r\n` … `0\r\n<trailers>\r\n\r\n` → the data.
fn decode_aws_chunked(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            // Trailers (the checksum), then an empty line.
            return body.ends_with(b"\r\n").then_some(out);
        }
        let end = size.checked_add(2)?;
        if body.len() < end || &body[size..end] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[end..];
    }
}

/// Checks the request's signature; returns how its payload is to be read.
fn verify(parts: &Parts) -> Result<Payload, S3Error> {
    let query = parts.uri.query().unwrap_or("");
    let authorization = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    if let Some(authorization) = authorization {
        if let Some(rest) = authorization.strip_prefix("AWS4-HMAC-SHA256 ") {
            return verify_v4_header(parts, rest);
        }
        if let Some(rest) = authorization.strip_prefix("AWS ") {
            let (access, signature) = rest.split_once(':').ok_or_else(malformed)?;
            let date = if parts.headers.contains_key("x-amz-date") {
                String::new()
            } else {
                header_text(&parts.headers, "date")
            };
            verify_v2(parts, access, signature, &date)?;
            return Ok(Payload::Unsigned);
        }
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Unsupported Authorization Type",
        ));
    }
    let param = |name: &str| {
        query_pairs(query)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| String::from_utf8_lossy(&percent_decode(v.as_bytes())).into_owned())
    };
    if param("X-Amz-Signature").is_some() {
        return verify_v4_query(parts, &param);
    }
    if let (Some(access), Some(signature), Some(expires)) = (
        param("AWSAccessKeyId"),
        param("Signature"),
        param("Expires"),
    ) {
        let expires_at: u64 = expires.parse().map_err(|_| malformed())?;
        if expires_at < now() {
            return Err(expired());
        }
        verify_v2(parts, &access, &signature, &expires)?;
        return Ok(Payload::Unsigned);
    }
    Err(S3Error::new(
        StatusCode::FORBIDDEN,
        "AccessDenied",
        "Anonymous access is not allowed",
    ))
}

/// The parts of a SigV4 signature, from the header or the query.
struct V4<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
    amz_date: &'a str,
}

fn verify_v4_header(parts: &Parts, fields: &str) -> Result<Payload, S3Error> {
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for field in fields.split(',') {
        match field.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let amz_date = parts
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            S3Error::new(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "AWS authentication requires a valid Date or x-amz-date header",
            )
        })?;
    let payload_hash = parts
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            S3Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "Missing required header for this request: x-amz-content-sha256",
            )
        })?;
    let payload = Payload::from_signed(payload_hash)?;
    let v4 = V4 {
        credential: credential.ok_or_else(malformed)?,
        signed_headers: signed_headers.ok_or_else(malformed)?,
        signature: signature.ok_or_else(malformed)?,
        amz_date,
    };
    check_v4(parts, &v4, payload_hash, false)?;
    Ok(payload)
}

fn verify_v4_query(
    parts: &Parts,
    param: &dyn Fn(&str) -> Option<String>,
) -> Result<Payload, S3Error> {
    if param("X-Amz-Algorithm").as_deref() != Some("AWS4-HMAC-SHA256") {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "AuthorizationQueryParametersError",
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"",
        ));
    }
    let credential = param("X-Amz-Credential").ok_or_else(malformed)?;
    let signed_headers = param("X-Amz-SignedHeaders").ok_or_else(malformed)?;
    let signature = param("X-Amz-Signature").ok_or_else(malformed)?;
    let amz_date = param("X-Amz-Date").ok_or_else(malformed)?;
    let expires: u64 = param("X-Amz-Expires")
        .and_then(|e| e.parse().ok())
        .ok_or_else(malformed)?;
    let signed_at = parse_amz_date(&amz_date).ok_or_else(malformed)?;
    if signed_at + expires < now() {
        return Err(expired());
    }
    let v4 = V4 {
        credential: &credential,
        signed_headers: &signed_headers,
        signature: &signature,
        amz_date: &amz_date,
    };
    check_v4(parts, &v4, "UNSIGNED-PAYLOAD", true)?;
    Ok(Payload::Unsigned)
}

fn check_v4(parts: &Parts, v4: &V4, payload_hash: &str, presigned: bool) -> Result<(), S3Error> {
    // AKID/20250101/us-east-1/s3/aws4_request
    let (access, scope) = v4.credential.split_once('/').ok_or_else(malformed)?;
    if access != ACCESS_KEY {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    }
    let scope_parts: Vec<&str> = scope.split('/').collect();
    let [date, region, service, "aws4_request"] = scope_parts.as_slice() else {
        return Err(malformed());
    };
    if *service != "s3" || !v4.amz_date.starts_with(date) {
        return Err(malformed());
    }

    let mut canonical = String::with_capacity(512);
    canonical.push_str(parts.method.as_str());
    canonical.push('\n');
    // The path as received: S3 neither normalises nor encodes it again.
    canonical.push_str(parts.uri.path());
    canonical.push('\n');
    let mut pairs: Vec<(String, String)> = query_pairs(parts.uri.query().unwrap_or(""))
        .filter(|(name, _)| !(presigned && *name == "X-Amz-Signature"))
        .map(|(name, value)| (aws_encode(name), aws_encode(value)))
        .collect();
    pairs.sort();
    for (index, (name, value)) in pairs.iter().enumerate() {
        if index > 0 {
            canonical.push('&');
        }
        canonical.push_str(name);
        canonical.push('=');
        canonical.push_str(value);
    }
    canonical.push('\n');
    for name in v4.signed_headers.split(';') {
        let mut values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| collapse_spaces(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        if values.is_empty() && name == HOST.as_str() {
            if let Some(authority) = parts.uri.authority() {
                values.push(authority.to_string());
            }
        }
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&values.join(","));
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(v4.signed_headers);
    canonical.push('\n');
    canonical.push_str(payload_hash);

    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        v4.amz_date,
        scope,
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mut key = hmac_sha256(format!("AWS4{SECRET_KEY}").as_bytes(), date.as_bytes());
    for part in [region.as_bytes(), service.as_bytes(), b"aws4_request"] {
        key = hmac_sha256(&key, part);
    }
    let expected = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    if !constant_time_eq(expected.as_bytes(), v4.signature.as_bytes()) {
        return Err(mismatch(string_to_sign, canonical));
    }
    Ok(())
}

/// SigV2: `Authorization: AWS key:sig` (`date` = the Date header) or a presigned URL
/// (`date` = `Expires`).
fn verify_v2(parts: &Parts, access: &str, signature: &str, date: &str) -> Result<(), S3Error> {
    if access != ACCESS_KEY {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    }
    let mut string_to_sign = format!(
        "{}\n{}\n{}\n{}\n",
        parts.method,
        header_text(&parts.headers, "content-md5"),
        header_text(&parts.headers, "content-type"),
        date
    );
    let mut amz: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-amz-"))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                collapse_spaces(&String::from_utf8_lossy(value.as_bytes())),
            )
        })
        .collect();
    amz.sort();
    for (name, value) in amz {
        string_to_sign.push_str(&format!("{name}:{value}\n"));
    }
    // The resource: the path as received, plus the sub-resources S3 signs.
    string_to_sign.push_str(parts.uri.path());
    let mut sub: Vec<(&str, String)> = query_pairs(parts.uri.query().unwrap_or(""))
        .filter(|(name, _)| SUB_RESOURCES.contains(name))
        .map(|(name, value)| {
            (
                name,
                String::from_utf8_lossy(&percent_decode(value.as_bytes())).into_owned(),
            )
        })
        .collect();
    sub.sort();
    for (index, (name, value)) in sub.iter().enumerate() {
        string_to_sign.push(if index == 0 { '?' } else { '&' });
        string_to_sign.push_str(name);
        if !value.is_empty() {
            string_to_sign.push('=');
            string_to_sign.push_str(value);
        }
    }
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, SECRET_KEY.as_bytes());
    let expected = base64(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(mismatch(string_to_sign, String::new()));
    }
    Ok(())
}

/// Query parameters that are part of a SigV2 resource.
const SUB_RESOURCES: &[&str] = &[
    "acl",
    "cors",
    "delete",
    "lifecycle",
    "location",
    "logging",
    "notification",
    "partNumber",
    "policy",
    "requestPayment",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
];

/// `a=1&b&c=` → (`a`, `1`), (`b`, ``), (`c`, ``); names and values as sent.
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// AWS's URI encoding of one query name or value: decoded, then every byte but
/// `A-Z a-z 0-9 - _ . ~` as `%XX` (upper-case hex).
fn aws_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() * 3);
    for byte in percent_decode(raw.as_bytes()) {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `%XX` → the byte; anything else (a lone `%` included) as it is. `+` stays `+`.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut index = 0;
    while index < input.len() {
        if input[index] == b'%' && index + 2 < input.len() {
            let pair = std::str::from_utf8(&input[index + 1..index + 3]).ok();
            if let Some(byte) = pair.and_then(|p| u8::from_str_radix(p, 16).ok()) {
                out.push(byte);
                index += 3;
                continue;
            }
        }
        out.push(input[index]);
        index += 1;
    }
    out
}

fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .unwrap_or_default()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `20250102T030405Z` → seconds since the epoch.
fn parse_amz_date(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An S3 error: status and the XML body S3 answers with.
struct S3Error {
    status: StatusCode,
    code: &'static str,
    message: String,
    string_to_sign: Option<String>,
    canonical_request: Option<String>,
}

impl S3Error {
    fn new(status: StatusCode, code: &'static str, message: &str) -> Self {
        S3Error {
            status,
            code,
            message: message.to_string(),
            string_to_sign: None,
            canonical_request: None,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message>",
            self.code,
            xml_escape(&self.message)
        );
        if let Some(text) = &self.string_to_sign {
            xml.push_str(&format!(
                "<StringToSign>{}</StringToSign>",
                xml_escape(text)
            ));
        }
        if let Some(text) = self.canonical_request.as_ref().filter(|t| !t.is_empty()) {
            xml.push_str(&format!(
                "<CanonicalRequest>{}</CanonicalRequest>",
                xml_escape(text)
            ));
        }
        xml.push_str("</Error>\n");
        let mut response = Response::new(Full::new(Bytes::from(xml)));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        response
    }
}

fn mismatch(string_to_sign: String, canonical_request: String) -> S3Error {
    S3Error {
        string_to_sign: Some(string_to_sign),
        canonical_request: Some(canonical_request),
        ..S3Error::new(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        )
    }
}

fn malformed() -> S3Error {
    S3Error::new(
        StatusCode::BAD_REQUEST,
        "AuthorizationHeaderMalformed",
        "the authorization parameters are malformed",
    )
}

fn expired() -> S3Error {
    S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired")
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published SigV4 example (GET Object, "Example: GET Object" in the S3 API
    /// reference: header auth with a Range header), signed with AWS's example key. The
    /// stand-in's key differs, so this checks the derivation on AWS's own numbers.
    #[test]
    fn signing_key_derivation_matches_aws_example() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let canonical = "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\nx-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nx-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n{}",
            hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
        let mut key = hmac_sha256(format!("AWS4{secret}").as_bytes(), b"20130524");
        for part in [&b"us-east-1"[..], b"s3", b"aws4_request"] {
            key = hmac_sha256(&key, part);
        }
        assert_eq!(
            hex(&hmac_sha256(&key, string_to_sign.as_bytes())),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn query_values_are_reencoded_the_aws_way() {
        for (raw, want) in [
            ("a b", "a%20b"),
            ("a%20b", "a%20b"),
            ("a+b", "a%2Bb"),
            ("x%2fy", "x%2Fy"),
            (
                "AKID/20250101/us-east-1/s3/aws4_request",
                "AKID%2F20250101%2Fus-east-1%2Fs3%2Faws4_request",
            ),
            ("~-_.", "~-_."),
            ("%", "%25"),
            ("%zz", "%25zz"),
            ("\u{e9}", "%C3%A9"),
        ] {
            assert_eq!(aws_encode(raw), want, "{raw}");
        }
    }

    #[test]
    fn aws_chunked_bodies_decode() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n";
        assert_eq!(
            decode_aws_chunked(body).as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(decode_aws_chunked(b"5\r\nhel"), None);
        assert_eq!(decode_aws_chunked(b"zz\r\n"), None);
        assert_eq!(decode_aws_chunked(b"ffffffffffffffff\r\nx\r\n"), None);
    }

    #[test]
    fn small_helpers() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(parse_amz_date("2013-05-24"), None);
        assert_eq!(percent_decode(b"a%2Fb%"), b"a/b%");
        assert_eq!(percent_decode(b"%e6%97%a5"), "\u{65e5}".as_bytes());
    }
}

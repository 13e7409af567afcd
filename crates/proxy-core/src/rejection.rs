//! Every refusal pachgate answers itself, and the one place each is written in the
//! caller's protocol: a gRPC caller gets a trailers-only response (`grpc-status`,
//! `grpc-message`), a caller of pachd's grpc-gateway (`/api/` on a Pachyderm route) gets
//! grpc-gateway's JSON error, everyone else a status and a short text. A refused request's
//! body may be read first ([`Rejection::answer`]), so the client hears the answer.

use http::header::{HeaderValue, CONNECTION, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pachgate_auth_gate::{
    is_server_streaming_method, pachd_http_surface, DenyReason, PachdHttpSurface,
};
use pachgate_routing::RequestFacts;

use crate::body::ProxyBody;
use crate::error::{
    gateway_error_response, grpc_status_response, text_response, GrpcCode, ProxyError,
};
use crate::file_server_refusal::{error_id, file_server_refusal, prefers_html};
use crate::request_view::Facts;

/// Why pachgate answers a request itself instead of passing on the upstream's answer.
#[derive(Debug)]
pub(crate) enum Rejection {
    /// HTTP/1 with both Content-Length and Transfer-Encoding: the body's end is in doubt,
    /// so it is not read, and the connection ends.
    AmbiguousFraming,
    /// An HTTP/2 header list over `max_header_list_size`.
    HeadersTooLarge,
    /// An underscore in a header name, with `reject_underscore_headers`.
    UnderscoreInHeaderName,
    /// Refused by the route's client policy or gate.
    Denied(DenyReason),
    /// pachgate's own errors: no route, a bad target, the upstream down, slow or broken.
    Error(ProxyError),
    /// Plaintext in redirect mode: to this `Location` on https (`None`: no Host to send the
    /// client to; `Err`: the target makes no header value).
    ToHttps(Option<Result<HeaderValue, ()>>),
}

/// How a rejection is written: the caller's protocol decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rendering {
    /// A trailers-only gRPC response.
    Grpc,
    /// grpc-gateway's JSON error (pachd's `/api/`): what the console parses.
    GatewayJson,
    /// The same for a server-streaming method, wrapped as `{"error": …}` as grpc-gateway's
    /// stream forwarder writes it.
    GatewayStreamJson,
    /// pachd's file server (`/pfs` on a Pachyderm route): a refused token as pachd's file
    /// server reports it. `page`: when the client ranks HTML first, the HTML error page's id.
    PachdFileServer { page: Option<Box<[u8]>> },
    /// A status and a short text.
    Text,
}

impl Rendering {
    /// By the caller alone: gRPC for gRPC callers, text for the rest. All that pachgate's
    /// own errors need (they are text on `/api/` too).
    pub(crate) fn for_caller(grpc: bool) -> Self {
        if grpc {
            Rendering::Grpc
        } else {
            Rendering::Text
        }
    }

    /// For the gate's denials on a route: gRPC for gRPC callers; on a route with the
    /// Pachyderm gate, grpc-gateway JSON on pachd's `/api/` and the file server's own words
    /// on `/pfs`; text elsewhere. `made_id`: the request id made for the access log, which
    /// pachd would have received (and shown on its error page).
    pub(crate) fn on_route<B>(
        grpc: bool,
        pachyderm_route: bool,
        request: &Request<B>,
        made_id: Option<&[u8; 32]>,
    ) -> Self {
        if grpc {
            return Rendering::Grpc;
        }
        if !pachyderm_route {
            return Rendering::Text;
        }
        match pachd_http_surface(request.uri().path()) {
            PachdHttpSurface::Gateway { method } if is_server_streaming_method(method) => {
                Rendering::GatewayStreamJson
            }
            PachdHttpSurface::Gateway { .. } => Rendering::GatewayJson,
            PachdHttpSurface::FileServer => Rendering::PachdFileServer {
                page: prefers_html(request.headers())
                    .then(|| error_id(request.headers(), made_id).into()),
            },
            _ => Rendering::Text,
        }
    }
}

impl From<ProxyError> for Rejection {
    fn from(error: ProxyError) -> Self {
        Rejection::Error(error)
    }
}

impl Rejection {
    /// A short name for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Rejection::AmbiguousFraming => "ambiguous_framing",
            Rejection::HeadersTooLarge => "headers_too_large",
            Rejection::UnderscoreInHeaderName => "underscore_in_header_name",
            Rejection::Denied(reason) => reason.kind(),
            Rejection::Error(_) => "error",
            Rejection::ToHttps(_) => "plaintext",
        }
    }

    /// Whether the answer waits for the refused request's body (see [`Rejection::answer`]):
    /// for refusals of a well-framed request that the client may still be uploading.
    fn waits_for_body(&self) -> bool {
        matches!(
            self,
            Rejection::HeadersTooLarge | Rejection::UnderscoreInHeaderName | Rejection::Denied(_)
        )
    }

    /// The answer to `request`, which the pipeline has not handed upstream: written in
    /// `rendering`, after the request's body is in when the rejection waits for it.
    pub(crate) async fn answer(
        self,
        request: Request<Incoming>,
        rendering: Rendering,
    ) -> Response<ProxyBody> {
        let waits = self.waits_for_body();
        let response = self.render(rendering);
        if waits {
            discard_body(request).await;
        }
        response
    }

    /// The rejection written in the caller's protocol: the one place that decides it.
    pub(crate) fn render(self, rendering: Rendering) -> Response<ProxyBody> {
        match self {
            // HTTP/1 only, and the connection is ending: always text.
            Rejection::AmbiguousFraming => render_error(
                ProxyError::BadRequest(
                    "ambiguous message framing: both Content-Length and Transfer-Encoding\n",
                ),
                false,
            ),
            Rejection::HeadersTooLarge => match rendering {
                Rendering::Grpc => grpc_status_response(
                    GrpcCode::ResourceExhausted,
                    "pachgate: request headers too large",
                ),
                _ => text_response(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request header fields too large\n",
                ),
            },
            Rejection::UnderscoreInHeaderName => render_error(
                ProxyError::BadRequest("header names with underscores are not accepted\n"),
                rendering == Rendering::Grpc,
            ),
            Rejection::Denied(reason) => render_denial(&reason, rendering),
            // pachgate's own errors are text off gRPC, /api/ included: the console shows
            // its "cannot reach the cluster" screen for Envoy's words in a text answer.
            Rejection::Error(error) => render_error(error, rendering == Rendering::Grpc),
            Rejection::ToHttps(location) => render_redirect(location),
        }
    }
}

/// pachgate's own error, trailers-only for a gRPC caller or a status and text.
pub(crate) fn render_error(error: ProxyError, grpc: bool) -> Response<ProxyBody> {
    if grpc {
        let message = match &error {
            ProxyError::NoRoute => "pachgate: no route for this method".to_string(),
            // The detail (and the endpoint) stay in the log.
            ProxyError::UpstreamProtocol { upstream, .. } => {
                format!("pachgate: upstream protocol error (upstream {upstream})")
            }
            other => format!("pachgate: {other}"),
        };
        grpc_status_response(error.grpc_code(), &message)
    } else {
        let mut response = text_response(error.http_status(), error.http_text());
        if matches!(error, ProxyError::ConnectNotSupported) {
            // RFC 9110 §15.5.6: a 405 lists the methods the target does take.
            response.headers_mut().insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        if matches!(error, ProxyError::BadRequest(_)) {
            // A malformed request may leave the connection's framing in doubt; end it.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The gRPC code pachd would have answered with (or, for pachgate's own policies, the code
/// that says what happened).
fn denial_code(reason: &DenyReason) -> GrpcCode {
    match reason {
        DenyReason::MissingToken | DenyReason::AmbiguousToken | DenyReason::InvalidToken(_) => {
            GrpcCode::Unauthenticated
        }
        DenyReason::ExpiredToken(_) => GrpcCode::Internal,
        DenyReason::MultipleTokens => GrpcCode::Unknown,
        DenyReason::AuthNotActive | DenyReason::AddressNotAllowed => GrpcCode::PermissionDenied,
        DenyReason::CheckUnavailable(_) => GrpcCode::Unavailable,
        DenyReason::MalformedMethod => GrpcCode::Unimplemented,
        DenyReason::RateLimited { .. } => GrpcCode::ResourceExhausted,
    }
}

/// A denial in the caller's protocol, with pachd's own code and wording where pachd would
/// have refused. The token never appears in it.
fn render_denial(reason: &DenyReason, rendering: Rendering) -> Response<ProxyBody> {
    let message = reason.message();
    let code = denial_code(reason);
    let mut response = match rendering {
        Rendering::Grpc => grpc_status_response(code, &message),
        // pachd cannot be reached: the console shows its "cannot reach the cluster" screen
        // only for a text answer with Envoy's words, as for any unreachable upstream.
        Rendering::GatewayJson | Rendering::GatewayStreamJson
            if matches!(reason, DenyReason::CheckUnavailable(_)) =>
        {
            text_response(StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n"))
        }
        Rendering::GatewayJson => gateway_error_response(code, &message, false),
        Rendering::GatewayStreamJson => gateway_error_response(code, &message, true),
        // What pachd itself refuses; pachgate's own policies stay text.
        Rendering::PachdFileServer { page }
            if matches!(
                reason,
                DenyReason::MissingToken
                    | DenyReason::InvalidToken(_)
                    | DenyReason::ExpiredToken(_)
                    | DenyReason::MultipleTokens
            ) =>
        {
            // pachd's file server sends no WWW-Authenticate with its 401.
            return file_server_refusal(code, &message, page.as_deref());
        }
        Rendering::Text | Rendering::PachdFileServer { .. } => {
            let status = match reason {
                DenyReason::MissingToken
                | DenyReason::AmbiguousToken
                | DenyReason::InvalidToken(_)
                | DenyReason::ExpiredToken(_) => StatusCode::UNAUTHORIZED,
                DenyReason::AuthNotActive | DenyReason::AddressNotAllowed => StatusCode::FORBIDDEN,
                DenyReason::CheckUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                DenyReason::MalformedMethod => StatusCode::NOT_FOUND,
                DenyReason::MultipleTokens => StatusCode::BAD_REQUEST,
                DenyReason::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            };
            text_response(status, format!("{message}\n"))
        }
    };
    add_retry_after(reason, &mut response);
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pachyderm\""),
        );
    }
    response
}

fn add_retry_after(reason: &DenyReason, response: &mut Response<ProxyBody>) {
    if let DenyReason::RateLimited { retry_after_secs } = reason {
        if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, value);
        }
    }
}

/// How long, and how many body bytes, a refused request may still send before its answer.
const REFUSED_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
const REFUSED_BODY_LIMIT: usize = 64 * 1024;

/// Reads a refused request's body (up to 64 KiB and 1 s) and discards it, as nginx does,
/// before the answer goes out. Answering first makes the h2 server reset the stream the
/// client is still sending on, which some clients (curl before 8.x among them) report as a
/// framing error instead of the answer; an HTTP/1.1 connection would be closed instead of
/// kept. A larger or slower body gets the answer without waiting.
async fn discard_body(request: Request<Incoming>) {
    // Not for a CONNECT (an RFC 8441 websocket's body is the tunnel and never ends), nor
    // for a client waiting on `Expect: 100-continue`: reading would invite the upload
    // being refused.
    let skip = request.method() == http::Method::CONNECT
        || request.headers().contains_key(http::header::EXPECT);
    let mut body = request.into_body();
    if skip || http_body::Body::is_end_stream(&body) {
        return;
    }
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
            seen += frame.data_ref().map_or(0, |data| data.len());
            if seen > REFUSED_BODY_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_BODY_WAIT, discard).await;
}

/// The plaintext listener's answer in redirect mode: 308 to the same host and target on
/// https, written like every other refusal.
pub(crate) fn redirect_to_https(
    request: &Request<Incoming>,
    https_port: u16,
) -> Response<ProxyBody> {
    let mut response = Rejection::plaintext(request, https_port).render(Rendering::Text);
    // This listener's answers skip the pipeline, whose `respond` does the same for HEAD.
    if request.method() == http::Method::HEAD {
        crate::body::without_own_body(&mut response);
    }
    response
}

impl Rejection {
    fn plaintext(request: &Request<Incoming>, https_port: u16) -> Self {
        let facts = Facts::of(request, false);
        let Some(host) = facts.host() else {
            return Rejection::ToHttps(None);
        };
        let path = request
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let location = if https_port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{https_port}{path}")
        };
        Rejection::ToHttps(Some(HeaderValue::from_str(&location).map_err(|_| ())))
    }
}

/// The redirect's answer: 308 with `Location`, or 400 when there is nowhere to send the
/// client (no Host: a short text; a target that makes no header value: empty).
fn render_redirect(location: Option<Result<HeaderValue, ()>>) -> Response<ProxyBody> {
    let Some(location) = location else {
        let mut response = Response::new(ProxyBody::text("a Host header is required\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let mut response = Response::new(ProxyBody::Empty);
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match location {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
        }
        Err(()) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

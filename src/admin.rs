//! The admin listener: probes (`/healthz`, `/readyz`), Prometheus metrics (`/metrics`) and a
//! small status page (`/`). Loopback by default; it shows no secrets, but it does show the
//! topology, so keep it off the public network.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pachgate_proxy_core::Gateway;
use tokio::net::TcpListener;

use crate::serve::ServedState;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(path: &str, gateway: &Gateway, state: &ServedState) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        // Listeners are bound before this one and the config is loaded; a draining
        // instance must leave the load balancer's rotation.
        "/readyz" if gateway.is_withdrawn() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"draining\n"),
        ),
        "/readyz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n")),
        "/metrics" => (
            StatusCode::OK,
            OPENMETRICS,
            Bytes::from(gateway.metrics().encode()),
        ),
        "/" => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from(status_page(gateway, state)),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, state: Arc<ServedState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let gateway = gateway.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(request.uri().path(), &gateway, &state);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn status_page(gateway: &Gateway, state: &ServedState) -> String {
    let snapshot = gateway.snapshot();
    let live = gateway.metrics().live();
    let mut page = String::with_capacity(8 * 1024);
    let now = unix_now();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>pachgate</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style></head><body>\
         <h1>pachgate {version}</h1><p>{state_text}; up {uptime}; config {config}</p>",
        version = env!("CARGO_PKG_VERSION"),
        state_text = if gateway.is_draining() {
            "draining"
        } else {
            "serving"
        },
        uptime = format_duration(state.started.elapsed().as_secs()),
        config = escape(
            &state
                .config_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(embedded)".into())
        ),
    );
    let cap = match gateway.max_connections() {
        0 => "no cap".to_string(),
        max => format!("of {max}"),
    };
    let _ = write!(
        page,
        "<h2>Now</h2><table><tr><th>requests served</th><td>{}</td></tr>\
         <tr><th>open connections</th><td>{} ({cap}, limits.max_connections)</td></tr>\
         <tr><th>connections refused at max_connections</th><td>{}</td></tr>\
         <tr><th>requests and streams in flight</th><td>{}</td></tr>\
         <tr><th>websocket tunnels</th><td>{}</td></tr></table>",
        live.requests,
        live.connections,
        live.refused_at_max_connections,
        live.streams,
        live.tunnels
    );
    page.push_str(
        "<h2>Routes</h2><table><tr><th>name</th><th>match</th><th>upstream</th><th>auth</th></tr>",
    );
    for route in snapshot.routes() {
        let _ = write!(
            page,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            escape(&route.name),
            escape(&route.matcher),
            escape(&route.upstream),
            route.auth
        );
    }
    page.push_str(
        "</table><h2>Upstreams</h2><table><tr><th>name</th><th>protocol</th><th>endpoints</th>\
         <th>pending</th><th>retries</th><th>retries over budget</th><th>overloaded</th></tr>",
    );
    let upstreams = snapshot.upstreams();
    for upstream in &upstreams {
        let counts = upstream.counts;
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&upstream.name),
            upstream.protocol,
            escape(&upstream.endpoints.join(", ")),
            counts.pending,
            counts.retries,
            counts.retries_over_budget,
            counts.overloaded,
        );
    }
    // One row per address the endpoints stand for now (a pod behind a headless Service).
    page.push_str(
        "</table><h3>Upstream addresses</h3><table id=\"addresses\"><tr><th>upstream</th>\
         <th>address</th><th>state</th><th>pending</th><th>requests</th><th>ejections</th></tr>",
    );
    for upstream in &upstreams {
        for address in &upstream.addresses {
            let _ = write!(
                page,
                "<tr class=\"address\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td></tr>",
                escape(&upstream.name),
                escape(&address.address),
                address.state,
                address.pending,
                address.requests,
                address.ejections,
            );
        }
    }
    page.push_str(
        "</table><h2>Certificates</h2><table><tr><th>names</th><th>file</th><th>expires</th></tr>",
    );
    for certificate in state.certificates.load().iter() {
        let left = certificate.not_after - now;
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{} ({})</td></tr>",
            escape(&certificate.names.join(", ")),
            escape(&certificate.file.display().to_string()),
            format_utc(certificate.not_after),
            if left < 0 {
                "expired".to_string()
            } else {
                format!("in {}", format_duration(left as u64))
            }
        );
    }
    page.push_str("</table><p><a href=\"/metrics\">/metrics</a> · <a href=\"/readyz\">/readyz</a> · <a href=\"/healthz\">/healthz</a></p></body></html>\n");
    page
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn format_duration(seconds: u64) -> String {
    match seconds {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 3_600 => format!("{} h {} min", s / 3_600, (s % 3_600) / 60),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
fn format_utc(unix: i64) -> String {
    let (year, month, day) =
        pachgate_observe::access_writer::civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3_600,
        (secs % 3_600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_escapes() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_798_761_600 + 3_660), "2027-01-01 01:01 UTC");
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        assert_eq!(format_duration(90), "1 min");
        assert_eq!(format_duration(3 * 86_400), "3 days");
    }
}

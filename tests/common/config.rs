//! A builder for the config files tests start pachgate with: upstreams and routes by name,
//! written out as the TOML an operator would write, behind the same self-signed TLS listener
//! `pachgate()` gives.

use std::fmt::Display;

use super::{pachgate, Proxy};

/// Upstreams, routes and any other sections, in the order added.
#[derive(Clone, Default)]
pub struct TestConfig {
    sections: Vec<String>,
    extra_listen: String,
}

impl TestConfig {
    pub fn new() -> Self {
        Self::default()
    }

    /// `[upstreams.NAME]` with one endpoint and a protocol ("h2c", "http1", …).
    pub fn upstream(self, name: &str, endpoint: impl Display, protocol: &str) -> Self {
        self.upstream_with(name, endpoint, protocol, "")
    }

    /// An upstream with more keys (`lines`, TOML, one per line).
    pub fn upstream_with(
        mut self,
        name: &str,
        endpoint: impl Display,
        protocol: &str,
        lines: &str,
    ) -> Self {
        let mut section = format!(
            "[upstreams.{name}]\nendpoints = [\"{endpoint}\"]\nprotocol = \"{protocol}\"\n"
        );
        push_lines(&mut section, lines);
        self.sections.push(section);
        self
    }

    /// `[[routes]]`; `matcher` is the inline table's body, like `grpc = true` or
    /// `path_prefix = "/dex"` (empty: every request).
    pub fn route(self, name: &str, matcher: &str, upstream: &str) -> Self {
        self.route_with(name, matcher, upstream, "")
    }

    /// A route with more keys (`auth`, `timeout`, …; TOML, one per line).
    pub fn route_with(mut self, name: &str, matcher: &str, upstream: &str, lines: &str) -> Self {
        let matcher = if matcher.is_empty() {
            "{}".to_string()
        } else {
            format!("{{ {matcher} }}")
        };
        let mut section = format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {matcher}\nupstream = \"{upstream}\"\n"
        );
        push_lines(&mut section, lines);
        self.sections.push(section);
        self
    }

    /// Any other TOML (`[limits]`, `[auth.pachyderm]`, …), as given.
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(format!("{}\n", toml.trim_end()));
        self
    }

    /// Keys added to `[listen]` (TOML, one per line).
    pub fn listen(mut self, lines: &str) -> Self {
        push_lines(&mut self.extra_listen, lines);
        self
    }

    /// Everything after `[listen]` and `[tls]`: what `pachgate()` takes as its body.
    pub fn body(&self) -> String {
        self.sections.join("\n")
    }

    /// The whole file, with a listener on `https` (an address) and a self-signed certificate
    /// kept in `certs/` next to it.
    pub fn file(&self, https: &str) -> String {
        format!(
            "[listen]\nhttps = \"{https}\"\n{}\n[tls]\nself_signed = true\nself_signed_dir = \"certs\"\nhosts = [\"localhost\", \"127.0.0.1\"]\n\n{}",
            self.extra_listen,
            self.body()
        )
    }

    /// Starts pachgate serving this config (see `pachgate`).
    pub fn start(&self) -> Proxy {
        pachgate(&self.body(), &self.extra_listen)
    }
}

fn push_lines(into: &mut String, lines: &str) {
    let lines = lines.trim();
    if !lines.is_empty() {
        into.push_str(lines);
        into.push('\n');
    }
}

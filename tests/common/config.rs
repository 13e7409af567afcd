//! A builder for the config files tests start pachgate with: upstreams and routes by name,
//! written out as the TOML an operator would write, behind the same self-signed TLS listener
//! `pachgate()` gives.

use std::fmt::Display;

use super::{pachgate_file, Proxy};

/// Upstreams, routes and any other sections, in the order added.
#[derive(Clone, Default)]
pub struct TestConfig {
    sections: Vec<String>,
    extra_listen: String,
    /// Keys before `[listen]` (`allow_cidrs`, `trusted_proxies`, `allow_insecure`).
    top: String,
    tls: Tls,
    extra_tls: String,
}

/// Where the listener's certificate comes from.
#[derive(Clone)]
enum Tls {
    /// `self_signed = true`, its CA kept in `dir` next to the file, for these names.
    SelfSigned { dir: String, hosts: Vec<String> },
    /// `cert` and `key` files.
    Files { cert: String, key: String },
}

impl Default for Tls {
    fn default() -> Self {
        Tls::SelfSigned {
            dir: "certs".into(),
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
        }
    }
}

impl TestConfig {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys written before `[listen]` (TOML, one per line).
    pub fn top(mut self, lines: &str) -> Self {
        push_lines(&mut self.top, lines);
        self
    }

    /// The names the self-signed certificate is made for (instead of localhost and
    /// 127.0.0.1), e.g. with `::1` for an IPv6 listener.
    pub fn tls_hosts(mut self, names: &[&str]) -> Self {
        let dir = match self.tls {
            Tls::SelfSigned { dir, .. } => dir,
            Tls::Files { .. } => "certs".into(),
        };
        let hosts = names.iter().map(|name| name.to_string()).collect();
        self.tls = Tls::SelfSigned { dir, hosts };
        self
    }

    /// Where the self-signed CA is kept, relative to the file (`certs` unless given).
    pub fn self_signed_dir(mut self, dir: &str) -> Self {
        if let Tls::SelfSigned { dir: kept, .. } = &mut self.tls {
            *kept = dir.into();
        }
        self
    }

    /// The listener's certificate and key from files instead of a self-signed pair.
    pub fn tls_files(mut self, cert: impl Display, key: impl Display) -> Self {
        self.tls = Tls::Files {
            cert: cert.to_string(),
            key: key.to_string(),
        };
        self
    }

    /// More keys in `[tls]` (`client_ca`, `min_version`, …; TOML, one per line).
    pub fn tls(mut self, lines: &str) -> Self {
        push_lines(&mut self.extra_tls, lines);
        self
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

    /// The whole file, with a listener on `https` (an address) and, unless told otherwise, a
    /// self-signed certificate kept in `certs/` next to it.
    pub fn file(&self, https: &str) -> String {
        let certificate = match &self.tls {
            Tls::SelfSigned { dir, hosts } => {
                let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
                format!(
                    "self_signed = true\nself_signed_dir = \"{dir}\"\nhosts = [{}]\n",
                    hosts.join(", ")
                )
            }
            Tls::Files { cert, key } => format!("cert = \"{cert}\"\nkey = \"{key}\"\n"),
        };
        format!(
            "{}[listen]\nhttps = \"{https}\"\n{}\n[tls]\n{certificate}{}\n{}",
            self.top,
            self.extra_listen,
            self.extra_tls,
            self.body()
        )
    }

    /// Starts pachgate serving this config, with one worker (see `pachgate`).
    pub fn start(&self) -> Proxy {
        pachgate_file(&self.file("127.0.0.1:0"), &self.extra_listen)
    }
}

fn push_lines(into: &mut String, lines: &str) {
    let lines = lines.trim();
    if !lines.is_empty() {
        into.push_str(lines);
        into.push('\n');
    }
}

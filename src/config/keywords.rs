//! The keys whose value is one of a few words (protocols, modes, auth kinds, versions, the
//! access-log format): an enum each, parsed by serde, whose error names the accepted words.

use pachgate_proxy_core::{PachydermLine, RouteAuth, UpstreamProtocol, WhenAuthDisabled};

/// An enum read from one of a fixed set of strings. serde parses it through `TryFrom<String>`
/// so that an unknown word is refused with our message (naming the key and every accepted
/// word), located by toml at the value, rather than serde's generic "unknown variant".
macro_rules! keyword {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $text:literal,)+
        }
        unknown($other:ident) => $message:expr;
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
        #[serde(try_from = "String")]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from($other: String) -> Result<Self, String> {
                match $other.as_str() {
                    $($text => Ok(Self::$variant),)+
                    _ => Err($message),
                }
            }
        }
    };
}

keyword! {
    /// `upstreams.*.protocol`: how pachgate speaks to the upstream.
    pub enum Protocol {
        /// HTTP/2 with prior knowledge over plain TCP (the default: pachd's gRPC port).
        H2c = "h2c",
        Http1 = "http1",
        H2 = "h2",
        Http1Tls = "http1-tls",
    }
    unknown(other) => format!(
        "protocol {other:?} is not known: expected \"h2c\", \"http1\", \"h2\" or \"http1-tls\""
    );
}

impl From<Protocol> for UpstreamProtocol {
    fn from(protocol: Protocol) -> Self {
        match protocol {
            Protocol::H2c => UpstreamProtocol::H2c,
            Protocol::Http1 => UpstreamProtocol::Http1,
            Protocol::H2 => UpstreamProtocol::H2,
            Protocol::Http1Tls => UpstreamProtocol::Http1Tls,
        }
    }
}

keyword! {
    /// `listen.http_mode`: what the plaintext listener does.
    pub enum HttpMode {
        /// Redirect to https (the default).
        Redirect = "redirect",
        Serve = "serve",
    }
    unknown(other) => format!(
        "http_mode {other:?} is not known: expected \"redirect\" or \"serve\""
    );
}

keyword! {
    /// `routes.auth`: who may use a route.
    pub enum AuthKind {
        /// Anyone (the default).
        None = "none",
        /// A token pachd accepts (asked with WhoAmI).
        Pachyderm = "pachyderm",
        /// A token whose hash is in `[auth.token] hashes_file`.
        Token = "token",
    }
    unknown(other) => format!(
        "auth {other:?} is not known: expected \"none\", \"pachyderm\" or \"token\""
    );
}

impl From<AuthKind> for RouteAuth {
    fn from(kind: AuthKind) -> Self {
        match kind {
            AuthKind::None => RouteAuth::None,
            AuthKind::Pachyderm => RouteAuth::Pachyderm,
            AuthKind::Token => RouteAuth::Token,
        }
    }
}

keyword! {
    /// `routes.forward_path`: the request target the upstream receives.
    pub enum ForwardPath {
        /// The normalised path the router and the gate judged (the default).
        Normalized = "normalized",
        /// The path exactly as the client sent it (S3 signatures cover it).
        AsSent = "as-sent",
    }
    unknown(other) => format!(
        "forward_path {other:?} is not known: expected \"normalized\" or \"as-sent\""
    );
}

keyword! {
    /// `auth.pachyderm.when_auth_disabled`: the answer when pachd's auth is off.
    pub enum OnAuthDisabled {
        Deny = "deny",
        Allow = "allow",
    }
    unknown(other) => format!(
        "when_auth_disabled {other:?} is not known: expected \"deny\" or \"allow\""
    );
}

impl From<OnAuthDisabled> for WhenAuthDisabled {
    fn from(value: OnAuthDisabled) -> Self {
        match value {
            OnAuthDisabled::Deny => WhenAuthDisabled::Deny,
            OnAuthDisabled::Allow => WhenAuthDisabled::Allow,
        }
    }
}

keyword! {
    /// `auth.pachyderm.version`: which Pachyderm line's public methods apply.
    pub enum PachydermVersion {
        V2 = "2",
        V1 = "1",
    }
    unknown(other) => format!(
        "auth.pachyderm.version {other:?} is not known: expected \"2\" (Pachyderm 2.x) or \"1\" (1.x)"
    );
}

impl From<PachydermVersion> for PachydermLine {
    fn from(version: PachydermVersion) -> Self {
        match version {
            PachydermVersion::V2 => PachydermLine::V2,
            PachydermVersion::V1 => PachydermLine::V1,
        }
    }
}

keyword! {
    /// `tls.min_version`: the lowest TLS version the listener offers.
    pub enum TlsVersion {
        Tls12 = "1.2",
        Tls13 = "1.3",
    }
    unknown(other) => format!("tls.min_version {other:?}: expected \"1.2\" or \"1.3\"");
}

impl From<TlsVersion> for pachgate_tls::MinVersion {
    fn from(version: TlsVersion) -> Self {
        match version {
            TlsVersion::Tls12 => pachgate_tls::MinVersion::Tls12,
            TlsVersion::Tls13 => pachgate_tls::MinVersion::Tls13,
        }
    }
}

keyword! {
    /// `log.access`: how access-log lines are written (one per request, on stdout).
    pub enum AccessLog {
        /// The default.
        Json = "json",
        Text = "text",
        Off = "off",
    }
    unknown(other) => format!(
        "log.access = {other:?} is not known: expected \"json\", \"text\" or \"off\""
    );
}

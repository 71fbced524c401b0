//! `[[listeners]]`: where cars connect and what each door asks of them
//! (plain TCP or TLS, client certificates, a PROXY protocol header).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What `{identity}` in [`Listener::client_id`] stands for.
pub const IDENTITY_PLACEHOLDER: &str = "{identity}";

/// One MQTT listener. Every shard binds its address (SO_REUSEPORT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address to bind, e.g. `0.0.0.0:8883`.
    pub address: SocketAddr,
    /// TLS on this listener; absent: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// A PROXY protocol header (v1 or v2) expected first on every
    /// connection; absent: none expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
    /// The client id a connection with a proven identity (a verified client
    /// certificate) must CONNECT with; `{identity}` stands for the
    /// identity. Any other client id is refused with CONNACK 0x05.
    #[serde(default = "default_client_id")]
    pub client_id: String,
}

fn default_client_id() -> String {
    IDENTITY_PLACEHOLDER.to_owned()
}

impl Listener {
    /// A plain TCP listener on `address`.
    pub fn plain(address: SocketAddr) -> Self {
        Self {
            address,
            tls: None,
            proxy: None,
            client_id: default_client_id(),
        }
    }

    /// The client id `identity` binds a connection to.
    pub fn bound_client_id(&self, identity: &str) -> String {
        self.client_id.replace(IDENTITY_PLACEHOLDER, identity)
    }
}

/// The PROXY protocol on a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    /// Networks that may send the header (the load balancers), as CIDR;
    /// a connection from anywhere else is closed. `0.0.0.0/0` and `::/0`
    /// trust anyone: never on a port the internet reaches.
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// The car's identity is the CN of the client certificate the proxy
    /// verified (v2 SSL TLVs: client SSL, certificate on this connection,
    /// verify 0); a connection without one is closed. For a TLS-terminating
    /// proxy such as HAProxy.
    #[serde(default)]
    pub identity_from_proxy: bool,
}

/// TLS on a listener (rustls; TLS 1.2 and 1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file: the server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file: the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Whether cars must present a certificate: `required`, `optional`
    /// (a car without one connects unbound) or `none` (none asked for).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM file: the CAs that issue car certificates (required unless
    /// `client_auth = "none"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// PEM files: certificate revocation lists of those CAs. With any CRL
    /// configured, a car certificate whose issuer has no CRL is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<PathBuf>,
    /// Where in the car's certificate its identity is.
    #[serde(default)]
    pub identity: IdentitySource,
    /// File of session-ticket secrets shared by every gateway instance
    /// (one hex line each, at least 32 bytes, e.g. `openssl rand -hex
    /// 32`): a car resumes its TLS session on any instance, also after a
    /// restart. The first line encrypts new tickets, every line decrypts:
    /// rotate by adding a new first line, and drop the last one a ticket
    /// lifetime later. Absent: tickets from a random key of this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_keys: Option<PathBuf>,
    /// The same secrets from an environment variable instead of a file
    /// (a Kubernetes Secret as `env`), read at start and on reload; one
    /// hex secret is the whole value. Not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_keys_env: Option<String>,
    /// Seconds a ticket key is used; a ticket is accepted for one to two
    /// of these. A resumed session does not check the CRLs again, so this
    /// also bounds how long a revoked car can resume.
    #[serde(default = "default_ticket_lifetime")]
    pub ticket_lifetime_secs: u32,
}

fn default_ticket_lifetime() -> u32 {
    6 * 3600
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
    None,
}

/// The part of a car's certificate that names the car.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySource {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first DNS name among the subject alternative names.
    SanDns,
    /// The first URI among the subject alternative names.
    SanUri,
    /// The first email address among the subject alternative names.
    SanEmail,
}

//! PROXY protocol v1 and v2 on a listener that expects it: a load balancer
//! in TCP mode (or a TLS-terminating proxy such as HAProxy) sends the car's
//! real address first, and with v2 the outcome of its TLS handshake.
//!
//! The header is read before anything else on the connection; what
//! arrives after it in the same read is handed on ([`Prefixed`]) to TLS or
//! MQTT. Parsing is `proxy-header`'s; this module decides what to trust.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use proxy_header::{ParseConfig, ProxyHeader};

ops::label_set! {
    /// What became of a PROXY header (`carbridge_gateway_proxy_headers_total`):
    /// proxied and local went on; the others closed the connection.
    pub enum ProxyResult: "result" {
        Proxied = "proxied",
        Local = "local",
        UntrustedSource = "untrusted_source",
        Malformed = "malformed",
        Timeout = "timeout",
        NoIdentity = "no_identity",
    }
}

/// Longest header read: a v1 header is at most 107 bytes, a v2 header 16
/// plus its TLVs; load balancers send a few hundred bytes at most.
pub const MAX_HEADER: usize = 4096;

/// Longest v1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;

/// What a header says about the car.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxied {
    /// The car's address; `None` for a LOCAL header (the proxy's own
    /// health check).
    pub source: Option<SocketAddr>,
    /// The CN of a client certificate the proxy verified on this
    /// connection (v2 SSL TLV: client SSL, certificate on this connection,
    /// verify result 0).
    pub verified_cn: Option<String>,
}

/// Why a connection's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a PROXY header, or a broken one.
    Malformed,
    /// Longer than [`MAX_HEADER`].
    TooLong,
    /// The connection closed or failed before the header was whole.
    Closed,
}

/// Parses a header at the start of `buf`: `Ok(None)` while incomplete,
/// else what it says and its length.
pub fn parse(buf: &[u8]) -> Result<Option<(Proxied, usize)>, HeaderError> {
    let header = match ProxyHeader::parse(buf, ParseConfig::default()) {
        Ok(parsed) => parsed,
        // A v1 line is at most 107 bytes and ends at its CRLF: past either,
        // more bytes cannot make it whole.
        Err(proxy_header::Error::BufferTooShort)
            if buf.starts_with(b"P")
                && (buf.len() >= V1_MAX || buf.windows(2).any(|pair| pair == b"\r\n")) =>
        {
            return Err(HeaderError::Malformed);
        }
        Err(proxy_header::Error::BufferTooShort) if buf.len() < MAX_HEADER => return Ok(None),
        Err(proxy_header::Error::BufferTooShort) => return Err(HeaderError::TooLong),
        Err(_) => return Err(HeaderError::Malformed),
    };
    let (header, length) = header;
    let verified_cn = header.ssl().and_then(|ssl| {
        (ssl.client_ssl() && ssl.client_cert_conn() && ssl.verify() == 0)
            .then(|| ssl.cn().filter(|cn| !cn.is_empty()).map(str::to_owned))
            .flatten()
    });
    Ok(Some((
        Proxied {
            source: header.proxied_address().map(|address| address.source),
            verified_cn,
        },
        length,
    )))
}

/// Reads the header from `stream`; returns it and the bytes read after it.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Proxied, Vec<u8>), HeaderError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        if let Some((proxied, length)) = parse(&buf)? {
            let rest = buf.get(length..).unwrap_or_default().to_vec();
            return Ok((proxied, rest));
        }
        let want = chunk.len().min(MAX_HEADER + 1 - buf.len());
        let read = match chunk.get_mut(..want) {
            Some(room) => stream.read(room).await,
            None => return Err(HeaderError::TooLong),
        };
        match read {
            Ok(0) | Err(_) => return Err(HeaderError::Closed),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}

/// Whether `address` is in one of `networks`.
pub fn trusted(networks: &[ipnet::IpNet], address: IpAddr) -> bool {
    let address = match address {
        // An IPv4 peer on a dual-stack socket.
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    };
    networks.iter().any(|network| network.contains(&address))
}

/// A stream whose first bytes were already read: they are read again
/// first. Writes go straight through.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = buf.len().min(self.prefix.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), self.prefix.get(..n)) {
            to.copy_from_slice(from);
        }
        self.prefix.drain(..n);
        if self.prefix.is_empty() {
            // Hold no buffer for the rest of the connection.
            self.prefix = Vec::new();
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proxy_header::{ProxiedAddress, SslInfo, Tlv};

    use super::*;

    fn v2(ssl: Option<SslInfo<'_>>) -> Vec<u8> {
        let address = ProxiedAddress::stream(
            "203.0.113.7:51234".parse().unwrap(),
            "10.0.0.1:8883".parse().unwrap(),
        );
        let header = ProxyHeader::with_tlvs(Some(address), ssl.map(Tlv::Ssl));
        let mut buf = Vec::new();
        header.encode_v2(&mut buf).unwrap();
        buf
    }

    fn ssl(cert_conn: bool, verify: u32, cn: &str) -> SslInfo<'static> {
        let mut ssl = SslInfo::new(true, cert_conn, false, verify);
        ssl.append_tlv(Tlv::SslCn(cn.to_owned().into()));
        ssl
    }

    #[test]
    fn v1_and_v2_give_the_cars_address_and_a_verified_cn() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n\x10rest";
        let (proxied, length) = parse(v1).unwrap().unwrap();
        assert_eq!(proxied.source, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(proxied.verified_cn, None);
        assert_eq!(&v1[length..], b"\x10rest");

        let header = v2(Some(ssl(true, 0, "VIN00000000000001")));
        let (proxied, length) = parse(&header).unwrap().unwrap();
        assert_eq!(length, header.len());
        assert_eq!(proxied.verified_cn.as_deref(), Some("VIN00000000000001"));

        // Not verified, or no certificate on this connection: no identity.
        for info in [ssl(true, 1, "VIN1"), ssl(false, 0, "VIN1")] {
            let (proxied, _) = parse(&v2(Some(info))).unwrap().unwrap();
            assert_eq!(proxied.verified_cn, None);
        }
    }

    #[test]
    fn incomplete_malformed_and_endless_headers() {
        let header = v2(None);
        for cut in 0..header.len() {
            assert_eq!(parse(&header[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse(b"\x10\x0c\x00\x04MQTT"), Err(HeaderError::Malformed));
        assert_eq!(
            parse(b"PROXY TCP4 x y z w\r\n"),
            Err(HeaderError::Malformed)
        );
        // A broken v1 line followed by MQTT bytes (no space after it).
        assert_eq!(
            parse(b"PROXY TCP4 nonsense\r\n\x10\x0c\x00\x04MQTT"),
            Err(HeaderError::Malformed)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Malformed));
        // A v1 line that never ends.
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; MAX_HEADER]].concat();
        assert!(parse(&endless).is_err());
    }

    #[test]
    fn a_header_read_hands_on_what_followed_it() {
        let mut bytes = v2(None);
        bytes.extend_from_slice(b"\x10\x0c");
        let mut stream = bytes.as_slice();
        let (proxied, rest) = futures_lite::future::block_on(read_header(&mut stream)).unwrap();
        assert!(proxied.source.is_some());
        assert_eq!(rest, b"\x10\x0c");
        let mut prefixed = Prefixed::new(rest, b"\x00\x04".as_slice());
        let mut all = Vec::new();
        futures_lite::future::block_on(prefixed.read_to_end(&mut all)).unwrap();
        assert_eq!(all, b"\x10\x0c\x00\x04");
    }

    #[test]
    fn trusted_networks() {
        let networks: Vec<ipnet::IpNet> =
            vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(trusted(&networks, "10.1.2.3".parse().unwrap()));
        assert!(trusted(&networks, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(trusted(&networks, "::1".parse().unwrap()));
        assert!(!trusted(&networks, "192.168.1.1".parse().unwrap()));
    }
}

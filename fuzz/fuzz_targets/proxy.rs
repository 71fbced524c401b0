//! PROXY protocol headers, the first bytes of every connection on a
//! listener that expects one: parsing and every accessor the gateway uses
//! (`gateway::proxy::parse`) must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_header::{ParseConfig, ProxyHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok((header, length)) = ProxyHeader::parse(data, ParseConfig::default()) {
        assert!(length <= data.len());
        let _ = header.proxied_address();
        if let Some(ssl) = header.ssl() {
            let _ = (ssl.client_ssl(), ssl.client_cert_conn(), ssl.verify(), ssl.cn());
            for tlv in ssl.tlvs() {
                let _ = tlv;
            }
        }
        for tlv in header.tlvs() {
            let _ = tlv;
        }
    }
});

//! Any bytes as the three PEM files of a node or client identity (CA, certificate, key, read
//! from disk at start): refused with an error, never a panic.
#![no_main]

use flotilla_transport::tls::TlsConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let a = usize::from(data[0]) * data.len() / 256;
    let b = usize::from(data[1]) * data.len() / 256;
    let (first, second) = (a.min(b).max(2), a.max(b).max(2));
    let body = &data[2..];
    let first = (first - 2).min(body.len());
    let second = (second - 2).min(body.len()).max(first);
    let _ = TlsConfig::from_pem(&body[..first], &body[first..second], &body[second..]);
});

//! WebTransport over HTTP/3: the pieces a browser dial needs beside plain QUIC.

pub(crate) mod certs;
pub(crate) mod codes;
pub(crate) mod verifier;

//! WebTransport over HTTP/3: the pieces a browser dial needs beside plain QUIC.

pub(crate) mod codes;

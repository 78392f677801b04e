//! HTTP/1.1 on a worker server's port, just enough for browsers: tell an HTTP
//! request from a line client by its first bytes, read a bounded request
//! head, and answer it: the WebSocket handshake (101), the page (200), or a
//! proper error. Every answer but the 101 closes the connection, so there is
//! no keep-alive state to carry. Parsing is httparse's; nothing here does I/O.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// Longest request head (request line and headers) accepted: 431 beyond it.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header fields accepted: 431 beyond them.
const MAX_HEADERS: usize = 32;
/// RFC 6455 section 1.3: appended to the client's key for the accept hash.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The methods a request line can start with (RFC 9110 section 9), and the space.
const METHODS: [&[u8]; 9] =
    [b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"CONNECT ", b"OPTIONS ", b"TRACE ", b"PATCH "];

/// What a new connection's first bytes say it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniff {
    /// An HTTP request (a method and a space: no line command looks like it).
    Http,
    /// A line-protocol client.
    Line,
    /// Too few bytes to tell yet.
    Undecided,
}

pub fn sniff(first: &[u8]) -> Sniff {
    if METHODS.iter().any(|m| first.starts_with(m)) {
        Sniff::Http
    } else if METHODS.iter().any(|m| m.starts_with(first)) {
        Sniff::Undecided
    } else {
        Sniff::Line
    }
}

/// The server's answer to a request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send this 101 response; the connection speaks WebSocket from here on.
    Upgrade(Vec<u8>),
    /// Send this response, then close.
    Close { status: u16, response: Vec<u8> },
}

/// Reads the request head at the start of `buf` (everything received so far)
/// and answers it: `None` while it is incomplete and within `MAX_HEAD`.
/// Returns the answer and the length of the head; bytes after it are the
/// client's first WebSocket frames. `GET /` without an upgrade gets `page`.
pub fn answer(buf: &[u8], page: &[u8]) -> Option<(Answer, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let (answer, len) = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return None,
        Ok(httparse::Status::Partial) => (too_large(), buf.len()),
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => (too_large(), len),
        Ok(httparse::Status::Complete(len)) => (route(&req, page), len),
        Err(httparse::Error::TooManyHeaders) => (too_large(), buf.len()),
        Err(e) => (error(400, "Bad Request", &format!("malformed request: {e}"), &[]), buf.len()),
    };
    Some((answer, len))
}

fn too_large() -> Answer {
    let why = format!("request head over {MAX_HEAD} bytes or {MAX_HEADERS} header fields");
    error(431, "Request Header Fields Too Large", &why, &[])
}

fn route(req: &httparse::Request<'_, '_>, page: &[u8]) -> Answer {
    if req.method != Some("GET") {
        return error(405, "Method Not Allowed", "only GET is served here", &[("Allow", "GET")]);
    }
    let path = req.path.unwrap_or("");
    if path.split('?').next() != Some("/") {
        return error(404, "Not Found", "the page is at / and WebSocket connects to /", &[]);
    }
    if has_token(req, "upgrade", "websocket") {
        return handshake(req);
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n";
    let mut response = format!("{head}Content-Length: {}\r\nConnection: close\r\n\r\n", page.len()).into_bytes();
    response.extend_from_slice(page);
    Answer::Close { status: 200, response }
}

/// The opening handshake's checks (RFC 6455 section 4.2.1) and the 101.
fn handshake(req: &httparse::Request<'_, '_>) -> Answer {
    if req.version != Some(1) {
        return error(400, "Bad Request", "WebSocket needs HTTP/1.1", &[]);
    }
    if !has_token(req, "connection", "upgrade") {
        return error(400, "Bad Request", "a WebSocket request needs 'Connection: Upgrade'", &[]);
    }
    if header(req, "sec-websocket-version").map(str::trim) != Some("13") {
        let extra = [("Sec-WebSocket-Version", "13")];
        return error(426, "Upgrade Required", "this server speaks WebSocket version 13", &extra);
    }
    let key = header(req, "sec-websocket-key").map(str::trim).unwrap_or("");
    if BASE64.decode(key).map(|k| k.len()) != Ok(16) {
        return error(400, "Bad Request", "Sec-WebSocket-Key must be 16 bytes in base64", &[]);
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    Answer::Upgrade(response.into_bytes())
}

/// Sec-WebSocket-Accept: base64 of the SHA-1 of the key and the GUID.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.digest().bytes())
}

/// The value of a header field (names are case-insensitive); not UTF-8 counts as absent.
fn header<'a>(req: &httparse::Request<'_, 'a>, name: &str) -> Option<&'a str> {
    let h = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
    std::str::from_utf8(h.value).ok()
}

/// Whether any `name` field holds `token` in its comma-separated list.
fn has_token(req: &httparse::Request<'_, '_>, name: &str, token: &str) -> bool {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An error response with a one-line plain-text body; the connection closes.
pub fn error(status: u16, reason: &str, why: &str, extra: &[(&str, &str)]) -> Answer {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = format!("{status} {reason}: {why}\n");
    let response = format!("{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    Answer::Close { status, response: response.into_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                           Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn status(req: &str) -> u16 {
        match answer(req.as_bytes(), b"<p>page</p>") {
            Some((Answer::Upgrade(_), _)) => 101,
            Some((Answer::Close { status, .. }, _)) => status,
            None => 0,
        }
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http);
        assert_eq!(sniff(b"POST "), Sniff::Http);
        assert_eq!(sniff(b"GE"), Sniff::Undecided);
        assert_eq!(sniff(b""), Sniff::Undecided);
        assert_eq!(sniff(b"PU"), Sniff::Undecided);
        for line in [&b"publish x\n"[..], b"pub t x", b"subscribe\n", b"GET\n", b"get / HTTP/1.1", b"\xff\xfb\x01"] {
            assert_eq!(sniff(line), Sniff::Line, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn rfc_handshake_example() {
        // RFC 6455 section 1.3.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let (a, len) = answer(&[UPGRADE.as_bytes(), b"\x81\x85"].concat(), b"").unwrap();
        assert_eq!(len, UPGRADE.len(), "frames after the head are left to the caller");
        let Answer::Upgrade(r) = a else { panic!("{a:?}") };
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{r}");
        assert!(r.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{r}");
    }

    #[test]
    fn statuses() {
        assert_eq!(status(UPGRADE), 101);
        assert_eq!(status(&UPGRADE.replace("GET / ", "GET /?x=1 ")), 101);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status("GET /favicon.ico HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status(&UPGRADE.replace("GET / ", "GET /ws ")), 404);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), 405);
        assert_eq!(status(&UPGRADE.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(status(&UPGRADE.replace("keep-alive, Upgrade", "keep-alive")), 400);
        assert_eq!(status(&UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")), 400);
        assert_eq!(status(&UPGRADE.replace("HTTP/1.1", "HTTP/1.0")), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n"), 0, "incomplete: read more");
    }

    #[test]
    fn oversized_heads() {
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(&long), 431, "over the limit before its end");
        assert_eq!(status(&format!("{long}\r\n")), 431);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
    }

    #[test]
    fn page_and_errors_are_whole_responses() {
        let Some((Answer::Close { response, .. }, _)) = answer(b"GET / HTTP/1.1\r\n\r\n", b"<p>hi</p>") else {
            panic!()
        };
        let r = String::from_utf8(response).unwrap();
        assert!(r.contains("Content-Length: 9\r\n") && r.ends_with("\r\n\r\n<p>hi</p>"), "{r}");
        let Answer::Close { response, .. } = error(404, "Not Found", "nothing here", &[]) else { panic!() };
        let r = String::from_utf8(response).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{r}");
    }
}

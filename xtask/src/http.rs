//! One HTTP/1.0 request on a plain TCP connection: all that the services' endpoints and a
//! plain-HTTP registry need, for three calls that would not pay for an HTTP client crate.

use std::{
    io::{self, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

pub struct Response {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status: String,
    pub code: u16,
    pub body: Vec<u8>,
}

/// Sends `request` (`GET /readyz`, say) to `host` (`name:port`) with `headers` (each ending in
/// CRLF) and reads the answer until the server closes the connection, as an HTTP/1.0 server
/// does after its answer; `timeout` bounds the connection and each read. An answer that is not
/// HTTP is an error.
pub fn request(
    host: &str,
    request: &str,
    headers: &str,
    timeout: Duration,
) -> io::Result<Response> {
    let no_address = || io::Error::other(format!("{host} has no address"));
    let address = host.to_socket_addrs()?.next().ok_or_else(no_address)?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    // One write: `write!` on the stream would send each piece in a packet of its own.
    stream.write_all(format!("{request} HTTP/1.0\r\nHost: {host}\r\n{headers}\r\n").as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(answer.len());
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let status = head.lines().next().unwrap_or("").to_string();
    let code = status_code(&status).ok_or_else(|| io::Error::other("not an HTTP response"))?;
    Ok(Response { status, code, body: answer.get(head_end + 4..).unwrap_or_default().to_vec() })
}

fn status_code(status: &str) -> Option<u16> {
    status.strip_prefix("HTTP/")?.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read() {
        assert_eq!(status_code("HTTP/1.0 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.1 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
    }

    #[test]
    fn a_request_gets_the_status_and_the_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The whole request, as a server reads it: up to the empty line.
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                request.push(byte[0]);
            }
            stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope").unwrap();
            String::from_utf8(request).unwrap()
        });
        let response = request(&host, "HEAD /v2/x", "Accept: a\r\n", Duration::from_secs(5));
        let response = response.unwrap();
        assert_eq!((response.code, response.status.as_str()), (404, "HTTP/1.1 404 Not Found"));
        assert_eq!(response.body, b"nope");
        let sent = server.join().unwrap();
        assert_eq!(sent, format!("HEAD /v2/x HTTP/1.0\r\nHost: {host}\r\nAccept: a\r\n\r\n"));
    }
}

//! One HTTP/1.0 request on a plain TCP connection: all that the services' endpoints and a
//! plain-HTTP registry need, for three calls that would not pay for an HTTP client crate.

use std::{
    io::{self, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

pub struct Response {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status: String,
    pub code: u16,
    pub body: Vec<u8>,
}

/// Sends `request` (`GET /readyz`, say) to `host` (`name:port`) with `headers` (each ending in
/// CRLF) and reads the answer until the server closes the connection, as an HTTP/1.0 server
/// does after its answer. `timeout` bounds the whole exchange, so a server that accepts the
/// connection and then sends nothing, or a byte now and then, cannot hold us: past it, the
/// error is of kind `TimedOut`. An answer that is not HTTP is an error.
pub fn request(
    host: &str,
    request: &str,
    headers: &str,
    timeout: Duration,
) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let no_address = || io::Error::other(format!("{host} has no address"));
    let address = host.to_socket_addrs()?.next().ok_or_else(no_address)?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    // What is left of `timeout`, for the next write or read.
    let left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        let secs = timeout.as_secs_f64();
        let late = || io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {secs} s"));
        Some(left).filter(|d| !d.is_zero()).ok_or_else(late)
    };
    stream.set_write_timeout(Some(left()?))?;
    // One write: `write!` on the stream would send each piece in a packet of its own.
    stream.write_all(format!("{request} HTTP/1.0\r\nHost: {host}\r\n{headers}\r\n").as_bytes())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        stream.set_read_timeout(Some(left()?))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read timeout is `WouldBlock` on Linux: the deadline passed.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => left().map(drop)?,
            Err(e) => return Err(e),
        }
    }
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

    /// A server that takes the connection and then sends nothing, or a byte now and then (each
    /// within a read timeout), is given up on once the time limit of the whole exchange passes.
    #[test]
    fn a_server_that_stops_answering_is_given_up_on_in_time() {
        let limit = Duration::from_millis(300);
        // Never accepted: the kernel takes the connection, nobody answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = silent.local_addr().unwrap().to_string();
        let err = request(&host, "HEAD /v2/x", "", limit).err().expect("no answer");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert_eq!(err.to_string(), "no answer within 0.3 s");

        let trickling = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = trickling.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = trickling.accept().unwrap();
            for _ in 0..30 {
                if stream.write_all(b"H").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let err = request(&host, "HEAD /v2/x", "", limit).err().expect("no whole answer");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        drop(server);
    }
}

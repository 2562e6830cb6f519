//! What routing, balancing and policy look at in a request, independent of
//! the HTTP version it came in.

use crate::Headers;

/// The parts of a request that routes (and hash balancers) look at. Borrowed
/// from the parsed head; building one does not allocate.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The `Host` header without its port (see `http::head::request_host`).
    pub host: Option<&'a str>,
    /// The path, without `?query`.
    pub path: &'a str,
    /// What follows the first `?` of the target, if any.
    pub query: Option<&'a str>,
    pub headers: Headers<'a>,
    /// Subject CN of the verified client certificate (mTLS), if any.
    pub client_cn: Option<&'a str>,
}

impl<'a> RequestView<'a> {
    /// Splits `target` (`/path?query`) into path and query.
    pub fn new(
        method: &'a str,
        host: Option<&'a str>,
        target: &'a str,
        headers: Headers<'a>,
    ) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        Self {
            method,
            host,
            path,
            query,
            headers,
            client_cn: None,
        }
    }

    /// First value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim_ascii())
    }

    /// Value of cookie `name` in the first `Cookie` header that carries it.
    pub fn cookie(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .find_map(|h| {
                h.value.split(|&b| b == b';').find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let eq = pair.iter().position(|&b| b == b'=')?;
                    (pair[..eq].trim_ascii() == name.as_bytes())
                        .then(|| pair[eq + 1..].trim_ascii())
                })
            })
    }
}

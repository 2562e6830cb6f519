//! A small, blocking etcd v3 client over etcd's JSON gRPC gateway
//! (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`, `/v3/lease/…`), HTTP/1.1
//! through ureq. Keys and values travel base64-encoded; int64 fields come
//! back as JSON strings (protobuf's JSON mapping) and zero fields are
//! omitted, so every field here defaults.
//!
//! Several endpoints (the members of one cluster) are tried in turn: a
//! member that cannot be reached, or that answers 5xx (no leader, stopping),
//! sends the call to the next one, and the one that answered is tried first
//! next time.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No member answered (connection refused, timeouts, 5xx from all).
    #[error("etcd unreachable ({tried}): {last}")]
    Unreachable { tried: String, last: String },
    /// A member answered with an error that another member would repeat.
    #[error("etcd {endpoint}: HTTP {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("etcd answered unexpected JSON: {0}")]
    Json(String),
    #[error("no etcd endpoint given")]
    NoEndpoints,
    #[error("etcd endpoint {0:?}: expected http://HOST:PORT")]
    BadEndpoint(String),
}

pub type Result<T> = std::result::Result<T, EtcdError>;

/// protobuf JSON's int64: a string, or (from other encoders) a number.
fn int<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        S(String),
        N(i64),
        U(u64),
    }
    match Int::deserialize(d)? {
        Int::S(s) => s.parse().map_err(serde::de::Error::custom),
        Int::N(n) => Ok(n),
        Int::U(u) => i64::try_from(u).map_err(serde::de::Error::custom),
    }
}

/// Like `int`, for uint64 ids shown as text.
fn id<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Value::deserialize(d)?
        .as_str()
        .map(str::to_string)
        .unwrap_or_default())
}

fn b64<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Header {
    #[serde(deserialize_with = "id")]
    pub cluster_id: String,
    #[serde(deserialize_with = "id")]
    pub member_id: String,
    #[serde(deserialize_with = "int")]
    pub revision: i64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct KeyValue {
    #[serde(deserialize_with = "b64")]
    pub key: Vec<u8>,
    #[serde(deserialize_with = "b64")]
    pub value: Vec<u8>,
    #[serde(deserialize_with = "int")]
    pub create_revision: i64,
    #[serde(deserialize_with = "int")]
    pub mod_revision: i64,
    #[serde(deserialize_with = "int")]
    pub version: i64,
    #[serde(deserialize_with = "int")]
    pub lease: i64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RangeResponse {
    pub header: Header,
    pub kvs: Vec<KeyValue>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
struct TxnResponse {
    header: Header,
    succeeded: bool,
    responses: Vec<TxnOpResponse>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
struct TxnOpResponse {
    response_range: Option<RangeResponse>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum EventType {
    #[default]
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "DELETE")]
    Delete,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub kv: KeyValue,
}

/// One message of a watch stream.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct WatchResponse {
    pub header: Header,
    pub created: bool,
    pub canceled: bool,
    /// Set when the requested start revision was compacted away: the
    /// watch is cancelled and the events in between are lost to it.
    #[serde(deserialize_with = "int")]
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub events: Vec<Event>,
}

/// Parses one line of a gateway stream: `{"result": …}` or `{"error": …}`.
pub fn parse_stream_line<T: serde::de::DeserializeOwned>(line: &str) -> Result<T> {
    // A message can be megabytes: errors quote its start only.
    let short = || super::bounded(line, 256);
    let v: Value =
        serde_json::from_str(line).map_err(|e| EtcdError::Json(format!("{e}: {}", short())))?;
    if let Some(err) = v.get("error") {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("stream error")
            .to_string();
        let status = err.get("http_code").and_then(Value::as_u64).unwrap_or(500) as u16;
        return Err(EtcdError::Status {
            endpoint: "stream".into(),
            status,
            message,
        });
    }
    let r = v
        .get("result")
        .ok_or_else(|| EtcdError::Json(format!("no result in {}", short())))?;
    serde_json::from_value(r.clone()).map_err(|e| EtcdError::Json(format!("{e}: {}", short())))
}

/// The message of a gateway error body (`{"error": "...", "message": ...}`).
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.trim().to_string())
}

/// The `range_end` that makes a range cover every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // the whole keyspace
}

/// What a compare-and-swap put found.
#[derive(Debug)]
pub enum Cas {
    Written(Header),
    /// Another write came first: the key as it is now (None: deleted).
    Conflict(Option<KeyValue>),
}

/// How a watch ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// The caller's callback asked to stop.
    Stopped,
    /// The server cancelled the watch (compaction, or another reason).
    Canceled(WatchResponse),
    /// Nothing arrived for the idle bound: re-open from the next revision.
    Idle,
    /// A message longer than the bound (its length so far): dropped, and
    /// the watch with it; the caller reads the key instead.
    TooLong(usize),
}

/// The longest watch message read. A bundle is at most 1 MiB (about 1.4
/// MiB as base64 in JSON), but a watch replaying history batches many
/// revisions into one message, which could grow without end.
pub const MAX_WATCH_LINE: usize = 4 << 20;

/// How reading one line ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (its newline included) is in the buffer.
    Read,
    /// The stream ended (a last unterminated line may be in the buffer).
    Eof,
    /// Past `max` bytes without a newline: the buffer holds the first ones.
    TooLong(usize),
}

/// `BufRead::read_line` with a bound: no more than `max` bytes are held.
pub fn read_line_capped(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(Line::Eof);
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > max {
            let n = buf.len() + take;
            r.consume(take);
            return Ok(Line::TooLong(n));
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if done {
            return Ok(Line::Read);
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || e.kind() == std::io::ErrorKind::WouldBlock
        || e.get_ref()
            .and_then(|x| x.downcast_ref::<ureq::Error>())
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)))
}

pub struct Client {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    watch_agent: ureq::Agent,
    /// The member that answered last: tried first.
    current: AtomicUsize,
    /// Bound of one watch message.
    max_line: usize,
}

/// Bound of one unary call (a member without quorum answers after its
/// own request timeout, ~5 s, which must not look like a hung daemon).
const CALL_TIMEOUT: Duration = Duration::from_secs(8);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    /// `endpoints`: `http://host:port` of each member (a trailing `/` is
    /// dropped).
    pub fn new(endpoints: &[String], watch_idle: Duration) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let mut eps = Vec::new();
        for e in endpoints {
            let e = e.trim().trim_end_matches('/');
            if !e.starts_with("http://") || e.len() <= "http://".len() {
                return Err(EtcdError::BadEndpoint(e.to_string()));
            }
            eps.push(e.to_string());
        }
        let base = || {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                // A pooled connection to a member that restarted fails
                // once; control traffic is rare enough to connect anew.
                .max_idle_connections(0)
                .timeout_connect(Some(CONNECT_TIMEOUT))
        };
        Ok(Client {
            endpoints: eps,
            agent: base()
                .timeout_per_call(Some(CALL_TIMEOUT))
                .build()
                .new_agent(),
            // A watch is one long response: bounded per read, not per call
            // (an idle stream is re-opened where it was, losing nothing).
            // `hasleader`: a member cut off from its cluster cancels the
            // watch instead of keeping it open and silent.
            watch_agent: base()
                .timeout_recv_response(Some(CALL_TIMEOUT))
                .timeout_per_read(Some(watch_idle))
                .build()
                .new_agent(),
            current: AtomicUsize::new(0),
            max_line: MAX_WATCH_LINE,
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The next call tries the member after the one that answered last
    /// (that one lags behind the others).
    pub fn skip_current(&self) {
        let n = self.endpoints.len();
        let k = self.current.load(Ordering::Relaxed);
        self.current.store((k + 1) % n, Ordering::Relaxed);
    }

    /// The member tried first.
    pub fn current(&self) -> &str {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// The members in the order to try them: the last one that answered first.
    fn order(&self) -> impl Iterator<Item = (usize, &str)> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| {
            let k = (first + i) % n;
            (k, self.endpoints[k].as_str())
        })
    }

    /// POSTs `body` to `path` on the first member that answers; returns the
    /// response body of a 2xx.
    fn call(&self, path: &str, body: &Value) -> Result<String> {
        let text = body.to_string();
        let mut last = String::new();
        for (k, ep) in self.order() {
            let url = format!("{ep}{path}");
            let r = self
                .agent
                .post(&url)
                .content_type("application/json")
                .send(text.as_str());
            match r {
                Err(e) => last = format!("{ep}: {e}"),
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let out = resp
                        .body_mut()
                        .with_config()
                        .limit(64 << 20)
                        .read_to_string()
                        .map_err(|e| format!("{ep}: reading the answer: {e}"));
                    let out = match out {
                        Ok(o) => o,
                        Err(e) => {
                            last = e;
                            continue;
                        }
                    };
                    if status >= 500 {
                        last = format!("{ep}: HTTP {status}: {}", error_message(&out));
                        continue;
                    }
                    self.current.store(k, Ordering::Relaxed);
                    if !(200..300).contains(&status) {
                        return Err(EtcdError::Status {
                            endpoint: ep.to_string(),
                            status,
                            message: error_message(&out),
                        });
                    }
                    return Ok(out);
                }
            }
        }
        Err(EtcdError::Unreachable {
            tried: self.endpoints.join(","),
            last,
        })
    }

    fn call_json<T: serde::de::DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        let out = self.call(path, body)?;
        serde_json::from_str(&out).map_err(|e| EtcdError::Json(format!("{e}: {out}")))
    }

    /// The key's current value (None: absent) and the store's revision.
    pub fn get(&self, key: &[u8]) -> Result<(Header, Option<KeyValue>)> {
        let r: RangeResponse =
            self.call_json("/v3/kv/range", &json!({ "key": B64.encode(key) }))?;
        Ok((r.header, r.kvs.into_iter().next()))
    }

    /// Every key under `prefix`, in key order.
    pub fn get_prefix(&self, prefix: &[u8]) -> Result<RangeResponse> {
        self.call_json(
            "/v3/kv/range",
            &json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
        )
    }

    /// Writes `key`, attached to `lease` when given.
    pub fn put(&self, key: &[u8], value: &[u8], lease: Option<i64>) -> Result<Header> {
        let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if let Some(l) = lease {
            body["lease"] = l.to_string().into();
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Put {
            header: Header,
        }
        let p: Put = self.call_json("/v3/kv/put", &body)?;
        Ok(p.header)
    }

    /// Deletes `key`; how many keys went (0: it was not there).
    pub fn delete(&self, key: &[u8]) -> Result<u64> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Deleted {
            // The gateway writes int64 as a string, and leaves out zero.
            deleted: Option<String>,
        }
        let d: Deleted =
            self.call_json("/v3/kv/deleterange", &json!({ "key": B64.encode(key) }))?;
        Ok(d.deleted.and_then(|n| n.parse().ok()).unwrap_or(0))
    }

    /// Writes `key` only if its mod_revision is still `expected` (0: the
    /// key must not exist), in one transaction.
    pub fn put_if_mod_revision(&self, key: &[u8], value: &[u8], expected: i64) -> Result<Cas> {
        let k = B64.encode(key);
        let body = json!({
            "compare": [{
                "target": "MOD",
                "result": "EQUAL",
                "key": k,
                "mod_revision": expected.to_string(),
            }],
            "success": [{ "request_put": { "key": k, "value": B64.encode(value) } }],
            "failure": [{ "request_range": { "key": k } }],
        });
        let t: TxnResponse = self.call_json("/v3/kv/txn", &body)?;
        Ok(txn_outcome(t))
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub fn lease_grant(&self, ttl: i64) -> Result<i64> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Grant {
            #[serde(rename = "ID", deserialize_with = "int")]
            id: i64,
            error: String,
        }
        let g: Grant = self.call_json("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        if !g.error.is_empty() || g.id == 0 {
            return Err(EtcdError::Json(format!("lease grant refused: {}", g.error)));
        }
        Ok(g.id)
    }

    /// Refreshes a lease; returns its TTL (0: it expired or is unknown).
    pub fn lease_keepalive(&self, lease: i64) -> Result<i64> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Keep {
            #[serde(rename = "TTL", deserialize_with = "int")]
            ttl: i64,
        }
        // A bidi stream through the gateway: one request in, one result
        // line out, then the stream ends with the request body.
        let out = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        let line = out.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let k: Keep = parse_stream_line(line)?;
        Ok(k.ttl)
    }

    /// Revokes a lease: the keys attached to it go at once.
    pub fn lease_revoke(&self, lease: i64) -> Result<()> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))?;
        Ok(())
    }

    /// Compacts the store's history up to `revision` (operators and tests).
    pub fn compact(&self, revision: i64) -> Result<()> {
        self.call(
            "/v3/kv/compaction",
            &json!({ "revision": revision.to_string(), "physical": true }),
        )?;
        Ok(())
    }

    /// Watches `key` from `start_revision`, calling `on` for every message
    /// (`created` included) until it returns false, the server cancels the
    /// watch (compaction: `WatchEnd::Canceled` with `compact_revision`), or
    /// the stream breaks (an error; re-watch from the next revision).
    /// `stop` is looked at between messages and on idle timeouts.
    pub fn watch(
        &self,
        key: &[u8],
        start_revision: i64,
        stop: &AtomicBool,
        mut on: impl FnMut(&WatchResponse) -> bool,
    ) -> Result<WatchEnd> {
        let body = json!({ "create_request": {
            "key": B64.encode(key),
            "start_revision": start_revision.to_string(),
        }})
        .to_string();
        let mut last = String::new();
        let mut opened = None;
        for (k, ep) in self.order() {
            match self
                .watch_agent
                .post(format!("{ep}/v3/watch"))
                .content_type("application/json")
                .header("Grpc-Metadata-hasleader", "true")
                .send(body.as_str())
            {
                Err(e) => last = format!("{ep}: {e}"),
                Ok(resp) if resp.status().as_u16() >= 300 => {
                    let status = resp.status().as_u16();
                    last = format!("{ep}: HTTP {status}");
                }
                Ok(resp) => {
                    self.current.store(k, Ordering::Relaxed);
                    opened = Some((ep.to_string(), resp));
                    break;
                }
            }
        }
        let Some((ep, resp)) = opened else {
            return Err(EtcdError::Unreachable {
                tried: self.endpoints.join(","),
                last,
            });
        };
        let mut reader = BufReader::new(resp.into_body().into_reader());
        let mut buf = Vec::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(WatchEnd::Stopped);
            }
            buf.clear();
            match read_line_capped(&mut reader, &mut buf, self.max_line) {
                Ok(Line::Eof) => {
                    return Err(EtcdError::Unreachable {
                        tried: ep,
                        last: "the watch stream ended".into(),
                    });
                }
                Ok(Line::TooLong(n)) => return Ok(WatchEnd::TooLong(n)),
                Ok(Line::Read) => {}
                Err(e) if is_timeout(&e) => return Ok(WatchEnd::Idle),
                Err(e) => {
                    return Err(EtcdError::Unreachable {
                        tried: ep,
                        last: format!("watch stream: {e}"),
                    });
                }
            }
            let line = String::from_utf8_lossy(&buf);
            if line.trim().is_empty() {
                continue;
            }
            let w: WatchResponse = parse_stream_line(&line)?;
            if w.canceled || w.compact_revision != 0 {
                return Ok(WatchEnd::Canceled(w));
            }
            if !on(&w) {
                return Ok(WatchEnd::Stopped);
            }
        }
    }
}

fn txn_outcome(t: TxnResponse) -> Cas {
    if t.succeeded {
        Cas::Written(t.header)
    } else {
        let now = t
            .responses
            .into_iter()
            .find_map(|r| r.response_range)
            .and_then(|r| r.kvs.into_iter().next());
        Cas::Conflict(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_answers_parse_with_string_ints_and_omitted_zeroes() {
        // As etcd 3.4's gateway writes them.
        let body = r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"7","raft_term":"2"},"kvs":[{"key":"L2ZlcnJvZ2F0ZS9jL2J1bmRsZQ==","create_revision":"2","mod_revision":"7","version":"3","value":"aGVsbG8="}],"count":"1"}"#;
        let r: RangeResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.header.revision, 7);
        assert_eq!(r.header.cluster_id, "14841639068965178418");
        let kv = &r.kvs[0];
        assert_eq!(kv.key, b"/ferrogate/c/bundle");
        assert_eq!(kv.value, b"hello");
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
            (2, 7, 3, 0)
        );
        // A missing key: no kvs at all.
        let r: RangeResponse = serde_json::from_str(r#"{"header":{"revision":"9"}}"#).unwrap();
        assert!(r.kvs.is_empty());
        assert_eq!(r.header.revision, 9);
    }

    #[test]
    fn txn_answers_tell_a_write_from_a_conflict() {
        let ok = r#"{"header":{"revision":"12"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"12"}}}]}"#;
        match txn_outcome(serde_json::from_str(ok).unwrap()) {
            Cas::Written(h) => assert_eq!(h.revision, 12),
            other => panic!("{other:?}"),
        }
        // `succeeded: false` is omitted; the failure branch's range says what won.
        let lost = r#"{"header":{"revision":"13"},"responses":[{"response_range":{"header":{"revision":"13"},"kvs":[{"key":"YQ==","mod_revision":"13","value":"Yg=="}],"count":"1"}}]}"#;
        match txn_outcome(serde_json::from_str(lost).unwrap()) {
            Cas::Conflict(Some(kv)) => assert_eq!((kv.mod_revision, kv.value), (13, b"b".to_vec())),
            other => panic!("{other:?}"),
        }
        let gone = r#"{"header":{"revision":"14"},"responses":[{"response_range":{"header":{"revision":"14"}}}]}"#;
        assert!(matches!(
            txn_outcome(serde_json::from_str(gone).unwrap()),
            Cas::Conflict(None)
        ));
    }

    #[test]
    fn watch_stream_lines_parse_events_compaction_and_errors() {
        let created: WatchResponse =
            parse_stream_line(r#"{"result":{"header":{"revision":"5"},"created":true}}"#).unwrap();
        assert!(created.created && created.events.is_empty());
        let ev: WatchResponse = parse_stream_line(
            r#"{"result":{"header":{"revision":"6"},"events":[{"kv":{"key":"YQ==","mod_revision":"6","value":"eA=="}},{"type":"DELETE","kv":{"key":"YQ==","mod_revision":"7"}}]}}"#,
        )
        .unwrap();
        assert_eq!(ev.events.len(), 2);
        assert_eq!(ev.events[0].kind, EventType::Put);
        assert_eq!(ev.events[0].kv.value, b"x");
        assert_eq!(ev.events[1].kind, EventType::Delete);
        let compacted: WatchResponse = parse_stream_line(
            r#"{"result":{"header":{"revision":"30"},"compact_revision":"25","canceled":true}}"#,
        )
        .unwrap();
        assert_eq!(compacted.compact_revision, 25);
        assert!(compacted.canceled);
        let err = parse_stream_line::<WatchResponse>(
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no leader"), "{err}");
        assert!(parse_stream_line::<WatchResponse>("{not json").is_err());
    }

    #[test]
    fn gateway_error_bodies_and_prefix_ranges() {
        assert_eq!(
            error_message(
                r#"{"error":"etcdserver: mvcc: required revision has been compacted","code":11,"message":"etcdserver: mvcc: required revision has been compacted"}"#
            ),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(error_message("plain text\n"), "plain text");
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn endpoints_are_checked() {
        let w = Duration::from_secs(1);
        assert!(matches!(Client::new(&[], w), Err(EtcdError::NoEndpoints)));
        assert!(matches!(
            Client::new(&["127.0.0.1:2379".into()], w),
            Err(EtcdError::BadEndpoint(_))
        ));
        let c = Client::new(
            &["http://127.0.0.1:1/".into(), "http://127.0.0.1:2".into()],
            w,
        )
        .unwrap();
        assert_eq!(c.endpoints(), ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        // Nothing listens there: every member is tried, then a clear error.
        let e = c.get(b"k").unwrap_err();
        assert!(matches!(e, EtcdError::Unreachable { .. }), "{e}");
    }

    #[test]
    fn watch_lines_are_read_up_to_a_bound() {
        let mut r = BufReader::with_capacity(
            8,
            std::io::Cursor::new(b"short\n0123456789abcdef\nafter\nend".to_vec()),
        );
        let mut buf = Vec::new();
        assert_eq!(read_line_capped(&mut r, &mut buf, 10).unwrap(), Line::Read);
        assert_eq!(buf, b"short\n");
        buf.clear();
        // Past the bound: told, and no more than it is held.
        match read_line_capped(&mut r, &mut buf, 10).unwrap() {
            Line::TooLong(n) => assert!(n > 10),
            other => panic!("{other:?}"),
        }
        assert!(buf.len() <= 10);
        buf.clear();
        // A line exactly at the bound fits.
        let mut r = std::io::Cursor::new(b"123456789\nend".to_vec());
        assert_eq!(read_line_capped(&mut r, &mut buf, 10).unwrap(), Line::Read);
        buf.clear();
        assert_eq!(read_line_capped(&mut r, &mut buf, 10).unwrap(), Line::Eof);
        assert_eq!(buf, b"end");
    }

    #[test]
    fn a_lagging_member_is_skipped() {
        let c = Client::new(
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(c.current(), "http://127.0.0.1:1");
        c.skip_current();
        assert_eq!(c.current(), "http://127.0.0.1:2");
        c.skip_current();
        assert_eq!(c.current(), "http://127.0.0.1:1");
    }
}

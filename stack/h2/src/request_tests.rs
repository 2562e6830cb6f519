//! RFC 9113 §8 request and trailer rules, one test per rule.

use crate::error::{ErrorCode, Scope};
use crate::fields::Field;
use crate::request::{validate_request, validate_trailers};

const GET: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "example.com"),
    (":path", "/"),
];

fn fields(list: &[(&str, &str)]) -> Vec<Field> {
    list.iter().map(|(n, v)| Field::new(*n, *v)).collect()
}

/// GET plus `extra` regular fields.
fn get_with(extra: &[(&str, &str)]) -> Vec<Field> {
    let mut f = fields(&GET);
    f.extend(fields(extra));
    f
}

/// Asserts a stream PROTOCOL_ERROR on stream 1 with `reason`.
fn rejected(list: Vec<Field>, reason: &str) {
    let e = validate_request(1, list).unwrap_err();
    assert_eq!(
        (e.code, e.scope),
        (ErrorCode::ProtocolError, Scope::Stream(1))
    );
    assert_eq!(e.reason, reason);
}

#[test]
fn well_formed_get_is_accepted() {
    let r = validate_request(1, get_with(&[("accept", "*/*")])).unwrap();
    assert_eq!(r.method, b"GET");
    assert_eq!(r.scheme.as_deref(), Some(&b"https"[..]));
    assert_eq!(r.authority, b"example.com");
    assert_eq!(r.path.as_deref(), Some(&b"/"[..]));
    assert_eq!(r.headers, fields(&[("accept", "*/*")]));
    assert_eq!(r.content_length, None);
}

#[test]
fn pseudo_header_after_regular_is_malformed() {
    let mut f = fields(&GET[..3]);
    f.push(Field::new("accept", "*/*"));
    f.push(Field::new(":path", "/"));
    rejected(f, "pseudo-header field after a regular field");
}

#[test]
fn duplicate_pseudo_header_is_malformed() {
    let mut f = fields(&GET);
    f.insert(1, Field::new(":method", "POST"));
    rejected(f, "duplicate pseudo-header field");
}

#[test]
fn unknown_pseudo_header_is_malformed() {
    let mut f = fields(&GET);
    f.insert(0, Field::new(":foo", "bar"));
    rejected(f, "unknown or response pseudo-header field in a request");
}

#[test]
fn response_pseudo_header_in_request_is_malformed() {
    let mut f = fields(&GET);
    f.push(Field::new(":status", "200"));
    rejected(f, "unknown or response pseudo-header field in a request");
}

#[test]
fn protocol_pseudo_header_is_refused_without_extended_connect() {
    rejected(
        fields(&[
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":authority", "example.com"),
            (":path", "/chat"),
        ]),
        "extended CONNECT (:protocol) is not enabled",
    );
}

#[test]
fn missing_method_is_malformed() {
    rejected(fields(&GET[1..]), "missing :method");
}

#[test]
fn missing_scheme_is_malformed() {
    rejected(fields(&[GET[0], GET[2], GET[3]]), "missing :scheme");
}

#[test]
fn missing_path_is_malformed() {
    rejected(fields(&GET[..3]), "missing :path");
}

#[test]
fn empty_path_is_malformed() {
    let mut f = fields(&GET);
    f[3].value.clear();
    rejected(f, "empty :path");
}

#[test]
fn path_not_origin_form_is_malformed() {
    let mut f = fields(&GET);
    f[3].value = b"index.html".to_vec();
    rejected(f, ":path is neither origin-form nor * for OPTIONS");
    let mut f = fields(&GET);
    f[3].value = b"*".to_vec();
    rejected(f, ":path is neither origin-form nor * for OPTIONS");
}

#[test]
fn path_bytes_must_fit_an_http1_request_line() {
    for bad in [
        &b"/a b"[..],
        b"/a\tb",
        b"/a\x7fb",
        b"/a\x01",
        b"/a#frag",
        b"/a HTTP/1.1\x0bX: y",
    ] {
        let mut f = fields(&GET);
        f[3].value = bad.to_vec();
        rejected(f, ":path holds a space, control byte or '#'");
    }
    // Any scheme (it is written into an HTTP/1.1 request line just the same).
    let mut f = fields(&GET);
    f[1].value = b"foo".to_vec();
    f[3].value = b"/a b".to_vec();
    rejected(f, ":path holds a space, control byte or '#'");
    let mut f = fields(&GET);
    f[1].value = b"foo".to_vec();
    f[3].value = b"a".to_vec();
    rejected(f, ":path is neither origin-form nor * for OPTIONS");
    for good in [&b"/a/%20?q=1&r=~"[..], "/é".as_bytes(), b"/[x]{y}|\\^`"] {
        let mut f = fields(&GET);
        f[3].value = good.to_vec();
        validate_request(1, f).unwrap();
    }
}

#[test]
fn asterisk_path_is_accepted_for_options() {
    let mut f = fields(&GET);
    f[0].value = b"OPTIONS".to_vec();
    f[3].value = b"*".to_vec();
    validate_request(1, f).unwrap();
}

#[test]
fn method_must_be_a_token() {
    let mut f = fields(&GET);
    f[0].value = b"G(T".to_vec();
    rejected(f, ":method is not a token");
}

#[test]
fn scheme_must_be_a_uri_scheme() {
    let mut f = fields(&GET);
    f[1].value = b"1http".to_vec();
    rejected(f, ":scheme is not a URI scheme");
}

#[test]
fn missing_authority_and_host_is_malformed() {
    rejected(
        fields(&[GET[0], GET[1], GET[3]]),
        "neither :authority nor Host",
    );
}

#[test]
fn host_stands_in_for_missing_authority() {
    let mut f = fields(&[GET[0], GET[1], GET[3]]);
    f.push(Field::new("host", "example.org:8443"));
    assert_eq!(
        validate_request(1, f).unwrap().authority,
        b"example.org:8443"
    );
}

#[test]
fn host_and_authority_must_agree() {
    rejected(
        get_with(&[("host", "evil.example")]),
        "Host and :authority disagree",
    );
    // Same authority in another case agrees (host names are case-insensitive).
    validate_request(1, get_with(&[("host", "EXAMPLE.com")])).unwrap();
}

#[test]
fn more_than_one_host_is_malformed() {
    rejected(
        get_with(&[("host", "example.com"), ("host", "example.com")]),
        "more than one Host header field",
    );
}

#[test]
fn authority_with_userinfo_is_malformed() {
    let mut f = fields(&GET);
    f[2].value = b"user@example.com".to_vec();
    rejected(f, "authority with userinfo");
}

#[test]
fn authority_with_path_characters_is_malformed() {
    let mut f = fields(&GET);
    f[2].value = b"example.com/x".to_vec();
    rejected(f, "authority with characters outside host[:port]");
}

#[test]
fn uppercase_field_name_is_malformed() {
    rejected(
        get_with(&[("Accept", "*/*")]),
        "field name has uppercase characters",
    );
}

#[test]
fn field_name_not_a_token_is_malformed() {
    rejected(get_with(&[("x y", "1")]), "field name is not a token");
    rejected(get_with(&[("", "1")]), "field name is not a token");
}

#[test]
fn field_value_with_cr_lf_or_nul_is_malformed() {
    for bad in ["a\rb", "a\nb", "a\0b"] {
        rejected(
            get_with(&[("x-a", bad)]),
            "field value contains NUL, CR or LF",
        );
    }
    // Pseudo-header values too.
    let mut f = fields(&GET);
    f[3].value = b"/a\r\nx: y".to_vec();
    rejected(f, "field value contains NUL, CR or LF");
}

#[test]
fn field_value_with_leading_or_trailing_whitespace_is_malformed() {
    for bad in [" a", "a ", "\ta", "a\t"] {
        rejected(
            get_with(&[("x-a", bad)]),
            "field value has leading or trailing whitespace",
        );
    }
    validate_request(1, get_with(&[("x-a", "a b")])).unwrap();
}

#[test]
fn connection_specific_fields_are_malformed() {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        rejected(get_with(&[(name, "x")]), "connection-specific header field");
    }
}

#[test]
fn te_other_than_trailers_is_malformed() {
    rejected(
        get_with(&[("te", "gzip")]),
        "te header field with a value other than trailers",
    );
    validate_request(1, get_with(&[("te", "trailers")])).unwrap();
}

#[test]
fn content_length_is_parsed() {
    let r = validate_request(1, get_with(&[("content-length", "42")])).unwrap();
    assert_eq!(r.content_length, Some(42));
}

#[test]
fn repeated_content_length_must_agree() {
    let r = validate_request(
        1,
        get_with(&[("content-length", "7"), ("content-length", "7")]),
    );
    assert_eq!(r.unwrap().content_length, Some(7));
    rejected(
        get_with(&[("content-length", "7"), ("content-length", "8")]),
        "content-length fields disagree",
    );
}

#[test]
fn content_length_not_a_number_is_malformed() {
    for bad in ["-1", "1,1", "0x10", "99999999999999999999"] {
        rejected(
            get_with(&[("content-length", bad)]),
            "content-length is not a decimal number",
        );
    }
}

#[test]
fn connect_needs_only_method_and_authority() {
    let r = validate_request(
        1,
        fields(&[(":method", "CONNECT"), (":authority", "db:5432")]),
    )
    .unwrap();
    assert_eq!((r.scheme, r.path), (None, None));
    assert_eq!(r.authority, b"db:5432");
}

#[test]
fn connect_with_scheme_or_path_is_malformed() {
    rejected(
        fields(&[
            (":method", "CONNECT"),
            (":authority", "db:5432"),
            (":path", "/"),
        ]),
        "CONNECT with :scheme or :path",
    );
}

#[test]
fn connect_without_authority_is_malformed() {
    rejected(
        fields(&[(":method", "CONNECT")]),
        "CONNECT without :authority",
    );
}

#[test]
fn trailers_without_end_stream_are_malformed() {
    let e = validate_trailers(3, fields(&[("x-sum", "1")]), false).unwrap_err();
    assert_eq!(
        (e.code, e.scope),
        (ErrorCode::ProtocolError, Scope::Stream(3))
    );
    assert_eq!(e.reason, "trailer block without END_STREAM");
}

#[test]
fn pseudo_header_in_trailers_is_malformed() {
    let e = validate_trailers(3, fields(&[(":path", "/")]), true).unwrap_err();
    assert_eq!(e.reason, "pseudo-header field in trailers");
}

#[test]
fn trailers_obey_the_field_rules() {
    let e = validate_trailers(3, fields(&[("Grpc-Status", "0")]), true).unwrap_err();
    assert_eq!(e.reason, "field name has uppercase characters");
    let e = validate_trailers(3, fields(&[("transfer-encoding", "chunked")]), true).unwrap_err();
    assert_eq!(e.reason, "connection-specific header field");
    let ok = validate_trailers(3, fields(&[("grpc-status", "0")]), true).unwrap();
    assert_eq!(ok.len(), 1);
}

//! Field-level rules shared by requests, trailers and responses
//! (RFC 9113 §8.2): what a name and a value may hold, and which fields are
//! connection-specific.

/// One decoded field line, pseudo-header or regular, in block order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

impl Field {
    pub fn new(name: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }

    pub fn is_pseudo(&self) -> bool {
        self.name.first() == Some(&b':')
    }

    /// The size SETTINGS_MAX_HEADER_LIST_SIZE counts (§6.5.2): the octets of
    /// name and value plus 32 per field, as in HPACK's table accounting.
    pub fn list_size(name: &[u8], value: &[u8]) -> usize {
        name.len() + value.len() + 32
    }
}

/// Fields that describe one HTTP/1 hop and mean nothing in HTTP/2 (§8.2.2):
/// a request carrying one is malformed, and a response must not send one.
pub const CONNECTION_SPECIFIC: [&[u8]; 5] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
];

pub fn is_connection_specific(name: &[u8]) -> bool {
    CONNECTION_SPECIFIC
        .iter()
        .any(|c| c.eq_ignore_ascii_case(name))
}

/// tchar of RFC 9110 §5.6.2.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A regular field name must be a token with no uppercase (§8.2.1: HTTP/2
/// names are lowercase, and an uppercase one makes the message malformed).
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if !is_token(name) {
        return Err("field name is not a token");
    }
    if name.iter().any(u8::is_ascii_uppercase) {
        return Err("field name has uppercase characters");
    }
    Ok(())
}

/// §8.2.1: no NUL, CR or LF anywhere (they would split an HTTP/1 message
/// downstream), and no whitespace at either end.
pub fn check_value(value: &[u8]) -> Result<(), &'static str> {
    if value.iter().any(|&b| matches!(b, 0 | b'\r' | b'\n')) {
        return Err("field value contains NUL, CR or LF");
    }
    let ws = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    if ws(value.first()) || ws(value.last()) {
        return Err("field value has leading or trailing whitespace");
    }
    Ok(())
}

/// Joins the `cookie` fields of a request into one, in order, with "; "
/// (RFC 9113 §8.2.3: HTTP/2 clients may split a cookie into crumbs, but an
/// HTTP/1 origin expects one field). The joined field takes the place of
/// the first crumb; other fields keep their order.
pub fn join_cookies(fields: &mut Vec<Field>) {
    let mut crumbs = fields.iter().filter(|f| f.name == b"cookie");
    if crumbs.nth(1).is_none() {
        return;
    }
    let mut joined: Option<usize> = None;
    let mut i = 0;
    while i < fields.len() {
        if fields[i].name != b"cookie" {
            i += 1;
            continue;
        }
        match joined {
            None => {
                joined = Some(i);
                i += 1;
            }
            Some(first) => {
                let crumb = fields.remove(i);
                let value = &mut fields[first].value;
                value.extend_from_slice(b"; ");
                value.extend_from_slice(&crumb.value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_crumbs_are_joined_with_semicolon_space_in_place_of_the_first() {
        let mut f = vec![
            Field::new("a", "1"),
            Field::new("cookie", "x=1"),
            Field::new("b", "2"),
            Field::new("cookie", "y=2"),
            Field::new("cookie", "z=3"),
        ];
        join_cookies(&mut f);
        assert_eq!(
            f,
            [
                Field::new("a", "1"),
                Field::new("cookie", "x=1; y=2; z=3"),
                Field::new("b", "2"),
            ]
        );
        let mut one = vec![Field::new("cookie", "x=1")];
        join_cookies(&mut one);
        assert_eq!(one, [Field::new("cookie", "x=1")]);
    }
}

//! How a route's key goes into the upstream request (a header from a template, a query
//! parameter, HTTP basic), and every form of it that was sent, for scrubbing the response.
//!
//! The key and every value derived from it live in [`Zeroizing`] buffers, wiped when a key is
//! replaced or the route dropped. The injected header is built once per key: each request gets
//! a reference-counted handle on the same wiped buffer, not a copy, so a rotated key's value is
//! wiped once the last request holding it is done. What is not wiped: the bytes hyper encodes
//! into its per-connection write buffer (reused, then freed by hyper), and the per-request
//! URI of query-parameter injection.

use base64::Engine;
use bytes::Bytes;
use hyper::header::{AUTHORIZATION, HeaderName, HeaderValue};
use mayfly_config::Inject;
use zeroize::Zeroizing;

/// Where a key goes in a request.
pub struct Injection {
    /// A header to set: name and value (sensitive, backed by one [`Wiped`] buffer).
    header: Option<(HeaderName, HeaderValue)>,
    /// A query parameter to append: its name and the encoded `name=value` pair.
    query: Option<(String, Zeroizing<String>)>,
    /// Byte strings that must never reach the caller: the key, its encodings and the injected
    /// values. Longest first.
    needles: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("header", &self.header.as_ref().map(|(n, _)| n))
            .field("query", &self.query.as_ref().map(|(n, _)| n))
            .field("needles", &self.needles.len())
            .finish()
    }
}

/// A buffer that is zeroized when the last [`Bytes`] handle on it drops.
struct Wiped(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A sensitive header value over a wiped buffer, shared (not copied) by every clone.
fn shared_value(value: Zeroizing<Vec<u8>>) -> Result<HeaderValue, &'static str> {
    let mut v = HeaderValue::from_maybe_shared(Bytes::from_owner(Wiped(value)))
        .map_err(|_| "the injected value cannot go into a header")?;
    v.set_sensitive(true);
    Ok(v)
}

fn form_encode(data: &[u8]) -> String {
    url::form_urlencoded::byte_serialize(data).collect()
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn pct_encode(data: &[u8], upper: bool) -> String {
    let mut s = String::with_capacity(data.len() * 3);
    for &b in data {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            s.push(char::from(b));
        } else if upper {
            s.push_str(&format!("%{b:02X}"));
        } else {
            s.push_str(&format!("%{b:02x}"));
        }
    }
    s
}

fn fill(template: &str, key: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(template.len() + key.len()));
    let mut parts = template.splitn(2, "{key}");
    out.extend_from_slice(parts.next().unwrap_or("").as_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(parts.next().unwrap_or("").as_bytes());
    out
}

impl Injection {
    /// Prepare a key for a route. Fails (without saying anything about the key's content)
    /// when the key is empty or cannot go into a header.
    pub fn new(inject: &Inject, key: &[u8]) -> Result<Self, &'static str> {
        if key.is_empty() {
            return Err("the stored key is empty");
        }
        let mut needles: Vec<Zeroizing<Vec<u8>>> = vec![Zeroizing::new(key.to_vec())];
        let mut header = None;
        let mut query = None;
        match inject {
            Inject::Header { name, template } => {
                if key.iter().any(|b| !(0x21..=0x7e).contains(b)) {
                    return Err(
                        "the stored key holds bytes that cannot go into a header (spaces, control or non-ASCII characters)",
                    );
                }
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| "the route's inject.header is not a header name")?;
                let value = fill(template, key);
                needles.push(Zeroizing::new(value.to_vec()));
                header = Some((name, shared_value(value)?));
            }
            Inject::Query { param } => {
                let encoded = Zeroizing::new(form_encode(key));
                needles.push(Zeroizing::new(encoded.as_bytes().to_vec()));
                let pair =
                    Zeroizing::new(format!("{}={}", form_encode(param.as_bytes()), *encoded));
                query = Some((param.clone(), pair));
            }
            Inject::Basic { template } => {
                let cred = fill(template, key);
                let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*cred));
                needles.push(Zeroizing::new(b64.as_bytes().to_vec()));
                let mut value = Zeroizing::new(b"Basic ".to_vec());
                value.extend_from_slice(b64.as_bytes());
                header = Some((AUTHORIZATION, shared_value(value)?));
            }
        }
        // The key as it may come back in a URL or form (either hex case).
        for v in [
            form_encode(key),
            pct_encode(key, true),
            pct_encode(key, false),
        ] {
            let v = Zeroizing::new(v.into_bytes());
            needles.push(v);
        }
        needles.sort_by(|a, b| {
            b.len()
                .cmp(&a.len())
                .then_with(|| a.as_slice().cmp(b.as_slice()))
        });
        needles.dedup();
        Ok(Self {
            header,
            query,
            needles,
        })
    }

    /// The header to set, as a sensitive value (never shown by `Debug`, never indexed by HPACK):
    /// a handle on the one wiped buffer, not a copy of the key.
    pub fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        let (name, value) = self.header.as_ref()?;
        Some((name.clone(), value.clone()))
    }

    /// The name of the injected header, if any (a caller's header of that name is dropped).
    pub fn header_name(&self) -> Option<&HeaderName> {
        self.header.as_ref().map(|(n, _)| n)
    }

    /// The caller's query with any parameter of the injected name removed, and the key's
    /// parameter appended. `None` when the key does not go into the query.
    pub fn query(&self, caller: Option<&str>) -> Option<Zeroizing<String>> {
        let (param, pair) = self.query.as_ref()?;
        let mut q = Zeroizing::new(String::with_capacity(
            caller.map_or(0, str::len) + pair.len() + 1,
        ));
        for piece in caller.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let name = url::form_urlencoded::parse(piece.as_bytes())
                .next()
                .map(|(n, _)| n);
            if name.as_deref() == Some(param.as_str()) {
                continue;
            }
            q.push_str(piece);
            q.push('&');
        }
        q.push_str(pair);
        Some(q)
    }

    /// What must never reach the caller, longest first.
    pub fn needles(&self) -> &[Zeroizing<Vec<u8>>] {
        &self.needles
    }

    /// Whether `data` holds any form of the key.
    pub fn leaks_in(&self, data: &[u8]) -> bool {
        self.needles
            .iter()
            .any(|n| memchr::memmem::find(data, n).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_query_basic() {
        let i = Injection::new(
            &Inject::Header {
                name: "authorization".into(),
                template: "Bearer {key}".into(),
            },
            b"sk_1",
        )
        .unwrap();
        let (n, v) = i.header().unwrap();
        assert_eq!(n, AUTHORIZATION);
        assert_eq!(v, "Bearer sk_1");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?} {i:?}").contains("sk_1"));
        // Every request shares the one wiped buffer: no per-request copy of the key.
        let (_, again) = i.header().unwrap();
        assert_eq!(v.as_bytes().as_ptr(), again.as_bytes().as_ptr());
        assert!(i.query(Some("a=1")).is_none());
        assert!(i.leaks_in(b"xx sk_1 yy"));
        assert!(
            Injection::new(
                &Inject::Header {
                    name: "x".into(),
                    template: "{key}".into()
                },
                b"a b"
            )
            .is_err()
        );

        let i = Injection::new(
            &Inject::Query {
                param: "api_key".into(),
            },
            b"k/+ =",
        )
        .unwrap();
        assert!(i.header().is_none());
        assert_eq!(
            i.query(Some("a=1&api_key=mine&api%5Fkey=x&b"))
                .unwrap()
                .as_str(),
            "a=1&b&api_key=k%2F%2B+%3D"
        );
        assert_eq!(i.query(None).unwrap().as_str(), "api_key=k%2F%2B+%3D");
        assert!(i.leaks_in(b"?api_key=k%2f%2b%20%3d"));

        let i = Injection::new(
            &Inject::Basic {
                template: "{key}:".into(),
            },
            b"sk_2",
        )
        .unwrap();
        let (n, v) = i.header().unwrap();
        assert_eq!(n, AUTHORIZATION);
        assert_eq!(v, "Basic c2tfMjo=");
        assert!(i.leaks_in(b"c2tfMjo="));
    }
}

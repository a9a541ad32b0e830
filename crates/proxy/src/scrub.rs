//! Keep the key out of responses: response headers holding any form of it are dropped, and the
//! streamed body has every occurrence replaced by `[REDACTED]`, holding back the last
//! `longest needle - 1` bytes of each chunk in case a key straddles two chunks.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use hyper::HeaderMap;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use zeroize::Zeroizing;

use crate::keys::RouteKey;

/// What replaces a key in a body.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// Remove every header whose value holds a form of the key. Returns how many were removed.
pub fn headers(h: &mut HeaderMap, key: &RouteKey) -> usize {
    let leaking: Vec<_> = h
        .iter()
        .filter(|(_, v)| key.injection.leaks_in(v.as_bytes()))
        .map(|(n, _)| n.clone())
        .collect();
    for n in &leaking {
        h.remove(n);
    }
    leaking.len()
}

/// The streaming replacement state.
struct Scrub {
    key: Arc<RouteKey>,
    /// Bytes received but not yet sent (at most the longest needle - 1 between chunks).
    pending: Zeroizing<Vec<u8>>,
    keep: usize,
    redactions: usize,
}

impl Scrub {
    fn new(key: Arc<RouteKey>) -> Self {
        let keep = key
            .injection
            .needles()
            .iter()
            .map(|n| n.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Self {
            key,
            pending: Zeroizing::new(Vec::new()),
            keep,
            redactions: 0,
        }
    }

    /// Earliest occurrence of any needle in `hay` (the longest one at that position).
    fn earliest(&self, hay: &[u8]) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for n in self.key.injection.needles() {
            if let Some(at) = memchr::memmem::find(hay, n)
                && best.is_none_or(|(b, bl)| at < b || (at == b && n.len() > bl))
            {
                best = Some((at, n.len()));
            }
        }
        best
    }

    /// Take `data` in; return what can be sent now. With `last`, everything is sent. Nothing
    /// held back and no form of the key in `data` (the usual chunk): `data` itself goes out,
    /// uncopied, but for the tail kept in case a key starts there.
    fn push_bytes(&mut self, data: Bytes, last: bool) -> Bytes {
        if self.pending.is_empty() && self.earliest(&data).is_none() {
            if last {
                return data;
            }
            let safe_end = data.len().saturating_sub(self.keep);
            self.pending.extend_from_slice(&data[safe_end..]);
            return data.slice(..safe_end);
        }
        self.push(&data, last)
    }

    /// Take `data` in; return what can be sent now. With `last`, everything is sent.
    fn push(&mut self, data: &[u8], last: bool) -> Bytes {
        self.pending.extend_from_slice(data);
        let len = self.pending.len();
        let safe_end = if last {
            len
        } else {
            len.saturating_sub(self.keep)
        };
        let mut out: Vec<u8> = Vec::with_capacity(safe_end + REDACTED.len());
        let mut i = 0;
        while i < safe_end {
            match self.earliest(&self.pending[i..]) {
                Some((at, n)) if i + at < safe_end => {
                    out.extend_from_slice(&self.pending[i..i + at]);
                    out.extend_from_slice(REDACTED);
                    self.redactions += 1;
                    i += at + n;
                }
                _ => {
                    out.extend_from_slice(&self.pending[i..safe_end]);
                    i = safe_end;
                }
            }
        }
        self.pending.drain(..i.min(len));
        Bytes::from(out)
    }
}

/// A response body with every form of the key replaced.
pub struct ScrubBody<B> {
    inner: B,
    scrub: Scrub,
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> ScrubBody<B> {
    /// Wrap an upstream body (of the key's route).
    pub fn new(inner: B, key: Arc<RouteKey>) -> Self {
        Self {
            inner,
            scrub: Scrub::new(key),
            trailers: None,
            done: false,
        }
    }
}

impl<B> Drop for ScrubBody<B> {
    fn drop(&mut self) {
        if self.scrub.redactions > 0 {
            let route = &self.scrub.key.route;
            tracing::warn!(route = %route, redactions = self.scrub.redactions, "the upstream's response body held the route's key; it was replaced by [REDACTED]");
            metrics::counter!("mayfly_proxy_key_redactions_total", "route" => route.clone())
                .increment(self.scrub.redactions as u64);
        }
    }
}

impl<B> Body for ScrubBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                if !this.scrub.pending.is_empty() {
                    let rest = this.scrub.push(&[], true);
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        // A body of known length that has just ended (the usual small answer)
                        // goes out in this one frame instead of one more poll.
                        let last = this.inner.is_end_stream();
                        if last {
                            this.done = true;
                        }
                        let out = this.scrub.push_bytes(data, last);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut t) = frame.into_trailers() {
                            headers(&mut t, &this.scrub.key);
                            this.trailers = Some(t);
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.done = true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.scrub.pending.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_config::Inject;

    fn key() -> Arc<RouteKey> {
        Arc::new(RouteKey::for_tests(
            &Inject::Header {
                name: "x-api-key".into(),
                template: "{key}".into(),
            },
            b"SECRET-KEY-123",
        ))
    }

    #[test]
    fn split_needles_are_caught() {
        let s = b"hello SECRET-KEY-123 and SECRET-KEY-123! SECRET-KEY-12 end";
        for split in 0..s.len() {
            for split2 in split..s.len() {
                let mut sc = Scrub::new(key());
                let mut out = Vec::new();
                out.extend_from_slice(&sc.push(&s[..split], false));
                out.extend_from_slice(&sc.push(&s[split..split2], false));
                out.extend_from_slice(&sc.push(&s[split2..], false));
                out.extend_from_slice(&sc.push(&[], true));
                assert_eq!(
                    out,
                    b"hello [REDACTED] and [REDACTED]! SECRET-KEY-12 end".to_vec(),
                    "{split} {split2}"
                );
            }
        }
    }

    /// The uncopied path gives the same bytes as the copying one, wherever the chunks split
    /// (a key inside a chunk, across two, or at the end), and says which frame was last.
    #[test]
    fn uncopied_chunks_scrub_the_same() {
        let texts: [&[u8]; 3] = [
            b"hello SECRET-KEY-123 and SECRET-KEY-123! SECRET-KEY-12 end",
            b"no key here at all, just a body of some length",
            b"ends with SECRET-KEY-123",
        ];
        for s in texts {
            let want = {
                let mut sc = Scrub::new(key());
                sc.push(s, true)
            };
            for split in 0..=s.len() {
                for last_flag in [false, true] {
                    let mut sc = Scrub::new(key());
                    let mut out = Vec::new();
                    out.extend_from_slice(
                        &sc.push_bytes(Bytes::copy_from_slice(&s[..split]), false),
                    );
                    out.extend_from_slice(
                        &sc.push_bytes(Bytes::copy_from_slice(&s[split..]), last_flag),
                    );
                    if !last_flag {
                        out.extend_from_slice(&sc.push(&[], true));
                    }
                    assert_eq!(out, want.to_vec(), "split {split} last {last_flag}");
                    assert!(sc.pending.is_empty());
                }
            }
        }
    }

    #[test]
    fn encodings_are_caught() {
        let mut sc = Scrub::new(key());
        let out = sc.push(b"q=SECRET-KEY-123&x", true);
        assert_eq!(&out[..], b"q=[REDACTED]&x");
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            "https://evil.test/?k=SECRET-KEY-123".parse().unwrap(),
        );
        h.insert("x-ok", "fine".parse().unwrap());
        assert_eq!(headers(&mut h, &key()), 1);
        assert!(h.get("location").is_none() && h.get("x-ok").is_some());
    }
}

//! `mayfly-proxybench ADDR`: a minimal HTTP/1.1 upstream for bench/proxy.sh. It answers
//! `200 ok` to requests whose `X-Api-Key` equals the variable `BENCH_UPSTREAM_KEY`, and 401
//! otherwise, on one thread, so that the figures measure the proxy rather than the upstream.
//! `BENCH_UPSTREAM_DELAY_MS` (default 0) makes every answer wait that long first (without using
//! CPU), like a remote API's service time.
//!
//! `mayfly-proxybench proxy LISTEN UPSTREAM`: the floor of a hyper-based proxy, for the same
//! runs. It forwards every request to `UPSTREAM` (host:port) with the `X-Api-Key` added, through
//! the stack `mayfly proxy` uses (hyper-util's auto server, its legacy pooled client, tokio with
//! the same choice of scheduler) and nothing else: no token check, no audit, no scrubbing. Whatever
//! separates it from direct calls is the cost of hyper on both sides plus loopback; whatever
//! separates `mayfly proxy` from it is mayfly's own work. A measuring stick, never a proxy to
//! deploy.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::process::ExitCode;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("proxy") {
        return floor_proxy(args.get(2).cloned(), args.get(3).cloned());
    }
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: BENCH_UPSTREAM_KEY=KEY mayfly-proxybench 127.0.0.1:PORT");
        return ExitCode::from(2);
    };
    let Ok(key) = std::env::var("BENCH_UPSTREAM_KEY") else {
        eprintln!("set BENCH_UPSTREAM_KEY");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let delay = std::env::var("BENCH_UPSTREAM_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(std::time::Duration::ZERO, std::time::Duration::from_millis);
    match rt.block_on(serve(addr, Bytes::from(key.into_bytes()), delay)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: String, key: Bytes, delay: std::time::Duration) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("upstream listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let key = key.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let ok = req.headers().get("x-api-key").map(|v| v.as_bytes()) == Some(&key[..]);
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut r = Response::new(Full::new(Bytes::from_static(if ok {
                        b"ok"
                    } else {
                        b"wrong key"
                    })));
                    if !ok {
                        *r.status_mut() = StatusCode::UNAUTHORIZED;
                    }
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn floor_proxy(listen: Option<String>, upstream: Option<String>) -> ExitCode {
    let (Some(listen), Some(upstream), Ok(key)) =
        (listen, upstream, std::env::var("BENCH_UPSTREAM_KEY"))
    else {
        eprintln!(
            "usage: BENCH_UPSTREAM_KEY=KEY mayfly-proxybench proxy LISTEN UPSTREAM_HOST:PORT"
        );
        return ExitCode::from(2);
    };
    let Ok(key) = hyper::header::HeaderValue::from_str(&key) else {
        eprintln!("BENCH_UPSTREAM_KEY is not a valid header value");
        return ExitCode::from(2);
    };
    // As `mayfly proxy`: the single-threaded scheduler on one CPU, one worker per core otherwise.
    let rt = if std::thread::available_parallelism().is_ok_and(|n| n.get() == 1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(proxy(listen, upstream, key)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn proxy(
    listen: String,
    upstream: String,
    key: hyper::header::HeaderValue,
) -> std::io::Result<()> {
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioTimer};

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .build(http);
    let authority: hyper::http::uri::Authority = upstream
        .parse()
        .map_err(|e| std::io::Error::other(format!("upstream {upstream}: {e}")))?;
    // Built once, as `mayfly proxy` builds each route's Host header once.
    let host = hyper::header::HeaderValue::from_str(authority.as_str())
        .map_err(|e| std::io::Error::other(format!("upstream {upstream}: {e}")))?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("floor proxy listening on http://{}", listener.local_addr()?);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, key, authority, host) =
            (client.clone(), key.clone(), authority.clone(), host.clone());
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (client, key, authority, host) =
                (client.clone(), key.clone(), authority.clone(), host.clone());
            async move {
                let (mut parts, body) = req.into_parts();
                let mut uri = parts.uri.into_parts();
                uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
                uri.authority = Some(authority.clone());
                parts.uri = match hyper::Uri::from_parts(uri) {
                    Ok(u) => u,
                    Err(_) => return Ok::<_, Infallible>(status(StatusCode::BAD_REQUEST)),
                };
                parts.headers.insert(hyper::header::HOST, host);
                parts.headers.insert("x-api-key", key);
                match client.request(Request::from_parts(parts, body)).await {
                    Ok(resp) => Ok(resp.map(http_body_util::Either::Left)),
                    Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
                }
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

type Either = http_body_util::Either<Incoming, Full<Bytes>>;

fn status(code: StatusCode) -> Response<Either> {
    let mut r = Response::new(http_body_util::Either::Right(Full::new(Bytes::new())));
    *r.status_mut() = code;
    r
}

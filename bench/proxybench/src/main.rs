//! `mayfly-proxybench ADDR`: a minimal HTTP/1.1 upstream for bench/proxy.sh. It answers
//! `200 ok` to requests whose `X-Api-Key` equals the variable `BENCH_UPSTREAM_KEY`, and 401
//! otherwise, on one thread, so that the figures measure the proxy rather than the upstream.
//! `BENCH_UPSTREAM_DELAY_MS` (default 0) makes every answer wait that long first (without using
//! CPU), like a remote API's service time.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::process::ExitCode;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

fn main() -> ExitCode {
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

//! `woodpecker-floor`: what the kernel alone costs per delivery, for
//! reading the load tool's numbers against a floor.
//!
//! It opens N loopback TCP connections (no WebSocket, no hub), then one
//! writer thread sends a frame-sized message (default 700 bytes, about an
//! `alert` frame) to every connection, round after round — one `send()` per
//! recipient, as a fan-out must — while tokio tasks on one other thread read
//! them, as the load tool's clients do. It prints the writer's time per
//! send and the deliveries per second with both on this machine's cores.
//!
//! `cargo run --release --bin woodpecker-floor -- [CONNECTIONS] [ROUNDS] [BYTES]`

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(10_000);
    let rounds = args.get(1).copied().unwrap_or(20);
    let bytes = args.get(2).copied().unwrap_or(700);
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        writers.push(server);
        readers.push(client);
    }
    let expected = (n * rounds * bytes) as u64;
    let received = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let got = received.clone();
    let reading = std::thread::spawn(move || {
        rt.block_on(async move {
            let mut tasks = Vec::with_capacity(readers.len());
            for s in readers {
                let got = got.clone();
                tasks.push(tokio::spawn(async move {
                    let Ok(mut s) = tokio::net::TcpStream::from_std(s) else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        got.fetch_add(k as u64, Ordering::Relaxed);
                    }
                }));
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            while got.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    });
    std::thread::sleep(Duration::from_millis(300));
    let msg = vec![b'x'; bytes];
    let start = Instant::now();
    for _ in 0..rounds {
        for w in writers.iter_mut() {
            w.write_all(&msg)?;
        }
    }
    let wrote = start.elapsed();
    let _ = reading.join();
    let all = start.elapsed();
    let sends = (n * rounds) as f64;
    println!(
        "{{\"tool\":\"woodpecker-floor\",\"connections\":{n},\"rounds\":{rounds},\"bytes\":{bytes},\
         \"writer_us_per_send\":{:.2},\"deliveries_per_s\":{:.0},\"received_all\":{}}}",
        wrote.as_secs_f64() * 1e6 / sends,
        sends / all.as_secs_f64(),
        received.load(Ordering::Relaxed) >= expected
    );
    Ok(())
}

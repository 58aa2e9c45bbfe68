//! Saves resent after a broken connection: each entry is appended once, also when several
//! entries of one run (stages of a parallel block) were in flight when it broke.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluxio_core::store::{CheckpointStore, Save};
use fluxio_store_redis::RedisStore;

/// A TCP proxy in front of Redis (on plain threads) that can swallow the server's replies
/// and cut its connections: a network that fails after the server ran a command.
struct Proxy {
    addr: SocketAddr,
    swallow: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let swallow = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (swallowing, open) = (swallow.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    break;
                };
                open.lock().unwrap().push(client.try_clone().unwrap());
                open.lock().unwrap().push(server.try_clone().unwrap());
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_server);
                });
                let (mut from_server, mut to_client) = (server, client);
                let swallow = swallowing.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match from_server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if !swallow.load(Ordering::SeqCst)
                            && to_client.write_all(&buf[..n]).is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Proxy {
            addr,
            swallow,
            conns,
        }
    }

    /// Closes every connection open now.
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_resent_after_lost_replies_are_appended_once() {
    let redis = redis_or_skip!("entries_resent_after_lost_replies_are_appended_once");
    let upstream = redis
        .url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(upstream);
    let store = RedisStore::connect(&format!("redis://{}", proxy.addr))
        .await
        .unwrap()
        .key_prefix(redis.prefix.clone());
    let run = "parallel";
    assert!(
        store
            .acquire(run, "me", Duration::from_secs(60))
            .await
            .unwrap()
    );
    store
        .save(run, "me", Save::start("v1", b"input".to_vec()))
        .await
        .unwrap();

    // Two stages of a parallel block finish at once; Redis runs both scripts, but their
    // replies are lost and the connection drops: the store sends both again.
    proxy.swallow.store(true, Ordering::SeqCst);
    let a = store.save(run, "me", Save::Entry(b"stage-a".to_vec()));
    let b = store.save(run, "me", Save::Entry(b"stage-b".to_vec()));
    let both = tokio::spawn(async move { tokio::join!(a, b) });
    // Until the server has run both (seen through a connection of its own).
    for _ in 0..100 {
        let stored = redis.store.load(run).await.unwrap().unwrap().entries.len();
        if stored == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.swallow.store(false, Ordering::SeqCst);
    proxy.cut();
    let (a, b) = both.await.unwrap();
    a.unwrap();
    b.unwrap();

    let mut entries = redis.store.load(run).await.unwrap().unwrap().entries;
    entries.sort();
    assert_eq!(
        entries,
        [b"stage-a".to_vec(), b"stage-b".to_vec()],
        "each entry once (a resume refuses a stage that finished twice)"
    );
}

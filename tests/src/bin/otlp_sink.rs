//! A stand-in OTLP/HTTP collector for CI's run of the `otlp` example: prints the port it
//! listens on (loopback), then appends one line per export request to the log file given
//! as its argument — `spans: ` and the decoded span names, in order. Runs until killed.

use std::io::Write as _;

use fluxio_tests::otlp::{receiver_with, spans};

fn main() {
    let Some(log_path) = std::env::args().nth(1) else {
        eprintln!("usage: otlp_sink LOG_FILE");
        std::process::exit(2);
    };
    let (addr, _received) = receiver_with(move |request| {
        let names: Vec<&str> = spans(request).map(|s| s.name.as_str()).collect();
        let line = format!("spans: {}\n", names.join(" "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .and_then(|mut log| log.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("otlp_sink: cannot write {log_path}: {e}");
        }
    });
    println!("{}", addr.port());
    loop {
        std::thread::park();
    }
}

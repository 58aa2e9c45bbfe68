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
    let log = {
        let log_path = log_path.clone();
        move |line: String| {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .and_then(|mut log| log.write_all(line.as_bytes()));
            if let Err(e) = written {
                eprintln!("otlp_sink: cannot write {log_path}: {e}");
            }
        }
    };
    let on_request = log.clone();
    let (addr, received) = receiver_with(move |request| {
        let names: Vec<&str> = spans(request).map(|s| s.name.as_str()).collect();
        on_request(format!("spans: {}\n", names.join(" ")));
    });
    println!("{}", addr.port());
    // Requests it could not take (another path or content type, a bad body) are logged
    // too, so a failed check says why.
    let mut reported = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let problems = received.lock().unwrap().problems.clone();
        for problem in &problems[reported..] {
            log(format!("problem: {problem}\n"));
        }
        reported = problems.len();
    }
}

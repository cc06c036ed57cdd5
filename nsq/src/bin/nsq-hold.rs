//! Test tool: subscribes and holds every message without finishing it, printing one line per
//! message (`held <id> attempts=<n>`). Tests kill it with SIGKILL to see that nsqd redelivers
//! what a crashed consumer held.
//!
//! Usage: `nsq-hold <nsqd tcp address> <topic> <channel> <max in flight>`

use std::io::Write;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: nsq-hold <nsqd-tcp-address> <topic> <channel> <max-in-flight>");
        std::process::exit(2);
    }
    let Ok(max_in_flight) = args[4].parse::<u32>() else {
        eprintln!("nsq-hold: max-in-flight {:?} is not a number", args[4]);
        std::process::exit(2);
    };
    let config = nsq::ConsumerConfig {
        nsqd_tcp_addresses: vec![args[1].clone()],
        max_in_flight,
        ..Default::default()
    };
    let (_consumer, mut messages) = match nsq::Consumer::new(&args[2], &args[3], config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nsq-hold: {e}");
            std::process::exit(2);
        }
    };
    let mut held = Vec::new();
    while let Some(msg) = messages.recv().await {
        println!("held {} attempts={}", msg.id(), msg.attempts());
        let _ = std::io::stdout().flush();
        held.push(msg);
    }
}

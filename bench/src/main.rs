//! Side-by-side benchmarks of session-layer, bare Axum, tower-sessions and
//! axum-extra, all in one run on one machine. See docs/benchmarks.md.
//!
//! ```sh
//! cargo run --release --manifest-path bench/Cargo.toml -- inprocess   # primary table + chart
//! cargo run --release --manifest-path bench/Cargo.toml -- load        # HTTP over loopback
//! cargo run --release --manifest-path bench/Cargo.toml -- scale       # MemoryStore at 1k/100k/1M
//! cargo run --release --manifest-path bench/Cargo.toml -- owner-calls # the owner index on Redis
//! cargo run --release --manifest-path bench/Cargo.toml -- checks      # what the lost-update checks cost
//! ```

mod chart;
mod checks;
mod coherence;
mod configs;
mod inprocess;
mod load;
mod owners;
mod scale;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("inprocess");
    match command {
        "checks" => {
            let rounds = arg(&args, "--rounds").unwrap_or(20);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(checks::run(rounds, Duration::from_millis(40)));
        }
        "inprocess" => {
            let rounds = arg(&args, "--rounds").unwrap_or(30);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let configs = configs::all(!args.iter().any(|a| a == "--local")).await;
                let results = inprocess::run(&configs, rounds, Duration::from_millis(40)).await;
                print_inprocess(&results, rounds);
                let svg = chart::inprocess(&results);
                let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/benchmarks.svg");
                std::fs::write(path, svg).unwrap();
                eprintln!("chart written to docs/benchmarks.svg");
            });
        }
        "load" => {
            let users = arg(&args, "--users").unwrap_or(16);
            let seconds = arg(&args, "--seconds").unwrap_or(3);
            // `--path /read` loads the read-only route (each user writes once
            // first); read-modify-write by default.
            let path: &'static str = match args.iter().position(|a| a == "--path") {
                Some(i) if args.get(i + 1).map(String::as_str) == Some("/read") => "/read",
                _ => "/rmw",
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let configs = configs::all(true).await;
                println!("| configuration | requests/s | p50 | p99 | errors |");
                println!("| --- | ---: | ---: | ---: | ---: |");
                for config in &configs {
                    let r =
                        load::run(config, users, Duration::from_secs(seconds as u64), path).await;
                    println!(
                        "| {} | {:.0} | {:.0} µs | {:.0} µs | {} |",
                        r.config, r.requests_per_second, r.p50_us, r.p99_us, r.errors
                    );
                }
            });
        }
        "coherence" => {
            let writes = arg(&args, "--writes").unwrap_or(2000);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(coherence::run(writes));
        }
        "redis-calls" => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(coherence::redis_call_costs(3000));
        }
        "owner-calls" => {
            let n = arg(&args, "--n").unwrap_or(200);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(owners::calls(n as u64));
        }
        "round-trips" => {
            let requests = arg(&args, "--requests").unwrap_or(1000);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(coherence::round_trips(requests as u32));
        }
        "scale" => {
            println!(
                "| store | live sessions | memory per session | read-modify-write per request |"
            );
            println!("| --- | ---: | ---: | ---: |");
            for which in ["ours", "tower-sessions"] {
                for sessions in [1_000, 100_000, 1_000_000] {
                    let output = std::process::Command::new(std::env::current_exe().unwrap())
                        .args(["scale-one", which, &sessions.to_string()])
                        .output()
                        .unwrap();
                    assert!(
                        output.status.success(),
                        "{}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    let text = String::from_utf8(output.stdout).unwrap();
                    let mut fields = text.split_whitespace();
                    let (bytes, ns) = (fields.next().unwrap(), fields.next().unwrap());
                    let name = if which == "ours" {
                        "session-layer MemoryStore"
                    } else {
                        "tower-sessions MemoryStore"
                    };
                    let ns: f64 = ns.parse().unwrap();
                    println!(
                        "| {name} | {sessions} | {bytes} B | {:.2} µs |",
                        ns / 1000.0
                    );
                }
            }
        }
        "profile" => {
            // One configuration and route in a loop, for valgrind/perf:
            // profile CONFIG-INDEX PATH COUNT
            let index: usize = args[1].parse().unwrap();
            let path = args[2].clone();
            let count: usize = args[3].parse().unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let configs = configs::all(false).await;
                let mut user = inprocess::User::new();
                user.request(&configs[index].router, "/rmw").await;
                for _ in 0..count {
                    user.request(&configs[index].router, &path).await;
                }
            });
        }
        "scale-one" => {
            let which = args[1].clone();
            let sessions: usize = args[2].parse().unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(scale::measure(&which, sessions));
        }
        other => {
            eprintln!(
                "unknown command {other}: use inprocess, load, scale, coherence, round-trips or owner-calls"
            );
            std::process::exit(2);
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<usize> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

fn print_inprocess(results: &[inprocess::Added], rounds: usize) {
    println!(
        "Added time per request over bare Axum, median of {rounds} paired rounds [25th–75th percentile], in µs:\n"
    );
    println!("| configuration | read-modify-write | read-only | untouched route |");
    println!("| --- | ---: | ---: | ---: |");
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if !names.contains(&r.config) {
            names.push(r.config);
        }
    }
    for name in names {
        let cell = |workload: &str| {
            let r = results
                .iter()
                .find(|r| r.config == name && r.workload == workload)
                .unwrap();
            if name == "bare axum" {
                format!("{:.2} (absolute)", r.per_request / 1000.0)
            } else {
                format!(
                    "{:+.2} [{:+.2}, {:+.2}]",
                    r.median / 1000.0,
                    r.p25 / 1000.0,
                    r.p75 / 1000.0
                )
            }
        };
        println!(
            "| {name} | {} | {} | {} |",
            cell("rmw"),
            cell("read"),
            cell("untouched")
        );
    }
}

//! Issue 23's rows: requests per second on one connection with a handler
//! that awaits 1 ms (1, 16 and 256 in flight), and the cost of the
//! deadline field on the request round trip. Included by `compare.rs`
//! (`--only inflight`, `--only deadline`).

use super::*;

/// How long each in-flight run goes on.
const INFLIGHT_RUN: Duration = Duration::from_secs(2);

/// A handler that awaits 1 ms (a database call, say), then answers.
struct Wait1ms;

impl Handler for Wait1ms {
    type Message = Heartbeat;
    async fn handle(&self, hb: Heartbeat, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        ctx.reply(&hb)?;
        Ok(())
    }
}

/// Requests answered per second with `n` in flight on one connection
/// (closed loop, 2 worker threads, loopback).
fn requests_per_second(n: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    bounded(&rt, "in-flight requests", async move {
        let server = Server::builder(Wait1ms)
            .request_ids()
            .concurrent_requests(n)
            .listen("127.0.0.1:0")
            .await
            .expect("listen");
        let client = Arc::new(
            Client::<Heartbeat>::builder()
                .request_ids()
                .connect(server.local_addr())
                .await
                .expect("connect"),
        );
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let callers: Vec<_> = (0..n)
            .map(|k| {
                let (client, done) = (client.clone(), done.clone());
                tokio::spawn(async move {
                    let mut seq = 0;
                    while started.elapsed() < INFLIGHT_RUN {
                        let hb = Heartbeat {
                            seq,
                            node: k as u32,
                            flags: 0,
                        };
                        let reply = client.request(&hb).await.expect("reply");
                        assert_eq!(reply.seq, seq, "a reply answered another request");
                        seq += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.expect("caller");
        }
        let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        client.close().await;
        server.cut().await;
        rate
    })
}

/// What the timer allows: `n` tasks that each await 1 ms in a loop, on the
/// same runtime, with no network (the baseline of the in-flight rows).
fn sleeps_per_second(n: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    bounded(&rt, "sleeps", async move {
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let done = done.clone();
                tokio::spawn(async move {
                    while started.elapsed() < INFLIGHT_RUN {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    })
}

pub(crate) fn target_inflight(plan: &Plan, report: &mut Report) {
    for n in [1usize, 16, 256] {
        let case = format!("inflight_{n}");
        if !plan.wants_case("inflight", &case) {
            continue;
        }
        let mut ours = Vec::new();
        let mut base = Vec::new();
        for rep in 0..plan.reps {
            let (o, b) = (requests_per_second(n), sleeps_per_second(n));
            eprintln!(
                "  in flight {n} rep {rep}: {o:.0} requests/s, {b:.0} sleeps/s (ideal {})",
                n * 1000
            );
            ours.push(o);
            base.push(b);
        }
        let (o, b) = (median(&mut ours), median(&mut base));
        report.rows.push(Row {
            target: "23",
            name: (n == 256).then_some("inflight_256_vs_timer"),
            what: format!("requests/s, handler awaits 1 ms, {n} in flight (timer/ours)"),
            ours: format!("{o:.0}/s"),
            baseline: format!("{b:.0}/s"),
            value: o / b,
            goal: (n == 256).then_some(0.9),
        });
        report.rows.push(Row {
            target: "23",
            name: None,
            what: format!("  the same against the ideal {n}/1 ms"),
            ours: format!("{o:.0}/s"),
            baseline: format!("{}/s", n * 1000),
            value: o / (n as f64 * 1000.0),
            goal: None,
        });
    }
}

/// Request round trips (one CPU) to a server that echoes, with both ends'
/// handshake on; `deadlines`: whether they announce `DEADLINES` (each
/// request then carries its remaining time).
fn request_round_trips(rounds: usize, cpu: usize, deadlines: bool) -> Vec<Duration> {
    struct Pong;
    impl Handler for Pong {
        type Message = Heartbeat;
        async fn handle(&self, hb: Heartbeat, ctx: &mut Context<'_>) -> Result<(), BoxError> {
            ctx.reply(&hb)?;
            Ok(())
        }
    }
    use chitchat_net::handshake::features;
    let bits = if deadlines {
        features::SUPPORTED
    } else {
        features::SUPPORTED & !features::DEADLINES
    };
    on_one_cpu(cpu, move || async move {
        let server = Server::builder(Pong)
            .request_ids()
            .cluster("bench")
            .announce_features(bits)
            .listen("127.0.0.1:0")
            .await
            .expect("listen");
        let client = Client::<Heartbeat>::builder()
            .request_ids()
            .cluster("bench")
            .announce_features(bits)
            .connect(server.local_addr())
            .await
            .expect("connect");
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..(PING_WARMUP + rounds) as u64 {
            let started = Instant::now();
            let hb = Heartbeat {
                seq: i,
                node: 1,
                flags: 0,
            };
            let reply: Heartbeat = client.request(&hb).await.expect("reply");
            assert_eq!(reply.seq, i, "a reply answered another request");
            if i as usize >= PING_WARMUP {
                samples.push(started.elapsed());
            }
        }
        client.close().await;
        server.cut().await;
        samples
    })
}

pub(crate) fn target_deadline(plan: &Plan, report: &mut Report) {
    let rounds = plan.ping_rounds;
    let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let mut with = Vec::new();
    let mut without = Vec::new();
    for rep in 0..plan.reps {
        // Alternate which goes first (the machine drifts).
        let (a, b) = if rep % 2 == 0 {
            let a = percentiles(&mut request_round_trips(rounds, cpu, false)).0;
            (
                a,
                percentiles(&mut request_round_trips(rounds, cpu, true)).0,
            )
        } else {
            let b = percentiles(&mut request_round_trips(rounds, cpu, true)).0;
            (
                percentiles(&mut request_round_trips(rounds, cpu, false)).0,
                b,
            )
        };
        eprintln!("  request p50 rep {rep}: without deadline {a:.1} µs, with {b:.1} µs");
        without.push(a);
        with.push(b);
    }
    let (a, b) = (median(&mut without), median(&mut with));
    report.rows.push(Row {
        target: "23",
        name: Some("request_deadline_cost"),
        what: "request p50 with the deadline field (without/with)".into(),
        ours: format!("{b:.1} µs"),
        baseline: format!("{a:.1} µs"),
        value: a / b,
        goal: Some(0.98),
    });
}

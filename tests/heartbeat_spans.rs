//! The heartbeat monitor's check spans, in a process of their own: the
//! test installs a thread-local tracing subscriber, and tracing caches
//! whether a span is wanted per call site, process-wide; tests running at
//! the same time on other threads would race with it.

use std::sync::{Arc, Mutex};

use chitchat_net::heartbeat::{register, Monitor, PeerState};

#[path = "suite/heartbeat_support/mod.rs"]
mod heartbeat_support;

use heartbeat_support::{fast, next_state, node};

/// Records, for each new span, its name and whether it has a parent.
#[derive(Clone, Default)]
struct SpanParents(Arc<Mutex<Vec<(String, bool)>>>);

impl<S> tracing_subscriber::Layer<S> for SpanParents
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let has_parent =
            attrs.parent().is_some() || (attrs.is_contextual() && ctx.lookup_current().is_some());
        let mut seen = self.0.lock().unwrap();
        seen.push((attrs.metadata().name().to_string(), has_parent));
    }
}

#[test]
fn check_spans_are_not_children_of_the_registration_connection() {
    use tracing_subscriber::layer::SubscriberExt;
    let parents = SpanParents::default();
    let subscriber = tracing_subscriber::registry().with(parents.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (monitor, mut events) = Monitor::new(fast());
        let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
        let (node, addr) = node().await;
        register(registrations.local_addr(), "n", addr)
            .await
            .unwrap();
        assert_eq!(next_state(&mut events).await, PeerState::Alive);
        monitor.stop().await;
        registrations.cut().await;
        node.cut().await;
    });
    let seen = parents.0.lock().unwrap();
    let checks: Vec<_> = seen
        .iter()
        .filter(|(name, _)| name == "heartbeat")
        .collect();
    assert_eq!(checks.len(), 1, "{seen:?}");
    assert!(!checks[0].1, "the check span has a parent: {seen:?}");
    // The registration ran inside a connection span (so the test can fail).
    assert!(seen.iter().any(|(_, parent)| *parent), "{seen:?}");
}

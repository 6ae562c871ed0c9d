//! Several `seks serve` processes on one PostgreSQL database, as replicas behind a load
//! balancer run: starting them, asking each the same thing, waiting until each answers a
//! way, and steady traffic across them that records every answer.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::http::{Reply, try_send};
use super::{Broker, Env};

/// Brokers serving from one store.
pub struct Replicas {
    pub brokers: Vec<Broker>,
}

impl Replicas {
    /// Start `n` brokers on `env`, whose store must be shared (see [`Env::on_database`]),
    /// each with `vars` in its environment.
    pub async fn start(env: &Env, n: usize, vars: &[(&str, &str)]) -> Replicas {
        assert!(env.pg.is_some(), "replicas share a PostgreSQL store");
        let mut brokers = Vec::with_capacity(n);
        for _ in 0..n {
            brokers.push(env.serve_with(vars).await);
        }
        Replicas { brokers }
    }

    /// Send `call` to every replica once, in order.
    pub async fn each(&self, call: &Call) -> Vec<Reply> {
        let mut replies = Vec::with_capacity(self.brokers.len());
        for broker in &self.brokers {
            replies.push(
                call.send(&broker.base)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        replies
    }

    /// Send `call` to every replica, each again and again (a few ms apart, all at once),
    /// until it answers as `done` says; how long each took, from `since`. Panics when one
    /// hasn't within `limit`.
    pub async fn each_until(
        &self,
        call: &Call,
        since: Instant,
        limit: Duration,
        done: fn(&Reply) -> bool,
    ) -> Vec<Duration> {
        let mut polls = JoinSet::new();
        for (i, broker) in self.brokers.iter().enumerate() {
            let (call, base) = (call.clone(), broker.base.clone());
            polls.spawn(async move {
                loop {
                    let reply = call.send(&base).await;
                    if reply.as_ref().is_ok_and(done) {
                        return (i, since.elapsed());
                    }
                    assert!(
                        since.elapsed() < limit,
                        "replica {i} never answered as expected within {limit:?}: {reply:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        let mut took = vec![Duration::ZERO; self.brokers.len()];
        while let Some(joined) = polls.join_next().await {
            let (i, elapsed) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            took[i] = elapsed;
        }
        took
    }
}

/// A request to send to replicas.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Call {
    /// `GET path`, with `token` as a bearer token if given.
    pub fn get(path: &str, token: Option<&str>) -> Call {
        Call {
            method: "GET",
            path: path.to_owned(),
            headers: token
                .map(|t| vec![("authorization".to_owned(), format!("Bearer {t}"))])
                .unwrap_or_default(),
            body: String::new(),
        }
    }

    /// Send it to the broker at `base`.
    pub async fn send(&self, base: &str) -> Result<Reply, String> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let url = format!("{base}{}", self.path);
        try_send(self.method, &url, &headers, self.body.clone()).await
    }
}

/// One answer steady traffic got.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The replica asked.
    pub replica: usize,
    /// When the request was sent.
    pub sent: Instant,
    /// Its status; 0 when there was no answer at all.
    pub status: u16,
    /// The broker's error code (`x-seks-error`), if it refused.
    pub code: Option<String>,
    /// The request id the broker gave it (`x-seks-request-id`).
    pub request_id: Option<String>,
}

/// Steady traffic: a task per replica sending one call after another, `pause` apart,
/// until [`Load::finish`].
pub struct Load {
    stop: watch::Sender<bool>,
    tasks: JoinSet<Vec<Outcome>>,
}

impl Load {
    /// Start sending `call` to every replica.
    pub fn start(replicas: &Replicas, call: &Call, pause: Duration) -> Load {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (replica, broker) in replicas.brokers.iter().enumerate() {
            let (call, base, stopped) = (call.clone(), broker.base.clone(), stopped.clone());
            tasks.spawn(async move {
                let mut outcomes = Vec::new();
                while !*stopped.borrow() {
                    let sent = Instant::now();
                    let reply = call.send(&base).await;
                    outcomes.push(Outcome {
                        replica,
                        sent,
                        status: reply.as_ref().map_or(0, |r| r.status),
                        code: reply
                            .as_ref()
                            .ok()
                            .and_then(|r| r.header("x-seks-error").map(str::to_owned)),
                        request_id: reply
                            .as_ref()
                            .ok()
                            .and_then(|r| r.header("x-seks-request-id").map(str::to_owned)),
                    });
                    tokio::time::sleep(pause).await;
                }
                outcomes
            });
        }
        Load { stop, tasks }
    }

    /// Stop sending; every answer, in the order sent.
    pub async fn finish(mut self) -> Vec<Outcome> {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            all.extend(joined.expect("load task"));
        }
        all.sort_by_key(|o| o.sent);
        all
    }
}

//! End-to-end tests: the real `seks` binary on real sockets, a real mock upstream, and the
//! providers' official Python SDKs as clients. One binary so the suite links once.

mod support;

mod admin_api;
mod audit;
mod capabilities;
mod cli;
mod failures;
mod forward_proxy;
mod hygiene;
mod master_key;
mod migrate;
mod oauth2;
mod observability;
mod passthrough;
mod path_escape;
mod policies;
mod policy_bypasses;
mod providers;
mod replicas;
mod scrubbing;
mod sdk;
mod sigv4;
mod slow_clients;
mod store;
mod tls_upstream;

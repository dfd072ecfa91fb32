//! The HTTP client every part of wharf builds its connections with: reqwest over rustls with `ring` as the crypto
//! provider, and wharf's user agent. reqwest is built without a provider of its own (one crypto stack in the tree),
//! so a process must install one before its first client: the binary does it once at start
//! ([`install_crypto_provider`]); [`client_builder`] makes sure of it for tests and embedders.

use std::sync::Once;

/// Installs `ring` as rustls' process-wide crypto provider, once. (If the embedding program installed another one
/// first, that one stays.)
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder with the crypto provider in place and wharf's user agent; callers add their timeouts.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
}

//! The rustls provider and roots of the crate's TLS clients: the Genesys client's HTTPS connections and the
//! `rediss://` stores.
//!
//! The provider is never left to rustls to pick from its crate features: in an application that links both of
//! its providers (reqwest's default TLS brings aws-lc-rs, this crate ring) rustls cannot pick one and panics.

use rustls::crypto::CryptoProvider;

/// The application's process-wide provider when it installed one ([`CryptoProvider::install_default`]: its
/// choice, such as aws-lc-rs for post-quantum key exchange), else ring, which builds without cmake.
pub(crate) fn provider() -> CryptoProvider {
    match CryptoProvider::get_default() {
        Some(installed) => CryptoProvider::clone(installed),
        None => ring(),
    }
}

/// rustls's ring provider, with its default cipher suites and key exchange groups.
#[allow(
    deprecated,
    reason = "rustls 0.23.48 deprecates its ring provider for having no post-quantum key exchange; ring stays the \
              default that builds without cmake, and an application that wants post-quantum installs aws-lc-rs \
              as its process default, which `provider` prefers"
)]
fn ring() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The Genesys client's TLS configuration: [`provider`], and Mozilla's roots with the certificates of `extra`
/// (PEM files' contents) besides.
///
/// # Errors
/// A PEM without a certificate, one that does not read, or a certificate that cannot be a root (the message
/// says which); the provider supports no safe TLS version.
#[cfg(feature = "genesys")]
pub(crate) fn https_config(extra: &[Vec<u8>]) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::sync::Arc;

    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (n, pem) in extra.iter().enumerate() {
        let which = n + 1;
        let mut found = 0;
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate
                .map_err(|e| format!("root certificates #{which} do not read as PEM: {e}"))?;
            roots.add(certificate).map_err(|e| {
                format!(
                    "root certificates #{which}: certificate {} cannot be a root: {e}",
                    found + 1
                )
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(format!(
                "root certificates #{which} hold no `-----BEGIN CERTIFICATE-----` block"
            ));
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A fred TLS connector for a `rediss://` URL: [`provider`], and the roots fred's own default trusts (the
/// system's store, or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
///
/// # Errors
/// No root certificate could be loaded, or the provider supports no safe TLS version.
#[cfg(feature = "redis-tls")]
pub(crate) fn redis_connector() -> Result<fred::types::config::TlsConnector, fred::error::Error> {
    use fred::error::{Error, ErrorKind};
    use std::sync::Arc;

    let loaded = fred::rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let why = loaded
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(Error::new(
            ErrorKind::Tls,
            format!("no root certificate to verify the Redis server with ({why})"),
        ));
    }
    if let Some(error) = loaded.errors.first() {
        tracing::warn!(%error, roots = added, "some root certificates could not be loaded");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Tls, e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config.into())
}

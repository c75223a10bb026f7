//! TLS beyond the system's roots: a private CA for every delivery
//! (`[delivery] ca_file`), and per endpoint a CA of its own and a client
//! certificate for mutual TLS (a subscription's `tls`). PEM in, reqwest's
//! types out; each check builds what the sender will build, so a setting
//! that passes here cannot fail later for being malformed.

/// The certificates of a PEM bundle (at least one).
pub fn certificates(pem: &str) -> Result<Vec<reqwest::Certificate>, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate (-----BEGIN CERTIFICATE-----) in the PEM".into());
    }
    Ok(certs)
}

/// A client identity from a certificate (chain) and its private key, both
/// PEM; checked by building a client with it (rustls refuses a key that
/// does not parse or does not fit the certificate's algorithm).
pub fn identity(certificate: &str, key: &str) -> Result<reqwest::Identity, String> {
    if !certificate.contains("-----BEGIN CERTIFICATE-----") {
        return Err("the certificate is not PEM (-----BEGIN CERTIFICATE-----)".into());
    }
    if !key.contains("PRIVATE KEY-----") {
        return Err("the key is not a PEM private key (-----BEGIN PRIVATE KEY-----)".into());
    }
    let identity = reqwest::Identity::from_pem(format!("{certificate}\n{key}").as_bytes())
        .map_err(|e| format!("{e}"))?;
    super::install_tls_provider();
    reqwest::Client::builder()
        .identity(identity.clone())
        .build()
        .map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            message
        })?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_and_its_key_make_an_identity() {
        let (cert, key) = pair();
        identity(&cert, &key).unwrap();
        assert_eq!(certificates(&cert).unwrap().len(), 1);
    }

    #[test]
    fn malformed_pem_is_refused_with_a_reason() {
        let (cert, key) = pair();
        assert!(identity(&key, &cert).unwrap_err().contains("PEM"));
        assert!(
            identity(
                &cert,
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            )
            .is_err()
        );
        assert!(certificates("hello").is_err());
        assert!(certificates(&key).is_err());
        assert!(
            certificates("-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}

//! Identity and mutual authentication: who is calling, for whom, from what
//! device — and the gateway's own identity towards upstreams.
#![forbid(unsafe_code)]

/// The three signature checks of a rustls certificate verifier, done by the
/// algorithms of its `provider` field: every verifier here that is not a
/// wrapper checks signatures the same way, so they share this one copy.
macro_rules! signatures_by_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

pub mod ca;
pub mod client_credentials;
pub mod dev_issuer;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod paths;
pub mod posture;
pub mod principal;
pub mod spiffe;
pub mod tls;
pub mod workload;

//! A certificate authority made for one test, and server certificates it signs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::{Result, TestSupportError};

fn cert_err(err: rcgen::Error) -> TestSupportError {
    TestSupportError::Certificate(err.to_string())
}

/// A CA whose certificate is written to `ca_cert` (PEM).
pub struct TestCa {
    pub ca_cert: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and key pair in PEM files, plus the raw pieces.
pub struct IssuedCert {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    /// DER of the certificate (for JWT `x5c`).
    pub cert_der: Vec<u8>,
    /// PKCS#8 DER of the private key (ECDSA P-256).
    pub key_pkcs8: Vec<u8>,
}

impl TestCa {
    /// Creates a CA and writes its certificate to `dir/ca.pem`.
    pub fn create(dir: &Path, name: &str) -> Result<TestCa> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(cert_err)?;
        let ca_cert = dir.join("ca.pem");
        std::fs::write(&ca_cert, cert.pem()).map_err(TestSupportError::io(format!(
            "writing {}",
            ca_cert.display()
        )))?;
        Ok(TestCa { ca_cert, cert, key })
    }

    /// Issues a certificate for `names` (DNS names or IP addresses), written
    /// as `dir/<stem>.pem` and `dir/<stem>-key.pem`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Result<IssuedCert> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).map_err(cert_err)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(cert_err)?;
        let cert_pem = dir.join(format!("{stem}.pem"));
        let key_pem = dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert_pem, cert.pem()).map_err(TestSupportError::io(format!(
            "writing {}",
            cert_pem.display()
        )))?;
        std::fs::write(&key_pem, key.serialize_pem()).map_err(TestSupportError::io(format!(
            "writing {}",
            key_pem.display()
        )))?;
        Ok(IssuedCert {
            cert_pem,
            key_pem,
            cert_der: cert.der().to_vec(),
            key_pkcs8: key.serialize_der(),
        })
    }
}

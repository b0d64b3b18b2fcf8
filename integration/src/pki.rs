//! Certificates for one test, made with openssl: a CA and the certificates it signs (P-256
//! keys, valid one day), for TLS etcd and the test's Kubernetes control plane.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate authority in a directory of the test's own.
pub struct Ca {
    dir: PathBuf,
    /// The CA certificate (PEM).
    pub cert: PathBuf,
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ca {
    /// Makes a CA called `name` in `dir` (files `<name>.crt`, `<name>.key`).
    pub fn new(dir: &Path, name: &str) -> Ca {
        let (crt, key, subj) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("/CN={name}"),
        );
        let mut args = vec!["req", "-x509", "-days", "1", "-keyout", &key, "-out", &crt];
        args.extend(EC);
        args.extend(["-subj", &subj]);
        openssl(dir, &args);
        Ca {
            dir: dir.to_path_buf(),
            cert: dir.join(crt),
        }
    }

    /// Issues `file`.crt/.key for `subject` (e.g. `/O=system:masters/CN=admin`) with the
    /// given X.509 extensions (lines such as `subjectAltName=IP:127.0.0.1`).
    pub fn issue(&self, file: &str, subject: &str, extensions: &[&str]) -> Issued {
        let (key, csr, crt, ext) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.crt"),
            format!("{file}.ext"),
        );
        std::fs::write(self.dir.join(&ext), extensions.join("\n") + "\n").expect("write ext");
        let mut req = vec!["req", "-keyout", &key, "-out", &csr, "-subj", subject];
        req.extend(EC);
        openssl(&self.dir, &req);
        let ca_crt = self
            .cert
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let ca_key = ca_crt.replace(".crt", ".key");
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ],
        );
        Issued {
            cert: self.dir.join(crt),
            key: self.dir.join(key),
        }
    }
}

/// An RSA key pair (`name`.key, `name`.pub), as service-account token signing needs.
pub fn rsa_key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, public) = (format!("{name}.key"), format!("{name}.pub"));
    openssl(dir, &["genrsa", "-out", &key, "2048"]);
    openssl(dir, &["rsa", "-in", &key, "-pubout", "-out", &public]);
    (dir.join(key), dir.join(public))
}

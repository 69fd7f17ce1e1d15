//! Reading a registry configuration file: the `[registry."HOST"]` tables of
//! BuildKit's `buildkitd.toml` (`util/resolver/config`), into
//! [`RegistryHosts`].
//!
//! ```toml
//! [registry."docker.io"]
//! mirrors = ["mirror.example:5000", "proxy.example/docker.io"]
//!
//! [registry."mirror.example:5000"]
//! http = true
//!
//! [registry."registry.internal"]
//! ca = ["/etc/certs/internal-ca.pem"]
//! [[registry."registry.internal".keypair]]
//! key = "/etc/certs/client.key"
//! cert = "/etc/certs/client.pem"
//! ```
//!
//! Every key is honoured as BuildKit honours it or refused: an error names
//! the file, the line, the table and the key. Paths must be absolute; the
//! files a table names must be readable when the file is read.

use std::path::{Path, PathBuf};

use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

use crate::hosts::{ClientCert, HostSettings, Mirror, RegistryHosts};
use crate::reference::{is_valid_registry, is_valid_repository_path};

/// The keys of a `[registry."HOST"]` table.
const HOST_KEYS: &str = "mirrors, http, insecure, ca, keypair, tlsconfigdir";

/// Why a registry configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostsFileError {
    #[error("registry configuration {}: {source}", .file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("registry configuration {}:{line}: {detail}", .file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        detail: String,
    },
    /// A key kiln does not honour, or a value it cannot use. `table` is
    /// empty for a top-level key.
    #[error("registry configuration {}:{line}: {}{key}: {detail}", .file.display(), table_prefix(.table))]
    Setting {
        file: PathBuf,
        line: usize,
        /// `registry."docker.io"`, `registry."docker.io".keypair`, or empty.
        table: String,
        key: String,
        detail: String,
    },
}

fn table_prefix(table: &str) -> String {
    if table.is_empty() {
        String::new()
    } else {
        format!("[{table}] ")
    }
}

impl RegistryHosts {
    /// Reads the registry configuration in `file`.
    pub fn load(file: &Path) -> Result<RegistryHosts, HostsFileError> {
        let text = std::fs::read_to_string(file).map_err(|source| HostsFileError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        RegistryHosts::parse(&text, file)
    }

    /// Reads a registry configuration from `text`, which came from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<RegistryHosts, HostsFileError> {
        let reader = Reader { text, file };
        let document = DeTable::parse(text).map_err(|err| HostsFileError::Syntax {
            file: file.to_path_buf(),
            line: reader.line(&err.span().unwrap_or(0..0)),
            detail: err.message().to_string(),
        })?;
        let mut hosts = RegistryHosts::default();
        hosts.file = Some(file.to_path_buf());
        for (key, value) in document.get_ref() {
            if key.get_ref() != "registry" {
                return Err(reader.setting(
                    "",
                    key,
                    "not a registry setting: kiln reads only the [registry.\"HOST\"] tables of buildkitd.toml's format",
                ));
            }
            let DeValue::Table(registries) = value.get_ref() else {
                return Err(reader.setting(
                    "",
                    key,
                    "expected [registry.\"HOST\"] tables (containers-registries.conf's [[registry]] format is not read)",
                ));
            };
            for (host, table) in registries {
                let settings = reader.host_table(host, table)?;
                hosts.insert(host.get_ref().to_string(), settings);
            }
        }
        Ok(hosts)
    }
}

/// The file being read, for line numbers and messages.
struct Reader<'a> {
    text: &'a str,
    file: &'a Path,
}

/// A `[registry."HOST"]` table as read so far: the client certificates it
/// names are counted before one is chosen.
#[derive(Default)]
struct HostTable {
    settings: HostSettings,
    client_certs: Vec<ClientCert>,
}

impl Reader<'_> {
    /// The 1-based line `span` starts on.
    fn line(&self, span: &std::ops::Range<usize>) -> usize {
        let start = span.start.min(self.text.len());
        self.text.as_bytes()[..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn setting(&self, table: &str, key: &Spanned<impl AsRef<str>>, detail: &str) -> HostsFileError {
        HostsFileError::Setting {
            file: self.file.to_path_buf(),
            line: self.line(&key.span()),
            table: table.to_string(),
            key: key.get_ref().as_ref().to_string(),
            detail: detail.to_string(),
        }
    }

    /// Reads one `[registry."HOST"]` table.
    fn host_table(
        &self,
        host: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Result<HostSettings, HostsFileError> {
        let table = format!("registry.{:?}", host.get_ref());
        if !is_valid_registry(host.get_ref()) {
            return Err(self.setting(
                "",
                host,
                &format!("{table} does not name a registry: expected HOST or HOST:PORT"),
            ));
        }
        let DeValue::Table(entries) = value.get_ref() else {
            return Err(self.setting("", host, &format!("{table} must be a table")));
        };
        let mut read = HostTable::default();
        for (key, value) in entries {
            self.host_key(&table, key, value, &mut read)?;
        }
        if read.client_certs.len() > 1 {
            return Err(self.setting(
                &table,
                host,
                &format!(
                    "{} client certificates (keypair and tlsconfigdir together); kiln presents one per registry",
                    read.client_certs.len()
                ),
            ));
        }
        read.settings.client_cert = read.client_certs.pop();
        Ok(read.settings)
    }

    /// Reads one key of a `[registry."HOST"]` table into `read`.
    fn host_key(
        &self,
        table: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
        read: &mut HostTable,
    ) -> Result<(), HostsFileError> {
        let settings = &mut read.settings;
        match key.get_ref().as_ref() {
            "mirrors" => {
                for entry in self.strings(table, key, value)? {
                    let mirror =
                        parse_mirror(&entry).map_err(|why| self.setting(table, key, &why))?;
                    settings.mirrors.push(mirror);
                }
            }
            "http" => settings.plain_http = Some(self.boolean(table, key, value)?),
            "insecure" => settings.insecure = self.boolean(table, key, value)?,
            "ca" => {
                for path in self.strings(table, key, value)? {
                    settings.ca_certs.push(self.file(table, key, &path)?);
                }
            }
            "keypair" => {
                for pair in self.tables(table, key, value)? {
                    read.client_certs.push(self.keypair(table, key, pair)?);
                }
            }
            "tlsconfigdir" => {
                for dir in self.strings(table, key, value)? {
                    let dir = self.absolute(table, key, &dir)?;
                    self.tls_config_dir(table, key, &dir, read)?;
                }
            }
            _ => {
                return Err(self.setting(
                    table,
                    key,
                    &format!("unknown key; kiln reads {HOST_KEYS}"),
                ))
            }
        }
        Ok(())
    }

    fn boolean(
        &self,
        table: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Result<bool, HostsFileError> {
        match value.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.setting(table, key, "expected true or false")),
        }
    }

    fn array<'v, 'i>(
        &self,
        table: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &'v Spanned<DeValue<'i>>,
        expected: &str,
    ) -> Result<&'v DeArray<'i>, HostsFileError> {
        match value.get_ref() {
            DeValue::Array(items) => Ok(items),
            _ => Err(self.setting(table, key, &format!("expected {expected}"))),
        }
    }

    fn strings(
        &self,
        table: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Result<Vec<String>, HostsFileError> {
        const EXPECTED: &str = "an array of strings";
        let items = self.array(table, key, value, EXPECTED)?;
        items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) => Ok(s.to_string()),
                _ => Err(self.setting(table, key, &format!("expected {EXPECTED}"))),
            })
            .collect()
    }

    fn tables<'v, 'i>(
        &self,
        table: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &'v Spanned<DeValue<'i>>,
    ) -> Result<Vec<&'v DeTable<'i>>, HostsFileError> {
        const EXPECTED: &str = "[[registry.\"HOST\".keypair]] tables";
        let items = self.array(table, key, value, EXPECTED)?;
        items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::Table(t) => Ok(t),
                _ => Err(self.setting(table, key, &format!("expected {EXPECTED}"))),
            })
            .collect()
    }

    /// One `[[registry."HOST".keypair]]`: `key` and `cert`, both required.
    fn keypair(
        &self,
        table: &str,
        keypair: &Spanned<std::borrow::Cow<'_, str>>,
        pair: &DeTable<'_>,
    ) -> Result<ClientCert, HostsFileError> {
        let table = format!("{table}.keypair");
        let (mut key_file, mut cert_file) = (None, None);
        for (key, value) in pair {
            let slot = match key.get_ref().as_ref() {
                "key" => &mut key_file,
                "cert" => &mut cert_file,
                _ => return Err(self.setting(&table, key, "unknown key; kiln reads key, cert")),
            };
            let DeValue::String(path) = value.get_ref() else {
                return Err(self.setting(&table, key, "expected a path"));
            };
            *slot = Some(self.file(&table, key, path)?);
        }
        match (key_file, cert_file) {
            (Some(key), Some(cert)) => Ok(ClientCert { cert, key }),
            _ => Err(self.setting(&table, keypair, "needs both key and cert")),
        }
    }

    /// BuildKit's `tlsconfigdir`: each `*.crt` is a CA certificate, each
    /// `*.cert` a client certificate whose key is the `*.key` of the same
    /// name. A directory that does not exist is skipped, as BuildKit does.
    fn tls_config_dir(
        &self,
        table: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        dir: &Path,
        read: &mut HostTable,
    ) -> Result<(), HostsFileError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => {
                return Err(self.setting(table, key, &format!("{}: {err}", dir.display())));
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            if name.ends_with(".crt") {
                read.settings.ca_certs.push(dir.join(&name));
            } else if let Some(stem) = name.strip_suffix(".cert") {
                let key_file = dir.join(format!("{stem}.key"));
                let cert = self.file(table, key, &dir.join(&name).to_string_lossy())?;
                let key_file = self.file(table, key, &key_file.to_string_lossy())?;
                read.client_certs.push(ClientCert {
                    cert,
                    key: key_file,
                });
            }
        }
        Ok(())
    }

    fn absolute(
        &self,
        table: &str,
        key: &Spanned<impl AsRef<str>>,
        path: &str,
    ) -> Result<PathBuf, HostsFileError> {
        let path = PathBuf::from(path);
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(self.setting(
                table,
                key,
                &format!("{}: expected an absolute path", path.display()),
            ))
        }
    }

    /// An absolute path to a file that can be opened.
    fn file(
        &self,
        table: &str,
        key: &Spanned<impl AsRef<str>>,
        path: &str,
    ) -> Result<PathBuf, HostsFileError> {
        let path = self.absolute(table, key, path)?;
        match std::fs::File::open(&path) {
            Ok(_) => Ok(path),
            Err(err) => Err(self.setting(table, key, &format!("{}: {err}", path.display()))),
        }
    }
}

/// A `mirrors` entry as BuildKit reads it: `host[:port][/path]`, with an
/// optional `https://` in front and '/' at the end. Plain `http://` is
/// refused: BuildKit would use HTTPS all the same; the mirror's own table
/// says `http = true`.
fn parse_mirror(entry: &str) -> Result<Mirror, String> {
    let rest = match entry.split_once("://") {
        None => entry,
        Some(("https", rest)) => rest,
        Some(("http", _)) => {
            return Err(format!(
                "mirror {entry:?}: a scheme does not choose plain HTTP; write the host, and http = true in its own [registry.\"HOST\"] table"
            ))
        }
        Some((scheme, _)) => return Err(format!("mirror {entry:?}: unsupported scheme {scheme}")),
    };
    let rest = rest.trim_end_matches('/');
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if !is_valid_registry(host) {
        return Err(format!(
            "mirror {entry:?}: {host:?} is not a host: expected HOST[:PORT][/PATH]"
        ));
    }
    if !prefix.is_empty() && !is_valid_repository_path(prefix) {
        return Err(format!(
            "mirror {entry:?}: {prefix:?} is not a repository path (lowercase letters and digits separated by '/', '.', '_' or '-')"
        ));
    }
    Ok(Mirror {
        host: host.to_string(),
        prefix: prefix.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RegistryHosts, HostsFileError> {
        RegistryHosts::parse(text, Path::new("/etc/kiln/registries.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn mirrors_http_insecure_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "PEM").unwrap();
        let text = format!(
            r#"
[registry."docker.io"]
mirrors = ["hub.docker.io", "yourmirror.local:5000/proxy.docker.io", "https://url/path/"]

[registry."yourmirror.local:5000"]
http = true
insecure = true
ca = ["{}"]
"#,
            ca.display()
        );
        let hosts = parse(&text).unwrap();
        let hub = hosts.get("docker.io").unwrap();
        let mirrors: Vec<(&str, &str)> = hub
            .mirrors
            .iter()
            .map(|m| (m.host.as_str(), m.prefix.as_str()))
            .collect();
        assert_eq!(
            mirrors,
            [
                ("hub.docker.io", ""),
                ("yourmirror.local:5000", "proxy.docker.io"),
                ("url", "path"),
            ]
        );
        assert_eq!(hub.plain_http, None);
        assert!(!hub.insecure);
        let mirror = hosts.get("yourmirror.local:5000").unwrap();
        assert_eq!(mirror.plain_http, Some(true));
        assert!(mirror.insecure);
        assert_eq!(mirror.ca_certs, [ca]);
        assert!(hosts.get("quay.io").is_none());
    }

    #[test]
    fn keypairs_and_tls_config_dirs() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["client.cert", "client.key", "extra.crt", "notes.txt"] {
            std::fs::write(dir.path().join(name), "PEM").unwrap();
        }
        let text = format!(
            r#"
[registry."a.example"]
[[registry."a.example".keypair]]
key = "{dir}/client.key"
cert = "{dir}/client.cert"

[registry."b.example"]
tlsconfigdir = ["{dir}", "{dir}/missing"]
"#,
            dir = dir.path().display()
        );
        let hosts = parse(&text).unwrap();
        let expected = ClientCert {
            cert: dir.path().join("client.cert"),
            key: dir.path().join("client.key"),
        };
        let a = hosts.get("a.example").unwrap();
        assert_eq!(a.client_cert.as_ref(), Some(&expected));
        assert!(a.ca_certs.is_empty());
        let b = hosts.get("b.example").unwrap();
        assert_eq!(b.client_cert.as_ref(), Some(&expected));
        assert_eq!(b.ca_certs, [dir.path().join("extra.crt")]);

        // Both ways at once: two certificates, refused.
        let both = format!(
            "{text}[[registry.\"b.example\".keypair]]\nkey = \"{dir}/client.key\"\ncert = \"{dir}/client.cert\"\n",
            dir = dir.path().display()
        );
        assert!(
            error(&both).contains("2 client certificates"),
            "{}",
            error(&both)
        );
    }

    #[test]
    fn unknown_keys_name_the_file_line_table_and_key() {
        assert_eq!(
            error("[registry.\"docker.io\"]\nmirrors = []\nmirror = [\"m.example\"]\n"),
            "registry configuration /etc/kiln/registries.toml:3: [registry.\"docker.io\"] mirror: unknown key; kiln reads mirrors, http, insecure, ca, keypair, tlsconfigdir"
        );
        assert_eq!(
            error("debug = true\n"),
            "registry configuration /etc/kiln/registries.toml:1: debug: not a registry setting: kiln reads only the [registry.\"HOST\"] tables of buildkitd.toml's format"
        );
        assert!(
            error("[worker.oci]\nenabled = true\n").contains(":1: worker: not a registry setting")
        );
        assert_eq!(
            error("[registry.\"x.example\"]\n[[registry.\"x.example\".keypair]]\nkey = \"/etc/passwd\"\npassword = \"p\"\n"),
            "registry configuration /etc/kiln/registries.toml:4: [registry.\"x.example\".keypair] password: unknown key; kiln reads key, cert"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let cases = [
            ("[registry.\"docker.io\"]\nhttp = \"yes\"\n", ":2: [registry.\"docker.io\"] http: expected true or false"),
            ("[registry.\"docker.io\"]\nmirrors = \"m.example\"\n", "mirrors: expected an array of strings"),
            ("[registry.\"docker.io\"]\nmirrors = [\"http://m.example\"]\n", "http = true in its own"),
            ("[registry.\"docker.io\"]\nmirrors = [\"m.example/Proxy\"]\n", "\"Proxy\" is not a repository path"),
            ("[registry.\"docker.io\"]\nmirrors = [\"\"]\n", "is not a host"),
            ("[registry.\"https://docker.io\"]\n", "does not name a registry"),
            ("[registry.\"docker.io\"]\nca = [\"certs/ca.pem\"]\n", "certs/ca.pem: expected an absolute path"),
            ("[registry.\"docker.io\"]\nca = [\"/nonexistent/ca.pem\"]\n", "ca: /nonexistent/ca.pem: No such file"),
            ("[registry.\"docker.io\"]\n[[registry.\"docker.io\".keypair]]\nkey = \"/etc/passwd\"\n", "keypair: needs both key and cert"),
            ("[[registry]]\nprefix = \"docker.io\"\n", ":1: registry: expected [registry.\"HOST\"] tables"),
            ("[registry.\"docker.io\"\n", "registry configuration /etc/kiln/registries.toml:1: "),
        ];
        for (text, expected) in cases {
            let message = error(text);
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn an_empty_file_has_no_settings() {
        assert!(parse("# nothing\n").unwrap().is_empty());
    }
}

//! `RUN --mount=…` specs, typed, with BuildKit's rules.
//!
//! The parser keeps each spec as written ([`crate::instructions::Run::mounts`]);
//! the builder calls [`parse_mount`] with its word expander once the stage's
//! variables are known.
//!
//! ```
//! use kiln_parser::mount::{parse_mount, MountType};
//! let m = parse_mount("type=cache,target=/root/.cache,sharing=locked", &mut |w| Ok(w.to_string())).unwrap();
//! assert_eq!(m.mount_type, MountType::Cache);
//! assert_eq!(m.target, "/root/.cache");
//! assert!(!m.read_only);
//! ```

use serde::Serialize;

use crate::suggest::suggest;

/// The kinds of mount RUN supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    /// Every mount type.
    pub const ALL: &'static [MountType] = &[
        MountType::Bind,
        MountType::Cache,
        MountType::Tmpfs,
        MountType::Secret,
        MountType::Ssh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// How a cache mount is shared between concurrent builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// One `--mount`, its values expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub mount_type: MountType,
    /// `from=`: a stage or image to take the source from.
    pub from: Option<String>,
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
    /// tmpfs `size=` in bytes; `size=0` is none (BuildKit's tmpfs takes
    /// the size only above 0, so 0 is the default size).
    pub size_limit: Option<u64>,
    /// `id=` (cache or secret id).
    pub id: Option<String>,
    pub sharing: Option<Sharing>,
    /// secret/ssh `required=`.
    pub required: bool,
    /// secret `env=`: expose the secret as this environment variable.
    pub env: Option<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Why a mount spec was rejected; messages follow BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error("failed to parse csv mounts: {0}")]
    Csv(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Expand(#[from] crate::expand::ExpandError),
}

/// Every `--mount` option the parser accepts (with its other spellings:
/// `src`, `dst`, `destination`, `ro`, `rw`, `readwrite`).
pub const ALL_KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

fn invalid(message: String) -> MountError {
    MountError::Invalid(message)
}

fn with_suggestion(message: String, value: &str, options: &[&str]) -> MountError {
    match suggest(value, options, true) {
        Some(s) => invalid(format!("{message} (did you mean {s}?)")),
        None => invalid(message),
    }
}

/// A `--mount` spec's fields. `--mount=` (empty) is refused as BuildKit's
/// CSV reader refuses it (no record: io.EOF), rather than read as a bind
/// of the context at the working directory.
fn mount_fields(spec: &str) -> Result<Vec<String>, MountError> {
    if spec.is_empty() {
        return Err(MountError::Csv("EOF".into()));
    }
    csv_fields(spec)
}

/// Checks done when the Dockerfile is read (BuildKit does them before any
/// expansion): the CSV must parse, and `from=` cannot use variables.
pub fn check_mount_spec(spec: &str) -> Result<(), MountError> {
    for field in mount_fields(spec)? {
        if let Some((key, value)) = field.split_once('=') {
            if key.eq_ignore_ascii_case("from") {
                if let Some(i) = value.find('$') {
                    if i != value.len() - 1 {
                        return Err(invalid(
                            "'from' doesn't support variable expansion, define alias stage instead"
                                .to_string(),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The `from=` value of a spec, as written: what the planner needs to know
/// which stages a RUN depends on before anything is expanded (`from=` holds
/// no variables; [`check_mount_spec`] refuses them).
pub fn from_field(spec: &str) -> Result<Option<String>, MountError> {
    Ok(mount_fields(spec)?.into_iter().find_map(|field| {
        let (key, value) = field.split_once('=')?;
        key.eq_ignore_ascii_case("from").then(|| value.to_string())
    }))
}

/// Parses one spec, expanding each value with `expand` (pass the identity
/// for specs without variables).
pub fn parse_mount(
    spec: &str,
    expand: &mut dyn FnMut(&str) -> Result<String, crate::expand::ExpandError>,
) -> Result<Mount, MountError> {
    let mut fields = MountFields {
        mount: Mount {
            mount_type: MountType::Bind,
            from: None,
            source: None,
            target: String::new(),
            read_only: false,
            size_limit: None,
            id: None,
            sharing: None,
            required: false,
            env: None,
            mode: None,
            uid: None,
            gid: None,
        },
        read_only_auto: true,
    };
    for field in mount_fields(spec)? {
        match field.split_once('=') {
            Some((key, value)) => {
                let value = expand(value)?;
                fields.set(&key.to_lowercase(), value, &field)?;
            }
            None => fields.flag(&field.to_lowercase(), &field)?,
        }
    }
    fields.check()
}

/// A mount as its spec's fields are read.
struct MountFields {
    mount: Mount,
    /// No field said whether it is read-only: its type decides.
    read_only_auto: bool,
}

impl MountFields {
    /// A key without a value (`ro`, `rw`, `required`), `field` as written.
    fn flag(&mut self, key: &str, field: &str) -> Result<(), MountError> {
        let m = &mut self.mount;
        match key {
            "readonly" | "ro" => {
                m.read_only = true;
                self.read_only_auto = false;
            }
            "readwrite" | "rw" => {
                m.read_only = false;
                self.read_only_auto = false;
            }
            "required" if matches!(m.mount_type, MountType::Secret | MountType::Ssh) => {
                m.required = true;
            }
            "required" => return Err(unexpected_key(key, m.mount_type)),
            _ => {
                return Err(invalid(format!(
                    "invalid field '{field}' must be a key=value pair"
                )))
            }
        }
        Ok(())
    }

    /// `key=value` (the value expanded), `field` as written.
    fn set(&mut self, key: &str, value: String, field: &str) -> Result<(), MountError> {
        let m = &mut self.mount;
        let bad_value = || invalid(format!("invalid value for {key}: {value}"));
        match key {
            "type" => m.mount_type = mount_type(&value)?,
            "from" => m.from = Some(value),
            "source" | "src" => m.source = Some(value),
            "target" | "dst" | "destination" => m.target = value,
            "readonly" | "ro" => {
                m.read_only = parse_go_bool(&value).ok_or_else(bad_value)?;
                self.read_only_auto = false;
            }
            "readwrite" | "rw" => {
                m.read_only = !parse_go_bool(&value).ok_or_else(bad_value)?;
                self.read_only_auto = false;
            }
            "required" => {
                if !matches!(m.mount_type, MountType::Secret | MountType::Ssh) {
                    return Err(unexpected_key(key, m.mount_type));
                }
                m.required = parse_go_bool(&value).ok_or_else(bad_value)?;
            }
            "size" => {
                if m.mount_type != MountType::Tmpfs {
                    return Err(unexpected_key(key, m.mount_type));
                }
                m.size_limit =
                    Some(ram_in_bytes(&value).ok_or_else(bad_value)?).filter(|&size| size > 0);
            }
            "id" => m.id = Some(value),
            "sharing" => m.sharing = Some(sharing(&value)?),
            "mode" => {
                m.mode = Some(
                    go_parse_uint(&value, 8)
                        .ok_or_else(|| invalid(format!("invalid value {value} for mode")))?,
                )
            }
            "uid" => {
                m.uid = Some(
                    go_parse_uint(&value, 10)
                        .ok_or_else(|| invalid(format!("invalid value {value} for uid")))?,
                )
            }
            "gid" => {
                m.gid = Some(
                    go_parse_uint(&value, 10)
                        .ok_or_else(|| invalid(format!("invalid value {value} for gid")))?,
                )
            }
            // BuildKit's frontend accepts it and hands the process `=value`,
            // which runc then refuses ("invalid environment variable: name
            // cannot be empty"): the build fails there too, here at parse
            // time, naming the line.
            "env" if value.is_empty() => {
                return Err(invalid(
                    "env= needs the name of the environment variable that holds the secret"
                        .to_string(),
                ))
            }
            "env" => m.env = Some(value),
            _ => {
                return Err(with_suggestion(
                    format!("unexpected key '{key}' in '{field}'"),
                    key,
                    ALL_KEYS,
                ))
            }
        }
        Ok(())
    }

    /// The mount, once every field is read: what its type does not allow
    /// refused, read-only by default unless it is a cache or tmpfs.
    fn check(self) -> Result<Mount, MountError> {
        let mut m = self.mount;
        let type_name = m.mount_type.as_str();
        if !matches!(
            m.mount_type,
            MountType::Secret | MountType::Ssh | MountType::Cache
        ) {
            for (present, what) in [
                (m.mode.is_some(), "mode"),
                (m.uid.is_some(), "uid"),
                (m.gid.is_some(), "gid"),
            ] {
                if present {
                    return Err(invalid(format!(
                        "{what} not allowed for \"{type_name}\" type mounts"
                    )));
                }
            }
        }
        if self.read_only_auto {
            m.read_only = !matches!(m.mount_type, MountType::Cache | MountType::Tmpfs);
        }
        if m.mount_type == MountType::Secret {
            check_secret(&m)?;
        }
        if m.sharing.is_some() && m.mount_type != MountType::Cache {
            return Err(invalid(format!(
                "invalid cache sharing set for {type_name} mount"
            )));
        }
        Ok(m)
    }
}

/// A secret mount has no `from` nor `sharing`, and a source, target or id,
/// but not both a source and an id.
fn check_secret(m: &Mount) -> Result<(), MountError> {
    if m.from.as_deref().is_some_and(|f| !f.is_empty()) {
        return Err(invalid("secret mount should not have a from".into()));
    }
    if m.sharing.is_some() {
        return Err(invalid("secret mount should not define sharing".into()));
    }
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if !set(&m.source) && m.target.is_empty() && !set(&m.id) {
        return Err(invalid(
            "invalid secret mount. one of source, target required".into(),
        ));
    }
    if set(&m.source) && set(&m.id) {
        return Err(invalid("both source and id can't be set".into()));
    }
    Ok(())
}

fn unexpected_key(key: &str, mount_type: MountType) -> MountError {
    invalid(format!(
        "unexpected key '{key}' for mount type '{}'",
        mount_type.as_str()
    ))
}

/// `type=`'s value.
fn mount_type(value: &str) -> Result<MountType, MountError> {
    Ok(match value.to_lowercase().as_str() {
        "bind" => MountType::Bind,
        "cache" => MountType::Cache,
        "tmpfs" => MountType::Tmpfs,
        "secret" => MountType::Secret,
        "ssh" => MountType::Ssh,
        _ => {
            return Err(with_suggestion(
                format!("unsupported mount type {}", crate::go_quote(value)),
                value,
                &["bind", "cache", "tmpfs", "secret", "ssh"],
            ))
        }
    })
}

/// `sharing=`'s value.
fn sharing(value: &str) -> Result<Sharing, MountError> {
    Ok(match value.to_lowercase().as_str() {
        "shared" => Sharing::Shared,
        "private" => Sharing::Private,
        "locked" => Sharing::Locked,
        _ => {
            return Err(with_suggestion(
                format!("unsupported sharing value {}", crate::go_quote(value)),
                value,
                &["shared", "private", "locked"],
            ))
        }
    })
}

/// Go's `strconv.ParseBool`: the one reader of a boolean option's value
/// (mount options, build args, `--output` and `--cache-to` attributes).
///
/// ```
/// use kiln_parser::mount::parse_go_bool;
/// assert_eq!(parse_go_bool("T"), Some(true));
/// assert_eq!(parse_go_bool("0"), Some(false));
/// assert_eq!(parse_go_bool("yes"), None);
/// ```
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// docker/go-units `RAMInBytes`: `64m`, `1.5GiB`, `1024` (binary units);
/// the one reader of Docker's size syntax (tmpfs `size=`, `--memory`,
/// `--shm-size`).
///
/// ```
/// use kiln_parser::mount::ram_in_bytes;
/// assert_eq!(ram_in_bytes("64m"), Some(64 << 20));
/// assert_eq!(ram_in_bytes("1.5GiB"), Some(3 << 29));
/// assert_eq!(ram_in_bytes("12 x"), None);
/// ```
pub fn ram_in_bytes(s: &str) -> Option<u64> {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, mut suffix) = s.split_at(number_end);
    if number.is_empty()
        || !number.starts_with(|c: char| c.is_ascii_digit())
        || number.ends_with('.')
    {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    suffix = suffix.strip_prefix(' ').unwrap_or(suffix);
    let mut chars = suffix.chars();
    let multiplier: f64 = match chars.next() {
        None => 1.0,
        Some(c) => {
            let m = match c.to_ascii_lowercase() {
                'k' => 1024f64,
                'm' => 1024f64.powi(2),
                'g' => 1024f64.powi(3),
                't' => 1024f64.powi(4),
                'p' => 1024f64.powi(5),
                'b' if chars.as_str().is_empty() => return Some(value as u64),
                _ => return None,
            };
            let rest = chars.as_str().to_ascii_lowercase();
            if !matches!(rest.as_str(), "" | "b" | "i" | "ib") {
                return None;
            }
            m
        }
    };
    let bytes = value * multiplier;
    // Too large for a u64 is not a size.
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// One CSV record (Go's `encoding/csv` rules, no lazy quotes): fields split
/// on `,`, `"…"` quotes a field, `""` inside quotes is a quote.
pub fn csv_fields(s: &str) -> Result<Vec<String>, MountError> {
    let mut fields = Vec::new();
    if s.is_empty() {
        return Ok(fields);
    }
    let mut chars = s.chars().peekable();
    let mut column = 0usize;
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            column += 1;
            loop {
                match chars.next() {
                    None => {
                        return Err(MountError::Csv(format!(
                            "parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                            column + 1
                        )))
                    }
                    Some('"') => {
                        column += 1;
                        match chars.peek() {
                            Some('"') => {
                                chars.next();
                                column += 1;
                                field.push('"');
                            }
                            Some(',') | None => break,
                            Some(_) => {
                                return Err(MountError::Csv(format!(
                                    "parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                                    column + 1
                                )))
                            }
                        }
                    }
                    Some(c) => {
                        column += 1;
                        field.push(c);
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                chars.next();
                column += 1;
                if c == '"' {
                    return Err(MountError::Csv(format!(
                        "parse error on line 1, column {column}: bare \" in non-quoted-field"
                    )));
                }
                field.push(c);
            }
        }
        fields.push(field);
        match chars.next() {
            Some(',') => column += 1,
            _ => break,
        }
    }
    Ok(fields)
}

/// Go's `strconv.ParseUint(value, radix, 32)`, as BuildKit reads `mode=`,
/// `uid=` and `gid=`: digits only (no sign, unlike Rust's `from_str_radix`).
fn go_parse_uint(value: &str, radix: u32) -> Option<u32> {
    if !value.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(value, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<Mount, MountError> {
        parse_mount(spec, &mut |w| Ok(w.to_string()))
    }

    #[test]
    fn defaults_and_read_only() {
        let bind = parse("target=/x").unwrap();
        assert_eq!((bind.mount_type, bind.read_only), (MountType::Bind, true));
        let bind_rw = parse("type=bind,target=/x,rw").unwrap();
        assert!(!bind_rw.read_only);
        let cache = parse("type=cache,target=/c,id=go,sharing=locked,mode=0755,uid=1000").unwrap();
        assert_eq!(
            (cache.read_only, cache.sharing, cache.mode, cache.uid),
            (false, Some(Sharing::Locked), Some(0o755), Some(1000))
        );
        let tmpfs = parse("type=tmpfs,target=/t,size=64m").unwrap();
        assert_eq!(tmpfs.size_limit, Some(64 * 1024 * 1024));
        // size=0 is the default size: the same mount (and cache key) as none.
        let zero = parse("type=tmpfs,target=/t,size=0").unwrap();
        assert_eq!(zero, parse("type=tmpfs,target=/t").unwrap());
        let secret = parse("type=secret,id=token,env=TOKEN,required").unwrap();
        assert_eq!(
            (secret.required, secret.env.as_deref()),
            (true, Some("TOKEN"))
        );
    }

    #[test]
    fn errors_like_buildkit() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("type=cahce,target=/x"),
            "unsupported mount type \"cahce\" (did you mean cache?)"
        );
        assert_eq!(
            msg("type=bind,target=/x,mode=0644"),
            "mode not allowed for \"bind\" type mounts"
        );
        assert_eq!(
            msg("type=secret"),
            "invalid secret mount. one of source, target required"
        );
        assert_eq!(
            msg("type=bind,sharing=locked"),
            "invalid cache sharing set for bind mount"
        );
        assert_eq!(
            msg("target"),
            "invalid field 'target' must be a key=value pair"
        );
        assert_eq!(
            msg("targte=/x"),
            "unexpected key 'targte' in 'targte=/x' (did you mean target?)"
        );
        assert_eq!(
            msg("type=bind,required"),
            "unexpected key 'required' for mount type 'bind'"
        );
        assert_eq!(msg("a\"b"), "failed to parse csv mounts: parse error on line 1, column 2: bare \" in non-quoted-field");
        // Go's ParseUint takes no sign.
        for spec in [
            "type=cache,target=/c,mode=+755",
            "type=cache,target=/c,uid=+1000",
            "type=cache,target=/c,gid=-1",
        ] {
            assert!(
                msg(spec).starts_with("invalid value "),
                "{spec}: {}",
                msg(spec)
            );
        }
        assert_eq!(
            msg("type=secret,id=tok,env="),
            "env= needs the name of the environment variable that holds the secret"
        );
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(csv_fields("\"a,b\",c").unwrap(), ["a,b", "c"]);
        assert_eq!(csv_fields("\"a\"\"b\"").unwrap(), ["a\"b"]);
        assert!(csv_fields("").unwrap().is_empty());
        assert_eq!(csv_fields("a,").unwrap(), ["a", ""]);
    }

    #[test]
    fn from_cannot_use_variables() {
        assert!(check_mount_spec("type=bind,from=$STAGE,target=/x").is_err());
        assert!(check_mount_spec("type=bind,from=stage$,target=/x").is_ok());
    }
}

/// One `RUN --device=…` (CDI device), parsed when the Dockerfile is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub name: String,
    pub required: bool,
}

/// Parses a device spec: `name=vendor.com/gpu=all,required` or just a name.
pub fn parse_device(spec: &str) -> Result<Device, MountError> {
    let fields = csv_fields(spec).map_err(|e| match e {
        MountError::Csv(m) => MountError::Invalid(format!("failed to parse csv devices: {m}")),
        other => other,
    })?;
    let mut device = Device {
        name: String::new(),
        required: false,
    };
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            if field.eq_ignore_ascii_case("required") {
                device.required = true;
            } else if device.name.is_empty() {
                device.name = field;
            } else {
                return Err(invalid(format!(
                    "invalid field '{field}' must be a key=value pair"
                )));
            }
            continue;
        };
        let key = key.to_lowercase();
        match key.as_str() {
            "name" => {
                if !device.name.is_empty() {
                    return Err(invalid(format!(
                        "device name already set to {}",
                        device.name
                    )));
                }
                device.name = value.to_string();
            }
            "required" => {
                device.required = parse_go_bool(value)
                    .ok_or_else(|| invalid(format!("invalid value for {key}: {value}")))?;
            }
            _ if device.name.is_empty() => device.name = field.clone(),
            _ => {
                return Err(with_suggestion(
                    format!("unexpected key '{key}' in '{field}'"),
                    &key,
                    &["name", "required"],
                ))
            }
        }
    }
    Ok(device)
}

#[cfg(test)]
mod device_tests {
    use super::*;

    #[test]
    fn devices() {
        assert_eq!(
            parse_device("vendor.com/gpu=all,required").unwrap(),
            Device {
                name: "vendor.com/gpu=all".into(),
                required: true
            }
        );
        assert_eq!(
            parse_device("name=gpu0,required=false").unwrap(),
            Device {
                name: "gpu0".into(),
                required: false
            }
        );
        assert_eq!(
            parse_device("a,name=b").unwrap_err().to_string(),
            "device name already set to a"
        );
        assert_eq!(
            parse_device("a,b").unwrap_err().to_string(),
            "invalid field 'b' must be a key=value pair"
        );
    }
}

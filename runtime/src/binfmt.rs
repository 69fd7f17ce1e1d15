//! Running another architecture's programs: binfmt_misc and
//! qemu-user-static.
//!
//! A RUN step (or `kiln run`) of a foreign platform's image execs that
//! architecture's ELF programs; the kernel runs them only through a
//! binfmt_misc handler, the emulator of qemu-user-static (the Debian
//! package: `/usr/libexec/qemu-binfmt/<arch>-binfmt-P`, described for
//! systemd-binfmt in `/usr/lib/binfmt.d/qemu-<arch>.conf`). The handler
//! needs the `F` (fix binary) flag: the kernel then opens the emulator when
//! the handler is registered, so it works inside a container's mount
//! namespace after pivot_root, where the emulator's path does not exist.
//!
//! [`ensure_emulator`] says whether a platform runs here natively, or
//! through which handler, before any step runs:
//!
//! 1. native: this machine's architecture (and i386 on x86_64);
//! 2. a handler registered in `/proc/sys/fs/binfmt_misc` whose magic is
//!    the architecture's ELF header (whatever its name): enabled and with
//!    `F`, it is used; without `F`, or disabled, the error says so (kiln
//!    does not change another program's registration);
//! 3. none: as root, with qemu-user-static installed, kiln mounts
//!    binfmt_misc when it is not mounted and registers the package's
//!    handler (adding `F` if its flags lack it), as systemd-binfmt would at
//!    boot. kiln never installs a package: without one, or not as root,
//!    the error names the platform, the emulator and what to install.
//!
//! The kernel side goes through [`BinfmtKernel`] ([`RealBinfmt`]: mount and
//! reads through the runtime's [`Syscalls`]; listing
//! the handlers and writing `register`), so the decisions are tested with a
//! fake.

use std::io;
use std::path::{Path, PathBuf};

use crate::sys::{RealSyscalls, Syscalls};

/// Where binfmt_misc is mounted.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Where the qemu-user-static package describes its handlers.
const CONF_DIRS: [&str; 3] = ["/etc/binfmt.d", "/run/binfmt.d", "/usr/lib/binfmt.d"];

/// How a platform's programs run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// On this machine's processor.
    Native,
    /// Through a registered binfmt_misc handler.
    Emulated(Handler),
}

/// A registered binfmt_misc handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// Its name in binfmt_misc (`qemu-aarch64`).
    pub name: String,
    pub interpreter: String,
    /// Its flags (`OCF`, `POCF`, …).
    pub flags: String,
    /// Whether kiln registered it just now.
    pub registered_now: bool,
}

/// Why a platform's programs cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    #[error("platform {platform}: kiln knows no emulator for architecture {architecture:?}")]
    UnknownArchitecture {
        platform: String,
        architecture: String,
    },
    #[error(
        "platform {platform}: its programs need an emulator (qemu-{qemu} through binfmt_misc) \
         and none is registered: {reason}"
    )]
    NoEmulator {
        platform: String,
        /// qemu's name of the architecture (`aarch64`).
        qemu: String,
        reason: String,
    },
    #[error(
        "platform {platform}: the binfmt_misc handler {name} ({interpreter}) is registered \
         without the F (fix binary) flag, so it cannot run inside a container's root; \
         register it again with F (as qemu-user-static's /usr/lib/binfmt.d/qemu-{qemu}.conf does)"
    )]
    NotFixBinary {
        platform: String,
        qemu: String,
        name: String,
        interpreter: String,
    },
    #[error("platform {platform}: the binfmt_misc handler {name} is registered but disabled")]
    Disabled { platform: String, name: String },
    #[error("platform {platform}: {what}: {source}")]
    Io {
        platform: String,
        what: String,
        #[source]
        source: io::Error,
    },
}

/// The kernel and host side of binfmt_misc.
pub trait BinfmtKernel {
    /// A whole file (a handler, `status`, a package's `.conf`); `None`
    /// when it does not exist.
    fn read(&mut self, path: &Path) -> io::Result<Option<String>>;
    /// The names in a directory (the registered handlers).
    fn list(&mut self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether a file exists (the emulator a `.conf` names).
    fn exists(&mut self, path: &Path) -> bool;
    /// mount -t binfmt_misc binfmt_misc `dir`.
    fn mount_binfmt_misc(&mut self, dir: &Path) -> io::Result<()>;
    /// Writes a handler line to `dir/register`.
    fn register(&mut self, dir: &Path, line: &str) -> io::Result<()>;
    /// Whether kiln runs as root (may mount and register).
    fn is_root(&self) -> bool;
}

/// The real kernel: mounts and reads through [`RealSyscalls`].
#[derive(Debug, Default)]
pub struct RealBinfmt(RealSyscalls);

impl BinfmtKernel for RealBinfmt {
    fn read(&mut self, path: &Path) -> io::Result<Option<String>> {
        self.0.read_file(path)
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    fn exists(&mut self, path: &Path) -> bool {
        path.exists()
    }

    fn mount_binfmt_misc(&mut self, dir: &Path) -> io::Result<()> {
        self.0.mount("binfmt_misc", dir, "binfmt_misc", 0, "")
    }

    fn register(&mut self, dir: &Path, line: &str) -> io::Result<()> {
        use std::io::Write;
        // One write: binfmt_misc parses each write as one registration.
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("register"))?
            .write_all(line.as_bytes())
    }

    fn is_root(&self) -> bool {
        rustix::process::geteuid().is_root()
    }
}

/// An architecture as the kernel's ELF loader tells it: word size, byte
/// order and `e_machine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ElfMachine {
    class64: bool,
    little_endian: bool,
    machine: u16,
}

/// qemu's name and the ELF machine of an OCI architecture (and variant).
fn qemu_architecture(architecture: &str) -> Option<(&'static str, ElfMachine)> {
    let elf = |class64, little_endian, machine| ElfMachine {
        class64,
        little_endian,
        machine,
    };
    Some(match architecture {
        "amd64" => ("x86_64", elf(true, true, 0x3e)),
        "386" => ("i386", elf(false, true, 0x03)),
        "arm64" => ("aarch64", elf(true, true, 0xb7)),
        "arm" => ("arm", elf(false, true, 0x28)),
        "ppc64le" => ("ppc64le", elf(true, true, 0x15)),
        "s390x" => ("s390x", elf(true, false, 0x16)),
        "riscv64" => ("riscv64", elf(true, true, 0xf3)),
        "mips64le" => ("mips64el", elf(true, true, 0x08)),
        "loong64" => ("loongarch64", elf(true, true, 0x102)),
        _ => return None,
    })
}

/// This machine's architecture in OCI terms, and what it runs natively.
fn native(architecture: &str) -> bool {
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    architecture == host || (host == "amd64" && architecture == "386")
}

/// A handler as `/proc/sys/fs/binfmt_misc/<name>` describes it.
#[derive(Debug, Default)]
struct Registered {
    enabled: bool,
    interpreter: String,
    flags: String,
    /// The magic bytes (decoded from hex), when it matches on magic.
    magic: Vec<u8>,
}

fn parse_handler(text: &str) -> Registered {
    let mut handler = Registered::default();
    for line in text.lines() {
        let line = line.trim();
        if line == "enabled" {
            handler.enabled = true;
        } else if let Some(rest) = line.strip_prefix("interpreter ") {
            handler.interpreter = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("flags:") {
            handler.flags = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("magic ") {
            handler.magic = (0..rest.len() / 2)
                .filter_map(|i| u8::from_str_radix(rest.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
        }
    }
    handler
}

impl Registered {
    /// Whether it matches ELF programs of `elf`.
    fn runs(&self, elf: ElfMachine) -> bool {
        let m = &self.magic;
        if m.len() < 20 || m[..4] != [0x7f, b'E', b'L', b'F'] {
            return false;
        }
        let machine = if elf.little_endian {
            u16::from_le_bytes([m[18], m[19]])
        } else {
            u16::from_be_bytes([m[18], m[19]])
        };
        m[4] == if elf.class64 { 2 } else { 1 }
            && m[5] == if elf.little_endian { 1 } else { 2 }
            && machine == elf.machine
    }
}

/// What one check is about, for errors.
struct Wanted<'a> {
    platform: &'a str,
    qemu: &'static str,
    elf: ElfMachine,
}

impl Wanted<'_> {
    fn io(&self, what: String) -> impl FnOnce(io::Error) -> BinfmtError + '_ {
        move |source| BinfmtError::Io {
            platform: self.platform.to_string(),
            what,
            source,
        }
    }

    fn no_emulator(&self, reason: String) -> BinfmtError {
        BinfmtError::NoEmulator {
            platform: self.platform.to_string(),
            qemu: self.qemu.to_string(),
            reason,
        }
    }
}

/// How programs of `architecture` (an OCI name: `arm64`, `arm`, …; the
/// platform `platform` names it in errors) run here: see the module docs.
/// Registers qemu-user-static's handler when it must and may.
pub fn ensure_emulator(
    kernel: &mut dyn BinfmtKernel,
    platform: &str,
    architecture: &str,
) -> Result<Support, BinfmtError> {
    if native(architecture) {
        return Ok(Support::Native);
    }
    let (qemu, elf) =
        qemu_architecture(architecture).ok_or_else(|| BinfmtError::UnknownArchitecture {
            platform: platform.to_string(),
            architecture: architecture.to_string(),
        })?;
    let wanted = Wanted {
        platform,
        qemu,
        elf,
    };
    let dir = Path::new(BINFMT_DIR);
    mounted(kernel, dir, &wanted)?;
    if let Some(handler) = find_handler(kernel, dir, &wanted)? {
        return Ok(Support::Emulated(handler));
    }
    register(kernel, dir, &wanted)?;
    match find_handler(kernel, dir, &wanted)? {
        Some(handler) => Ok(Support::Emulated(Handler {
            registered_now: true,
            ..handler
        })),
        None => Err(wanted.no_emulator(format!(
            "registering qemu-user-static's handler for {qemu} left none in {BINFMT_DIR}"
        ))),
    }
}

/// Makes sure binfmt_misc is mounted (mounting it as root).
fn mounted(
    kernel: &mut dyn BinfmtKernel,
    dir: &Path,
    wanted: &Wanted<'_>,
) -> Result<(), BinfmtError> {
    let status = dir.join("status");
    let read = |kernel: &mut dyn BinfmtKernel| {
        kernel
            .read(&status)
            .map_err(wanted.io(format!("reading {}", status.display())))
    };
    if read(kernel)?.is_some() {
        return Ok(());
    }
    if !kernel.is_root() {
        return Err(wanted.no_emulator(format!(
            "binfmt_misc is not mounted at {BINFMT_DIR} (as root, kiln mounts it and \
             registers qemu-user-static's emulator)"
        )));
    }
    kernel
        .mount_binfmt_misc(dir)
        .map_err(wanted.io(format!("mounting binfmt_misc on {BINFMT_DIR}")))?;
    match read(kernel)? {
        Some(_) => Ok(()),
        None => Err(wanted.no_emulator(format!(
            "binfmt_misc mounted on {BINFMT_DIR} has no status file"
        ))),
    }
}

/// The registered handler of the architecture, whatever its name; an
/// error when it cannot serve a container (disabled, or without `F`).
fn find_handler(
    kernel: &mut dyn BinfmtKernel,
    dir: &Path,
    wanted: &Wanted<'_>,
) -> Result<Option<Handler>, BinfmtError> {
    let mut names = kernel
        .list(dir)
        .map_err(wanted.io(format!("listing {}", dir.display())))?;
    names.sort();
    for name in names {
        if name == "status" || name == "register" {
            continue;
        }
        let path = dir.join(&name);
        let Some(text) = kernel
            .read(&path)
            .map_err(wanted.io(format!("reading {}", path.display())))?
        else {
            continue;
        };
        let handler = parse_handler(&text);
        if !handler.runs(wanted.elf) {
            continue;
        }
        if !handler.enabled {
            return Err(BinfmtError::Disabled {
                platform: wanted.platform.to_string(),
                name,
            });
        }
        if !handler.flags.contains('F') {
            return Err(BinfmtError::NotFixBinary {
                platform: wanted.platform.to_string(),
                qemu: wanted.qemu.to_string(),
                name,
                interpreter: handler.interpreter,
            });
        }
        return Ok(Some(Handler {
            name,
            interpreter: handler.interpreter,
            flags: handler.flags,
            registered_now: false,
        }));
    }
    Ok(None)
}

/// Registers qemu-user-static's handler for the architecture, from the
/// package's `.conf` (with `F` added when missing).
fn register(
    kernel: &mut dyn BinfmtKernel,
    dir: &Path,
    wanted: &Wanted<'_>,
) -> Result<(), BinfmtError> {
    let qemu = wanted.qemu;
    let conf = CONF_DIRS
        .iter()
        .map(|d| PathBuf::from(d).join(format!("qemu-{qemu}.conf")))
        .find(|p| kernel.exists(p));
    let Some(conf) = conf else {
        return Err(wanted.no_emulator(format!(
            "install the Debian package qemu-user-static (its /usr/lib/binfmt.d/qemu-{qemu}.conf \
             is missing; kiln installs no package), or register an emulator for {qemu} with \
             the F flag"
        )));
    };
    let text = kernel
        .read(&conf)
        .map_err(wanted.io(format!("reading {}", conf.display())))?
        .unwrap_or_default();
    let Some(line) = handler_line(&text) else {
        return Err(wanted.no_emulator(format!(
            "{} holds no handler line (:name:type:offset:magic:mask:interpreter:flags)",
            conf.display()
        )));
    };
    let interpreter = line.split(':').nth(6).unwrap_or("");
    if !kernel.exists(Path::new(interpreter)) {
        return Err(wanted.no_emulator(format!(
            "{} names the emulator {interpreter}, which is not installed \
             (install the Debian package qemu-user-static)",
            conf.display()
        )));
    }
    if !kernel.is_root() {
        return Err(wanted.no_emulator(format!(
            "qemu-user-static is installed but its handler is not registered, and only root \
             may register it (run kiln as root once, or register {})",
            conf.display()
        )));
    }
    match kernel.register(dir, &line) {
        Ok(()) => Ok(()),
        // Another kiln registered it meanwhile: the check that follows finds it.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(wanted.io(format!(
            "registering {} in {}/register",
            conf.display(),
            dir.display()
        ))(e)),
    }
}

/// The registration line of a binfmt.d file (the first that is not a
/// comment), with the `F` flag.
fn handler_line(conf: &str) -> Option<String> {
    let line = conf
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))?;
    let fields: Vec<&str> = line.split(':').collect();
    // ":name:type:offset:magic:mask:interpreter:flags": 8 fields, the first empty.
    if fields.len() != 8 || !fields[0].is_empty() {
        return None;
    }
    let flags = fields[7];
    Some(if flags.contains('F') {
        line.to_string()
    } else {
        format!("{line}F")
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const CONF: &str = ":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF\n";
    const AARCH64_MAGIC: &str = "7f454c460201010000000000000000000200b700";

    /// A fake kernel: files by path, a record of every change.
    #[derive(Default)]
    struct Fake {
        files: BTreeMap<PathBuf, String>,
        root: bool,
        calls: Vec<String>,
    }

    impl Fake {
        fn handler(mut self, name: &str, flags: &str, magic: &str) -> Fake {
            self.files.insert(
                Path::new(BINFMT_DIR).join(name),
                format!(
                    "enabled\ninterpreter /usr/libexec/qemu-binfmt/{name}\nflags: {flags}\n\
                     offset 0\nmagic {magic}\nmask ffffffffffffff00\n"
                ),
            );
            self
        }

        fn mounted(mut self) -> Fake {
            self.files
                .insert(Path::new(BINFMT_DIR).join("status"), "enabled\n".into());
            self
        }

        fn package(mut self) -> Fake {
            self.files.insert(
                PathBuf::from("/usr/lib/binfmt.d/qemu-aarch64.conf"),
                CONF.into(),
            );
            self.files.insert(
                PathBuf::from("/usr/libexec/qemu-binfmt/aarch64-binfmt-P"),
                String::new(),
            );
            self
        }
    }

    impl BinfmtKernel for Fake {
        fn read(&mut self, path: &Path) -> io::Result<Option<String>> {
            Ok(self.files.get(path).cloned())
        }
        fn list(&mut self, dir: &Path) -> io::Result<Vec<String>> {
            Ok(self
                .files
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect())
        }
        fn exists(&mut self, path: &Path) -> bool {
            self.files.contains_key(path)
        }
        fn mount_binfmt_misc(&mut self, dir: &Path) -> io::Result<()> {
            self.calls
                .push(format!("mount binfmt_misc {}", dir.display()));
            self.files.insert(dir.join("status"), "enabled\n".into());
            Ok(())
        }
        fn register(&mut self, dir: &Path, line: &str) -> io::Result<()> {
            self.calls.push(format!("register {line}"));
            let name = line.split(':').nth(1).unwrap_or("");
            let flags = line.rsplit(':').next().unwrap_or("");
            self.files.insert(
                dir.join(name),
                format!("enabled\ninterpreter x\nflags: {flags}\nmagic {AARCH64_MAGIC}\n"),
            );
            Ok(())
        }
        fn is_root(&self) -> bool {
            self.root
        }
    }

    fn check(fake: &mut Fake, architecture: &str) -> Result<Support, BinfmtError> {
        ensure_emulator(fake, &format!("linux/{architecture}"), architecture)
    }

    #[test]
    fn this_machines_architecture_is_native_and_asks_nothing() {
        let host = if cfg!(target_arch = "x86_64") {
            "amd64"
        } else if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            return;
        };
        let mut fake = Fake::default();
        assert_eq!(check(&mut fake, host).unwrap(), Support::Native);
        assert!(fake.calls.is_empty());
    }

    #[test]
    fn a_registered_fix_binary_handler_is_found_by_its_magic_whatever_its_name() {
        let mut fake = Fake::default()
            .mounted()
            .handler("arm64-emu", "POCF", AARCH64_MAGIC)
            .handler(
                "qemu-riscv64",
                "F",
                "7f454c460201010000000000000000000200f300",
            );
        match check(&mut fake, "arm64").unwrap() {
            Support::Emulated(h) => {
                assert_eq!(h.name, "arm64-emu");
                assert!(!h.registered_now);
            }
            other => panic!("{other:?}"),
        }
        assert!(fake.calls.is_empty(), "{:?}", fake.calls);
        // An s390x program (big endian) is not matched by a little-endian magic.
        let err = check(&mut fake, "s390x").unwrap_err();
        assert!(matches!(err, BinfmtError::NoEmulator { .. }), "{err}");
    }

    #[test]
    fn a_handler_without_fix_binary_is_refused_not_replaced() {
        let mut fake =
            Fake::default()
                .mounted()
                .package()
                .handler("qemu-aarch64", "OC", AARCH64_MAGIC);
        fake.root = true;
        let err = check(&mut fake, "arm64").unwrap_err().to_string();
        assert!(err.contains("platform linux/arm64"), "{err}");
        assert!(err.contains("without the F (fix binary) flag"), "{err}");
        assert!(fake.calls.is_empty(), "{:?}", fake.calls);
    }

    #[test]
    fn as_root_with_the_package_binfmt_misc_is_mounted_and_the_handler_registered() {
        let mut fake = Fake::default().package();
        fake.root = true;
        match check(&mut fake, "arm64").unwrap() {
            Support::Emulated(h) => {
                assert_eq!(h.name, "qemu-aarch64");
                assert!(h.flags.contains('F'));
                assert!(h.registered_now);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.calls.len(), 2, "{:?}", fake.calls);
        assert_eq!(fake.calls[0], format!("mount binfmt_misc {BINFMT_DIR}"));
        assert_eq!(fake.calls[1], format!("register {}", CONF.trim()));
    }

    #[test]
    fn without_the_package_or_root_the_error_says_what_to_do() {
        let mut fake = Fake::default().mounted();
        fake.root = true;
        let err = check(&mut fake, "arm64").unwrap_err().to_string();
        assert!(
            err.starts_with("platform linux/arm64: its programs need an emulator (qemu-aarch64"),
            "{err}"
        );
        assert!(
            err.contains("install the Debian package qemu-user-static"),
            "{err}"
        );
        assert!(fake.calls.is_empty());

        let mut fake = Fake::default().mounted().package();
        let err = check(&mut fake, "arm64").unwrap_err().to_string();
        assert!(err.contains("only root may register it"), "{err}");
        assert!(fake.calls.is_empty());

        let mut fake = Fake::default();
        let err = check(&mut fake, "arm64").unwrap_err().to_string();
        assert!(err.contains("binfmt_misc is not mounted"), "{err}");
        assert!(fake.calls.is_empty());

        let err = check(&mut Fake::default(), "sparc64")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no emulator for architecture \"sparc64\""),
            "{err}"
        );
    }

    #[test]
    fn handler_lines_get_the_fix_binary_flag() {
        assert_eq!(handler_line(CONF).as_deref(), Some(CONF.trim()));
        let without = CONF.trim().trim_end_matches("OPF").to_string() + "OP";
        assert_eq!(handler_line(&without), Some(format!("{without}F")));
        assert_eq!(handler_line("# comment\n\n"), None);
        assert_eq!(handler_line(":too:few:fields"), None);
    }
}

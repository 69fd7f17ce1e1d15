//! Which device nodes a container may use: Docker's default allow list, as
//! cgroup v1 `devices.allow` lines and as a cgroup v2 device program
//! (`BPF_PROG_TYPE_CGROUP_DEVICE`), and the bpf(2) calls that load and
//! attach that program.
//!
//! Everything not on the list is refused for reading and writing, whatever
//! the node's mode and wherever it is (made with mknod, or unpacked from an
//! image layer): `mknod /kmsg c 1 11 && echo X > /kmsg` fails at the write.
//! mknod itself stays allowed for every node, as in Docker: a node made that
//! way cannot be opened.

use std::io;
use std::path::Path;

/// `devices.allow` access bits, as the kernel's device program context
/// encodes them (`BPF_DEVCG_ACC_*`).
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;
/// `BPF_DEVCG_DEV_*`.
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;

/// One allow rule: a node type (`b` or `c`), major and minor (`None`: any)
/// and the access it grants (a subset of `rwm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: &'static str,
}

const fn rule(
    kind: char,
    major: Option<u32>,
    minor: Option<u32>,
    access: &'static str,
) -> DeviceRule {
    DeviceRule {
        kind,
        major,
        minor,
        access,
    }
}

/// Docker's default device allow list (moby's `DefaultLinuxSpec` plus what
/// runc adds for every container): mknod of any node; read, write and mknod
/// of null, zero, full, random, urandom, tty, console, ptmx and the ptys
/// (`/dev/pts/*`, major 136). runc's older extra entry for tun/tap (10:200)
/// is left out: a build has no use for it.
pub const DEFAULT_ALLOWED: &[DeviceRule] = &[
    rule('c', None, None, "m"),
    rule('b', None, None, "m"),
    rule('c', Some(1), Some(3), "rwm"), // null
    rule('c', Some(1), Some(5), "rwm"), // zero
    rule('c', Some(1), Some(7), "rwm"), // full
    rule('c', Some(1), Some(8), "rwm"), // random
    rule('c', Some(1), Some(9), "rwm"), // urandom
    rule('c', Some(5), Some(0), "rwm"), // tty
    rule('c', Some(5), Some(1), "rwm"), // console
    rule('c', Some(5), Some(2), "rwm"), // ptmx
    rule('c', Some(136), None, "rwm"),  // pts/*
];

impl DeviceRule {
    /// The rule as a line for cgroup v1's `devices.allow`: `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        format!(
            "{} {}:{} {}",
            self.kind,
            num(self.major),
            num(self.minor),
            self.access
        )
    }

    fn access_bits(&self) -> u32 {
        self.access.chars().fold(0, |bits, c| {
            bits | match c {
                'm' => ACC_MKNOD,
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                _ => 0,
            }
        })
    }

    fn type_code(&self) -> Option<u32> {
        match self.kind {
            'b' => Some(DEV_BLOCK),
            'c' => Some(DEV_CHAR),
            _ => None,
        }
    }
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The instruction as the kernel reads it (little-endian layout of
    /// `struct bpf_insn`: code, dst_reg:4 | src_reg:4, off, imm).
    pub fn to_bytes(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0] = self.code;
        out[1] = (self.src << 4) | (self.dst & 0x0f);
        out[2..4].copy_from_slice(&self.off.to_le_bytes());
        out[4..8].copy_from_slice(&self.imm.to_le_bytes());
        out
    }
}

// Opcodes used (class | op | source).
/// `dst = *(u32 *)(src + off)`.
pub const LDX_MEM_W: u8 = 0x61;
/// `dst &= imm` (32-bit).
pub const ALU32_AND_K: u8 = 0x54;
/// `dst >>= imm` (32-bit).
pub const ALU32_RSH_K: u8 = 0x74;
/// `dst = src` (32-bit).
pub const ALU32_MOV_X: u8 = 0xbc;
/// `dst = imm` (64-bit).
pub const ALU64_MOV_K: u8 = 0xb7;
/// `if dst != imm goto pc + off`.
pub const JMP_JNE_K: u8 = 0x55;
/// `if dst != src goto pc + off`.
pub const JMP_JNE_X: u8 = 0x5d;
/// `return r0`.
pub const JMP_EXIT: u8 = 0x95;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

/// The cgroup v2 device program for `rules`: returns 1 (allow) when the
/// access matches a rule, 0 (deny) otherwise.
///
/// The context (`struct bpf_cgroup_dev_ctx`, in r1) holds
/// `access_type = access << 16 | type`, `major`, `minor`. The prologue
/// loads type into r2, access into r3, major into r4, minor into r5; each
/// rule is a block of checks that jump to the next block on a mismatch and
/// ends in `return 1`; the last block is `return 0`. A requested access
/// matches when it is within the rule's (`(r3 & allowed) == r3`).
pub fn device_program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut program = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        // Each check is (instructions, index of its jump within them).
        let mut block: Vec<Insn> = Vec::new();
        let mut jumps: Vec<usize> = Vec::new();
        if let Some(kind) = rule.type_code() {
            jumps.push(block.len());
            block.push(insn(JMP_JNE_K, 2, 0, 0, kind as i32));
        }
        let access = rule.access_bits();
        if access != ACC_MKNOD | ACC_READ | ACC_WRITE {
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, access as i32));
            jumps.push(block.len());
            block.push(insn(JMP_JNE_X, 1, 3, 0, 0));
        }
        if let Some(major) = rule.major {
            jumps.push(block.len());
            // Majors and minors are below 2^20: the immediate is exact.
            block.push(insn(JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor {
            jumps.push(block.len());
            block.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for at in jumps {
            // To the first instruction after this block.
            block[at].off = (len - at - 1) as i16;
        }
        program.extend(block);
    }
    program.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    program.push(insn(JMP_EXIT, 0, 0, 0, 0));
    program
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Every program attached along the way runs, and all must allow: ours
/// never replaces a restriction set higher up (systemd's, say).
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads `program` as a cgroup device program and attaches it to the
/// cgroup v2 directory `dir` (`BPF_F_ALLOW_MULTI`). The attachment holds
/// the program: it goes when the cgroup is removed. Needs CAP_SYS_ADMIN (or
/// CAP_BPF) in the initial user namespace.
pub fn attach_device_program(dir: &Path, program: &[Insn]) -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let bytes: Vec<u8> = program.iter().flat_map(|i| i.to_bytes()).collect();
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"kiln_devcg");
    let load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: bytes.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    // SAFETY: bpf(2) reads the attr, whose pointers (instructions, license,
    // log buffer) refer to buffers that outlive the call; the log buffer is
    // as long as log_size says.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &load as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        let verifier = String::from_utf8_lossy(&log);
        let verifier = verifier.trim_end_matches('\0').trim();
        if verifier.is_empty() {
            return Err(io::Error::new(
                err.kind(),
                format!("loading the device program: {err}"),
            ));
        }
        return Err(io::Error::new(
            err.kind(),
            format!("loading the device program: {err}; verifier: {verifier}"),
        ));
    }
    // SAFETY: bpf returned a new descriptor that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let cgroup = std::fs::File::open(dir)?;
    let attach = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: bpf(2) reads the attr we own; both descriptors are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("attaching the device program to {}: {err}", dir.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a device program on one access, interpreting the instructions
    /// [`device_program`] emits: the same semantics as the kernel's.
    fn eval(program: &[Insn], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access << 16 | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (d, s) = (i.dst as usize, i.src as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(s, 1, "loads only from the context");
                    r[d] = u64::from(ctx[(i.off / 4) as usize]);
                }
                ALU32_AND_K => r[d] = u64::from(r[d] as u32 & i.imm as u32),
                ALU32_RSH_K => r[d] = u64::from((r[d] as u32) >> i.imm),
                ALU32_MOV_X => r[d] = u64::from(r[s] as u32),
                ALU64_MOV_K => r[d] = i.imm as i64 as u64,
                JMP_JNE_K => {
                    if r[d] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                JMP_JNE_X => {
                    if r[d] != r[s] {
                        pc += i.off as usize;
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn program_allows_exactly_the_default_list() {
        let p = device_program(DEFAULT_ALLOWED);
        let rw = ACC_READ | ACC_WRITE;
        // The standard nodes, for read, write and both.
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            for access in [ACC_READ, ACC_WRITE, rw, rw | ACC_MKNOD] {
                assert_eq!(
                    eval(&p, DEV_CHAR, access, major, minor),
                    1,
                    "{major}:{minor}"
                );
            }
            // The same numbers as a block device are not those devices.
            assert_eq!(eval(&p, DEV_BLOCK, ACC_READ, major, minor), 0);
        }
        assert_eq!(eval(&p, DEV_CHAR, rw, 136, 0), 1);
        assert_eq!(eval(&p, DEV_CHAR, rw, 136, 4711), 1);
        // kmsg, mem, port, a disk: mknod yes, open no.
        for (kind, major, minor) in [
            (DEV_CHAR, 1, 11),
            (DEV_CHAR, 1, 1),
            (DEV_CHAR, 1, 4),
            (DEV_BLOCK, 8, 0),
        ] {
            assert_eq!(eval(&p, kind, ACC_MKNOD, major, minor), 1);
            assert_eq!(eval(&p, kind, ACC_READ, major, minor), 0);
            assert_eq!(eval(&p, kind, ACC_WRITE, major, minor), 0);
            assert_eq!(eval(&p, kind, rw, major, minor), 0);
        }
        // A neighbour of an allowed node.
        assert_eq!(eval(&p, DEV_CHAR, ACC_WRITE, 1, 2), 0);
        assert_eq!(eval(&p, DEV_CHAR, ACC_WRITE, 137, 0), 0);
        // With no rule, nothing is allowed.
        assert_eq!(eval(&device_program(&[]), DEV_CHAR, ACC_MKNOD, 1, 3), 0);
    }

    #[test]
    fn jumps_land_on_the_next_rule() {
        let p = device_program(&[rule('c', Some(1), Some(3), "rwm")]);
        // prologue (6), jne type, jne major, jne minor, mov, exit, mov, exit
        assert_eq!(p.len(), 13);
        assert_eq!((p[6].code, p[6].off), (JMP_JNE_K, 4));
        assert_eq!((p[7].code, p[7].off), (JMP_JNE_K, 3));
        assert_eq!((p[8].code, p[8].off), (JMP_JNE_K, 2));
        assert_eq!(p[9], insn(ALU64_MOV_K, 0, 0, 0, 1));
        assert_eq!(p[11], insn(ALU64_MOV_K, 0, 0, 0, 0));
        // `struct bpf_insn` layout: code, dst | src << 4, off, imm.
        assert_eq!(
            insn(JMP_JNE_X, 1, 3, 2, 0).to_bytes(),
            [0x5d, 0x31, 2, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            insn(JMP_JNE_K, 4, 0, 1, 136).to_bytes(),
            [0x55, 0x04, 1, 0, 136, 0, 0, 0]
        );
    }

    #[test]
    fn v1_lines() {
        let lines: Vec<String> = DEFAULT_ALLOWED.iter().map(DeviceRule::v1_line).collect();
        assert_eq!(lines[0], "c *:* m");
        assert_eq!(lines[1], "b *:* m");
        assert_eq!(lines[2], "c 1:3 rwm");
        assert_eq!(lines.last().map(String::as_str), Some("c 136:* rwm"));
    }
}

//! Docker's default capability set and a default seccomp deny-list modeled on
//! Docker's default profile.
//!
//! The seccomp profile is a deny-list (everything else allowed) of the calls
//! Docker's profile refuses to a container without extra capabilities: kernel
//! modules, keyrings, mount/pivot_root, namespace creation (`unshare`,
//! `setns`, `clone` with `CLONE_NEW*`), clock setting, kexec, bpf,
//! perf_event_open, ptrace-like memory access, swap, reboot… They fail with
//! EPERM. `clone3` fails with ENOSYS, as in Docker, so that libc falls back to
//! `clone`, whose flags can be inspected.

use std::collections::BTreeMap;

use caps::Capability;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The capabilities Docker grants a container by default.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Every capability this crate knows that is not in [`DEFAULT_CAPABILITIES`],
/// in kernel order: the ones dropped from the bounding set.
pub fn dropped_capabilities() -> Vec<Capability> {
    let mut all: Vec<Capability> = caps::all()
        .into_iter()
        .filter(|c| !DEFAULT_CAPABILITIES.contains(c))
        .collect();
    all.sort_by_key(|c| c.index());
    all
}

/// Syscalls refused with EPERM, whatever their arguments.
fn denied_syscalls() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_acct,
        libc::SYS_add_key,
        libc::SYS_bpf,
        libc::SYS_clock_adjtime,
        libc::SYS_clock_settime,
        libc::SYS_delete_module,
        libc::SYS_finit_module,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fsopen,
        libc::SYS_fspick,
        libc::SYS_get_mempolicy,
        libc::SYS_init_module,
        libc::SYS_kcmp,
        libc::SYS_kexec_file_load,
        libc::SYS_kexec_load,
        libc::SYS_keyctl,
        libc::SYS_lookup_dcookie,
        libc::SYS_mbind,
        libc::SYS_mount,
        libc::SYS_mount_setattr,
        libc::SYS_move_mount,
        libc::SYS_move_pages,
        libc::SYS_name_to_handle_at,
        libc::SYS_nfsservctl,
        libc::SYS_open_by_handle_at,
        libc::SYS_open_tree,
        libc::SYS_perf_event_open,
        libc::SYS_pivot_root,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_quotactl,
        libc::SYS_reboot,
        libc::SYS_request_key,
        libc::SYS_set_mempolicy,
        libc::SYS_setns,
        libc::SYS_settimeofday,
        libc::SYS_swapoff,
        libc::SYS_swapon,
        libc::SYS_umount2,
        libc::SYS_unshare,
        libc::SYS_userfaultfd,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_ioperm,
        libc::SYS_iopl,
        libc::SYS__sysctl,
        libc::SYS_sysfs,
        libc::SYS_uselib,
        libc::SYS_ustat,
    ]);
    calls.sort_unstable();
    calls.dedup();
    calls
}

/// The namespace flags `clone` may not be given.
const CLONE_NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// Why the default profile could not be compiled (an unsupported
/// architecture, in practice).
#[derive(Debug, thiserror::Error)]
#[error("seccomp profile for {arch}: {message}")]
pub struct SeccompError {
    arch: &'static str,
    message: String,
}

/// Compiles the default profile into the BPF programs to install, in order.
pub fn default_seccomp_filters() -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = std::env::consts::ARCH;
    let err = |e: seccompiler::BackendError| SeccompError {
        arch,
        message: e.to_string(),
    };
    let target = TargetArch::try_from(arch).map_err(|e| SeccompError {
        arch,
        message: e.to_string(),
    })?;

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in denied_syscalls() {
        rules.insert(call, Vec::new());
    }
    // clone's flags are its first argument on x86_64 and aarch64 alike.
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let condition = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*flag as u64),
                *flag as u64,
            )?;
            SeccompRule::new(vec![condition])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target,
    )
    .map_err(err)?;

    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let no_clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target,
    )
    .map_err(err)?;

    let compile = |filter: SeccompFilter| -> Result<BpfProgram, SeccompError> {
        filter.try_into().map_err(err)
    };
    Ok(vec![compile(deny)?, compile(no_clone3)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_is_dockers_fourteen() {
        assert_eq!(DEFAULT_CAPABILITIES.len(), 14);
        let dropped = dropped_capabilities();
        assert!(dropped.contains(&Capability::CAP_SYS_ADMIN));
        assert!(dropped.contains(&Capability::CAP_NET_ADMIN));
        assert!(!dropped.contains(&Capability::CAP_CHOWN));
        assert_eq!(
            dropped.len() + DEFAULT_CAPABILITIES.len(),
            caps::all().len()
        );
    }

    #[test]
    fn profile_compiles_and_denies_mount() {
        let filters = default_seccomp_filters().unwrap();
        assert_eq!(filters.len(), 2);
        assert!(denied_syscalls().contains(&libc::SYS_mount));
        assert!(denied_syscalls().contains(&libc::SYS_keyctl));
        assert!(!denied_syscalls().contains(&libc::SYS_execve));
        assert!(!denied_syscalls().contains(&libc::SYS_clone));
    }
}

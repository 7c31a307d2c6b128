//! The confinement of a workspace beyond its namespaces and cgroup: capabilities, the default
//! seccomp profile, AppArmor where the host has it, and the kernel files hidden or made read-only.
//! Bots run untrusted code, so every workspace gets all of it; nothing here is per workspace.
//!
//! How it compares with containerd 2.x's default spec (`pkg/oci/spec.go`,
//! `populateDefaultUnixSpec`, v2.3.4) and Docker's (moby `daemon/pkg/oci/defaults.go`):
//! - Masked paths: containerd's eleven, including `/sys/devices/virtual/powercap` (RAPL energy
//!   counters leak what other tenants compute, GHSA-jq35-85cj-fj4p), plus what Docker masks beyond
//!   containerd for GHSA-6fw5-f8r9-fgfm: `/proc/interrupts` and each CPU's `thermal_throttle`
//!   directory present on the host.
//! - Read-only paths: containerd's and Docker's list, unchanged.
//! - Capabilities: containerd's (and Docker's) default set minus `CAP_NET_RAW`; see
//!   [`CAPABILITIES`].
//! - Seccomp: Docker's default profile, resolved as Docker and containerd resolve it; see
//!   [`DEFAULT_SECCOMP_PROFILE`].
//! - AppArmor: containerd's CRI default profile name, applied only when the host has it loaded.

use std::collections::HashSet;
use std::sync::LazyLock;

use oci_spec::runtime::{Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSyscall};
use serde::Deserialize;
use tracing::{info, warn};

/// The capabilities of every workspace process: containerd's default set without `CAP_NET_RAW`.
///
/// - `CAP_NET_RAW` is dropped (as Podman and Kubernetes' restricted policy do): it only serves
///   raw and packet sockets, the attack surface of several kernel exploits (CVE-2016-8655,
///   CVE-2017-7308, CVE-2020-14386) and of spoofing on a shared bridge. `ping` keeps working
///   through ICMP datagram sockets, which [`SYSCTLS`] opens to every group, as Docker does.
/// - `CAP_MKNOD` stays: package managers and archive tools create device nodes (debootstrap,
///   rootfs tarballs), and the device cgroup (deny all but the defaults) keeps such nodes from
///   being opened; host-side mounts of a workspace are `nodev`.
/// - `CAP_AUDIT_WRITE` stays: PAM-based tools (su, login, sshd) refuse to run when the audit
///   socket answers EPERM, and the capability only appends user messages to the host's audit log.
pub const CAPABILITIES: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Namespaced sysctls of every workspace: unprivileged ICMP echo sockets for any group, so `ping`
/// works without `CAP_NET_RAW` (Docker sets the same for containers with their own netns).
pub const SYSCTLS: [(&str, &str); 1] = [("net.ipv4.ping_group_range", "0 2147483647")];

/// containerd's default masked paths (v2.3.4 `populateDefaultUnixSpec`) and Docker's additions.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
    // Docker, not containerd: interrupt counts per CPU are a side channel (GHSA-6fw5-f8r9-fgfm).
    "/proc/interrupts",
];

/// containerd's (and Docker's) default read-only paths.
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The AppArmor profile name that means "no AppArmor confinement".
pub const APPARMOR_UNCONFINED: &str = "unconfined";

/// Docker's default seccomp profile, byte for byte: moby/profiles `seccomp/default.json` at tag
/// `seccomp/v0.2.3` (commit 836ae4d37ef2; unchanged on main at cd3bed806172, 2026-06-30).
/// containerd v2.3.4's `contrib/seccomp/seccomp_default.go` generates the same rules in code; it
/// differs only in also allowing `lsm_get_self_attr`, `lsm_list_modules` and `lsm_set_self_attr`
/// and in allowing `riscv_hwprobe` on riscv64 only. To update, copy the new upstream file over
/// this one and update the version here; the tests below pin what berth relies on.
///
/// Default action ERRNO(EPERM); an allow-list of ~360 syscalls; `socket` for every family but
/// AF_ALG and AF_VSOCK; `personality` for five personas; `clone` without namespace flags and
/// `clone3` as ENOSYS (so libc falls back to `clone`) unless CAP_SYS_ADMIN; namespace, mount,
/// bpf, perf, module, reboot and clock calls only with their capabilities (none of which berth
/// grants); keyring calls (`keyctl`, `add_key`, `request_key`) never.
const DEFAULT_SECCOMP_PROFILE: &str = include_str!("seccomp_default.json");

/// The profile, parsed once.
static PROFILE: LazyLock<Profile> = LazyLock::new(|| {
    serde_json::from_str(DEFAULT_SECCOMP_PROFILE).expect("the embedded seccomp profile parses (a unit test checks it)")
});

/// What every workspace runs under on this host.
#[derive(Clone, Debug)]
pub struct Confinement {
    /// The seccomp filter, resolved for [`CAPABILITIES`].
    pub seccomp: LinuxSeccomp,
    /// The AppArmor profile, when the host has AppArmor and the profile is loaded.
    pub apparmor_profile: Option<String>,
    /// Paths made inaccessible inside the workspace.
    pub masked_paths: Vec<String>,
    /// Paths remounted read-only inside the workspace.
    pub readonly_paths: Vec<String>,
}

/// Host facts the confinement depends on.
#[derive(Clone, Debug)]
pub struct HostFacts {
    /// The architecture berth runs on (workspaces run the same).
    pub arch: HostArch,
    /// The running kernel's version, when it could be read.
    pub kernel: Option<KernelVersion>,
    /// Host paths to mask that only some hosts have (per-CPU `thermal_throttle`).
    pub extra_masked_paths: Vec<String>,
}

/// Reads the host (a handful of small procfs and sysfs files) and decides the confinement of its
/// workspaces, with the AppArmor profile from the configuration; warns when that profile cannot
/// be applied. Called once, when the runtime is built.
pub fn detect(apparmor_profile: &str) -> Confinement {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let host = HostFacts {
        arch: HostArch::current(),
        kernel: read("/proc/sys/kernel/osrelease").as_deref().and_then(KernelVersion::parse),
        extra_masked_paths: thermal_throttle_paths(),
    };
    let decision = if apparmor_profile == APPARMOR_UNCONFINED {
        AppArmor::Unconfined
    } else {
        decide_apparmor(
            apparmor_profile,
            read("/sys/module/apparmor/parameters/enabled").as_deref(),
            read("/sys/kernel/security/apparmor/profiles").as_deref(),
        )
    };
    let apparmor = match decision {
        AppArmor::Profile(name) => {
            info!(profile = %name, "workspaces run under the apparmor profile");
            Some(name)
        }
        AppArmor::NotLoaded(name) => {
            warn!(
                profile = %name,
                "the apparmor profile is not loaded, so workspaces run without apparmor; load it with \
                 apparmor_parser, pass a loaded profile with --apparmor-profile, or pass \
                 --apparmor-profile unconfined"
            );
            None
        }
        AppArmor::HostWithout | AppArmor::Unconfined => None,
    };
    Confinement::new(&host, apparmor)
}

/// Each CPU's `thermal_throttle` directory on this host (Docker masks them; most VMs have none).
fn thermal_throttle_paths() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/devices/system/cpu") else {
        return Vec::new();
    };
    let mut paths: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("cpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|entry| entry.path().join("thermal_throttle"))
        .filter(|path| path.is_dir())
        .map(|path| path.to_string_lossy().into_owned())
        .collect();
    paths.sort();
    paths
}

impl Confinement {
    /// The confinement for these host facts and AppArmor decision.
    pub fn new(host: &HostFacts, apparmor_profile: Option<String>) -> Self {
        let capabilities: HashSet<Capability> = CAPABILITIES.into_iter().collect();
        let seccomp = resolve_seccomp(&PROFILE, &capabilities, &host.arch, host.kernel);
        let masked_paths =
            MASKED_PATHS.iter().map(|path| (*path).to_owned()).chain(host.extra_masked_paths.iter().cloned()).collect();
        Self { seccomp, apparmor_profile, masked_paths, readonly_paths: READONLY_PATHS.map(str::to_owned).to_vec() }
    }
}

/// The AppArmor confinement a host can give.
#[derive(Debug, PartialEq, Eq)]
pub enum AppArmor {
    /// The host has no AppArmor (module absent or disabled).
    HostWithout,
    /// The configuration asked for none.
    Unconfined,
    /// The profile is loaded: workspaces run under it.
    Profile(String),
    /// AppArmor is on but the profile is not loaded: workspaces run without AppArmor.
    NotLoaded(String),
}

/// Decides from the contents of `/sys/module/apparmor/parameters/enabled` and
/// `/sys/kernel/security/apparmor/profiles` (`None` when unreadable) whether `wanted` applies.
/// runc refuses to start a container whose profile is not loaded, so an unloaded profile means
/// no AppArmor rather than no workspaces.
pub fn decide_apparmor(wanted: &str, enabled: Option<&str>, loaded_profiles: Option<&str>) -> AppArmor {
    if wanted == APPARMOR_UNCONFINED {
        return AppArmor::Unconfined;
    }
    // The same test as runc's and containerd's: the parameter reads "Y".
    if !enabled.is_some_and(|value| value.starts_with('Y')) {
        return AppArmor::HostWithout;
    }
    // Each line is "NAME (MODE)"; a name may contain spaces, so match the whole prefix.
    let loaded = loaded_profiles.is_some_and(|profiles| {
        profiles.lines().any(|line| line.strip_prefix(wanted).is_some_and(|mode| mode.starts_with(" (")))
    });
    if loaded { AppArmor::Profile(wanted.to_owned()) } else { AppArmor::NotLoaded(wanted.to_owned()) }
}

/// A kernel version as seccomp profiles compare it: major and minor, the rest ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u64, pub u64);

impl KernelVersion {
    /// Parses "6.1", "6.1.0-18-amd64", "3.12-rc5" (moby's `parseRelease`).
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.trim().splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
        Some(Self(major, minor.parse().ok()?))
    }
}

/// The architecture as the profile's `archMap` (libseccomp) and its filters (moby's native
/// names, from GOARCH) name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostArch {
    /// moby's name: "amd64", "arm64", "x86", "s390x", ...
    pub native: &'static str,
    /// The seccomp architecture whose `archMap` entry applies.
    pub seccomp: Option<Arch>,
}

impl HostArch {
    /// The architecture berth was built for.
    pub fn current() -> Self {
        let little = cfg!(target_endian = "little");
        let (native, seccomp) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", Some(Arch::ScmpArchX86_64)),
            "x86" => ("x86", Some(Arch::ScmpArchX86)),
            "aarch64" => ("arm64", Some(Arch::ScmpArchAarch64)),
            "arm" => ("arm", Some(Arch::ScmpArchArm)),
            "riscv64" => ("riscv64", Some(Arch::ScmpArchRiscv64)),
            "s390x" => ("s390x", Some(Arch::ScmpArchS390x)),
            "loongarch64" => ("loongarch64", Some(Arch::ScmpArchLoongarch64)),
            "powerpc64" if little => ("ppc64le", Some(Arch::ScmpArchPpc64le)),
            "powerpc64" => ("ppc64", Some(Arch::ScmpArchPpc64)),
            "mips64" if little => ("mipsel64", Some(Arch::ScmpArchMipsel64)),
            "mips64" => ("mips64", Some(Arch::ScmpArchMips64)),
            other => (other, None),
        };
        Self { native, seccomp }
    }
}

/// moby's profile format: the OCI seccomp fields plus an architecture map and conditional rules.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Profile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    arch_map: Vec<ArchMapEntry>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ArchMapEntry {
    architecture: Arch,
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    errno_ret: Option<u32>,
    #[serde(default, rename = "comment")]
    _comment: Option<String>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(default)]
    caps: Vec<Capability>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default, deserialize_with = "min_kernel")]
    min_kernel: Option<KernelVersion>,
}

fn min_kernel<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<KernelVersion>, D::Error> {
    let text = String::deserialize(deserializer)?;
    KernelVersion::parse(&text)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("invalid minKernel {text:?}, expected \"<major>.<minor>\"")))
}

/// The OCI filter for these capabilities, architecture and kernel, as moby's `setupSeccomp`
/// computes it: a rule is dropped when the host matches one of its `excludes` (an arch, any of
/// the caps, a kernel at least `minKernel`) or misses one of its `includes` (one of the arches,
/// all of the caps, a kernel at least `minKernel`; an unknown kernel counts as too old).
fn resolve_seccomp(
    profile: &Profile,
    capabilities: &HashSet<Capability>,
    arch: &HostArch,
    kernel: Option<KernelVersion>,
) -> LinuxSeccomp {
    let architectures: Vec<Arch> = profile
        .arch_map
        .iter()
        .find(|entry| Some(entry.architecture) == arch.seccomp)
        .map(|entry| {
            std::iter::once(entry.architecture).chain(entry.sub_architectures.iter().flatten().copied()).collect()
        })
        .unwrap_or_default();
    let at_least = |min: KernelVersion| kernel.is_some_and(|running| running >= min);
    let excluded = |filter: &Filter| {
        filter.arches.iter().any(|name| name == arch.native)
            || filter.caps.iter().any(|cap| capabilities.contains(cap))
            || filter.min_kernel.is_some_and(at_least)
    };
    let included = |filter: &Filter| {
        (filter.arches.is_empty() || filter.arches.iter().any(|name| name == arch.native))
            && filter.caps.iter().all(|cap| capabilities.contains(cap))
            && filter.min_kernel.is_none_or(at_least)
    };
    let syscalls: Vec<LinuxSyscall> = profile
        .syscalls
        .iter()
        .filter(|rule| !excluded(&rule.excludes) && included(&rule.includes))
        .map(|rule| {
            let mut syscall = LinuxSyscall::default();
            syscall.set_names(rule.names.clone());
            syscall.set_action(rule.action);
            syscall.set_errno_ret(rule.errno_ret);
            syscall.set_args((!rule.args.is_empty()).then(|| rule.args.clone()));
            syscall
        })
        .collect();
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(profile.default_action);
    seccomp.set_default_errno_ret(profile.default_errno_ret);
    seccomp.set_architectures((!architectures.is_empty()).then_some(architectures));
    seccomp.set_syscalls(Some(syscalls));
    seccomp
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::LinuxSeccompOperator;

    use super::*;

    const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

    fn host(native: &'static str, seccomp: Arch, kernel: (u64, u64)) -> HostFacts {
        HostFacts {
            arch: HostArch { native, seccomp: Some(seccomp) },
            kernel: Some(KernelVersion(kernel.0, kernel.1)),
            extra_masked_paths: Vec::new(),
        }
    }

    fn amd64() -> HostFacts {
        host("amd64", Arch::ScmpArchX86_64, (6, 1))
    }

    /// The rules that name `syscall`.
    fn rules<'a>(seccomp: &'a LinuxSeccomp, syscall: &str) -> Vec<&'a LinuxSyscall> {
        seccomp.syscalls().as_ref().unwrap().iter().filter(|rule| rule.names().iter().any(|n| n == syscall)).collect()
    }

    /// Whether some rule allows `syscall` whatever its arguments.
    fn allowed_unconditionally(seccomp: &LinuxSeccomp, syscall: &str) -> bool {
        rules(seccomp, syscall).iter().any(|rule| {
            rule.action() == LinuxSeccompAction::ScmpActAllow && rule.args().as_ref().is_none_or(Vec::is_empty)
        })
    }

    #[test]
    fn the_embedded_profile_is_upstreams_and_parses() {
        use sha2::Digest as _;
        // The sha256 of upstream's file: a hand edit breaks this; an update replaces both.
        let digest = sha2::Sha256::digest(DEFAULT_SECCOMP_PROFILE.as_bytes());
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(hex, "536529b665dd0972c37bfb569f5d4ac8a53592e7b00752bc39ff063ca9864c74", "not the upstream file");
        assert_eq!(PROFILE.default_action, LinuxSeccompAction::ScmpActErrno);
        assert_eq!(PROFILE.default_errno_ret, Some(1));
        assert!(PROFILE.syscalls[0].names.len() > 350);
    }

    #[test]
    fn the_default_denies_with_eperm_and_allows_ordinary_calls() {
        let seccomp = Confinement::new(&amd64(), None).seccomp;
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(seccomp.default_errno_ret(), Some(1));
        for syscall in ["read", "openat", "execve", "fork", "wait4", "futex", "mmap", "arch_prctl", "chroot", "ptrace"]
        {
            assert!(allowed_unconditionally(&seccomp, syscall), "{syscall} must be allowed");
        }
        assert_eq!(
            seccomp.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
    }

    #[test]
    fn without_cap_sys_admin_namespaces_mounts_bpf_and_keyrings_are_denied() {
        let seccomp = Confinement::new(&amd64(), None).seccomp;
        for syscall in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "fsopen",
            "open_tree",
            "bpf",
            "keyctl",
            "add_key",
            "request_key",
            "perf_event_open",
            "init_module",
            "reboot",
            "kexec_load",
            "clock_settime",
            "open_by_handle_at",
            "syslog",
        ] {
            assert!(rules(&seccomp, syscall).is_empty(), "{syscall} must fall to the default action");
        }
        // clone only without namespace flags (arg 0 on amd64), clone3 as ENOSYS.
        let clone = rules(&seccomp, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        let arg = clone[0].args().as_ref().unwrap()[0];
        assert_eq!(
            (arg.index(), arg.value(), arg.op()),
            (0, CLONE_NAMESPACE_FLAGS, LinuxSeccompOperator::ScmpCmpMaskedEq)
        );
        let clone3 = rules(&seccomp, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!((clone3[0].action(), clone3[0].errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(38)));
    }

    #[test]
    fn socket_and_personality_are_allowed_only_for_listed_arguments() {
        let seccomp = Confinement::new(&amd64(), None).seccomp;
        let socket = rules(&seccomp, "socket");
        let conditions: Vec<_> = socket.iter().map(|rule| rule.args().as_ref().unwrap()[0]).collect();
        // AF_ALG (38) and AF_VSOCK (40) match none of the three ranges.
        assert_eq!(
            conditions.iter().map(|arg| (arg.value(), arg.op())).collect::<Vec<_>>(),
            [
                (38, LinuxSeccompOperator::ScmpCmpLt),
                (39, LinuxSeccompOperator::ScmpCmpEq),
                (40, LinuxSeccompOperator::ScmpCmpGt)
            ]
        );
        let personas: Vec<u64> =
            rules(&seccomp, "personality").iter().map(|rule| rule.args().as_ref().unwrap()[0].value()).collect();
        assert_eq!(personas, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
    }

    #[test]
    fn capabilities_arches_and_kernel_select_rules_like_moby() {
        let profile = &*PROFILE;
        let mut admin: HashSet<Capability> = CAPABILITIES.into_iter().collect();
        admin.insert(Capability::SysAdmin);
        let with_admin = resolve_seccomp(profile, &admin, &amd64().arch, Some(KernelVersion(6, 1)));
        assert!(allowed_unconditionally(&with_admin, "unshare") && allowed_unconditionally(&with_admin, "mount"));
        assert!(allowed_unconditionally(&with_admin, "clone"));
        assert!(rules(&with_admin, "clone3").iter().all(|rule| rule.action() == LinuxSeccompAction::ScmpActAllow));

        let s390x = Confinement::new(&host("s390x", Arch::ScmpArchS390x, (6, 1)), None).seccomp;
        let clone = rules(&s390x, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args().as_ref().unwrap()[0].index(), 1, "s390 passes clone flags second");
        assert!(!allowed_unconditionally(&s390x, "arch_prctl"));
        assert_eq!(s390x.architectures().as_deref(), Some(&[Arch::ScmpArchS390x, Arch::ScmpArchS390][..]));

        let old_kernel = Confinement::new(&host("arm64", Arch::ScmpArchAarch64, (4, 4)), None).seccomp;
        assert!(!allowed_unconditionally(&old_kernel, "ptrace"), "ptrace needs 4.8 (seccomp bypass before)");
        assert!(allowed_unconditionally(&old_kernel, "set_tls"));

        let unknown =
            HostFacts { arch: HostArch { native: "sparc64", seccomp: None }, kernel: None, extra_masked_paths: vec![] };
        let seccomp = Confinement::new(&unknown, None).seccomp;
        assert_eq!(seccomp.architectures(), &None, "no archMap entry: the runtime's native arch only");
        assert!(!allowed_unconditionally(&seccomp, "ptrace"), "an unknown kernel counts as too old");
    }

    #[test]
    fn net_raw_is_dropped_and_the_rest_is_containerds_default() {
        let capabilities: HashSet<Capability> = CAPABILITIES.into_iter().collect();
        assert!(!capabilities.contains(&Capability::NetRaw));
        assert!(!capabilities.contains(&Capability::SysAdmin));
        assert_eq!(capabilities.len(), 13);
    }

    #[test]
    fn masked_paths_include_powercap_interrupts_and_host_thermal_paths() {
        let mut facts = amd64();
        facts.extra_masked_paths = vec!["/sys/devices/system/cpu/cpu0/thermal_throttle".to_owned()];
        let confinement = Confinement::new(&facts, None);
        for path in ["/sys/devices/virtual/powercap", "/proc/interrupts", "/proc/kcore", "/sys/firmware"] {
            assert!(confinement.masked_paths.iter().any(|p| p == path), "{path} is not masked");
        }
        assert!(confinement.masked_paths.iter().any(|p| p.ends_with("cpu0/thermal_throttle")));
        assert!(confinement.readonly_paths.iter().any(|p| p == "/proc/sys"));
    }

    #[test]
    fn apparmor_applies_only_a_loaded_profile_on_a_host_that_has_it() {
        let name = "cri-containerd.apparmor.d";
        let loaded = "docker-default (enforce)\ncri-containerd.apparmor.d (enforce)\n";
        assert_eq!(decide_apparmor(name, Some("Y\n"), Some(loaded)), AppArmor::Profile(name.to_owned()));
        assert_eq!(
            decide_apparmor(name, Some("Y\n"), Some("docker-default (enforce)\n")),
            AppArmor::NotLoaded(name.to_owned())
        );
        // A name that is only a prefix of a loaded one is not loaded.
        assert_eq!(decide_apparmor("cri", Some("Y\n"), Some(loaded)), AppArmor::NotLoaded("cri".to_owned()));
        assert_eq!(decide_apparmor(name, Some("Y\n"), None), AppArmor::NotLoaded(name.to_owned()));
        assert_eq!(decide_apparmor(name, Some("N\n"), Some(loaded)), AppArmor::HostWithout);
        assert_eq!(decide_apparmor(name, None, None), AppArmor::HostWithout);
        assert_eq!(decide_apparmor(APPARMOR_UNCONFINED, Some("Y\n"), Some(loaded)), AppArmor::Unconfined);
        assert_eq!(
            decide_apparmor("my profile", Some("Y"), Some("my profile (complain)\n")),
            AppArmor::Profile("my profile".to_owned())
        );
    }

    #[test]
    fn kernel_versions_parse_like_moby() {
        assert_eq!(KernelVersion::parse("6.18.44-fc-v1045\n"), Some(KernelVersion(6, 18)));
        assert_eq!(KernelVersion::parse("3.12-1-amd64"), Some(KernelVersion(3, 12)));
        assert_eq!(KernelVersion::parse("3.12-rc5"), Some(KernelVersion(3, 12)));
        assert_eq!(KernelVersion::parse("4.8"), Some(KernelVersion(4, 8)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(KernelVersion(4, 10) > KernelVersion(4, 8));
    }
}

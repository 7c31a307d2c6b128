//! The OCI runtime spec of a workspace container: containerd's default spec (what `ctr run`
//! produces) plus the image config, with `catatonit -P` as PID 1 and berth's own mounts.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::error::{Error, Result};
use crate::model::Resources;
use crate::runtime::ImageConfig;

/// Where the host's catatonit appears inside every workspace (on the /run tmpfs, so nothing is
/// written into the workspace's snapshot).
pub const INIT_PATH: &str = "/run/berth-init";

/// CFS period used to express cpu_millis as a quota.
const CPU_PERIOD_MICROS: u64 = 100_000;

/// containerd's default capability set.
const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Everything the spec depends on.
pub struct SpecInput<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub image: &'a ImageConfig,
    /// Caller-supplied variables; they override the image's.
    pub env: &'a BTreeMap<String, String>,
    pub resources: Resources,
    pub init_binary: &'a Path,
    /// Host files bind-mounted at /etc/hosts, /etc/hostname and /etc/resolv.conf.
    pub etc_dir: &'a Path,
}

/// Builds the runtime spec.
pub fn build(input: &SpecInput<'_>) -> Result<Spec> {
    let invalid = |err: oci_spec::OciSpecError| Error::internal(format!("cannot build the runtime spec: {err}"));
    let capabilities: HashSet<Capability> = CAPABILITIES.into_iter().collect();
    let (uid, gid) = numeric_user(&input.image.user);
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(uid).gid(gid).build().map_err(invalid)?)
        .args(vec![INIT_PATH.to_owned(), "-P".to_owned()])
        .env(merged_env(&input.image.env, input.env))
        .cwd(if input.image.working_dir.is_empty() { "/" } else { &input.image.working_dir })
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(capabilities.clone())
                .effective(capabilities.clone())
                .permitted(capabilities)
                .build()
                .map_err(invalid)?,
        )
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(1024u64)
                .soft(1024u64)
                .build()
                .map_err(invalid)?,
        ])
        .no_new_privileges(true)
        .build()
        .map_err(invalid)?;

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build().map_err(invalid))
    .collect::<Result<Vec<_>>>()?;

    let linux = LinuxBuilder::default()
        .cgroups_path(format!("/{}/{}", input.namespace, input.id))
        .namespaces(namespaces)
        .resources(resources(input.resources).map_err(invalid)?)
        .masked_paths(
            [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .readonly_paths(
            ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"].map(str::to_owned).to_vec(),
        )
        .build()
        .map_err(invalid)?;

    SpecBuilder::default()
        .version("1.0.2-dev")
        .hostname(input.id)
        .root(RootBuilder::default().path("rootfs").readonly(false).build().map_err(invalid)?)
        .process(process)
        .mounts(mounts(input).map_err(invalid)?)
        .linux(linux)
        .build()
        .map_err(invalid)
}

fn resources(limits: Resources) -> oci_spec::Result<oci_spec::runtime::LinuxResources> {
    let mut builder = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?]);
    if limits.cpu_millis > 0 {
        // Create validation bounds cpu_millis far below overflow; a stored spec from before
        // that bound still must not wrap into a negative (unlimited) quota.
        let period = i64::try_from(CPU_PERIOD_MICROS).unwrap_or(i64::MAX);
        let quota = limits.cpu_millis.saturating_mul(period) / 1000;
        builder = builder.cpu(LinuxCpuBuilder::default().period(CPU_PERIOD_MICROS).quota(quota).build()?);
    }
    if limits.memory_bytes > 0 {
        builder = builder.memory(LinuxMemoryBuilder::default().limit(limits.memory_bytes).build()?);
    }
    if limits.pids_limit > 0 {
        builder = builder.pids(LinuxPidsBuilder::default().limit(limits.pids_limit).build()?);
    }
    builder.build()
}

#[cfg(test)]
mod resources_tests {
    use super::*;

    #[test]
    fn a_huge_cpu_limit_saturates_instead_of_overflowing() {
        let limits = Resources { cpu_millis: i64::MAX, ..Resources::default() };
        let cpu = resources(limits).unwrap().cpu().clone().unwrap();
        assert_eq!(cpu.quota(), Some(i64::MAX / 1000));
        assert_eq!(cpu.period(), Some(CPU_PERIOD_MICROS));
    }
}

fn mounts(input: &SpecInput<'_>) -> oci_spec::Result<Vec<Mount>> {
    let mount = |destination: &str, typ: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(destination)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
            .build()
    };
    let bind = |destination: &str, source: &Path, mode: &str| {
        MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_owned(), "rprivate".to_owned(), mode.to_owned()])
            .build()
    };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
        mount("/run", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        bind(INIT_PATH, input.init_binary, "ro")?,
        bind("/etc/hosts", &input.etc_dir.join("hosts"), "rw")?,
        bind("/etc/hostname", &input.etc_dir.join("hostname"), "rw")?,
        bind("/etc/resolv.conf", &input.etc_dir.join("resolv.conf"), "rw")?,
    ])
}

/// Image variables, then caller variables replacing those with the same name.
fn merged_env(image_env: &[String], overrides: &BTreeMap<String, String>) -> Vec<String> {
    let mut env: Vec<String> = image_env
        .iter()
        .filter(|entry| !overrides.contains_key(entry.split_once('=').map_or(entry.as_str(), |(key, _)| key)))
        .cloned()
        .collect();
    env.extend(overrides.iter().map(|(key, value)| format!("{key}={value}")));
    if !env.iter().any(|entry| entry.starts_with("PATH=")) {
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    }
    env
}

/// The uid/gid of an image `User` given as `uid` or `uid:gid`. Named users need the image's
/// /etc/passwd; PID 1 (catatonit) then runs as root and processes started later resolve names.
fn numeric_user(user: &str) -> (u32, u32) {
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    match (uid.parse::<u32>(), gid.parse::<u32>()) {
        (Ok(uid), Ok(gid)) => (uid, gid),
        (Ok(uid), Err(_)) if gid.is_empty() => (uid, uid),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_env_overrides_image_env_and_path_is_always_set() {
        let overrides = BTreeMap::from([("HOME".to_owned(), "/data".to_owned())]);
        let env = merged_env(&["HOME=/root".to_owned(), "LANG=C".to_owned()], &overrides);
        assert!(env.contains(&"HOME=/data".to_owned()));
        assert!(!env.contains(&"HOME=/root".to_owned()));
        assert!(env.contains(&"LANG=C".to_owned()));
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
    }

    #[test]
    fn numeric_users_parse_and_names_fall_back_to_root() {
        assert_eq!(numeric_user(""), (0, 0));
        assert_eq!(numeric_user("1000"), (1000, 1000));
        assert_eq!(numeric_user("1000:50"), (1000, 50));
        assert_eq!(numeric_user("nobody"), (0, 0));
    }

    #[test]
    fn spec_has_init_limits_and_cgroup_path() {
        let image =
            ImageConfig { env: vec!["PATH=/bin".to_owned()], working_dir: "/work".to_owned(), ..Default::default() };
        let env = BTreeMap::new();
        let spec = build(&SpecInput {
            id: "bot-1",
            namespace: "berth",
            image: &image,
            env: &env,
            resources: Resources { cpu_millis: 500, memory_bytes: 64 << 20, pids_limit: 100 },
            init_binary: Path::new("/usr/bin/catatonit"),
            etc_dir: Path::new("/var/lib/berth/workspaces/bot-1/etc"),
        })
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["args"][0], INIT_PATH);
        assert_eq!(json["process"]["cwd"], "/work");
        assert_eq!(json["hostname"], "bot-1");
        assert_eq!(json["linux"]["cgroupsPath"], "/berth/bot-1");
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 100);
        let init = json["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == INIT_PATH).unwrap();
        assert!(init["options"].as_array().unwrap().contains(&serde_json::json!("ro")));
    }
}

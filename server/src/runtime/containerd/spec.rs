//! The OCI runtime spec of a workspace container: containerd's default spec (what `ctr run`
//! produces) plus the image config, with `catatonit -P` as PID 1 and berth's own mounts, under the
//! host's [`Confinement`] (capabilities, seccomp, AppArmor, masked and read-only paths).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::sandbox::{CAPABILITIES, Confinement, SYSCTLS};
use crate::data::ResolvedUser;
use crate::error::{Error, Result};
use crate::model::Resources;
use crate::runtime::ImageConfig;

/// Where the host's catatonit appears inside every workspace (on the /run tmpfs, so nothing is
/// written into the workspace's snapshot).
pub const INIT_PATH: &str = "/run/berth-init";

/// Where the host's berth-agent appears inside every workspace, and the directory (shared with
/// the host) where it listens; both on the /run tmpfs too.
pub const AGENT_PATH: &str = "/run/berth-agent";
pub const AGENT_DIR: &str = "/run/berth";

/// CFS period used to express cpu_millis as a quota.
const CPU_PERIOD_MICROS: u64 = 100_000;

/// Everything the spec depends on.
pub struct SpecInput<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub image: &'a ImageConfig,
    /// The image's `User`, resolved from its own /etc/passwd and /etc/group.
    pub user: &'a ResolvedUser,
    /// Caller-supplied variables; they override the image's.
    pub env: &'a BTreeMap<String, String>,
    pub resources: Resources,
    pub init_binary: &'a Path,
    /// berth-agent's host path and the host directory shared with it; None without an agent.
    pub agent: Option<(&'a Path, &'a Path)>,
    /// Host files bind-mounted at /etc/hosts, /etc/hostname and /etc/resolv.conf.
    pub etc_dir: &'a Path,
    /// The pinned network namespace to join; None makes a new one.
    pub network_namespace: Option<&'a Path>,
}

/// Builds the runtime spec under this host's confinement.
pub fn build(input: &SpecInput<'_>, confinement: &Confinement) -> Result<Spec> {
    build_confined(input, confinement)
}

fn build_confined(input: &SpecInput<'_>, confinement: &Confinement) -> Result<Spec> {
    let invalid = |err: oci_spec::OciSpecError| Error::internal(format!("cannot build the runtime spec: {err}"));
    let capabilities: HashSet<Capability> = CAPABILITIES.into_iter().collect();
    let mut user = UserBuilder::default().uid(input.user.uid).gid(input.user.gid);
    if !input.user.additional_gids.is_empty() {
        user = user.additional_gids(input.user.additional_gids.clone());
    }
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build().map_err(invalid)?)
        .args(vec![INIT_PATH.to_owned(), "-P".to_owned()])
        .env(merged_env(&input.image.env, input.env))
        .cwd(if input.image.working_dir.is_empty() { "/" } else { &input.image.working_dir })
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(capabilities.clone())
                .effective(capabilities.clone())
                .permitted(capabilities)
                // Empty, as in containerd's default spec: oci-spec's defaults would hand
                // AUDIT_WRITE, KILL and NET_BIND_SERVICE to every non-root process as ambient.
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
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
    process.set_apparmor_profile(confinement.apparmor_profile.clone());

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|typ| {
        let namespace = LinuxNamespaceBuilder::default().typ(typ);
        match input.network_namespace {
            Some(path) if typ == LinuxNamespaceType::Network => namespace.path(path),
            _ => namespace,
        }
        .build()
        .map_err(invalid)
    })
    .collect::<Result<Vec<_>>>()?;

    let linux = LinuxBuilder::default()
        .cgroups_path(format!("/{}/{}", input.namespace, input.id))
        .namespaces(namespaces)
        .resources(resources(input.resources).map_err(invalid)?)
        .masked_paths(confinement.masked_paths.clone())
        .readonly_paths(confinement.readonly_paths.clone())
        .seccomp(confinement.seccomp.clone())
        .sysctl(SYSCTLS.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect::<HashMap<_, _>>())
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

/// The limits of `limits` as the stored spec's `linux.resources` holds them (`cpu`, `memory`,
/// `pids`; an absent key is unlimited), for patching a stored spec without touching its device
/// rules.
pub fn limit_fields(limits: Resources) -> Result<serde_json::Map<String, serde_json::Value>> {
    let built =
        resources(limits).map_err(|err| Error::internal(format!("cannot build the resources of a spec: {err}")))?;
    let mut fields = match serde_json::to_value(built) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => return Err(Error::internal("the resources of a spec did not encode as an object")),
    };
    fields.retain(|key, _| LIMIT_KEYS.contains(&key.as_str()));
    Ok(fields)
}

/// The keys of `linux.resources` that [`limit_fields`] owns.
pub const LIMIT_KEYS: [&str; 3] = ["cpu", "memory", "pids"];

/// `limits` as `Tasks.Update` takes them (LinuxResources JSON): an unlimited figure is -1, which
/// lifts a limit the task had (an absent one would leave it).
pub fn live_limits(limits: Resources) -> serde_json::Value {
    let quota = if limits.cpu_millis > 0 {
        limits.cpu_millis.saturating_mul(i64::try_from(CPU_PERIOD_MICROS).unwrap_or(i64::MAX)) / 1000
    } else {
        -1
    };
    let positive_or_unlimited = |value: i64| if value > 0 { value } else { -1 };
    serde_json::json!({
        "cpu": { "quota": quota, "period": CPU_PERIOD_MICROS },
        "memory": { "limit": positive_or_unlimited(limits.memory_bytes) },
        "pids": { "limit": positive_or_unlimited(limits.pids_limit) },
    })
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
    let bind_with = |destination: &str, source: &Path, options: &[&str]| {
        let base = ["rbind", "rprivate"].into_iter().chain(options.iter().copied());
        MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(base.map(str::to_owned).collect::<Vec<_>>())
            .build()
    };
    let bind = |destination: &str, source: &Path, mode: &str| bind_with(destination, source, &[mode]);
    let mut mounts = vec![
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
        // Read-only: the DNS servers are berth's choice (the egress policy allows DNS to them).
        bind("/etc/resolv.conf", &input.etc_dir.join("resolv.conf"), "ro")?,
    ];
    if let Some((binary, dir)) = input.agent {
        mounts.push(bind(AGENT_PATH, binary, "ro")?);
        // Only the agent's socket lives there.
        mounts.push(bind_with(AGENT_DIR, dir, &["rw", "nosuid", "nodev", "noexec"])?);
    }
    Ok(mounts)
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

#[cfg(test)]
mod tests {
    use super::super::sandbox;
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

    /// The spec's JSON (what containerd stores and runc reads) on an amd64 host with kernel 6.1.
    fn spec_json(apparmor_profile: Option<&str>) -> serde_json::Value {
        let image =
            ImageConfig { env: vec!["PATH=/bin".to_owned()], working_dir: "/work".to_owned(), ..Default::default() };
        let env = BTreeMap::new();
        let host = sandbox::HostFacts {
            arch: sandbox::HostArch { native: "amd64", seccomp: Some(oci_spec::runtime::Arch::ScmpArchX86_64) },
            kernel: Some(sandbox::KernelVersion(6, 1)),
            extra_masked_paths: Vec::new(),
        };
        let confinement = Confinement::new(&host, apparmor_profile.map(str::to_owned));
        let input = SpecInput {
            id: "bot-1",
            namespace: "berth",
            image: &image,
            user: &ResolvedUser { uid: 1000, gid: 50, additional_gids: vec![29, 100], name: Some("bot".to_owned()) },
            env: &env,
            resources: Resources { cpu_millis: 500, memory_bytes: 64 << 20, pids_limit: 100 },
            init_binary: Path::new("/usr/bin/catatonit"),
            agent: Some((Path::new("/usr/local/bin/berth-agent"), Path::new("/var/lib/berth/workspaces/bot/agent"))),
            etc_dir: Path::new("/var/lib/berth/workspaces/bot-1/etc"),
            network_namespace: None,
        };
        serde_json::to_value(build_confined(&input, &confinement).unwrap()).unwrap()
    }

    /// The seccomp rules of the spec JSON that name `syscall`.
    fn seccomp_rules<'a>(json: &'a serde_json::Value, syscall: &str) -> Vec<&'a serde_json::Value> {
        let rules = json["linux"]["seccomp"]["syscalls"].as_array().expect("seccomp syscalls");
        rules.iter().filter(|rule| rule["names"].as_array().unwrap().iter().any(|name| name == syscall)).collect()
    }

    #[test]
    fn spec_has_init_limits_and_cgroup_path() {
        let json = spec_json(None);
        assert_eq!(json["process"]["args"][0], INIT_PATH);
        assert_eq!(json["process"]["cwd"], "/work");
        assert_eq!(json["hostname"], "bot-1");
        assert_eq!(json["process"]["user"], serde_json::json!({"uid": 1000, "gid": 50, "additionalGids": [29, 100]}));
        assert_eq!(json["linux"]["cgroupsPath"], "/berth/bot-1");
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 100);
        let init = json["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == INIT_PATH).unwrap();
        assert!(init["options"].as_array().unwrap().contains(&serde_json::json!("ro")));
        let mount = |destination: &str| {
            json["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == destination).cloned().unwrap()
        };
        assert_eq!(mount(AGENT_PATH)["source"], "/usr/local/bin/berth-agent");
        assert!(mount(AGENT_PATH)["options"].as_array().unwrap().contains(&serde_json::json!("ro")));
        assert_eq!(mount(AGENT_DIR)["source"], "/var/lib/berth/workspaces/bot/agent");
        assert_eq!(
            mount(AGENT_DIR)["options"],
            serde_json::json!(["rbind", "rprivate", "rw", "nosuid", "nodev", "noexec"])
        );
    }

    #[test]
    fn spec_carries_the_default_seccomp_profile() {
        let json = spec_json(None);
        let seccomp = &json["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(seccomp["defaultErrnoRet"], 1, "EPERM");
        assert_eq!(seccomp["architectures"], serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]));
        // Blocked calls have no rule at all, so they get the default action.
        for syscall in ["unshare", "setns", "keyctl", "add_key", "request_key", "bpf", "mount", "umount2", "kexec_load"]
        {
            assert!(
                seccomp_rules(&json, syscall).is_empty(),
                "{syscall} has a rule: {:?}",
                seccomp_rules(&json, syscall)
            );
        }
        // clone is allowed only when arg 0 has no CLONE_NEW* flag.
        let clone = seccomp_rules(&json, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(
            clone[0]["args"],
            serde_json::json!([{"index": 0, "value": 0x7E02_0000u64, "op": "SCMP_CMP_MASKED_EQ"}])
        );
        let allow_all = &seccomp_rules(&json, "read")[0];
        assert_eq!(allow_all["action"], "SCMP_ACT_ALLOW");
        assert!(allow_all.get("args").is_none(), "the big allow-list is unconditional");
    }

    #[test]
    fn spec_masks_powercap_and_keeps_the_capability_set_minimal() {
        let json = spec_json(None);
        let masked = json["linux"]["maskedPaths"].as_array().unwrap();
        for path in ["/sys/devices/virtual/powercap", "/proc/interrupts", "/proc/kcore", "/proc/keys"] {
            assert!(masked.contains(&serde_json::json!(path)), "{path} is not masked: {masked:?}");
        }
        let readonly = json["linux"]["readonlyPaths"].as_array().unwrap();
        assert!(readonly.contains(&serde_json::json!("/proc/sysrq-trigger")));
        let bounding = json["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(bounding.len(), 13);
        assert_eq!(json["process"]["capabilities"]["ambient"], serde_json::json!([]));
        assert_eq!(json["process"]["capabilities"]["inheritable"], serde_json::json!([]));
        for dropped in ["CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_NET_ADMIN"] {
            assert!(!bounding.contains(&serde_json::json!(dropped)), "{dropped} is granted");
        }
        assert_eq!(json["linux"]["sysctl"]["net.ipv4.ping_group_range"], "0 2147483647");
        assert_eq!(json["process"]["noNewPrivileges"], true);
    }

    #[test]
    fn spec_names_the_apparmor_profile_only_when_the_host_applies_one() {
        assert!(spec_json(None)["process"].get("apparmorProfile").is_none());
        let json = spec_json(Some("cri-containerd.apparmor.d"));
        assert_eq!(json["process"]["apparmorProfile"], "cri-containerd.apparmor.d");
    }
}

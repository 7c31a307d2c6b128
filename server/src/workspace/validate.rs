//! Validation of a CreateWorkspace request into the spec berth stores: a pure function, so
//! every limit is checked before anything is pulled or made, and tested without I/O.

use std::fmt;

use super::create::CreateRequest;
use crate::error::{Error, Reason, Result};
use crate::model::{NetworkMode, NetworkPolicy, RedactedEnv, Resources, WorkspaceSpec};

/// The smallest CPU limit: the kernel's minimum CFS quota is 1 ms per period, and berth's period
/// is 100 ms.
pub const MIN_CPU_MILLIS: i64 = 10;
/// The largest CPU limit: 8192 cores, the most CPUs a Linux build supports (NR_CPUS); beyond it
/// a limit means nothing, and far beyond it the CFS quota overflows.
pub const MAX_CPU_MILLIS: i64 = 8192 * 1000;
/// The smallest memory limit a workspace starts with.
pub const MIN_MEMORY_BYTES: i64 = 4 << 20;
/// The largest pids limit the kernel accepts (PID_MAX_LIMIT).
pub const MAX_PIDS_LIMIT: i64 = 4 << 20;
/// Label key prefixes berth and containerd put on containers themselves; a caller's label must
/// not pass for theirs (berth decides which containers it owns from its labels).
pub const RESERVED_LABEL_PREFIXES: [&str; 2] = ["berth.", "containerd.io/"];
/// The longest label key, in bytes (a Kubernetes-style `prefix/name` fits).
pub const MAX_LABEL_KEY_BYTES: usize = 253;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// The longest `request_id`, in bytes of printable ASCII.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// The most CDI devices one workspace attaches (a host with 8 GPUs offers about 10 names).
pub const MAX_CDI_DEVICES: usize = 128;
/// The longest CDI device name, in bytes (`VENDOR/CLASS=NAME`; a vendor is a domain name).
pub const MAX_CDI_DEVICE_NAME_BYTES: usize = 512;

/// Checks a create request and returns the spec to store; `normalize_image` turns a reference
/// into its canonical form (the runtime's parser), `default_image` is used when none is named.
pub(super) fn validated_spec(
    request: &CreateRequest,
    default_image: &str,
    default_network: NetworkMode,
    normalize_image: impl FnOnce(&str) -> Result<String>,
) -> Result<WorkspaceSpec> {
    check_request_id(&request.request_id)?;
    check_resources(request.resources)?;
    check_labels(&request.labels)?;
    check_env(&request.env)?;
    let cdi_devices = normalized_devices(&request.cdi_devices)?;
    let raw_image = if request.image.is_empty() { default_image } else { &request.image };
    let image = normalize_image(raw_image)?;
    Ok(WorkspaceSpec {
        image,
        labels: request.labels.clone(),
        env: request.env.clone(),
        resources: request.resources,
        cdi_devices,
        network: network_policy(&request.network_policy, default_network)?,
    })
}

/// A policy as a caller writes it: the mode (None when unset) and CIDR strings.
#[derive(Clone, Debug, Default)]
pub struct RequestedPolicy {
    pub mode: Option<NetworkMode>,
    pub cidrs: Vec<String>,
}

/// The most CIDRs one policy may list.
const MAX_POLICY_CIDRS: usize = 256;

/// Validates a policy: IPv4 networks or addresses (a /32), host bits cleared, sorted and
/// deduplicated; a list only with ALLOWLIST (which needs one) or DENYLIST.
pub fn network_policy(requested: &RequestedPolicy, default_mode: NetworkMode) -> Result<NetworkPolicy> {
    let invalid = |message: String| Error::new(Reason::InvalidNetworkPolicy, message);
    let mode = requested.mode.unwrap_or(default_mode);
    let mut cidrs = Vec::with_capacity(requested.cidrs.len());
    for raw in &requested.cidrs {
        let text = raw.trim();
        let parsed = text
            .parse::<ipnet::Ipv4Net>()
            .or_else(|_| text.parse::<std::net::Ipv4Addr>().map(ipnet::Ipv4Net::from))
            .map_err(|_| {
                let why = if text.contains(':') { "an IPv6 network (workspaces have no IPv6 route)" } else { "not an IPv4 network" };
                invalid(format!(
                    "network policy CIDR {:?} is {why}; write IPv4 networks as ADDRESS/PREFIX, such as 203.0.113.0/24, or single addresses",
                    truncated(text)
                ))
            })?;
        cidrs.push(parsed.trunc());
    }
    cidrs.sort();
    cidrs.dedup();
    if cidrs.len() > MAX_POLICY_CIDRS {
        return Err(invalid(format!(
            "the network policy lists {} CIDRs, more than the {MAX_POLICY_CIDRS} allowed; merge them into larger networks",
            cidrs.len()
        )));
    }
    match mode {
        NetworkMode::Open | NetworkMode::None if !cidrs.is_empty() => Err(invalid(format!(
            "network mode {} takes no CIDRs; use ALLOWLIST or DENYLIST to list networks",
            mode_name(mode)
        ))),
        NetworkMode::Allowlist if cidrs.is_empty() => {
            Err(invalid("network mode ALLOWLIST needs at least one CIDR; use NONE for no network at all".to_owned()))
        }
        _ => Ok(NetworkPolicy { mode, cidrs }),
    }
}

fn mode_name(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::Open => "OPEN",
        NetworkMode::None => "NONE",
        NetworkMode::Allowlist => "ALLOWLIST",
        NetworkMode::Denylist => "DENYLIST",
    }
}

/// CDI device names as a workspace stores them: without surrounding whitespace, sorted and
/// deduplicated, so the same set in any order or repetition is the same spec. Whether they
/// resolve is the host's business (`Manager::resolve_devices`).
pub fn normalized_devices(names: &[String]) -> Result<Vec<String>> {
    let mut normalized: Vec<String> = Vec::with_capacity(names.len());
    for raw in names {
        let name = raw.trim();
        if name.is_empty() {
            return Err(invalid(
                "cdi_devices holds an empty name; name devices as VENDOR/CLASS=NAME, such as nvidia.com/gpu=0"
                    .to_owned(),
            ));
        }
        if name.len() > MAX_CDI_DEVICE_NAME_BYTES {
            return Err(invalid(format!(
                "CDI device name {:?}… is {} bytes long, more than the {MAX_CDI_DEVICE_NAME_BYTES} allowed; name devices as VENDOR/CLASS=NAME, such as nvidia.com/gpu=0",
                truncated(name),
                name.len()
            )));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!(
                "CDI device name {name:?} contains whitespace or control characters; name devices as VENDOR/CLASS=NAME, such as nvidia.com/gpu=0"
            )));
        }
        normalized.push(name.to_owned());
    }
    normalized.sort();
    normalized.dedup();
    if normalized.len() > MAX_CDI_DEVICES {
        return Err(invalid(format!(
            "cdi_devices names {} devices, more than the {MAX_CDI_DEVICES} allowed",
            normalized.len()
        )));
    }
    Ok(normalized)
}

fn invalid(message: String) -> Error {
    Error::new(Reason::InvalidArgument, message)
}

fn check_request_id(request_id: &str) -> Result<()> {
    if request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(invalid(format!(
            "request_id is {} bytes long, more than the {MAX_REQUEST_ID_BYTES} allowed; use a shorter id such as a UUID",
            request_id.len()
        )));
    }
    if !request_id.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(invalid(format!(
            "request_id {request_id:?} holds characters other than printable ASCII; use letters, digits and punctuation only, such as a UUID"
        )));
    }
    Ok(())
}

pub(super) fn check_resources(resources: Resources) -> Result<()> {
    let Resources { cpu_millis, memory_bytes, pids_limit } = resources;
    let bad = |message: String| Err(Error::new(Reason::InvalidResources, message));
    if cpu_millis < 0 || memory_bytes < 0 || pids_limit < 0 {
        return bad(format!(
            "resources must not be negative (cpu_millis {cpu_millis}, memory_bytes {memory_bytes}, pids_limit {pids_limit}); use 0 for unlimited"
        ));
    }
    if cpu_millis > 0 && cpu_millis < MIN_CPU_MILLIS {
        return bad(format!(
            "cpu_millis {cpu_millis} is below the minimum of {MIN_CPU_MILLIS} (the kernel's smallest CFS quota is 1 ms per 100 ms period); raise it or use 0 for unlimited"
        ));
    }
    if cpu_millis > MAX_CPU_MILLIS {
        return bad(format!(
            "cpu_millis {cpu_millis} is above the maximum of {MAX_CPU_MILLIS} ({} cores); lower it or use 0 for unlimited",
            MAX_CPU_MILLIS / 1000
        ));
    }
    if memory_bytes > 0 && memory_bytes < MIN_MEMORY_BYTES {
        return bad(format!(
            "memory_bytes {memory_bytes} is below the 4 MiB a workspace needs to start; raise it or use 0 for unlimited"
        ));
    }
    if pids_limit > MAX_PIDS_LIMIT {
        return bad(format!(
            "pids_limit {pids_limit} is above the kernel's maximum of {MAX_PIDS_LIMIT}; lower it or use 0 for unlimited"
        ));
    }
    Ok(())
}

/// Checks caller labels (of a workspace or a snapshot): bounded, well-formed, and none of them
/// passing for berth's or containerd's own.
pub(super) fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<()> {
    for (key, value) in labels {
        if key.is_empty() || key.contains(['=', ',']) {
            return Err(invalid(format!(
                "label key {key:?} is invalid; keys are non-empty and contain neither '=' nor ','"
            )));
        }
        if let Some(prefix) = RESERVED_LABEL_PREFIXES.iter().find(|prefix| key.starts_with(**prefix)) {
            return Err(invalid(format!(
                "label key {key:?} starts with {prefix:?}, which is reserved for berth and containerd; choose another key"
            )));
        }
        if key.len() > MAX_LABEL_KEY_BYTES {
            return Err(invalid(format!(
                "label key {:?}… is {} bytes long, more than the {MAX_LABEL_KEY_BYTES} allowed; use a shorter key",
                truncated(key),
                key.len()
            )));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            return Err(invalid(format!(
                "the value of label {key:?} is {} bytes long, more than the {MAX_LABEL_VALUE_BYTES} allowed; keep larger data out of labels",
                value.len()
            )));
        }
    }
    Ok(())
}

/// Names only: environment values are secrets and never appear in a message.
pub(super) fn check_env(env: &std::collections::BTreeMap<String, String>) -> Result<()> {
    for (key, value) in env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(invalid(format!(
                "environment variable name {key:?} is invalid; names are non-empty and contain neither '=' nor NUL"
            )));
        }
        if value.contains('\0') {
            return Err(invalid(format!(
                "the value of environment variable {key:?} contains a NUL byte, which no process can receive; remove it"
            )));
        }
    }
    Ok(())
}

/// The first 32 bytes of `text` (at a character boundary), for naming long input in messages.
fn truncated(text: &str) -> &str {
    let mut end = text.len().min(32);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Environment values never reach a log line or an error message through `{:?}`.
impl fmt::Debug for CreateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateRequest")
            .field("workspace_id", &self.workspace_id)
            .field("image", &self.image)
            .field("labels", &self.labels)
            .field("env", &RedactedEnv(&self.env))
            .field("resources", &self.resources)
            .field("cdi_devices", &self.cdi_devices)
            .field("restore_data", &self.restore_data)
            .field("request_id", &self.request_id)
            .field("pull_policy", &self.pull_policy)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_IMAGE: &str = "docker.io/library/debian:bookworm";

    fn request() -> CreateRequest {
        CreateRequest { workspace_id: "bot".to_owned(), image: "busybox".to_owned(), ..CreateRequest::default() }
    }

    fn normalize(image: &str) -> Result<String> {
        Ok(format!("normalized/{image}"))
    }

    fn validate(request: &CreateRequest) -> Result<WorkspaceSpec> {
        validated_spec(request, DEFAULT_IMAGE, NetworkMode::Open, normalize)
    }

    #[track_caller]
    fn rejected(request: &CreateRequest, reason: Reason, needle: &str) -> String {
        let err = validate(request).expect_err("the request must be rejected");
        assert_eq!(err.reason(), reason, "{}", err.message());
        assert!(err.message().contains(needle), "{:?} lacks {needle:?}", err.message());
        err.message().to_owned()
    }

    fn with_resources(cpu_millis: i64, memory_bytes: i64, pids_limit: i64) -> CreateRequest {
        CreateRequest { resources: Resources { cpu_millis, memory_bytes, pids_limit }, ..request() }
    }

    #[test]
    fn network_policies_are_normalized_and_malformed_ones_refused() {
        let requested = |mode: Option<NetworkMode>, cidrs: &[&str]| RequestedPolicy {
            mode,
            cidrs: cidrs.iter().map(|cidr| (*cidr).to_owned()).collect(),
        };
        let open = network_policy(&requested(None, &[]), NetworkMode::Open).unwrap();
        assert_eq!(open, NetworkPolicy { mode: NetworkMode::Open, cidrs: Vec::new() }, "unset is the default");
        assert_eq!(network_policy(&requested(None, &[]), NetworkMode::None).unwrap().mode, NetworkMode::None);
        let allow = network_policy(
            &requested(Some(NetworkMode::Allowlist), &["203.0.113.77/24", " 198.51.100.7", "203.0.113.0/24"]),
            NetworkMode::Open,
        )
        .unwrap();
        let cidrs: Vec<String> = allow.cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["198.51.100.7/32", "203.0.113.0/24"], "host bits cleared, sorted, deduplicated");
        for (mode, cidrs, needle) in [
            (Some(NetworkMode::Allowlist), &[][..], "at least one CIDR"),
            (Some(NetworkMode::Denylist), &["fd00::/8"][..], "IPv6"),
            (Some(NetworkMode::Denylist), &["10.0.0.0/33"][..], "10.0.0.0/33"),
            (Some(NetworkMode::Denylist), &["example.com"][..], "not an IPv4 network"),
            (Some(NetworkMode::None), &["10.0.0.0/8"][..], "NONE takes no CIDRs"),
            (None, &["10.0.0.0/8"][..], "OPEN takes no CIDRs"),
        ] {
            let err = network_policy(&requested(mode, cidrs), NetworkMode::Open).unwrap_err();
            assert_eq!(err.reason(), Reason::InvalidNetworkPolicy, "{cidrs:?}");
            assert!(err.message().contains(needle), "{needle}: {err}");
        }
        let many: Vec<String> = (0..300).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = network_policy(&requested(Some(NetworkMode::Denylist), &many), NetworkMode::Open).unwrap_err();
        assert!(err.message().contains("300 CIDRs"), "{err}");
    }

    #[test]
    fn a_valid_request_becomes_its_spec_with_the_image_normalized() {
        let mut good = with_resources(MIN_CPU_MILLIS, MIN_MEMORY_BYTES, MAX_PIDS_LIMIT);
        good.labels.insert("team".to_owned(), "red".to_owned());
        good.env.insert("TOKEN".to_owned(), "s3cret".to_owned());
        good.request_id = "7f0c1a52-8c1e-4d4b-9a57-1b1f3c9f6f0e".to_owned();
        let spec = validate(&good).unwrap();
        assert_eq!(spec.image, "normalized/busybox");
        assert_eq!(spec.labels, good.labels);
        assert_eq!(spec.env, good.env);
        assert_eq!(spec.resources, good.resources);
        assert!(spec.cdi_devices.is_empty());

        let unnamed = CreateRequest { image: String::new(), ..request() };
        assert_eq!(validate(&unnamed).unwrap().image, format!("normalized/{DEFAULT_IMAGE}"));
        assert!(validate(&with_resources(MAX_CPU_MILLIS, 0, 0)).is_ok());
        assert!(validate(&with_resources(0, 0, 0)).is_ok(), "0 is unlimited");
    }

    #[test]
    fn the_image_parser_decides_on_references() {
        let err = validated_spec(&request(), DEFAULT_IMAGE, NetworkMode::Open, |_| {
            Err(Error::new(Reason::InvalidImageReference, "image reference is malformed"))
        })
        .unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidImageReference);
    }

    #[test]
    fn negative_and_tiny_limits_are_invalid_resources() {
        rejected(&with_resources(-1, 0, 0), Reason::InvalidResources, "must not be negative");
        rejected(&with_resources(0, 0, -5), Reason::InvalidResources, "must not be negative");
        for cpu_millis in [1, 9] {
            rejected(&with_resources(cpu_millis, 0, 0), Reason::InvalidResources, "minimum of 10");
        }
        rejected(&with_resources(0, MIN_MEMORY_BYTES - 1, 0), Reason::InvalidResources, "4 MiB");
    }

    #[test]
    fn absurd_limits_are_invalid_resources_naming_the_maximum() {
        // cpu_millis * 100000 overflows an i64 from here on.
        let overflowing = i64::MAX / 100_000 + 1;
        for cpu_millis in [MAX_CPU_MILLIS + 1, overflowing, i64::MAX] {
            let message = rejected(&with_resources(cpu_millis, 0, 0), Reason::InvalidResources, "maximum");
            assert!(message.contains(&MAX_CPU_MILLIS.to_string()), "{message}");
        }
        let message = rejected(&with_resources(0, 0, MAX_PIDS_LIMIT + 1), Reason::InvalidResources, "maximum");
        assert!(message.contains(&MAX_PIDS_LIMIT.to_string()), "{message}");
    }

    #[test]
    fn reserved_label_prefixes_are_refused() {
        for key in ["berth.workspace", "berth.workspace.id", "berth.", "containerd.io/gc.ref.snapshot"] {
            let mut spoof = request();
            spoof.labels.insert(key.to_owned(), "v1".to_owned());
            rejected(&spoof, Reason::InvalidArgument, "reserved");
        }
        let mut near = request();
        near.labels.insert("berthing".to_owned(), "ok".to_owned());
        near.labels.insert("example.com/berth.role".to_owned(), "ok".to_owned());
        assert!(validate(&near).is_ok(), "only the prefixes themselves are reserved");
    }

    #[test]
    fn label_keys_and_values_are_bounded() {
        let mut malformed = request();
        malformed.labels.insert("a=b".to_owned(), String::new());
        rejected(&malformed, Reason::InvalidArgument, "neither '=' nor ','");

        let mut longest = request();
        longest.labels.insert("k".repeat(MAX_LABEL_KEY_BYTES), "v".repeat(MAX_LABEL_VALUE_BYTES));
        assert!(validate(&longest).is_ok());

        let mut long_key = request();
        long_key.labels.insert("k".repeat(MAX_LABEL_KEY_BYTES + 1), String::new());
        let message = rejected(&long_key, Reason::InvalidArgument, "254 bytes");
        assert!(message.len() < 200, "a long key is not echoed whole: {message}");

        let mut long_value = request();
        long_value.labels.insert("note".to_owned(), "v".repeat(MAX_LABEL_VALUE_BYTES + 1));
        rejected(&long_value, Reason::InvalidArgument, "1025 bytes");
    }

    #[test]
    fn request_ids_are_short_printable_ascii() {
        let longest = CreateRequest { request_id: "r".repeat(MAX_REQUEST_ID_BYTES), ..request() };
        assert!(validate(&longest).is_ok());
        let too_long = CreateRequest { request_id: "r".repeat(MAX_REQUEST_ID_BYTES + 1), ..request() };
        rejected(&too_long, Reason::InvalidArgument, "129 bytes");
        for id in ["with space", "tab\there", "new\nline", "ümlaut", "nul\0"] {
            let odd = CreateRequest { request_id: id.to_owned(), ..request() };
            rejected(&odd, Reason::InvalidArgument, "printable ASCII");
        }
    }

    #[test]
    fn env_names_are_checked_and_values_never_echoed() {
        let mut bad_name = request();
        bad_name.env.insert("A=B".to_owned(), "s3cret".to_owned());
        rejected(&bad_name, Reason::InvalidArgument, "environment variable name");

        let mut nul_value = request();
        nul_value.env.insert("TOKEN".to_owned(), "s3cret\0tail".to_owned());
        let message = rejected(&nul_value, Reason::InvalidArgument, "\"TOKEN\"");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn cdi_device_names_are_trimmed_sorted_and_deduplicated() {
        let names = [" nvidia.com/gpu=1", "nvidia.com/gpu=0", "nvidia.com/gpu=1\t", "example.com/device=foo"];
        let with_devices = CreateRequest { cdi_devices: names.map(str::to_owned).to_vec(), ..request() };
        let spec = validate(&with_devices).unwrap();
        assert_eq!(spec.cdi_devices, ["example.com/device=foo", "nvidia.com/gpu=0", "nvidia.com/gpu=1"]);

        let reordered = CreateRequest {
            cdi_devices: vec![
                "nvidia.com/gpu=1".to_owned(),
                "example.com/device=foo".to_owned(),
                "nvidia.com/gpu=0".to_owned(),
            ],
            ..request()
        };
        assert_eq!(validate(&reordered).unwrap(), spec, "the same set is the same spec, so a create stays idempotent");
    }

    #[test]
    fn malformed_cdi_device_names_are_invalid_before_any_pull() {
        for (name, needle) in [
            ("", "empty name"),
            ("  ", "empty name"),
            ("nvidia.com/gpu=0 nvidia.com/gpu=1", "whitespace"),
            ("nvidia.com/gpu=\u{7}", "control"),
        ] {
            let odd = CreateRequest { cdi_devices: vec![name.to_owned()], ..request() };
            let err = validated_spec(&odd, DEFAULT_IMAGE, NetworkMode::Open, |_| {
                panic!("no image work for a refused create")
            })
            .unwrap_err();
            assert_eq!(err.reason(), Reason::InvalidArgument, "{name:?}");
            assert!(err.message().contains(needle), "{name:?}: {}", err.message());
        }
        let long = CreateRequest {
            cdi_devices: vec![format!("x.com/y={}", "z".repeat(MAX_CDI_DEVICE_NAME_BYTES))],
            ..request()
        };
        let message = rejected(&long, Reason::InvalidArgument, "bytes long");
        assert!(message.len() < 300, "a long name is not echoed whole: {message}");

        let many: Vec<String> = (0..=MAX_CDI_DEVICES).map(|index| format!("x.com/gpu={index}")).collect();
        rejected(&CreateRequest { cdi_devices: many.clone(), ..request() }, Reason::InvalidArgument, "129 devices");
        let repeated = vec!["x.com/gpu=0".to_owned(); MAX_CDI_DEVICES * 2];
        assert_eq!(
            validate(&CreateRequest { cdi_devices: repeated, ..request() }).unwrap().cdi_devices,
            ["x.com/gpu=0"]
        );
    }

    #[test]
    fn debug_of_a_request_shows_env_names_but_not_values() {
        let mut secret = request();
        secret.env.insert("API_TOKEN".to_owned(), "s3cret-value".to_owned());
        let text = format!("{secret:?}");
        assert!(text.contains("API_TOKEN"), "{text}");
        assert!(!text.contains("s3cret-value"), "{text}");
        let pretty = format!("{secret:#?}");
        assert!(!pretty.contains("s3cret-value"), "{pretty}");
    }
}

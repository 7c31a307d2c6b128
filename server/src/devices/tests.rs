use std::path::Path;

use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::*;

/// A spec (cdiVersion 0.6.0, JSON) with device `fake0`: a char device node from /dev/null's
/// numbers, an env var and a read-only bind mount of `mount_source`; plus a spec-wide variable.
fn fake_spec(kind: &str, mount_source: &Path) -> String {
    serde_json::json!({
        "cdiVersion": "0.6.0",
        "kind": kind,
        "containerEdits": { "env": ["FAKE_VENDOR=example"] },
        "devices": [
            {
                "name": "fake0",
                "containerEdits": {
                    "deviceNodes": [{ "path": "/dev/fake0", "hostPath": "/dev/null", "permissions": "rw" }],
                    "env": ["FAKE_DEVICE=fake0", "FAKE0=yes"],
                    "mounts": [{
                        "hostPath": mount_source,
                        "containerPath": "/opt/fake",
                        "options": ["ro", "nosuid", "nodev", "rbind"],
                    }],
                },
            },
            { "name": "fake1", "containerEdits": { "env": ["FAKE_DEVICE=fake1", "FAKE1=yes"] } },
        ],
    })
    .to_string()
}

const YAML_SPEC: &str = "cdiVersion: \"0.6.0\"\nkind: \"other.org/gpu\"\ndevices:\n  - name: \"0\"\n    containerEdits:\n      env:\n        - \"GPU=0\"\n";

fn names(catalog: &Catalog) -> Vec<&str> {
    catalog.devices.iter().map(|device| device.name.as_str()).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn good_files_are_listed_and_each_bad_one_is_reported_by_path_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let fake = write(dir.path(), "fake.json", &fake_spec("example.com/device", dir.path()));
    let yaml = write(dir.path(), "other.yaml", YAML_SPEC);
    let broken = write(dir.path(), "broken.json", "{\"cdiVersion\": ");
    let future =
        write(dir.path(), "future.yaml", &YAML_SPEC.replace("0.6.0", "9.9.9").replace("other.org", "future.org"));
    let no_edits = write(
        dir.path(),
        "no-edits.yaml",
        "cdiVersion: \"0.6.0\"\nkind: \"empty.org/gpu\"\ndevices:\n  - name: \"0\"\n    containerEdits: {}\n",
    );
    let unknown_field = write(dir.path(), "typo.yaml", &YAML_SPEC.replace("containerEdits", "containerEdit"));
    write(dir.path(), "README.txt", "not a spec");
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    write(&dir.path().join("nested"), "nested.yaml", &YAML_SPEC.replace("other.org", "nested.org"));

    let catalog = Catalog::scan(&[dir.path().to_path_buf()]);

    assert_eq!(names(&catalog), ["example.com/device=fake0", "example.com/device=fake1", "other.org/gpu=0"]);
    let fake0 = &catalog.devices[0];
    assert_eq!((fake0.vendor.as_str(), fake0.class.as_str()), ("example.com", "device"));
    assert_eq!(fake0.spec_path, fake);
    assert_eq!(catalog.devices[2].spec_path, yaml);
    let failed: Vec<(&Path, &str)> =
        catalog.spec_file_errors.iter().map(|error| (error.path.as_path(), error.error.as_str())).collect();
    assert_eq!(failed.len(), 4, "{failed:#?}");
    let cause = |path: &Path| failed.iter().find(|(failed, _)| *failed == path).map(|(_, error)| *error).unwrap();
    assert!(cause(&broken).contains("parse spec file failed"), "{}", cause(&broken));
    assert!(cause(&future).contains("invalid version 9.9.9"), "{}", cause(&future));
    assert!(cause(&no_edits).contains("empty device edits"), "{}", cause(&no_edits));
    assert!(cause(&unknown_field).contains("unknown field"), "{}", cause(&unknown_field));
    assert_eq!(catalog.spec_dirs, [dir.path().to_path_buf()]);
}

#[test]
fn missing_directories_hold_no_devices_and_no_errors() {
    let catalog = Catalog::scan(&[PathBuf::from("/nonexistent/berth-cdi")]);
    assert!(catalog.devices.is_empty() && catalog.spec_file_errors.is_empty());
}

#[test]
fn a_later_directory_wins_and_two_files_of_one_directory_cancel_their_device() {
    let low = tempfile::tempdir().unwrap();
    let high = tempfile::tempdir().unwrap();
    write(low.path(), "a.yaml", YAML_SPEC);
    let winner = write(high.path(), "a.yaml", &YAML_SPEC.replace("GPU=0", "GPU=high"));
    let catalog = Catalog::scan(&[low.path().to_path_buf(), high.path().to_path_buf()]);
    assert_eq!(names(&catalog), ["other.org/gpu=0"]);
    assert_eq!(catalog.devices[0].spec_path, winner);
    assert!(catalog.spec_file_errors.is_empty());

    let both = write(high.path(), "b.yaml", &YAML_SPEC.replace("GPU=0", "GPU=b"));
    let catalog = Catalog::scan(&[low.path().to_path_buf(), high.path().to_path_buf()]);
    assert!(catalog.devices.is_empty(), "neither definition is offered: {:?}", catalog.devices);
    let failed: Vec<&Path> = catalog.spec_file_errors.iter().map(|error| error.path.as_path()).collect();
    assert_eq!(failed, [winner.as_path(), both.as_path()]);
    assert!(catalog.spec_file_errors[0].error.contains("other.org/gpu=0 is defined in 2 files"));
}

#[test]
fn edits_add_the_device_node_with_its_cgroup_rule_env_and_mount() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "fake.json", &fake_spec("example.com/device", dir.path()));
    let catalog = Catalog::scan(&[dir.path().to_path_buf()]);
    let mut spec = Spec::default();
    let deny_all = spec.linux().as_ref().unwrap().resources().as_ref().unwrap().devices().clone().unwrap_or_default();

    let devices = ["example.com/device=fake0".to_owned(), "example.com/device=fake1".to_owned()];
    catalog.apply(&mut spec, &devices).unwrap();

    let linux = spec.linux().as_ref().unwrap();
    let node = &linux.devices().as_ref().unwrap()[0];
    assert_eq!(node.path(), Path::new("/dev/fake0"));
    assert_eq!((node.typ(), node.major(), node.minor()), (LinuxDeviceType::C, 1, 3), "/dev/null's numbers");
    let rules = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert_eq!(&rules[..deny_all.len()], deny_all.as_slice(), "existing rules stay first");
    let allow = rules.last().unwrap();
    assert!(allow.allow());
    assert_eq!((allow.major(), allow.minor(), allow.access().as_deref()), (Some(1), Some(3), Some("rw")));
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert_eq!(env.iter().filter(|entry| *entry == "FAKE_VENDOR=example").count(), 1, "spec-wide edits once: {env:?}");
    assert!(env.contains(&"FAKE0=yes".to_owned()) && env.contains(&"FAKE1=yes".to_owned()), "{env:?}");
    // A variable two devices set holds the later device's value, once.
    assert_eq!(env.iter().filter(|entry| entry.starts_with("FAKE_DEVICE=")).collect::<Vec<_>>(), ["FAKE_DEVICE=fake1"]);
    let mount = spec.mounts().as_ref().unwrap().iter().find(|mount| mount.destination() == Path::new("/opt/fake"));
    let mount = mount.expect("the device's mount");
    assert_eq!(mount.source().as_deref(), Some(dir.path()));
    assert!(mount.options().as_ref().unwrap().contains(&"ro".to_owned()));
}

#[test]
fn unresolvable_names_are_not_found_naming_each_one_and_what_the_host_offers() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "fake.json", &fake_spec("example.com/device", dir.path()));
    let broken = write(dir.path(), "broken.yaml", "cdiVersion: [");
    let catalog = Catalog::scan(&[dir.path().to_path_buf()]);
    let asked = ["example.com/device=fake0".to_owned(), "example.com/device=nope".to_owned(), "gpu0".to_owned()];

    let err = catalog.check(&asked).unwrap_err();

    assert_eq!(err.reason(), Reason::CdiDeviceNotFound);
    let message = err.message();
    assert!(
        message.starts_with("CDI devices \"example.com/device=nope\", \"gpu0\" (not a qualified name"),
        "{message}"
    );
    assert!(
        message.contains("the devices it offers are example.com/device=fake0, example.com/device=fake1;"),
        "{message}"
    );
    assert!(message.contains(&format!("could not be used (ListDevices says why): {}", broken.display())), "{message}");
    assert_eq!(err.metadata(), [("unresolvable_devices", "example.com/device=nope,gpu0".to_owned())]);
    assert!(catalog.check(&asked[..1]).is_ok());
    assert!(catalog.check(&[]).is_ok());
}

#[test]
fn a_host_without_devices_says_so_and_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::scan(&[dir.path().to_path_buf()]);
    let err = catalog.check(&["nvidia.com/gpu=0".to_owned()]).unwrap_err();
    assert_eq!(err.reason(), Reason::CdiDeviceNotFound);
    assert!(
        err.message().contains(&format!("it offers none (no usable spec file in {})", dir.path().display())),
        "{}",
        err.message()
    );
}

#[test]
fn a_device_whose_host_node_is_missing_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let spec = fake_spec("example.com/device", dir.path()).replace("/dev/null", "/dev/berth-no-such-device");
    write(dir.path(), "fake.json", &spec);
    let catalog = Catalog::scan(&[dir.path().to_path_buf()]);
    assert_eq!(names(&catalog), ["example.com/device=fake0", "example.com/device=fake1"], "the spec itself is valid");
    let err = catalog.check(&["example.com/device=fake0".to_owned()]).unwrap_err();
    assert_eq!(err.reason(), Reason::CdiDeviceNotFound);
    assert!(err.message().contains("cannot be attached"), "{}", err.message());
    assert!(err.message().contains("No such file or directory"), "the cause is kept: {}", err.message());
}

#[tokio::test]
async fn devices_read_the_directories_afresh_at_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let devices = Devices::new(vec![dir.path().to_path_buf()]);
    assert!(devices.catalog().await.unwrap().devices.is_empty());
    write(dir.path(), "other.yaml", YAML_SPEC);
    let catalog = devices.catalog().await.unwrap();
    assert_eq!(names(&catalog), ["other.org/gpu=0"]);
    devices.check(&["other.org/gpu=0".to_owned()]).await.unwrap();
    let injected = devices.inject(Spec::default(), &["other.org/gpu=0".to_owned()]).await.unwrap();
    assert!(injected.process().as_ref().unwrap().env().as_ref().unwrap().contains(&"GPU=0".to_owned()));
    let untouched = devices.inject(Spec::default(), &[]).await.unwrap();
    assert_eq!(untouched, Spec::default());
}

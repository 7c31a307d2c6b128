//! `berth devices`: the CDI devices the server's host offers, for `berth create --device`.

use berth_api::v1 as pb;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use serde_json::{Value, json};

use super::connect::Channel;
use super::{OutputFormat, describe};

/// Lists the devices on stdout; spec files the server could not use go to stderr (in the JSON
/// output they are part of the document).
pub async fn list(channel: Channel, output: OutputFormat) -> Result<(), String> {
    let mut client = WorkspaceServiceClient::new(channel);
    let response = client.list_devices(pb::ListDevicesRequest {}).await.map_err(describe)?.into_inner();
    if output == OutputFormat::Json {
        println!("{:#}", devices_json(&response));
        return Ok(());
    }
    print!("{}", table(&response.devices));
    if response.devices.is_empty() {
        eprintln!("no CDI devices in {}", response.spec_dirs.join(", "));
    }
    for failed in &response.spec_file_errors {
        eprintln!("warning: CDI spec {} skipped: {}", failed.path, failed.error);
    }
    Ok(())
}

/// NAME, VENDOR, CLASS and SPEC columns, one device a line.
fn table(devices: &[pb::CdiDevice]) -> String {
    let width = |column: fn(&pb::CdiDevice) -> &str, title: &str| {
        devices.iter().map(|device| column(device).len()).max().unwrap_or(0).max(title.len())
    };
    let name_width = width(|device| &device.name, "NAME");
    let vendor_width = width(|device| &device.vendor, "VENDOR");
    let class_width = width(|device| &device.device_class, "CLASS");
    let mut text = format!("{:<name_width$} {:<vendor_width$} {:<class_width$} SPEC\n", "NAME", "VENDOR", "CLASS");
    for device in devices {
        text.push_str(&format!(
            "{:<name_width$} {:<vendor_width$} {:<class_width$} {}\n",
            device.name, device.vendor, device.device_class, device.spec_path
        ));
    }
    text
}

/// The proto3 JSON form of a ListDevices answer.
fn devices_json(response: &pb::ListDevicesResponse) -> Value {
    let devices: Vec<Value> = response
        .devices
        .iter()
        .map(|device| {
            json!({
                "name": device.name,
                "vendor": device.vendor,
                "deviceClass": device.device_class,
                "specPath": device.spec_path,
            })
        })
        .collect();
    let errors: Vec<Value> =
        response.spec_file_errors.iter().map(|failed| json!({ "path": failed.path, "error": failed.error })).collect();
    json!({ "devices": devices, "specFileErrors": errors, "specDirs": response.spec_dirs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, vendor: &str, class: &str, spec_path: &str) -> pb::CdiDevice {
        pb::CdiDevice {
            name: name.to_owned(),
            vendor: vendor.to_owned(),
            device_class: class.to_owned(),
            spec_path: spec_path.to_owned(),
        }
    }

    #[test]
    fn the_table_aligns_columns_to_the_longest_value() {
        let devices = [
            device("example.com/device=fake0", "example.com", "device", "/etc/cdi/fake.json"),
            device("nvidia.com/gpu=all", "nvidia.com", "gpu", "/var/run/cdi/nvidia.yaml"),
        ];
        assert_eq!(
            table(&devices),
            "NAME                     VENDOR      CLASS  SPEC\n\
             example.com/device=fake0 example.com device /etc/cdi/fake.json\n\
             nvidia.com/gpu=all       nvidia.com  gpu    /var/run/cdi/nvidia.yaml\n"
        );
        assert_eq!(table(&[]), "NAME VENDOR CLASS SPEC\n");
    }

    #[test]
    fn json_uses_proto3_names_and_carries_the_failed_files() {
        let response = pb::ListDevicesResponse {
            devices: vec![device("example.com/device=fake0", "example.com", "device", "/etc/cdi/fake.json")],
            spec_file_errors: vec![pb::CdiSpecFileError {
                path: "/etc/cdi/bad.yaml".to_owned(),
                error: "nope".to_owned(),
            }],
            spec_dirs: vec!["/etc/cdi".to_owned()],
        };
        let value = devices_json(&response);
        assert_eq!(value["devices"][0]["deviceClass"], "device");
        assert_eq!(value["devices"][0]["specPath"], "/etc/cdi/fake.json");
        assert_eq!(value["specFileErrors"][0]["path"], "/etc/cdi/bad.yaml");
        assert_eq!(value["specDirs"][0], "/etc/cdi");
    }
}

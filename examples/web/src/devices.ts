// The device picker of the create form: the CDI devices the berth host offers (ListDevices), one
// checkbox each with its vendor, class and spec file, and the spec files the server could not use
// as warnings (a malformed file costs only its own devices). The checked names go into
// CreateWorkspace's `cdi_devices`; the server normalizes them, and the created workspace's
// `cdi_devices` (shown in the info panel) is the effective set.

import type { BerthClient, CdiDevice, CdiSpecFileError } from "@berth/sdk/web";
import { ActionRunner, findIn } from "./actions.js";

export class DevicePicker {
  private readonly runner;
  private readonly el;

  constructor(
    private readonly berth: BerthClient,
    root: HTMLElement,
  ) {
    const find = findIn(root, "device picker");
    this.el = {
      refresh: find<HTMLButtonElement>("devices-refresh"),
      list: find<HTMLUListElement>("devices-list"),
      empty: find("devices-empty"),
      warnings: find<HTMLUListElement>("devices-warnings"),
      error: find("devices-error"),
      status: find("devices-status"),
    };
    this.runner = new ActionRunner(this.el, (busy) => {
      this.el.refresh.disabled = busy;
    });
    this.el.refresh.addEventListener("click", () => this.reload());
  }

  /** Lists the host's devices again; the checked ones that are still offered stay checked. */
  reload(): void {
    void this.runner.run("List devices", () => this.load());
  }

  /** The qualified names (`VENDOR/CLASS=NAME`) of the checked devices. */
  selected(): string[] {
    return [...this.el.list.querySelectorAll<HTMLInputElement>("input[type=checkbox]:checked")].map((box) => box.value);
  }

  private async load(): Promise<void> {
    const checked = new Set(this.selected());
    const { devices, specFileErrors, specDirs } = await this.berth.workspaces.listDevices({});
    this.el.list.replaceChildren(...devices.map((device) => this.item(device, checked.has(device.name))));
    this.el.empty.hidden = devices.length > 0;
    this.el.empty.textContent = `No CDI devices in ${specDirs.join(", ") || "the server's spec directories"}.`;
    this.el.warnings.replaceChildren(...specFileErrors.map((failure) => this.warning(failure)));
    this.el.warnings.hidden = specFileErrors.length === 0;
  }

  private item(device: CdiDevice, checked: boolean): HTMLLIElement {
    const li = document.createElement("li");
    li.dataset.device = device.name;
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = device.name;
    box.checked = checked;
    const name = document.createElement("code");
    name.className = "name";
    name.textContent = device.name;
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = `${device.vendor} · ${device.deviceClass}`;
    const spec = document.createElement("span");
    spec.className = "spec";
    spec.textContent = device.specPath;
    label.append(box, name, kind, spec);
    li.append(label);
    return li;
  }

  private warning(failure: CdiSpecFileError): HTMLLIElement {
    const li = document.createElement("li");
    li.dataset.path = failure.path;
    const path = document.createElement("code");
    path.textContent = failure.path;
    li.append("skipped ", path, `: ${failure.error}`);
    return li;
  }
}

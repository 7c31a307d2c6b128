// A workspace's network on the page: the egress policy fields of the create form, the Network /
// Address / DNS rows of the info panel, and the Network policy form that changes the policy of
// the selected workspace live (UpdateWorkspace with the mask `network_policy`, no restart).
//
// A policy is a mode (`server default` sends none, so the server's default applies: OPEN, or
// NONE on a server run with `--network none`) and, for an allowlist or a denylist, IPv4 CIDRs;
// the server validates them (INVALID_ARGUMENT INVALID_NETWORK_POLICY) and refuses any policy
// but NONE when it runs without networking (FAILED_PRECONDITION NETWORK_DISABLED).

import { NetworkMode, type BerthClient, type NetworkPolicy, type Workspace, type WorkspaceNetwork } from "@berth/sdk/web";
import { ActionRunner, findIn } from "./actions.js";

/** What CreateWorkspace and UpdateWorkspace take as `networkPolicy`. */
export type NetworkPolicyInit = { mode: NetworkMode; cidrs: string[] };

const modeName = (mode: NetworkMode) => NetworkMode[mode] ?? `MODE_${mode}`;
const takesCidrs = (mode: NetworkMode) => mode === NetworkMode.ALLOWLIST || mode === NetworkMode.DENYLIST;

/** `ALLOWLIST 203.0.113.0/24, 198.51.100.7/32`, or just the mode when it has no CIDRs. */
export function describePolicy(policy: NetworkPolicyInit | NetworkPolicy | undefined): string {
  if (!policy) return "—";
  const cidrs = policy.cidrs.join(", ");
  return cidrs ? `${modeName(policy.mode)} ${cidrs}` : modeName(policy.mode);
}

/** `10.231.0.2/16 via 10.231.0.1`, or `loopback only` when the workspace has no `eth0`. */
export function describeAddress(network: WorkspaceNetwork | undefined): string {
  if (!network?.address) return "loopback only";
  return `${network.address}/${network.prefixLength} via ${network.gateway}`;
}

/**
 * A mode select and a CIDR list field (`PREFIX-mode`, `PREFIX-cidrs` inside `root`); the list is
 * enabled for an allowlist or a denylist only.
 */
export class NetworkPolicyFields {
  private readonly mode: HTMLSelectElement;
  private readonly cidrs: HTMLInputElement;

  constructor(root: HTMLElement, prefix: string) {
    const find = findIn(root, "network policy fields");
    this.mode = find<HTMLSelectElement>(`${prefix}-mode`);
    this.cidrs = find<HTMLInputElement>(`${prefix}-cidrs`);
    this.mode.addEventListener("change", () => this.modeChanged());
    this.modeChanged();
  }

  /** The policy to send; undefined for `server default` (the request then carries none). */
  policy(): NetworkPolicyInit | undefined {
    const mode = Number(this.mode.value) as NetworkMode;
    if (mode === NetworkMode.UNSPECIFIED) return undefined;
    // Commas or whitespace between entries; the server checks each one.
    const cidrs = takesCidrs(mode) ? this.cidrs.value.split(/[\s,]+/).filter((cidr) => cidr !== "") : [];
    return { mode, cidrs };
  }

  /** Shows `policy` in the fields (the policy in force, before the user changes it). */
  set(policy: NetworkPolicy | undefined): void {
    this.mode.value = String(policy?.mode ?? NetworkMode.UNSPECIFIED);
    this.cidrs.value = policy?.cidrs.join(", ") ?? "";
    this.modeChanged();
  }

  private modeChanged(): void {
    this.cidrs.disabled = !takesCidrs(Number(this.mode.value) as NetworkMode);
  }
}

/** The Network, Address and DNS rows of the info panel. */
export class NetworkInfo {
  private readonly el;

  constructor(root: HTMLElement) {
    const find = findIn(root, "workspace info");
    this.el = { policy: find("ws-network"), address: find("ws-address"), dns: find("ws-dns") };
  }

  show(network: WorkspaceNetwork | undefined): void {
    this.el.policy.textContent = describePolicy(network?.policy);
    this.el.policy.dataset.mode = network?.policy ? modeName(network.policy.mode) : "";
    this.el.address.textContent = describeAddress(network);
    this.el.address.dataset.address = network?.address ?? "";
    this.el.address.title = network?.macAddress ? `MAC ${network.macAddress}` : "";
    this.el.dns.textContent = network?.dnsServers.join(", ") || "—";
  }
}

/** The Network policy form of the selected workspace. */
export class NetworkPanel {
  private workspace: Workspace | undefined;
  private readonly runner;
  private readonly fields;
  private readonly el;

  constructor(
    private readonly berth: BerthClient,
    root: HTMLElement,
    /** Called with the workspace as UpdateWorkspace returned it. */
    private readonly workspaceChanged: (workspace: Workspace) => void,
  ) {
    const find = findIn(root, "network policy form");
    this.el = {
      section: root,
      form: find<HTMLFormElement>("network-form"),
      submit: find<HTMLButtonElement>("network-apply"),
      result: find("network-result"),
      error: find("network-error"),
      status: find("network-status"),
    };
    this.fields = new NetworkPolicyFields(root, "network");
    this.runner = new ActionRunner(this.el, (busy) => {
      this.el.submit.disabled = busy || !this.workspace;
    });
    this.el.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const ws = this.workspace;
      if (!ws) return;
      const policy = this.fields.policy();
      const shown = policy ? describePolicy(policy) : "the server's default";
      void this.runner.run(`Set network policy ${shown}`, () => this.apply(ws.workspaceId, policy));
    });
  }

  /** Shows the form for the selected workspace, filled with the policy in force. */
  show(ws: Workspace | undefined): void {
    this.el.section.hidden = !ws;
    const changed = ws?.workspaceId !== this.workspace?.workspaceId;
    this.workspace = ws;
    if (!changed) return;
    this.runner.reset();
    this.fields.set(ws?.network?.policy);
    this.el.result.textContent = "";
  }

  private async apply(workspaceId: string, policy: NetworkPolicyInit | undefined): Promise<void> {
    // Without a policy (`server default`) the mask still names the field: the server's default
    // applies.
    const { workspace } = await this.berth.workspaces.updateWorkspace({
      workspaceId,
      updateMask: { paths: ["network_policy"] },
      networkPolicy: policy,
    });
    if (!workspace) throw new Error("UpdateWorkspace returned no workspace");
    const network = workspace.network;
    this.el.result.textContent = `Now ${describePolicy(network?.policy)}, ${describeAddress(network)}`;
    this.el.result.dataset.mode = network?.policy ? modeName(network.policy.mode) : "";
    this.fields.set(network?.policy);
    this.workspaceChanged(workspace);
  }
}

// The Change image form of the selected workspace: UpdateWorkspace with the mask `image` moves
// the workspace onto another image (or a newer build of the same reference, with pull policy
// ALWAYS) and carries /data over. Everything else installed outside /data stays behind in a
// SYSTEM snapshot that the version with reason IMAGE_CHANGE names: restoring that version goes
// back to the old image and state. A running workspace restarts; a stopped one stays stopped.

import { PullPolicy, WorkspaceState, type BerthClient, type Workspace } from "@berth/sdk/web";
import { ActionRunner, findIn } from "./actions.js";

export class ImagePanel {
  private workspace: Workspace | undefined;
  private readonly runner;
  private readonly el;

  constructor(
    private readonly berth: BerthClient,
    root: HTMLElement,
    /** Called after the image changed (the workspace's image, version and maybe state). */
    private readonly workspaceChanged: (workspaceId: string) => Promise<void>,
  ) {
    const find = findIn(root, "change image form");
    this.el = {
      section: root,
      form: find<HTMLFormElement>("image-form"),
      image: find<HTMLInputElement>("image-ref"),
      pullPolicy: find<HTMLSelectElement>("image-pull-policy"),
      submit: find<HTMLButtonElement>("image-change"),
      result: find("image-result"),
      error: find("image-error"),
      status: find("image-status"),
    };
    this.runner = new ActionRunner(this.el, (busy) => {
      this.el.submit.disabled = busy || !this.workspace;
    });
    this.el.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const ws = this.workspace;
      if (!ws) return;
      const image = this.el.image.value.trim();
      const shown = image || "the server's default image";
      const prompt =
        `Move ${ws.workspaceId} onto ${shown}? /data is carried over; everything else stays in a SYSTEM snapshot ` +
        `(restore its version to go back)${ws.state === WorkspaceState.RUNNING ? " and the workspace restarts" : ""}.`;
      if (!confirm(prompt)) return;
      void this.runner.run(`Change image to ${shown}`, () => this.change(ws.workspaceId, image));
    });
  }

  /** Shows the form for the selected workspace, its current image as the placeholder. */
  show(ws: Workspace | undefined): void {
    this.el.section.hidden = !ws;
    const changed = ws?.workspaceId !== this.workspace?.workspaceId;
    this.workspace = ws;
    this.el.image.placeholder = ws?.image ?? "";
    if (!changed) return;
    this.runner.reset();
    this.el.image.value = "";
    this.el.pullPolicy.value = String(PullPolicy.IF_NOT_PRESENT);
    this.showResult("");
  }

  private async change(workspaceId: string, image: string): Promise<void> {
    const pullPolicy = Number(this.el.pullPolicy.value) as PullPolicy;
    const { workspace, version, restarted } = await this.berth.workspaces.updateWorkspace({
      workspaceId,
      updateMask: { paths: ["image"] },
      image,
      pullPolicy,
    });
    if (!version) {
      // Same manifest digest as now: the server changed nothing.
      this.showResult(`${workspace?.image ?? image} is the image the workspace runs on already: nothing changed`, {
        image: workspace?.image ?? "",
        version: "",
        restarted: String(restarted),
      });
    } else {
      this.showResult(
        `Now on ${version.image} (version ${version.version}); the previous state is snapshot ${version.snapshotName}` +
          `${restarted ? "; the workspace restarted" : ""}`,
        { image: version.image, version: String(version.version), snapshot: version.snapshotName, restarted: String(restarted) },
      );
      this.el.image.value = "";
    }
    await this.workspaceChanged(workspaceId);
  }

  /** The outcome of the last change, also as data attributes (for scripts and tests). */
  private showResult(text: string, data: Record<string, string> = {}): void {
    this.el.result.textContent = text;
    Object.assign(this.el.result.dataset, data);
  }
}

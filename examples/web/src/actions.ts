// One user action at a time for a panel: its buttons are disabled meanwhile, the status line
// says `ACTION…`, then `ACTION: done` or `ACTION: failed` (tests wait for these), and a failure
// goes to the panel's error box with the gRPC status code, the ErrorInfo reason and the message.
//
// Each workspace selection is a session: an action of a previously selected workspace that ends
// after another was selected changes nothing on the page.

import { describeError } from "./format.js";

export interface ActionElements {
  /** The panel's error box (hidden while there is no error). */
  error: HTMLElement;
  /** The panel's status line. */
  status: HTMLElement;
}

export class ActionRunner {
  private busyNow = false;
  private session = 0;

  constructor(
    private readonly el: ActionElements,
    /** Called whenever `busy` changes, to enable or disable the panel's controls. */
    private readonly busyChanged: (busy: boolean) => void,
  ) {}

  get busy(): boolean {
    return this.busyNow;
  }

  /** Starts a new session (another workspace was selected): forgets the error and the status. */
  reset(): void {
    this.session++;
    this.busyNow = false;
    this.clearError();
    this.el.status.textContent = "";
    this.busyChanged(false);
  }

  /** Runs `fn` unless an action is running; resolves to whether it ran and succeeded. */
  async run(action: string, fn: () => Promise<void>): Promise<boolean> {
    if (this.busyNow) return false;
    const session = this.session;
    this.busyNow = true;
    this.clearError();
    this.busyChanged(true);
    this.el.status.textContent = `${action}…`;
    try {
      await fn();
      if (session !== this.session) return false;
      this.el.status.textContent = `${action}: done`;
      return true;
    } catch (err) {
      if (session !== this.session) return false; // another workspace was selected meanwhile
      this.el.error.textContent = describeError(action, err);
      this.el.error.hidden = false;
      console.warn(this.el.error.textContent); // in the browser console, and so in the test's log
      this.el.status.textContent = `${action}: failed`;
      return false;
    } finally {
      if (session === this.session) {
        this.busyNow = false;
        this.busyChanged(false);
      }
    }
  }

  private clearError(): void {
    this.el.error.textContent = "";
    this.el.error.hidden = true;
  }
}

/** Finds `#id` inside `root`, failing at once when the page lacks it. */
export function findIn(root: HTMLElement, what: string) {
  return <T extends HTMLElement = HTMLElement>(id: string): T => {
    const found = root.querySelector<T>(`#${id}`);
    if (!found) throw new Error(`#${id} is missing from the ${what}`);
    return found;
  };
}

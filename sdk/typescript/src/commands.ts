// Running commands in a workspace over ProcessService.Start: `runCommand` collects a command's
// output and exit status, `streamCommand` yields its output as it arrives. Both work in Node
// and in browsers (any transport).

import { create } from "@bufbuild/protobuf";
import type { BerthClient } from "./client.js";
import { type ProcessEvent_End, ProcessConfigSchema, Signal, StartRequestSchema } from "./gen/berth/workspace/v1/process_service_pb.js";

/** What a command run to its end produced. */
export interface CommandResult {
  /** Everything the process wrote to stdout (or its pseudo-terminal). */
  stdout: Uint8Array;
  /** Everything the process wrote to stderr. */
  stderr: Uint8Array;
  /** Exit status; 128+n when signal n ended it, -1 when berth could not learn it. */
  exitCode: number;
  /** The signal that ended the process; `Signal.UNSPECIFIED` when it exited itself. */
  signal: Signal;
  /** Why berth ended the process (its timeout passed, the workspace stopped); "" otherwise. */
  error: string;
}

/** Options of {@link runCommand} and {@link streamCommand}. */
export interface CommandOptions {
  /** Environment variables added to the workspace's. */
  env?: Record<string, string>;
  /** Working directory inside the workspace. */
  cwd?: string;
  /** User (name, uid or uid:gid); the image's user when unset. */
  user?: string;
  /** Seconds after which berth SIGKILLs the process. */
  timeoutSeconds?: number;
  /** Ends the call (not the process, which runs detached on the server). */
  signal?: AbortSignal;
}

/** One chunk of output, or the end of the process. */
export type CommandEvent =
  | { kind: "stdout" | "stderr" | "pty"; data: Uint8Array }
  | { kind: "end"; end: ProcessEvent_End };

/**
 * Starts `cmd` with `args` in a running workspace on pipes and yields its output as it arrives,
 * then its end. Failures are `ConnectError`s (read them with `berthErrorInfo`).
 */
export async function* streamCommand(
  client: BerthClient,
  workspaceId: string,
  cmd: string,
  args: string[] = [],
  options: CommandOptions = {},
): AsyncGenerator<CommandEvent> {
  const request = create(StartRequestSchema, {
    workspaceId,
    process: create(ProcessConfigSchema, { cmd, args, env: options.env ?? {}, cwd: options.cwd ?? "", user: options.user ?? "" }),
    timeout: options.timeoutSeconds === undefined ? undefined : { seconds: BigInt(Math.floor(options.timeoutSeconds)), nanos: 0 },
  });
  for await (const response of client.processes.start(request, { signal: options.signal })) {
    const event = response.event?.event;
    if (event?.case === "end") {
      yield { kind: "end", end: event.value };
      return;
    }
    if (event?.case === "data" && event.value.output.case !== undefined) {
      yield { kind: event.value.output.case, data: event.value.output.value };
    }
  }
  throw new Error(`the stream of ${JSON.stringify(cmd)} in ${JSON.stringify(workspaceId)} ended without an end event`);
}

/**
 * Runs `cmd` with `args` to its end and returns its output and exit status. A non-zero exit
 * code is not an error: read `exitCode`.
 *
 * ```ts
 * const { stdout, exitCode } = await runCommand(berth, "bot-1", "sh", ["-c", "echo hi"]);
 * ```
 */
export async function runCommand(
  client: BerthClient,
  workspaceId: string,
  cmd: string,
  args: string[] = [],
  options: CommandOptions = {},
): Promise<CommandResult> {
  const stdout: Uint8Array[] = [];
  const stderr: Uint8Array[] = [];
  for await (const event of streamCommand(client, workspaceId, cmd, args, options)) {
    if (event.kind === "end") {
      return {
        stdout: concat(stdout),
        stderr: concat(stderr),
        exitCode: event.end.exitCode,
        signal: event.end.signal,
        error: event.end.error,
      };
    }
    (event.kind === "stderr" ? stderr : stdout).push(event.data);
  }
  throw new Error(`the stream of ${JSON.stringify(cmd)} ended without an end event`);
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((total, chunk) => total + chunk.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}
